# Every target creates .venv and installs what it needs; nothing by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= demo_output

.PHONY: help install demo test lint format docs bench bench-peers clean

help:
	@echo "make demo   - toy problems' critical points and a digits MLP analysed (hessian-tools demo), write $(OUT)/index.html"
	@echo "make test   - run the test suite (slow tests included; installs Chromium for the browser test)"
	@echo "make lint   - ruff check + ruff format --check"
	@echo "make docs   - build the Sphinx docs into docs/_build/html"
	@echo "make bench  - run the benchmarks, write benchmarks/RESULTS.md"
	@echo "make bench-peers - create .venv-bench with PyHessian, hessian-eigenthings, matfree (CPU torch)"

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,docs,examples]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hessian-tools demo --x64 --out $(OUT)

# the browser test's system packages (chromium, chromium-driver) are installed when missing
test: $(STAMP)
	bash .ci/system-packages.sh
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

bench: $(STAMP)
	$(PY) benchmarks/run.py

bench-peers:
	bash benchmarks/setup_peers.sh

clean:
	rm -rf $(OUT) docs/_build docs/auto_examples docs/generated docs/sg_execution_times.rst .pytest_cache
