# Contrail. `make demo` and `make test` each set everything up from nothing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.contrail-installed
ENV := scripts/env
DEMO_DATE ?= 2026-01-01
DEMO_RUN_ID := manual__$(DEMO_DATE)T00:00:00+00:00
PYTEST_ARGS ?=

.PHONY: help setup demo test test-fast lint format lock clean bench bench-deps bench-tfx-bsl

help:
	@echo "make demo   set up from nothing, run the penguins pipeline end to end through Airflow"
	@echo "make test   set up from nothing, run the whole test suite (slow tests included)"
	@echo "make lint   ruff check + format check, and contrail lint on every spec"

# The virtual environment, with the exact pinned set, and Contrail installed editable.
$(STAMP): requirements.lock pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade "pip>=24"
	$(VENV)/bin/python -m pip install --quiet -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e . || \
	  $(VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)
	$(ENV) airflow db migrate >/dev/null
	@echo "Set up: $(VENV), Airflow metadata in airflow.db"

demo: setup
	@$(ENV) contrail demo-data >/dev/null
	@echo "Running the penguins pipeline through Airflow; its log: logs/demo-$(DEMO_DATE).log"
	@$(ENV) python -m contrail_airflow.run penguins $(DEMO_DATE) --log-file logs/demo-$(DEMO_DATE).log
	@$(ENV) contrail summary penguins "$(DEMO_RUN_ID)" --output artifacts/demo-summary.json

test: setup
	scripts/install-browser
	$(ENV) ruff check .
	$(ENV) ruff format --check .
	$(ENV) contrail lint
	@# The steps' own tests (in-process, no Airflow cluster) run two at a time; then the rest one
	@# at a time: the cluster tests time kills and heartbeats, and each keeps both cores busy.
	$(ENV) python -m pytest -n 2 $(PYTEST_ARGS) tests/tasks; steps=$$?; \
	$(ENV) python -m pytest $(PYTEST_ARGS) --ignore=tests/tasks; rest=$$?; \
	exit $$(( steps || rest ))

test-fast: setup
	$(ENV) python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(ENV) ruff check .
	$(ENV) ruff format --check .
	$(ENV) contrail lint

format: $(STAMP)
	$(ENV) ruff format .
	$(ENV) ruff check --fix .

lock: $(STAMP)
	$(VENV)/bin/python -m pip check  # a set pip cannot install fresh must not be frozen
	(echo "# The exact, tested dependency set (Python 3.11, Linux x86_64). Regenerate with: make lock"; \
	 $(VENV)/bin/pip freeze --exclude-editable | grep -v -i '^contrail') > requirements.lock

# Benchmarks (not part of the tests): see BENCHMARKS.md.
TFX_BSL_ENV := .bench-tfx-bsl
$(TFX_BSL_ENV)/bin/python: benchmarks/requirements-tfx-bsl.txt
	$(PYTHON) -m venv $(TFX_BSL_ENV)
	$(TFX_BSL_ENV)/bin/python -m pip install --quiet --upgrade "pip>=24"
	$(TFX_BSL_ENV)/bin/python -m pip install --quiet -r benchmarks/requirements-tfx-bsl.txt

bench-tfx-bsl: $(TFX_BSL_ENV)/bin/python

# scikit-learn (the quality section's baseline) goes into .venv, but only here: the tests and
# the runtime never need it.
bench-deps: setup
	$(VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-bench.txt

bench: bench-deps bench-tfx-bsl
	$(ENV) python benchmarks/run.py --tfx-bsl-python $(TFX_BSL_ENV)/bin/python

clean:
	rm -rf artifacts logs airflow.db .airflow
