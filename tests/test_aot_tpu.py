"""The real TPU compiler (libtpu), compile-only: impl="pallas" forward and gradients of the
layers in tests/aot_checks.py for TPU v5e and v6e at configs/tpu.py's batch, float32 and
bfloat16, geometries drawn by tests/test_lowering_properties.py (``DRAWS``) on v5e, and a
batch-sharded program on v5e:2x2's four devices. Mosaic rejects a kernel that
does not fit VMEM and XLA a program that does not fit HBM, so a kernel sized wrong fails here.
Without libtpu the test skips, unless JCONV_REQUIRE_LIBTPU=1 (set by `make test`)."""

import os

import pytest

from aot_checks import DTYPES, SET_LAYERS, TARGETS, selected_draws
from aot_helpers import require_compiler, run_checks


def test_missing_compiler_fails_when_required(monkeypatch):
    from jconv import aot

    monkeypatch.setattr(aot, "compiler_available", lambda platform: "libtpu is not installed")
    monkeypatch.setenv("JCONV_REQUIRE_LIBTPU", "1")
    with pytest.raises(pytest.fail.Exception, match="JCONV_REQUIRE_LIBTPU=1"):
        require_compiler("tpu")
    monkeypatch.delenv("JCONV_REQUIRE_LIBTPU")
    with pytest.raises(pytest.skip.Exception, match="libtpu is not installed"):
        require_compiler("tpu")


def test_tpu_compiles_every_kernel_kind():
    results = run_checks("tpu")
    expected = {(t, n, d) for t in TARGETS["tpu"] for n in SET_LAYERS["tpu"] for d in DTYPES}
    expected |= {("v5e:2x2", f"sharded_mnist_conv2_{k}", "float32") for k in ("fwd", "grad")}
    expected |= {(t, n, d[3]) for n, d in selected_draws().items() for t in d[4]["tpu"]}
    assert {(r["target"], r["name"], r["dtype"]) for r in results} == expected
    failed = [f"{r['target']} {r['name']} {r['dtype']}: {r['msg']}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert os.environ.get("JAX_PLATFORMS", "cpu") == "cpu"
