# Two commands matter (README): `make demo` and `make test`. Both create .venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO ?= demo_out
STAMP := $(VENV)/.installed-dev

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test lint venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall when setup.py changes.
$(STAMP): setup.py | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(STAMP)

# Two pytest processes, a test file each at a time (`--dist loadfile`: a file's module
# fixtures are built once): most tests wait on subprocesses, servers and Beam workers, so
# two keep both cores busy (16 -> 10 minutes here). More cores: `make test TEST_WORKERS=auto`.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

lint: $(STAMP)
	$(BIN)/ruff check tfvctr beam_jobs serving tests benchmarks

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --out $(DEMO)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
