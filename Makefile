# Atoll: the two commands of the README, and the pieces they are made of.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/atoll-torch-extensions
export RAY_USAGE_STATS_ENABLED := 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export DS_ACCELERATOR ?= cpu
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast helm lint clean

$(STAMP): pyproject.toml constraints.txt scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $(STAMP)

setup: $(STAMP)

## The main job: the quickstart on the embedded default (local Ray, ./runs store, Fashion-MNIST).
demo: $(STAMP)
	$(VENV)/bin/atoll run jobs/quickstart.yaml

## Install everything and run the whole test suite.
test: $(STAMP)
	bash scripts/install_helm.sh $(VENV)/bin
	$(PY) -m pytest tests -q

## Tests that skip the slow (training / Ray) ones.
test-fast: $(STAMP)
	$(PY) -m pytest tests -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
