# Every target sets itself up from scratch: a fresh machine needs python3 (>= 3.11) and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test bench lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[fast]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[fast,test]'
	touch $@ $(VENV)/.installed-run

## run: start the proxy with zero configuration; it prints its links
run: $(VENV)/.installed-run
	$(BIN)/mtproxy run $(ARGS)

## test: the whole test suite (unit, property, integration, real client)
test: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest $(ARGS)

## bench: the performance table (not a test; numbers vary with the machine)
bench: $(VENV)/.installed-test
	$(BIN)/python bench/run.py $(ARGS)
	$(BIN)/python bench/workers.py $(ARGS)

clean:
	rm -rf $(VENV) dist build src/*.egg-info
