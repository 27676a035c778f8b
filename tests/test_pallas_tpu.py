"""The real TPU compiler, compile-only: impl="pallas" forward and gradient for a TPU v5e
topology, for every layer of the experiments' default suite and the seed's MNIST layers, and a
batch-sharded input on the topology's 4 devices (inside ``jax.set_mesh``).

libtpu (``pip install -e ".[tpu]"``) provides the compiler; Mosaic rejects what it cannot
compile, so this is the closest the test suite gets to a TPU without one. The compiles run in
one subprocess (``python tests/test_pallas_tpu.py``): libtpu stays out of the pytest worker and
one process amortises its start-up. Without libtpu the test skips, unless
``JCONV_REQUIRE_LIBTPU=1`` (set by ``make test``), where it fails.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = ("mnist_conv1", "mnist_conv2")


def layer_names():
    from jconv.suite import SUITES

    names = list(SUITES["default"])
    return names + [n for n in MNIST if n not in names]


def compile_all(names, batch: int = 1, dtype: str = "float32"):
    """Compile forward and grad of each layer for a v5e:2x2 topology; yield result dicts."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jconv.suite import CASES

    topo = topologies.get_topology_desc("v5e:2x2", platform="tpu")
    sharding = NamedSharding(Mesh(np.array(topo.devices[:1]), ("d",)), P())
    for name in names:
        case = CASES[name]
        xs = jax.ShapeDtypeStruct(case.x_shape(batch), dtype, sharding=sharding)
        ws = jax.ShapeDtypeStruct(case.w_shape(), dtype, sharding=sharding)

        def fwd(x, w, case=case):
            return case.apply(x, w, impl="pallas")

        def grad(x, w, fwd=fwd):
            return jax.grad(lambda a, b: jnp.sum(fwd(a, b).astype(jnp.float32) ** 2), argnums=(0, 1))(x, w)

        for kind, fn, want in (("fwd", fwd, 1), ("grad", grad, 3)):
            t0 = time.time()
            try:
                text = jax.jit(fn).lower(xs, ws).compile().as_text()
                n = text.count('custom_call_target="tpu_custom_call"')
                ok = n == want and "convolution(" not in text
                msg = f"{n} tpu_custom_call (want {want})" + ("; has an XLA convolution" if "convolution(" in text else "")
            except Exception as e:  # noqa: BLE001 - report Mosaic's message
                ok, msg = False, f"{type(e).__name__}: {str(e)[:2000]}"
            yield dict(name=name, kind=kind, ok=ok, msg=msg, seconds=round(time.time() - t0, 2))


def compile_sharded(name: str = "mnist_conv2", batch: int = 8):
    """Batch-sharded input on the 4 devices of v5e:2x2, auto sharding inside ``jax.set_mesh``
    (Mosaic kernels must sit in a shard_map): 1 / 3 kernels, no all-gather of the batch.
    (Without the mesh in context Mosaic refuses to lower: see docs/pallas.md, Sharding.)"""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jconv.suite import CASES

    topo = topologies.get_topology_desc("v5e:2x2", platform="tpu")
    mesh = Mesh(np.array(topo.devices), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    case = CASES[name]
    xs = jax.ShapeDtypeStruct(case.x_shape(batch), "float32", sharding=NamedSharding(mesh, P("batch")))
    ws = jax.ShapeDtypeStruct(case.w_shape(), "float32", sharding=NamedSharding(mesh, P()))

    def fwd(x, w):
        return case.apply(x, w, impl="pallas")

    def grad(x, w):
        return jax.grad(lambda a, b: jnp.sum(fwd(a, b) ** 2), argnums=(0, 1))(x, w)

    for kind, fn, want in (("fwd", fwd, 1), ("grad", grad, 3)):
        t0 = time.time()
        try:
            with jax.set_mesh(mesh):
                text = jax.jit(fn).lower(xs, ws).compile().as_text()
            n = text.count('custom_call_target="tpu_custom_call"')
            ok = n == want and "all-gather" not in text and "convolution(" not in text
            msg = f"{n} tpu_custom_call (want {want}); all-gather: {'all-gather' in text}"
        except Exception as e:  # noqa: BLE001
            ok, msg = False, f"{type(e).__name__}: {str(e)[:2000]}"
        yield dict(name="sharded_" + name, kind=kind, ok=ok, msg=msg, seconds=round(time.time() - t0, 2))


def require_libtpu():
    """Skip without libtpu, or fail when JCONV_REQUIRE_LIBTPU=1 (CI must not skip)."""
    if importlib.util.find_spec("libtpu") is None:
        msg = "libtpu is not installed (pip install -e '.[tpu]'): cannot compile for TPU"
        if os.environ.get("JCONV_REQUIRE_LIBTPU") == "1":
            pytest.fail(msg + " and JCONV_REQUIRE_LIBTPU=1")
        pytest.skip(msg)


def test_missing_libtpu_fails_when_required(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
    monkeypatch.setenv("JCONV_REQUIRE_LIBTPU", "1")
    with pytest.raises(pytest.fail.Exception, match="JCONV_REQUIRE_LIBTPU=1"):
        require_libtpu()
    monkeypatch.delenv("JCONV_REQUIRE_LIBTPU")
    with pytest.raises(pytest.skip.Exception, match="libtpu is not installed"):
        require_libtpu()


def test_tpu_compile_default_suite_and_mnist():
    require_libtpu()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=900)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected = {(n, k) for n in layer_names() + ["sharded_mnist_conv2"] for k in ("fwd", "grad")}
    assert {(r["name"], r["kind"]) for r in results} == expected
    failed = [f"{r['name']} {r['kind']}: {r['msg']}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)


if __name__ == "__main__":
    for result in compile_all(layer_names()):
        print(json.dumps(result), flush=True)
    for result in compile_sharded():
        print(json.dumps(result), flush=True)
