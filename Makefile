# Thin wrapper: a virtualenv in .venv with the CPU build of torch, then the project.
# GPU users: `make TORCH="torch --index-url https://download.pytorch.org/whl/cu128" test`, or
# install torch into .venv first (any build >= 2.13) and `touch .venv/.torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test lint stock-check clean

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

# Two workers (pytest-xdist), each test file whole on one worker: on 2 cores the suite's single-threaded
# parts (imports, subprocess start-up, data building) overlap. `make test WORKERS=0` runs it in one process.
WORKERS ?= 2

test: lint
	$(BIN)/pytest -n $(WORKERS) --dist loadfile

# What mpcc writes, loaded by stock transformers + torchvision without mpcc (tests/test_stock_transformers.py),
# in a second venv: torchvision cannot sit beside the CPU torch (about 5.5 GB: a CUDA build of torch).
STOCK ?= .stock-venv
$(STOCK)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv $(STOCK)
	$(STOCK)/bin/pip install -q torch==2.14.1 torchvision==0.29.1 pillow \
		"transformers==$$($(BIN)/python -c 'import transformers; print(transformers.__version__)')"
	touch $@

stock-check: $(STOCK)/.installed
	MPCC_STOCK_PYTHON=$(abspath $(STOCK))/bin/python $(BIN)/pytest -rs tests/test_stock_transformers.py

clean:
	rm -rf runs .pytest_cache
