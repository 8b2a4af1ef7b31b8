# The README's two commands. Each sets up .venv first (built once, then reused).
.PHONY: venv lint format test test-fast demo lock clean-venv

PY := .venv/bin/python
RUFF := .venv/bin/ruff

venv:
	@bash scripts/venv.sh

# ruff: lint and formatting are checked before the tests; `make format` applies both.
lint: venv
	$(RUFF) check .
	$(RUFF) format --check .

format: venv
	$(RUFF) format .
	$(RUFF) check --fix .

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything but the tests marked slow (subprocess launches, multi-process runs, the demo): for iteration.
test-fast: lint
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: venv
	$(PY) -m demo $(DEMO_ARGS)

# Re-resolve the stack from pyproject.toml and write requirements.lock (needs the package index).
lock:
	bash scripts/lock.sh

clean-venv:
	rm -f .venv
