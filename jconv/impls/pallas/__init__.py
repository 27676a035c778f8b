"""The Pallas Conv2D backend (``impl="pallas"``).

``kernels.py`` (kernel bodies), ``layout.py`` (XLA-side operand layout), ``tiling.py`` (tile
sizes per target), ``calls.py`` (the ``pallas_call``s), ``jconv.impls.partitioning`` (batch partitioning),
``ops.py`` (the three functions of a spec, registered as the backend). docs/pallas.md describes
the design.
"""

from jconv.impls.pallas.calls import forward_valid, weight_grad_valid
from jconv.impls.pallas.ops import BACKEND
from jconv.impls.pallas.tiling import BlockSizes, KernelFitError, get_default, make_tiling

__all__ = ["BACKEND", "BlockSizes", "KernelFitError", "forward_valid", "get_default", "make_tiling",
           "weight_grad_valid"]
