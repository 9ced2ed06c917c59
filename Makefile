# Quickstart targets: each one sets up everything it needs on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# CPU build of torch on the development machines; override on GPU machines (e.g. TORCH_SPEC="torch>=2.4").
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: setup demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/tilegraph demo

test: setup
	$(PY) -m ruff check tilegraph tests bench examples
	$(PY) -m ruff format --check tilegraph tests bench examples
	$(PY) -m mypy
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check tilegraph tests bench examples
	$(PY) -m ruff format --check tilegraph tests bench examples
	$(PY) -m mypy

clean:
	rm -rf $(VENV) tilegraph-demo-output .pytest_cache
