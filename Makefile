# Two commands do everything, each setting itself up on a fresh machine:
#   make report   executes the answer key and writes build/summary_questions.html
#   make test     runs every test (the notebook's execution included)
# The virtual environment is created on first use. TORCH picks the PyTorch build:
# the default is the lean CPU build; see the README for CUDA.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.dlsummary-installed

.PHONY: report test lint bench sync clean

report: $(STAMP)
	$(BIN)/dlsummary report --output build

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --readme README.md

# Regenerate the committed .ipynb (no outputs) from the jupytext source.
sync: $(STAMP)
	$(BIN)/jupytext --sync notebooks/summary_questions.py

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "dlsummary needs Python >= 3.10"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf build .pytest_cache .ruff_cache .hypothesis
