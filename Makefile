# Two commands on a fresh machine: `make dev` runs the stack offline, `make test` runs the tests.
# Both create the virtual environment on first use.

PYTHON ?= python3
VENV ?= .venv
# torch first, pinned, so that pip takes the CPU build that lies on this kind of machine
# instead of resolving an open range to a multi-GB CUDA build (see README).
TORCH_SPEC ?= torch==2.13.0
# checkov (tests/deploy) pins boto3/botocore versions aiobotocore cannot run with: it gets a
# virtualenv of its own inside $(VENV).
CHECKOV_SPEC ?= checkov==3.3.30
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint unit integration containers images image-infer-cuda bench install clean

PORT ?= 8000

dev: $(STAMP)
	$(BIN)/conveyor dev --port $(PORT)

test: lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

containers: $(STAMP)
	$(BIN)/pytest tests/containers -s

# conveyor-<service>:<version> and :dev for every target of compose/Dockerfile (a Docker engine
# is needed; compose/build-images.sh lists the settings). The infer image is the CPU one.
images:
	TORCH_SPEC="$(TORCH_SPEC)" compose/build-images.sh

# conveyor-infer:<version>-cuda: torch built for CUDA from the PyTorch index (several GB).
image-infer-cuda:
	TORCH_SPEC="$(TORCH_SPEC)" TORCH_VARIANT=cuda TARGETS=infer compose/build-images.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/emulator_startup.py

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[test]'
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet "$(CHECKOV_SPEC)"
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
