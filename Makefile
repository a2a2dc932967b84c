# The two commands: `make run` (the default job) and `make test` (the test suite).
# Both create .venv from requirements.txt if it is missing, install this project into it
# (editable: mslc, pipeline, tune and the mslc-* commands), and fetch Fashion-MNIST; `make test`
# also installs headless Chromium where it can (see `browser`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test data browser venv bench clean-runs

run: $(STAMP) data
	$(PY) pipeline/prepare.py $(ARGS)
	$(PY) pipeline/train.py $(ARGS)

test: $(STAMP) data browser
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q tests

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

data: $(STAMP)
	$(PY) pipeline/fetch_data.py --raw-dir data/raw

# Headless Chromium, for the test that renders the review page: Debian's package, installed
# as root (like Fashion-MNIST); elsewhere the test says it skipped the rendering.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; } || \
	  echo "chromium not installed (needs root and apt-get): the report's rendering test will skip"; }

bench: $(STAMP) data
	$(PY) benchmarks/fmnist.py

clean-runs:
	rm -rf runs
