"""The conformance tests (tests/conformance.py) for impl="onednn": oneDNN through XLA's FFI (skipped when the jconv-onednn plugin is not installed)."""

from conformance import BackendConformance, backend_impls


class TestConformance(BackendConformance):
    IMPLS = backend_impls("onednn")
    FLOAT64 = False  # oneDNN computes float32 and bfloat16
