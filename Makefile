# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_HOME ?= $(CURDIR)/demo_home

.PHONY: demo test install install-test node lab lint typecheck bench hardening clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The install builds the JupyterLab extension (extensions/jupyterlab) with npm: Node first.
node:
	bash scripts/test-deps.sh node

install: $(BIN)/python node
	$(BIN)/python -m pip install --quiet -e '.[notebook]'

install-test: $(BIN)/python node
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'

# JupyterLab on notebooks/ with the package, its lab extension and server extension installed.
lab: install
	$(BIN)/jupyter lab --notebook-dir=notebooks

# The main job on the embedded defaults: the quickstart notebook, headless in a real kernel
# (a sentinel, two workers, the sample files, SQL); prints its summary and writes it as HTML.
demo: install
	$(BIN)/casparian --home $(DEMO_HOME) --tape $(DEMO_HOME)/tapes/demo.tape demo \
	  --notebook notebooks/01-quickstart.ipynb --html $(DEMO_HOME)/quickstart.html

lint: install-test
	$(BIN)/ruff check casparian_nb tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every test: unit, integration (real processes), notebooks, browser, hardening (reduced trials).
test: install-test
	bash scripts/test-deps.sh
	$(BIN)/ruff check casparian_nb tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q tests

bench: install-test
	for b in benchmarks/*.py; do \
	  case $$b in */hardening_report.py|*/_*.py) continue;; esac; $(BIN)/python $$b || exit 1; done

# Fault matrix at full size (10 trials per scenario) + 10,000 fuzzed messages; prints the table.
hardening: install-test
	$(BIN)/python benchmarks/hardening_report.py --trials 10 --fuzz-messages 10000

clean:
	rm -rf $(VENV) $(DEMO_HOME) build dist .pytest_cache .mypy_cache .ruff_cache
	rm -rf casparian_nb/labextension extensions/jupyterlab/node_modules extensions/jupyterlab/lib \
	  extensions/jupyterlab/.core extensions/jupyterlab/tsconfig.tsbuildinfo
