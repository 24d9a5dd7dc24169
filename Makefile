# The two commands a new user needs (see README):
#   make run    set everything up, then run the pipeline (dvc repro)
#   make scratch    add the from-scratch baseline to make run's results (the seeds' comparison)
#   make run-text   the same for text: BBC News on MiniLM, offline (examples/text/)
#   make test   set everything up, then lint (ruff, import contracts) and run the fast test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data run run-text full scratch test test-all bench clean

setup: $(VENV)/.installed data

# pip takes torch==2.14.1 / torchvision==0.29.1 from the local wheel cache where there is one.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist (the offline default data).
data:
	@if [ ! -f $(FASHION_MNIST) ]; then \
	  echo "installing dataset-fashion-mnist with apt-get"; \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null \
	  || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
	  || echo "warning: could not install dataset-fashion-mnist; prepare will try torchvision's download"; \
	fi

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro
	@$(BIN)/thawline report
	@$(BIN)/thawline summary

# Text: examples/text/ is a DVC project of its own (`dvc init --subdir`: the root's dvc status and
# dvc exp run leave it alone) on BBC News and all-MiniLM-L6-v2, both from PyPI.
run-text: $(VENV)/.installed
	cd examples/text && PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro
	@cd examples/text && $(CURDIR)/$(BIN)/thawline report
	@cd examples/text && $(CURDIR)/$(BIN)/thawline summary

# The `fast` profile: the longer fine-tune of docs/benchmarks.md plus the one lever its time-to-
# accuracy benchmark showed to help (EMA of the weights; Mixup, batch-statistics BatchNorm and
# progressive resizing did not), as a DVC experiment on top of `make run`'s pipeline: the top 3
# layer groups for 1 epoch, then all of them for 8 (>= 0.94 test accuracy without EMA; ~25 min of
# fine-tuning on a 2-core AMD EPYC, longer on an Intel Xeon).
FAST_PROFILE := -S finetune.strategy=custom \
	-S 'finetune.phases=[{groups:3,epochs:1,lr:0.001},{groups:-1,epochs:8,lr:0.001}]' \
	-S finetune.ema=true

full: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc exp run $(FAST_PROFILE)

# The seeds' from-scratch baseline (same architecture, random weights, the fine-tune's budget) on
# top of `make run`'s pipeline: it sets scratch.enabled: true in params.yaml (validated, comments
# kept; git checkout params.yaml turns it off again), then dvc repro runs only scratch, evaluate
# and register again, and the report and summary add its row.
scratch: setup
	$(BIN)/python -c "from thawline.config import write_overrides; write_overrides('params.yaml', ['scratch.enabled=true'])"
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro
	@$(BIN)/thawline report
	@$(BIN)/thawline summary

# The tests run in one worker per CPU (at most 4), each with its share of the cores for torch
# (tests/conftest.py); a test module stays on one worker, so its DVC project or Prefect server
# is built once.
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q -n logical --maxprocesses 4 --dist loadfile

test-all: setup
	$(BIN)/pytest -q -m "not gpu"

bench: setup
	$(BIN)/python bench/extract.py

clean:
	rm -rf $(VENV) data/prepared data/features
