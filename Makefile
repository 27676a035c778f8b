# Quick start: `make run` and `make test`. Each sets itself up on a fresh machine with python3.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The accelerator of this machine (scripts/accelerator.sh): cpu, gpu or tpu; `make run ACCEL=cpu`
# measures on the CPU of a GPU machine.
ACCEL  ?= $(shell sh scripts/accelerator.sh)

# What each job installs (pyproject.toml extras): a run gets its device's jax; the tests get the
# GPU and TPU compilers too (they compile for GPU and TPU targets without one).
EXTRAS_cpu  := experiments
EXTRAS_gpu  := experiments,cuda
EXTRAS_tpu  := experiments,tpu
EXTRAS_test := test
# What `make run` measures on each: configs/<name>.py, into runs/<dir>.
CONFIG_cpu := default
CONFIG_gpu := gpu
CONFIG_tpu := tpu
PLATFORMS_cpu := JAX_PLATFORMS=cpu

# PyTorch, the speed peer `make run` measures on a CPU (optional: the run goes on without it).
# The default takes the CPU build where pip finds one (e.g. a local wheel); elsewhere set
# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" for PyTorch's CPU index.
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PEER_cpu := torch

.PHONY: run test test-all install install-test clean

# The optional native CPU backend (impl="onednn", plugins/onednn) is built where the machine can
# (Linux x86-64, a C++17 compiler); where it cannot, the run goes on without it and says why.
PLUGIN_cpu  := plugins/onednn
PLUGIN_test := plugins/onednn

$(VENV)/.installed-%: pyproject.toml $(wildcard plugins/onednn/pyproject.toml plugins/onednn/src/*.cc plugins/onednn/jconv_onednn/*.py)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS_$*)]"
	@if [ -n "$(PLUGIN_$*)" ]; then \
	  $(PY) -m pip install -q ./$(PLUGIN_$*) \
	  || echo "make: the jconv-onednn plugin could not be built here (pip's error above); jconv runs without impl='onednn'"; \
	fi
	@if [ -n "$(PEER_$*)" ]; then \
	  $(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)" \
	  || echo "make: PyTorch ($(TORCH_SPEC)) could not be installed here (pip's error above); the report goes on without the PyTorch peer"; \
	fi
	touch $@

install: $(VENV)/.installed-$(ACCEL)

install-test: $(VENV)/.installed-test

# The main job: compare jconv with lax.conv_general_dilated (and PyTorch) on this machine's device
# (CPU: configs/default.py into runs/default; GPU: configs/gpu.py into runs/gpu; TPU: runs/tpu).
run: $(VENV)/.installed-$(ACCEL)
	$(PLATFORMS_$(ACCEL)) $(PY) -m jconv_experiments --config=configs/$(CONFIG_$(ACCEL)).py --workdir=runs/$(CONFIG_$(ACCEL))

# The tests on the CPU: Pallas interpreted; GPU (CUDA, deviceless) and TPU (libtpu) compile-only,
# required here (a missing compiler fails the run instead of skipping). JCONV_AOT_EARLY=1: the
# compile-only checks start at once in the background (tests/aot_helpers.py).
# `make test`: every behaviour, grids chosen by what they catch, one GPU and one TPU target.
# `make test-all` (CI): adds the tests marked slow (long float64 and second-order grids, the
# multi-process training) and every GPU and TPU target.
# Both keep one JAX compilation cache (.cache/jax-tests) for all their processes (the two pytest
# workers and the experiment runs the tests start compile many of the same programs; the cache
# also serves the next run; an entry read while another process writes it is a cache miss:
# pyproject.toml's filterwarnings). `make test` also compiles XLA:CPU code at LLVM -O0: the same
# HLO passes, about 40% less compile time; `make test-all` compiles at the default level. And
# `make test` draws 12 geometries for the Pallas lowering property test (`make test-all` 60) and
# 10 examples per property of tests/test_properties.py (`make test-all` 20).
TEST_ENV := JAX_PLATFORMS=cpu JCONV_REQUIRE_LIBTPU=1 JCONV_REQUIRE_CUDA=1 JCONV_AOT_EARLY=1 \
            JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.cache/jax-tests JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
TEST_QUICK_FLAGS := XLA_FLAGS="$(XLA_FLAGS) --xla_backend_optimization_level=0" JCONV_LOWERING_DRAWS=12 JCONV_PROPERTY_EXAMPLES=10
TESTS    := tests plugins/onednn/tests

test: $(VENV)/.installed-test
	$(TEST_ENV) $(TEST_QUICK_FLAGS) JCONV_AOT_SET=quick $(PY) -m pytest -n 2 --dist=loadfile -q --durations=15 -m "not slow" $(TESTS)

test-all: $(VENV)/.installed-test
	$(TEST_ENV) JCONV_AOT_SET=full $(PY) -m pytest -n 2 --dist=loadfile -q --durations=25 $(TESTS)

clean:
	rm -rf $(VENV) runs .pytest_cache .cache
