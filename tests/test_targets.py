"""jconv.targets: the shipped GPU target configs and which one a device kind gets (Colab's GPUs:
T4, L4, A100-SXM4-40GB), and the T4's refusal of impl="pallas". The real GPU compiler's view of
the same targets (the T4's bfloat16 convolution included) is in tests/test_aot_cuda.py."""

import os
import re

import jax
import jax.numpy as jnp
import pytest
from jax import export

import jconv
from jconv import primitive, targets
from jconv.impls.pallas import calls, tiling
from jconv_experiments.suite import CASES


@pytest.mark.parametrize("kind,name", [
    ("NVIDIA A100-SXM4-40GB", "a100_40gb"),   # Colab's A100
    ("NVIDIA A100-PCIE-40GB", "a100_40gb"),
    ("NVIDIA A100", "a100_40gb"),             # memory not named: the smaller one
    ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA A100 80GB PCIe", "a100"),
    ("NVIDIA L4", "l4"),                      # Colab's L4
    ("Tesla T4", "t4"),                       # Colab's T4
    ("NVIDIA H100 80GB HBM3", "h100"),
])
def test_device_kinds_get_their_targets(kind, name):
    assert targets.for_device_kind("gpu", kind).name == name


def _device_info(name: str) -> dict[str, str]:
    with open(targets.get(name).config_path) as f:
        block = re.search(r"gpu_device_info\s*\{(.*)\n\}", f.read(), re.S).group(1)
    return dict(re.findall(r"^\s*(\w+):\s*(.+?)\s*$", block, re.M))


def test_a100_40gb_is_the_a100_with_40_gb():
    """Same SM limits as the 80 GB A100 (the tiles are the same); its own memory (a batch is
    chunked sooner) and bandwidth."""
    a80, a40 = targets.get("a100"), targets.get("a100_40gb")
    assert a40.device_kind == "NVIDIA A100-SXM4-40GB"
    assert 39 * 2**30 < a40.memory_bytes < 40 * 2**30 < 79 * 2**30 < a80.memory_bytes
    for field in ("compute_capability", "smem_per_block", "registers_per_block", "sm_count"):
        assert getattr(a40, field) == getattr(a80, field), field
    i80, i40 = _device_info("a100"), _device_info("a100_40gb")
    differ = {k for k in i80.keys() | i40.keys() if i80.get(k) != i40.get(k)}
    assert differ == {"device_memory_size", "memory_bandwidth"}
    spec = CASES["resnet50_stem_7x7s2"].spec(1024).execute_spec().valid_spec()
    assert tiling.get_default(spec, a40) == tiling.get_default(spec, a80)
    assert calls.batch_chunk(spec, a40, "fwd", jnp.float32) < calls.batch_chunk(spec, a80, "fwd", jnp.float32)


def test_every_shipped_config_names_its_device_kind():
    for name, t in targets.gpus().items():
        assert os.path.basename(t.config_path) == f"{name}.txtpb"
        assert targets.for_device_kind("gpu", t.device_kind) is t


def test_t4_refuses_pallas_while_tracing():
    """Compute capability 7.5: impl="pallas" (Triton needs 8.0) is jconv's NotImplementedError,
    raised by tracing the backend's functions for the T4, before any Pallas lowering; impl="xla"
    lowers."""
    t4 = targets.for_device_kind("gpu", "Tesla T4", "7.5")
    assert t4.name == "t4" and t4.compute_capability == (7, 5) and not t4.triton_ok
    x = jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((3, 3, 4, 8), jnp.bfloat16)
    want = r"conv2d: impl='pallas' compiles with Triton on GPUs, which needs compute capability 8.0 or newer; Tesla T4"

    def conv(impl):
        return lambda a, b: jconv.conv2d(a, b, padding="SAME", impl=impl)

    with targets.use(t4):
        jaxpr = jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(conv("pallas")(a, b).astype(jnp.float32))))(x, w)
        with pytest.raises(NotImplementedError, match=want):
            primitive.kernel_jaxprs(jaxpr, "cuda")
        with pytest.raises(NotImplementedError, match=want):
            export.export(jax.jit(conv("pallas")), platforms=["cuda"])(x, w)
        text = export.export(jax.jit(conv("xla")), platforms=["cuda"])(x, w).mlir_module()
    assert "stablehlo.convolution" in text
