"""The zoo's train steps compile for a TPU v5e (libtpu, compile-only) and an NVIDIA L4 (the CUDA
plugin's deviceless compiler), with jconv's conv modules: the small ResNet (its strided and 1x1
convolutions, BatchNorm) and the small U-Net (transposed convolutions). The full-size models at
configs/models.py's batch are rows of the compile matrix (configs/compile.py: models,
model_targets; their results in docs/perf/models_compile.jsonl).

In a subprocess (libtpu and the CUDA plugin load there, as in tests/aot_checks.py): about 20 s
per target on the development machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aot_helpers import ROOT, _env, require_compiler


PROGRAM = """
import json, sys
from jconv import targets
from jconv.aot import compile_for
from jconv_experiments.programs import model_program
target = targets.get(sys.argv[1])
for model in ("resnet50", "unet"):
    row = compile_for(target, *model_program(model, "auto", "float32", 2, target, small=True))
    print(json.dumps(dict(model=model, compiled=row["compiled"], error=row["error"],
                          convs=row.get("xla_convolutions"), kernels=row.get("pallas_kernels"))), flush=True)
"""


@pytest.mark.parametrize("target,platform", [("v5e", "tpu"), pytest.param("l4", "cuda", marks=pytest.mark.slow)])
def test_small_zoo_train_steps_compile(target, platform):
    require_compiler(platform)
    out = subprocess.run([sys.executable, "-c", PROGRAM, target], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["model"] for r in rows] == ["resnet50", "unet"]
    for r in rows:
        assert r["compiled"], r["error"]
        assert r["convs"] > 0  # auto plans XLA's convolution on accelerators, inside jconv's primitive
