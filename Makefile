# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA_DIR := /usr/share/datasets/fashion-mnist
STAMP  := $(VENV)/.installed

.PHONY: run test lint install data sparse-kernels clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) data sparse-kernels

# The sparse_cpu C++ kernels (latency_models/sparse_kernels, issue 11) need a C++ compiler: install
# Debian's build-essential when it is missing and we are root. The build is cached in build/ (seconds
# when nothing changed).
sparse-kernels: $(STAMP)
	@if ! command -v g++ >/dev/null; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq build-essential || (apt-get update -qq && apt-get install -y -qq build-essential)); \
	  else \
	    echo "sparse-kernels: no C++ compiler; run 'sudo apt-get install build-essential'"; \
	  fi; \
	fi
	$(BIN)/python -m latency_models.sparse_kernels.build

# Debian ships Fashion-MNIST as a package; install it when we can (root + apt).
data:
	@if [ -f $(DATA_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "data: Fashion-MNIST found in $(DATA_DIR)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)); \
	else \
	  echo "data: run 'sudo apt-get install dataset-fashion-mnist' or pass --data-dir to the CLI"; \
	fi

run: install
	$(BIN)/automl search experiments/quickstart.yaml

# Two pytest workers (pytest-xdist), each test file on one worker so module fixtures are built once: most
# tests use about one core (a subprocess, a Ray trial, a timing process), so on 2 cores the suite takes
# ~12 min instead of ~18-20 (AMD EPYC 2-vCPU host). No test asserts a timing. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

test: install
	$(BIN)/ruff check automl agents search_spaces latency_models tests experiments
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: $(STAMP)
	$(BIN)/ruff check automl agents search_spaces latency_models tests experiments

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
