# The README's two commands. Each sets up .venv first (built once, then reused).
.PHONY: venv java lint format test test-fast demo lock clean-venv

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

# Spark (stage-1 conversion on a cluster, and its tests) runs on a Java runtime: name it when it is missing.
java:
	@command -v java >/dev/null 2>&1 || [ -x "$${JAVA_HOME:-/nonexistent}/bin/java" ] || { \
	  echo "make: Spark needs a Java runtime (11 or 17) and none was found (no java on PATH, no JAVA_HOME)."; \
	  echo "      Install one, e.g. 'apt-get install -y openjdk-17-jre-headless', or set JAVA_HOME."; exit 1; }

test: lint java
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything but the tests marked slow (subprocess launches, multi-process runs, the demo): for iteration.
test-fast: lint java
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: venv
	$(PY) -m demo $(DEMO_ARGS)

# Re-resolve the stack from pyproject.toml and write requirements.lock (needs the package index).
lock:
	bash scripts/lock.sh

clean-venv:
	rm -f .venv
