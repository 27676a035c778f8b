"""The backends. Importing this package registers every available one (:mod:`.registry`).

Each backend module registers a :class:`~jconv.impls.registry.Backend` whose algorithms are
three functions of ``(a, b, spec, target)``: forward, input gradient, weight gradient, on
NHWC activations and HWIO kernels (the execute contract of
:meth:`jconv.geometry.ConvSpec.execute_spec`). Optional backends whose import fails register
as unavailable, with the reason.
"""

from jconv.impls import lax_conv, pallas, registry, xla  # noqa: F401  (registration order: report order)
from jconv.impls import onednn  # noqa: F401  (optional: absent, with the reason, without its plugin)

__all__ = ["registry"]
