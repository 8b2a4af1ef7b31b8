# The README's two commands. Each sets up .venv first (built once, then reused).
.PHONY: venv test demo lock clean-venv

PY := .venv/bin/python

venv:
	@bash scripts/venv.sh

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(PY) -m recipes.demo $(DEMO_ARGS)

# Re-resolve the stack from pyproject.toml and write requirements.lock (needs the package index).
lock:
	bash scripts/lock.sh

clean-venv:
	rm -f .venv
