"""The conformance tests (tests/conformance.py) for impl="xla": XLA's convolution (the reference backend)."""

from conformance import BackendConformance, backend_impls


class TestConformance(BackendConformance):
    IMPLS = backend_impls("xla")
    FLOAT64 = True
