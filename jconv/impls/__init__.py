"""The backends. Importing this package registers every available one (:mod:`.registry`).

Each backend module registers a :class:`~jconv.impls.registry.Backend` whose algorithms are
three functions of ``(a, b, spec, target)``: forward, input gradient, weight gradient, on
NHWC activations and HWIO kernels (the execute contract, :class:`jconv.spec.ExecSpec`).
Optional backends whose import fails register as unavailable, with the reason.

Adding a backend: a module here that calls :func:`~jconv.impls.registry.register`, one import
line below, and its name in :data:`jconv.select.AUTO_ORDER` where ``auto`` should ask it.
"""

from jconv.impls import lax, pallas, registry, xla  # noqa: F401  (registration order: report order)
from jconv.impls import onednn  # noqa: F401  (optional: absent, with the reason, without its plugin)

__all__ = ["registry"]
