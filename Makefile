# tokensmith: `make run` serves on the embedded defaults, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PLUGIN_DIRS := $(wildcard plugins/*)

.PHONY: run test lint fuzz setup plugins keystore browser clean

run: setup
	$(BIN)/tokensmith serve

# The tests run in JOBS processes (pytest-xdist): most of the suite waits on servers it started,
# so two processes on two cores take little more than half the time. JOBS=0 runs them in one.
JOBS ?= 2

test: setup browser lint
	$(BIN)/python -m pytest -n $(JOBS) $(PYTEST_ARGS)

# ruff (lint and format) and mypy over the package; `make test` runs them first.
lint: $(STAMP)
	$(BIN)/ruff check core plugins tests bench
	$(BIN)/ruff format --check core plugins tests bench
	$(BIN)/mypy

# The property-based tests with many more examples (HYPOTHESIS_PROFILE=fuzz; see tests/hostile/test_fuzz.py).
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/hostile/test_fuzz.py $(PYTEST_ARGS)

setup: plugins keystore

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

# Rebuilds only the plugins whose sources changed (the builder keeps a stamp per plugin).
plugins: $(STAMP)
	$(BIN)/tokensmith plugins build $(PLUGIN_DIRS) --out dropins

keystore: $(STAMP)
	$(BIN)/tokensmith keystore init

# The tests of pages drive Debian's Chromium (tests/browser.py); installed here when missing.
browser:
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; } >/dev/null

clean:
	rm -rf $(VENV) dropins/*.whl dropins/.*.source

# Benchmarks (bench/README.md): not part of `make test`. `make bench` takes about 25 minutes;
# `make bench-smoke` about a minute. Extra options go in BENCH_ARGS (see bench/run.py --help).
LOADGEN  := bench/loadgen/loadgen
NODE_OIDC_STAMP := bench/peers/node-oidc/node_modules/.package-lock.json
BENCH_ARGS ?=

.PHONY: bench bench-smoke soak

$(LOADGEN): bench/loadgen/loadgen.c
	$(MAKE) -C bench/loadgen

# npm ci writes node_modules/.package-lock.json: reinstall only when the lock file changes.
$(NODE_OIDC_STAMP): bench/peers/node-oidc/package-lock.json
	bench/peers/node-oidc/setup.sh

bench: setup $(LOADGEN) $(NODE_OIDC_STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# node-oidc is optional here: without node or npm the smoke run skips it and says so.
bench-smoke: setup $(LOADGEN)
	@$(MAKE) --no-print-directory $(NODE_OIDC_STAMP) || echo "bench-smoke: node-oidc setup failed; running without it"
	$(BIN)/python bench/run.py --smoke $(BENCH_ARGS)

# 10 minutes of mixed load on one server, sampling RSS and open descriptors (SOAK_ARGS).
soak: setup $(LOADGEN)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)
