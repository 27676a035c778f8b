"""The conformance tests (tests/conformance.py) for impl="auto": whatever the plan picks for each
case (with the oneDNN plugin, oneDNN where it runs; the lax engine or XLA elsewhere, every dtype)."""

from conformance import BackendConformance


class TestConformance(BackendConformance):
    IMPLS = ["auto"]
    FLOAT64 = True
