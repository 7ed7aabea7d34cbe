# Every target sets itself up on a fresh clone. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export LAKEHOUSE_PG_PORT ?= 55432
export DAGSTER_HOME ?= $(CURDIR)/.local/dagster
export UI_PORT ?= 3000

# Without LAKEHOUSE_PG_DSN, the project's own local PostgreSQL is used (started on demand).
ifeq ($(strip $(LAKEHOUSE_PG_DSN)),)
LOCAL_PG := 1
export LAKEHOUSE_PG_DSN := postgresql://lakehouse_pipeline@127.0.0.1:$(LAKEHOUSE_PG_PORT)/lakehouse
export LAKEHOUSE_PG_ADMIN_DSN ?= postgresql://postgres@127.0.0.1:$(LAKEHOUSE_PG_PORT)/lakehouse
endif

.PHONY: help setup jars pg-start stop demo test stress bench ui lint clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed jars $(DAGSTER_HOME)/dagster.yaml ## virtualenv, packages and jars (cached in ~/.cache/lakehouse)

jars: ## fetch and verify the Spark jars once (LAKEHOUSE_CACHE overrides ~/.cache/lakehouse)
	scripts/fetch_jars.sh

$(DAGSTER_HOME)/dagster.yaml: conf/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp conf/dagster.yaml $@

pg-start: ## start the local PostgreSQL (127.0.0.1:$LAKEHOUSE_PG_PORT)
	scripts/pg.sh start

stop: ## stop the local PostgreSQL
	scripts/pg.sh stop

demo: setup ## event store -> Dagster -> Delta, twice, then a read now and as of the first run
	$(if $(LOCAL_PG),scripts/pg.sh start)
	$(BIN)/python scripts/demo.py

test: setup ## the whole test suite (starts PostgreSQL and a moto S3 server itself)
	scripts/pg.sh start
	$(BIN)/pytest $(PYTEST_ARGS)

stress: setup ## the stress tests at full length (STRESS_ROUNDS=50 crash rounds); make test runs 3
	scripts/pg.sh start
	LAKEHOUSE_STRESS_ROUNDS=$(or $(STRESS_ROUNDS),50) $(BIN)/pytest -m stress $(PYTEST_ARGS)

bench: setup ## benchmarks side by side, printed as a table; JSON under bench/results/ (runs the demo first if the lake is empty)
	$(if $(LOCAL_PG),scripts/pg.sh start)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

ui: setup ## Dagster UI and daemon on http://127.0.0.1:$(UI_PORT) (schedules tick)
	$(if $(LOCAL_PG),scripts/pg.sh start)
	$(BIN)/dagster dev -h 127.0.0.1 -p $(UI_PORT) -m dagster_project

lint: $(VENV)/.installed ## ruff
	$(BIN)/ruff check pipelines dagster_project jobs tests scripts

clean: ## remove the virtualenv and local state of this clone (not the jar cache)
	-scripts/pg.sh stop
	rm -rf $(VENV) .local
