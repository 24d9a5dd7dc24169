# The two commands a new user needs (see README):
#   make run    set everything up, then run the pipeline (dvc repro)
#   make test   set everything up, then lint and run the fast test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data run test test-all bench clean

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

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

test-all: setup
	$(BIN)/pytest -q -m "not gpu"

bench: setup
	$(BIN)/python bench/extract.py

clean:
	rm -rf $(VENV) data/prepared data/features
