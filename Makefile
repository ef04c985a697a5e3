# Two entry points: `make demo` (install + the main job on the embedded default model)
# and `make test` (install + lint + the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ANYDEPTH_DATA ?= $(abspath ../shared/data)
export ANYDEPTH_DATA

.PHONY: install test test-fast lint demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements/cpu.txt
	$(BIN)/pip install -q -c requirements/cpu.txt -e '.[test]'
	touch $@

lint: install
	$(BIN)/ruff check interp tests scripts

test: install lint
	$(BIN)/python -m pytest -q -ra

test-fast: install
	$(BIN)/python -m pytest -q -m "not integration and not slow"

demo: install
	$(BIN)/anydepth demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
