# Set-up, demo, tests, lint and benchmarks. Every target installs first when needed.
# TORCH_SPEC: override for another build, e.g. make install TORCH_SPEC="torch==2.5.1 torchvision==0.20.1 --index-url ..."
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTHON ?= python3
VENV ?= .venv

# Use the active virtual environment if there is one, else our own .venv.
ifdef VIRTUAL_ENV
PY := python
else
PY := $(VENV)/bin/python
endif

.PHONY: install ensure-installed demo test lint bench gpu-check clean

# What `make lint` checks (ruff.toml: line length 100, rules E, F, W, I).
LINT_PATHS := retinanet_fl tools tests train_net.py setup.py

install:
	@if [ -z "$$VIRTUAL_ENV" ] && [ ! -x "$(PY)" ]; then $(PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	bash scripts/install_detectron2.sh $(PY)
	$(PY) -m pip install -q -e ".[dev,export,tools,report]"
	$(PY) -m pip install -q --no-deps tidecv==1.0.1
	@echo "installed: $$($(PY) -c 'import torch, detectron2, retinanet_fl; print("torch", torch.__version__, "| detectron2", detectron2.__version__, "| retinanet_fl", retinanet_fl.__version__)')"

# Cheap check so that demo/test only run the full install when something is missing.
ensure-installed:
	@$(PY) -c "import torch, torchvision, detectron2, retinanet_fl, pytest, xdist, tidecv" 2>/dev/null || $(MAKE) install

demo: ensure-installed
	$(PY) -m retinanet_fl.demo

# Two pytest-xdist workers: much of the suite is compiling and exporting, single-threaded Python.
# tests/conftest.py gives them whole modules, slowest first.
test: ensure-installed
	$(PY) -m pytest -n 2 tests

# ruff comes with the dev extra; an environment installed before it was added gets it here.
lint:
	@$(PY) -c "" 2>/dev/null || $(MAKE) install
	@$(PY) -m ruff --version >/dev/null 2>&1 || $(PY) -m pip install -q ruff==0.17.6
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)

bench: ensure-installed
	$(PY) tools/benchmark.py

# On a machine with a GPU: the CUDA tests and the CUDA benchmarks (benchmarks/results/gpu/).
gpu-check: ensure-installed
	bash scripts/gpu_check.sh $(PY)

clean:
	rm -rf $(VENV) build *.egg-info output
