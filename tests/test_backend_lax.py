"""The conformance tests (tests/conformance.py) for impl="lax": the lax engine: the backend's own choice and every algorithm."""

from conformance import BackendConformance, backend_impls


class TestConformance(BackendConformance):
    IMPLS = backend_impls("lax")
    FLOAT64 = True

    def share(self, impl: str) -> int:
        """JAX's grids (tests/conformance_lax.py): the engine's choice runs a third of each, every
        algorithm an eighth (the engine compiles slowly, about 0.6 s per small convolution here;
        each algorithm's dtype handling: tests/test_algorithms.py::test_integer_and_complex_kinds)."""
        return 3 if impl == "lax" else 8
