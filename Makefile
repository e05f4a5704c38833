# The README's two commands. Both set up everything first (a virtual environment in .venv).
# torch is installed FIRST and pinned to the CPU build (DESIGN.md section 8): an unpinned torch
# pulls several GB of CUDA wheels.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg
# rules call the `alignment` console script installed in the venv
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test test-slurm setup lint format clean help

help:
	@echo "make demo   - set up .venv and run the whole pipeline on the built-in demo"
	@echo "make test   - set up .venv and run lint, format checks and the test suite"
	@echo "make test-slurm - start a single-node SLURM cluster (root; Debian packages) and run the"
	@echo "                  reduced demo through it with --profile profiles/slurm"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The stamp is rebuilt when the package's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/snakemake --cores $(CORES)
	@echo
	@cat results/summary.txt
	@echo
	@echo "Group reports: $$(ls results/group/*/report.html | tr '\n' ' ')"
	@echo "Model comparisons: $$(ls results/compare/*/report.html | tr '\n' ' ')"
	@echo "Reports: $$(ls results/sub-*/report.html | tr '\n' ' ')"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --cores 1

test: lint
	$(BIN)/python -m pytest -q

# A real SLURM cluster (munge, slurmctld, slurmd, slurmdbd + MariaDB from Debian's packages) set up
# by tests/slurm/cluster.sh, the reduced demo through it, then the daemons torn down. Skips (with
# the reason) without root or the packages.
test-slurm: setup
	ALIGNMENT_TEST_SLURM=1 $(BIN)/python -m pytest -q -rs -s tests/slurm

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile workflow/rules

clean:
	rm -rf results .snakemake
