"""The conformance tests (tests/conformance.py) for impl="pallas": the Pallas kernels (interpreted on the CPU; compiled for GPU and TPU in test_aot_*.py)."""

from conformance import BackendConformance, backend_impls


class TestConformance(BackendConformance):
    IMPLS = backend_impls("pallas")
    FLOAT64 = False
    #: JAX's grids (tests/conformance_lax.py): every fourth case (interpreted kernels are slow);
    #: the float16, bfloat16 and float32 ones, the dtypes the kernels compute
    GRID_SHARE = 4
