# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The bench extra (trio, anyio, psutil) lets the benchmark smoke test run; gunicorn and
# metrics are the optional extras whose tests always run.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test,dev,bench,gunicorn,metrics]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/pubsub.py --duration 5

lint: $(STAMP)
	$(VENV)/bin/ruff check greentask tests examples benchmarks
	$(VENV)/bin/ruff format --check greentask tests examples benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict greentask

# `coverage run` (not pytest-cov): greentask's pytest plugin is loaded through its entry
# point before pytest-cov could start measuring.
pytest: $(STAMP)
	$(PY) -m coverage erase
	$(PY) -m coverage run -m pytest -q
	$(PY) -m coverage report --fail-under=90

test: lint typecheck pytest

# The task-level benchmarks, then the service benchmark (needs Debian's `hey`:
# apt-get install -y hey; it says so and stops when it is missing).
bench: $(STAMP)
	$(PY) benchmarks/run.py $(if $(FULL),--full,)
	$(PY) benchmarks/service.py $(if $(FULL),--duration 10 --repeats 3 --drain-repeats 10,--duration 5 --drain-repeats 3) --output benchmarks/RESULTS_service.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
