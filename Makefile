# The two commands of the README: `make demo` (install what the demo needs, then run the
# demo on the embedded defaults) and `make test` (install the test tools too; lint, format
# check, types, the whole test suite). `make test-fast` is the edit-test loop: unit and
# DB tests only, no Prefect server, SLURM, podman or browser (docs/development.md).
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check
# pytest-xdist workers: tests mostly wait for jobs, servers and the database, so more
# workers than the machine's two cores pay; tests that share the one SLURM node, podman
# or the operator's guide run on one worker, one after another (tests/conftest.py).
TEST_WORKERS ?= 4
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadgroup
SERVICE_TIERS := embedded or prefect_server or prefect_ephemeral or slurm or podman or browser or guide

.PHONY: install install-test demo lint test test-fast

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
	$(BIN)/pytest $(PYTEST_PARALLEL)

test-fast: install-test
	$(BIN)/pytest $(PYTEST_PARALLEL) -m "not ($(SERVICE_TIERS))"
