"""The conformance tests (tests/conformance.py) for impl="lax": the lax engine: the backend's own choice and every algorithm."""

from conformance import BackendConformance, backend_impls


class TestConformance(BackendConformance):
    IMPLS = backend_impls("lax")
    FLOAT64 = True
