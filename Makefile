# syncd developer commands. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DIR ?= taskdefs

.DEFAULT_GOAL := test
.PHONY: reliability install run test lint typecheck bench schema check clean worker scheduler watch migrate

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo stack runs under the demo operator policy unless SYNCD_POLICY names another.
run worker scheduler watch: export SYNCD_POLICY ?= $(CURDIR)/policy/demo.yaml

# Validate, migrate, then the daemon (which syncs), the scheduler, a worker and the console
# (http://127.0.0.1:8080/; the first run prints an operator token), until Ctrl-C.
run: $(STAMP)
	$(BIN)/syncd validate $(DIR)
	$(BIN)/syncd up $(DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q

migrate: $(STAMP)
	$(BIN)/syncd migrate

worker: $(STAMP)
	$(BIN)/taskiq worker worker.app:broker

scheduler: $(STAMP)
	$(BIN)/python -m worker.scheduler

watch: $(STAMP)
	$(BIN)/syncd watch $(DIR)

# The long versions of tests/reliability (CI runs the short ones with `make test`).
reliability: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/reliability

lint: $(STAMP)
	$(BIN)/ruff check syncd schemas worker tests bench
	$(BIN)/ruff format --check syncd schemas worker tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

bench: export SYNCD_POLICY ?= $(CURDIR)/bench/policy.yaml
bench: $(STAMP)
	$(BIN)/python bench/validate_bench.py
	$(BIN)/python bench/sync_bench.py
	$(BIN)/python bench/watch_bench.py
	$(BIN)/python bench/worker_bench.py
	$(BIN)/python bench/api_bench.py $(if $(FULL),--full)
	$(BIN)/python bench/scale_bench.py $(if $(FULL),--with-100k)
	$(BIN)/python bench/scheduler_bench.py --due $(if $(FULL),50000,10000)

schema: $(STAMP)
	$(BIN)/syncd schema > schemas/taskdef.schema.json
	$(BIN)/syncd schema --policy > schemas/policy.schema.json

check: lint typecheck test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
