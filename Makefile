# The two commands anyone needs on a fresh clone: `make demo` and `make test`.
# `make install` is idempotent: it creates .venv and reinstalls only when pyproject.toml changed.
# Another torch build: `make install TORCH='torch==2.13.0+cu126 --index-url ...'`.

PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/run method=slam experiment=demo

test: install
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not distributed" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m bench.run

bench-quick: install
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
