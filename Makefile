# One entry point for people and CI. Every target sets up what it needs first.
# `make test` runs the suite twice: on Python 3.11 (arviz 0.23) and on a newer Python found
# through pyenv (arviz 1.x), each in its own fresh venv.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.pplvm-installed
# the newer Python: the highest pyenv 3.12.x (set PY_NEW=/path/to/python3.12 to choose another)
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $$HOME/.pyenv)
PY_NEW  ?= $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/3.12*/bin/python)))
VENV_NEW ?= .venv-new
STAMP_NEW := $(VENV_NEW)/.pplvm-installed
export OMP_WAIT_POLICY ?= PASSIVE
# pytest worker processes (pytest-xdist; each holds torch to one thread): 2 for the 2-core CI box
TEST_WORKERS ?= 2

.PHONY: setup setup-new demo lint test test-311 test-new test-all bench notebooks docs clean

# A fresh venv; the CPU wheel torch==2.13.0 first (pip takes it from the machine's wheel folder, so
# nothing pulls a CUDA build), then pplvm and its extras by uv (parallel downloads; bytecode compiled at
# install, as pip does: the environment may set PYTHONDONTWRITEBYTECODE, and every test process imports torch).
$(STAMP): pyproject.toml
	$(PY) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "make: PY=$(PY) is Python %d.%d; expected 3.11 (set PY=python3.11)" % sys.version_info[:2])'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0 uv
	$(BIN)/python -m uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev,bench,docs]'
	touch $(STAMP)

# The newer Python's venv: torch==2.13.0 from PyPI (the CPU wheel on disk is for 3.11 only;
# PyPI's build carries CUDA libraries and runs on the CPU as well), then pplvm.
$(STAMP_NEW): pyproject.toml
	@test -n "$(PY_NEW)" && test -x "$(PY_NEW)" || { echo "make: no Python 3.12 found (looked for $(PYENV_ROOT)/versions/3.12*/bin/python); install one (pyenv install 3.12) or set PY_NEW=/path/to/python3.12" >&2; exit 1; }
	$(PY_NEW) -m venv $(VENV_NEW)
	$(VENV_NEW)/bin/python -m pip install --quiet uv
	$(VENV_NEW)/bin/python -m uv pip install --quiet --compile-bytecode --python $(VENV_NEW)/bin/python torch==2.13.0
	$(VENV_NEW)/bin/python -m uv pip install --quiet --compile-bytecode --python $(VENV_NEW)/bin/python -e '.[dev]'
	touch $(STAMP_NEW)

setup: $(STAMP)
setup-new: $(STAMP_NEW)

## Fit the bundled demo (Bayesian GMM on iris) into runs/gmm_iris and print its summary.
demo: $(STAMP)
	$(BIN)/pplvm fit models/gmm_iris.toml --out runs/gmm_iris --overwrite
	$(BIN)/pplvm evaluate runs/gmm_iris

## ruff: the linter and the formatter's check (line length 120, pyproject.toml [tool.ruff]).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## The test suite CI runs (slow tests excluded), on Python 3.11 and on the newer Python.
test: lint test-311 test-new

test-311: $(STAMP)
	@$(BIN)/python -c 'import sys, arviz; print("== tests on Python", sys.version.split()[0], "arviz", arviz.__version__)' 2>/dev/null
	$(BIN)/python -m pytest -m "not slow" -q -n $(TEST_WORKERS) --durations=25

# the docs build (tests/test_docs.py) runs on Python 3.11 only: this venv has no Sphinx (no docs extra)
test-new: $(STAMP_NEW)
	@$(VENV_NEW)/bin/python -c 'import sys, warnings; warnings.simplefilter("ignore"); import arviz; print("== tests on Python", sys.version.split()[0], "arviz", arviz.__version__)'
	$(VENV_NEW)/bin/python -m pytest -m "not slow" -q -n $(TEST_WORKERS) --durations=25 -p no:cacheprovider --ignore=tests/test_docs.py

## Everything, slow tests included (Python 3.11).
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

## Every benchmark in bench/, one after the other (each prints its pplvm / peer ratio).
bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

## The documentation site, offline, into docs/_build/html (warnings are errors; nitpicky: every
## cross-reference resolves). Notebooks are rendered with their stored outputs, not executed.
docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -n -b html docs docs/_build/html

## Re-execute every notebook in notebooks/ (full length) and store its outputs, which the docs render.
notebooks: $(STAMP)
	cd notebooks && for nb in *.ipynb; do $(abspath $(BIN))/jupyter-execute --inplace --timeout=3600 $$nb || exit 1; done

clean:
	rm -rf $(VENV) $(VENV_NEW) runs .pytest_cache
