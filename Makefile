# Thin wrapper: a virtualenv in .venv with the versions of requirements.lock (the suite passed on them).
# torch comes first, from TORCH (the lock's CPU build by default); then the lock without its torch line.
# GPU users: `make TORCH="torch==2.14.1 --index-url https://download.pytorch.org/whl/cu128" test`, or
# install torch into .venv first (any build >= 2.13) and `touch .venv/.torch`.
PYTHON ?= python3
VENV ?= .venv
LOCK := requirements.lock
TORCH ?= $(or $(shell grep -sE '^torch==' $(LOCK)),torch==2.13.0)  # the second: before a first lock
BIN := $(VENV)/bin

.PHONY: setup demo test lint lock test-latest latest-venv stock-check lmms-eval-check clean

$(LOCK):
	@echo "$(LOCK) is missing: run \`make lock\`" >&2; exit 1

$(VENV)/.torch: | $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $$(grep -E '^pip==' $(LOCK))
	$(BIN)/pip install -q $(TORCH)
	touch $@

# The lock must cover pyproject.toml (tools/lock.py check) before anything else is installed from it.
$(VENV)/.installed: $(VENV)/.torch $(LOCK) pyproject.toml
	$(BIN)/pip install -q $$(grep -E '^packaging==' $(LOCK))
	$(BIN)/python tools/lock.py check
	grep -vE '^torch==' $(LOCK) > $(VENV)/lock-without-torch.txt
	$(BIN)/pip install -q -r $(VENV)/lock-without-torch.txt
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/mpcc demo --out runs/demo

lint: setup
	$(BIN)/ruff check mpcc tests benchmarks tools

# Two workers (pytest-xdist), each test file whole on one worker: on 2 cores the suite's single-threaded
# parts (imports, subprocess start-up, data building) overlap. Files go out in conftest's order (the long
# ones first), not xdist's default by test count, which left the one-test files, the longest, for last.
# `make test WORKERS=0` runs it in one process.
WORKERS ?= 2
XDIST = -n $(WORKERS) --dist loadfile --no-loadscope-reorder

test: lint
	$(BIN)/pytest $(XDIST)

# Drift, checked on purpose: a throwaway virtualenv (never .venv) with the newest versions pyproject.toml
# allows (torch stays TORCH: the build is the machine's choice). `make test-latest` prints what differs
# from the lock and runs the suite there; `make lock` writes its versions to the lock.
LATEST ?= .latest-venv

latest-venv:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q -U pip
	$(LATEST)/bin/pip install -q $(TORCH)
	$(LATEST)/bin/pip freeze | grep -E '^torch==' > $(LATEST)/torch.txt
	$(LATEST)/bin/pip install -q -U --upgrade-strategy eager -c $(LATEST)/torch.txt -e ".[dev]"

test-latest: latest-venv
	$(LATEST)/bin/python tools/lock.py diff
	$(LATEST)/bin/ruff check mpcc tests benchmarks tools
	$(LATEST)/bin/pytest $(XDIST)

lock: latest-venv
	$(LATEST)/bin/python tools/lock.py write

# What mpcc writes, loaded by stock transformers + torchvision without mpcc (tests/test_stock_transformers.py),
# in a second venv: torchvision cannot sit beside the CPU torch (about 5.5 GB: a CUDA build of torch).
STOCK ?= .stock-venv
$(STOCK)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv $(STOCK)
	$(STOCK)/bin/pip install -q torch==2.14.1 torchvision==0.29.1 pillow num2words \
		"transformers==$$($(BIN)/python -c 'import transformers; print(transformers.__version__)')"
	touch $@

stock-check: $(STOCK)/.installed
	MPCC_STOCK_PYTHON=$(abspath $(STOCK))/bin/python $(BIN)/pytest -rs tests/test_stock_transformers.py \
		tests/test_families.py::test_export_reloads_without_mpcc_with_equal_logits

# MPCC-Eval as an lmms-eval task (`mpcc export-mpcc-eval --format lmms-eval`) run by lmms-eval itself and
# compared with `mpcc eval` (tests/test_lmms_eval_run.py), in a second venv: lmms-eval requires torchvision,
# whose only wheel here is a CUDA build, so it is installed without its dependencies, then those its
# `openai` model and the task use (the lock's versions where the lock has them), the lock's CPU torch,
# and mpcc itself without dependencies (the task's utils.py imports mpcc's parsing).
LMMS ?= .lmms-venv
LMMS_EVAL := lmms-eval==0.7.3
LMMS_DEPS := accelerate datasets evaluate httpx jsonlines aiohttp numexpr numpy pytablewriter sacrebleu \
	scikit-learn openai pillow pyyaml loguru tenacity tiktoken pydantic packaging python-dotenv jinja2 sympy \
	transformers levenshtein tqdm sqlitedict "filelock<4"  # lmms-eval 0.7.3 imports filelock._api
$(LMMS)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv $(LMMS)
	$(LMMS)/bin/pip install -q $(TORCH)
	$(LMMS)/bin/pip install -q --no-deps $(LMMS_EVAL)
	grep -vE '^(torch|filelock)==' $(LOCK) > $(LMMS)/constraints.txt
	$(LMMS)/bin/pip install -q -c $(LMMS)/constraints.txt $(LMMS_DEPS)
	$(LMMS)/bin/pip install -q --no-deps -e .
	touch $@

lmms-eval-check: $(LMMS)/.installed
	MPCC_LMMS_PYTHON=$(abspath $(LMMS))/bin/python $(BIN)/pytest -rs -s tests/test_lmms_eval_run.py

clean:
	rm -rf runs .pytest_cache
