# Two commands do everything, each setting itself up on a fresh machine:
#   make report   executes the answer key and writes build/summary_questions.html
#   make test     runs every test (the notebook's execution included)
# The virtual environment is created on first use (`make setup` does only that). TORCH is
# the PyTorch requirement: tools/install_torch.py installs the CPU build where there is no
# NVIDIA GPU (from CPU_INDEX, falling back to the configured index if that cannot be
# reached); pip options after it (TORCH="torch==2.13.0 --index-url URL") are used as given.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CPU_INDEX ?= https://download.pytorch.org/whl/cpu
BIN := $(VENV)/bin
STAMP := $(VENV)/.dlsummary-installed
BENCH_STAMP := $(VENV)/.dlsummary-bench-installed
PIP := $(BIN)/python -m pip install --disable-pip-version-check

.PHONY: setup report test lint bench notebooks readme clean

report: $(STAMP)
	$(BIN)/dlsummary report --output build

test: $(STAMP)
	$(BIN)/python -m pytest -q

setup: $(STAMP)
	@echo "dlsummary is installed in $(VENV): run $(BIN)/dlsummary --help, or first"
	@echo "'source $(BIN)/activate' to type dlsummary (and python, pytest) directly"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks examples tools

# The benchmarks also time the baselines of the optional 'bench' extra (torchopt).
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run_all.py --readme README.md

# Regenerate the README's example outputs (the ```console blocks) from the commands.
readme: $(STAMP)
	$(BIN)/python tools/readme_examples.py

# Write each section's .ipynb (no outputs) beside its jupytext source, to open in Jupyter;
# they are generated on demand, never committed.
notebooks: $(STAMP)
	$(BIN)/dlsummary report --notebooks

$(STAMP): pyproject.toml tools/install_torch.py
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "dlsummary needs Python >= 3.10"'
	@echo "==> [1/3] virtual environment $(VENV) (first set-up: about 5 minutes, 1.6 GB)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/3] PyTorch: $(TORCH)"
	$(BIN)/python tools/install_torch.py --cpu-index-url $(CPU_INDEX) $(TORCH)
	@echo "==> [3/3] dlsummary and its dependencies: pip install -e '.[dev]'"
	$(PIP) -e ".[dev]"
	@touch $(STAMP)
	@echo "==> ready: run $(BIN)/dlsummary, or 'source $(BIN)/activate' to type dlsummary"

$(BENCH_STAMP): $(STAMP)
	$(PIP) -e ".[dev,bench]" || echo "==> the bench extra (torchopt) could not be installed: its comparison is skipped"
	@touch $(BENCH_STAMP)

clean:
	rm -rf build .pytest_cache .ruff_cache .hypothesis
