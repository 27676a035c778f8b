# Quick start: `make run` and `make test`. Each sets itself up on a fresh machine with python3.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install clean report

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The main job: compare jconv with lax.conv_general_dilated on this machine's device.
run: $(STAMP)
	$(PY) -m experiments --config=configs/default.py --workdir=runs/default

# The whole suite on the CPU (TPU compile-only through libtpu; Pallas interpreted).
test: $(STAMP)
	JAX_PLATFORMS=cpu JCONV_REQUIRE_LIBTPU=1 $(PY) -m pytest -n 2 --dist=loadfile -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
