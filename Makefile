# Two entry points on a fresh machine: `make demo` and `make test`. Both create .venv and install what they need.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-dev
# torch/torchvision come from the local wheel store where one exists; the pins match it.
TORCH   := torch==2.14.1 torchvision==0.29.1
# two xdist workers: the 2-core CI machine runs the suite in about half the serial time
PYTEST_ARGS ?= -n 2
# timm's own tests/test_models.py on the zoo (tests/run_timm_suite.py): pytest-xdist workers, extra pytest args
TIMM_SUITE_ARGS ?= -n 2

.PHONY: demo test timm-suite lint venv bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	# ONNX Runtime custom-op library (fused SLA, CPU kernel): g++ + ORT headers from Debian's libonnxruntime-dev
	$(BIN)/python -m slab_edge.native.build ort
	# TensorRT-RTX: the one TensorRT builder that installs (and builds engines) on a CPU-only machine.
	$(BIN)/pip install -q tensorrt-rtx-cu13 || echo "tensorrt-rtx-cu13 not installable here: engine-build tests will skip and say why"
	# timm's model test suite for the installed timm version (its sdist from PyPI, cached in .venv/timm-suite/)
	$(BIN)/python tests/run_timm_suite.py fetch
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/slab-edge demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(BIN)/python tests/run_timm_suite.py run $(TIMM_SUITE_ARGS)

timm-suite: $(STAMP)
	$(BIN)/python tests/run_timm_suite.py run $(TIMM_SUITE_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/vision_suite.py

clean:
	rm -rf $(VENV) runs .pytest_cache slab_edge/native/lib
