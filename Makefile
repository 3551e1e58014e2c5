# The two commands of the README: `make demo` (install, then run the demo on the
# embedded defaults) and `make test` (lint, format check, types, the whole test suite).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo lint test

$(VENV)/.installed: pyproject.toml examples/chai-software/pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' -e examples/chai-software
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/ccat-wm demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest
