"""The conformance tests (tests/conformance.py) for impl="pallas": the Pallas kernels (interpreted on the CPU; compiled for GPU and TPU in test_aot_*.py)."""

import jax.numpy as jnp
import pytest

import jconv
from conformance import BackendConformance, backend_impls


class TestConformance(BackendConformance):
    IMPLS = backend_impls("pallas")
    FLOAT64 = False
    #: JAX's grids (tests/conformance_lax.py): every fourth case (interpreted kernels are slow);
    #: the float16, bfloat16 and float32 ones, the dtypes the kernels compute
    GRID_SHARE = 4


@pytest.mark.cpu_only
def test_pallas_on_the_cpu_says_once_that_it_runs_interpreted(caplog):
    """One warning per process (not per call) that impl='pallas' is interpreted here."""
    from jconv import select

    select._note_interpreted.cache_clear()
    x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2))
    with caplog.at_level("WARNING", logger="jconv.select"):
        for _ in range(3):
            jconv.plan_for(x, w, impl="pallas")
    notes = [r for r in caplog.records if "runs interpreted" in r.getMessage()]
    assert len(notes) == 1 and "'pallas'" in notes[0].getMessage() and "cpu" in notes[0].getMessage()
