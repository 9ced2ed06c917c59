# Quickstart targets: each one sets up everything it needs on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# CPU build of torch on the development machines; override on GPU machines (e.g. TORCH_SPEC="torch>=2.4"
# TORCHVISION_SPEC=torchvision, letting pip pick the torchvision of that torch).
TORCH_SPEC ?= torch==2.13.0
# torchvision (imported by spandrel) built for that torch; PyPI's newer ones would replace torch with another build.
TORCHVISION_SPEC ?= torchvision==0.28.0
PY := $(VENV)/bin/python

.PHONY: setup demo test lint clean

# The test extra brings pytest, ruff, mypy and the optional parts the suite exercises: model files (onnx,
# onnxruntime, spandrel), Jupyter (ipywidgets, ipykernel, nbclient, nbformat) and ome-zarr-py.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	printf '%s\n' "$(TORCH_SPEC)" "$(TORCHVISION_SPEC)" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt "$(TORCHVISION_SPEC)" -e ".[test]"
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
