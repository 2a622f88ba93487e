# embedpipe — `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-slow lint format bench bench-incremental bench-scale bench-search bench-sweep bench-longdoc clean

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml examples/embedpipe-keyword-boost/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch on local disk first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# The example plugin (its own package, registered through the embedpipe.steps entry point).
	$(BIN)/pip install -q -e examples/embedpipe-keyword-boost
	@touch $@

venv: $(STAMP) ## Create .venv and install embedpipe with its test tools

demo: $(STAMP) ## Index the project's own docs (pipelines/quickstart.yaml) and search them
	$(BIN)/pipe validate pipelines/quickstart.yaml
	$(BIN)/pipe run pipelines/quickstart.yaml
	$(BIN)/pipe search pipelines/quickstart.yaml "how do I override a spec value for one run?" -k 3

test: $(STAMP) ## Run the test suite (real model, LanceDB, DuckDB and Prefect)
	$(BIN)/pytest

test-slow: $(STAMP) ## Run the slow failure cases the default run leaves out (~3 min)
	$(BIN)/pytest -m slow

lint: $(STAMP) ## ruff check + format check + import layering contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## Benchmarks: `pipe run` vs raw sentence-transformers, and each encode backend (~45 min)
	$(BIN)/python bench/encode_overhead.py

bench-incremental: $(STAMP) ## Benchmarks: full vs no-op vs 1%-changed `pipe run` on SciFact (~10 min)
	$(BIN)/python bench/incremental.py --write

bench-scale: $(STAMP) ## Benchmarks: engine peak RSS and wall time, SciFact x1 vs x10 (~15 min)
	$(BIN)/python bench/scale_engine.py --write

bench-search: $(STAMP) ## Benchmarks: float exact vs binary + rescore vs ANN search, 1M vectors (~20 min)
	$(BIN)/python bench/search.py --write

bench-longdoc: $(STAMP) ## Benchmarks: long-document strategies on QMSum (~2 h) and long-context memory
	$(BIN)/python bench/longdoc.py --write
	$(BIN)/python bench/long_memory.py --write

bench-sweep: $(STAMP) ## Benchmarks: pipe eval --sweep on SciFact, ratios to float and a Pareto plot
	$(BIN)/python bench/sweep.py --write

clean: ## Remove the workspace (run output); keeps .venv
	rm -rf workspace
