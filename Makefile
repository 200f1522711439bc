# tokensmith: `make run` serves on the embedded defaults, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PLUGIN_DIRS := $(wildcard plugins/*)

.PHONY: run test setup plugins keystore clean

run: setup
	$(BIN)/tokensmith serve

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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

clean:
	rm -rf $(VENV) dropins/*.whl dropins/.*.source
