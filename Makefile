# Thin wrapper: a virtualenv in .venv with the CPU build of torch, then the project.
# GPU users: `make TORCH="torch --index-url https://download.pytorch.org/whl/cu128" test`, or
# install torch into .venv first (any build >= 2.13) and `touch .venv/.torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/mpcc demo --out runs/demo

lint: setup
	$(BIN)/ruff check mpcc tests benchmarks

test: lint
	$(BIN)/pytest

clean:
	rm -rf runs .pytest_cache
