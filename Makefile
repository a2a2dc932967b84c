# The two commands: `make run` (the default job) and `make test` (the test suite).
# Both create .venv from requirements.txt if it is missing, install this project into it
# (editable: mslc, pipeline, tune and the mslc-* commands), and fetch Fashion-MNIST.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test data venv bench clean-runs

run: $(STAMP) data
	$(PY) pipeline/prepare.py $(ARGS)
	$(PY) pipeline/train.py $(ARGS)

test: $(STAMP) data
	$(PY) -m pytest -q tests

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

data: $(STAMP)
	$(PY) pipeline/fetch_data.py --raw-dir data/raw

bench: $(STAMP) data
	$(PY) benchmarks/fmnist.py

clean-runs:
	rm -rf runs
