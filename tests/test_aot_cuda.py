"""The real GPU compiler, deviceless: impl="pallas" forward and gradients of the layers in
tests/aot_checks.py for an H100 and an L4 (target configs in jconv/gpu_targets) at
configs/gpu.py's batch, float32 and bfloat16. XLA's GPU pipeline, Triton and ptxas run for that
GPU and reject a kernel that needs more shared memory than it has. Also geometries drawn by
tests/test_lowering_properties.py (``DRAWS``: 5x5, 7x7, strided, grouped NCHW, transposed);
impl="lax" on NCHW callers (``LAX_NCHW``): its tap GEMMs compile, forward and backward; and the
T4 (compute capability 7.5): impl="pallas" is jconv's error before compiling, XLA's convolution
compiles bfloat16 as a float32 cuDNN convolution. Without the CUDA plugin the test skips, unless
JCONV_REQUIRE_CUDA=1 (set by `make test`)."""

import pytest

from aot_checks import DTYPES, LAX_NCHW, SET_LAYERS, TARGETS, selected_draws
from aot_helpers import require_compiler, run_checks


def test_missing_compiler_fails_when_required(monkeypatch):
    from jconv import aot

    monkeypatch.setattr(aot, "compiler_available", lambda platform: "the CUDA plugin is not installed")
    monkeypatch.setenv("JCONV_REQUIRE_CUDA", "1")
    with pytest.raises(pytest.fail.Exception, match="JCONV_REQUIRE_CUDA=1"):
        require_compiler("cuda")
    monkeypatch.delenv("JCONV_REQUIRE_CUDA")
    with pytest.raises(pytest.skip.Exception, match="CUDA plugin is not installed"):
        require_compiler("cuda")


def test_cuda_compiles_every_kernel_kind():
    results = run_checks("cuda")
    expected = {(t, n, d) for t in TARGETS["cuda"] for n in SET_LAYERS["cuda"] for d in DTYPES}
    expected |= {(t, f"{n}_{k}", d) for t in TARGETS["cuda"] for n in LAX_NCHW for k in ("fwd", "fwd+bwd")
                 for d in DTYPES}
    expected |= {(t, n, d[3]) for n, d in selected_draws().items() for t in d[4]["cuda"]}
    expected |= {("t4", "pallas_refused", "bfloat16"), ("t4", "xla_bf16_as_f32", "bfloat16")}
    assert {(r["target"], r["name"], r["dtype"]) for r in results} == expected
    failed = [f"{r['target']} {r['name']} {r['dtype']}: {r['msg']}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)
