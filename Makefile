# One entry point for people and CI. Every target sets up what it needs first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.pplvm-installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test test-all bench clean

# A fresh venv; the CPU wheel torch==2.13.0 first (so nothing pulls a CUDA build), then pplvm.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

setup: $(STAMP)

## Fit the bundled demo (Bayesian GMM on iris) into runs/gmm_iris and print its summary.
demo: $(STAMP)
	$(BIN)/pplvm fit models/gmm_iris.toml --out runs/gmm_iris --overwrite
	$(BIN)/pplvm evaluate runs/gmm_iris

## The test suite CI runs (slow tests excluded).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

## Everything, slow tests included.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q

## Every benchmark in bench/, one after the other (each prints its pplvm / peer ratio).
bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
