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

.PHONY: run test install install-test clean

# The optional native CPU backend (impl="onednn", plugins/onednn) is built where the machine can
# (Linux x86-64, a C++17 compiler); where it cannot, the run goes on without it and says why.
PLUGIN_cpu  := plugins/onednn
PLUGIN_test := plugins/onednn

$(VENV)/.installed-%: pyproject.toml $(wildcard plugins/onednn/pyproject.toml plugins/onednn/src/*.cc)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS_$*)]"
	@if [ -n "$(PLUGIN_$*)" ]; then \
	  $(PY) -m pip install -q ./$(PLUGIN_$*) \
	  || echo "make: the jconv-onednn plugin could not be built here (pip's error above); jconv runs without impl='onednn'"; \
	fi
	touch $@

install: $(VENV)/.installed-$(ACCEL)

install-test: $(VENV)/.installed-test

# The main job: compare jconv with lax.conv_general_dilated on this machine's device
# (CPU: configs/default.py into runs/default; GPU: configs/gpu.py into runs/gpu; TPU: runs/tpu).
run: $(VENV)/.installed-$(ACCEL)
	$(PLATFORMS_$(ACCEL)) $(PY) -m jconv_experiments --config=configs/$(CONFIG_$(ACCEL)).py --workdir=runs/$(CONFIG_$(ACCEL))

# The whole suite on the CPU: Pallas interpreted; GPU (CUDA, deviceless) and TPU (libtpu)
# compile-only, required here (a missing compiler fails the run instead of skipping).
# JCONV_AOT_EARLY=1: those compiles start at once in the background (tests/aot_helpers.py).
test: $(VENV)/.installed-test
	JAX_PLATFORMS=cpu JCONV_REQUIRE_LIBTPU=1 JCONV_REQUIRE_CUDA=1 JCONV_AOT_EARLY=1 $(PY) -m pytest -n 2 --dist=loadfile -q --durations=15 tests plugins/onednn/tests

clean:
	rm -rf $(VENV) runs .pytest_cache
