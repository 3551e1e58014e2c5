# The two commands of the README: `make demo` (install what the demo needs, then run the
# demo on the embedded defaults) and `make test` (install the test tools too; lint, format
# check, types, the whole test suite).
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check

.PHONY: install install-test demo lint test

$(BIN)/python:
	@echo "==> creating the virtual environment $(VENV)"
	python3 -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml examples/chai-software/pyproject.toml
	@echo "==> installing ccat-wm and the example CHAI reduction software into $(VENV)"
	@echo "    (Prefect, SQLAlchemy, an embedded PostgreSQL, numpy, astropy, matplotlib;"
	@echo "    about two minutes the first time)"
	$(PIP) install --quiet --progress-bar on -e . -e examples/chai-software
	@touch $@
	@echo "==> installed"

$(VENV)/.installed-test: $(VENV)/.installed
	@echo "==> installing the test tools (pytest, mypy, ruff, Playwright, kubernetes-validate)"
	$(PIP) install --quiet --progress-bar on -e '.[test]'
	@touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/ccat-wm demo

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest
