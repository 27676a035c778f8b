"""The Pallas Conv2D (forward, and a custom_vjp whose backward is Pallas too).

``conv_pallas(x, w, b, spec)`` follows the execute contract of :mod:`jconv.impls`. The kernels
live in :mod:`.kernels`, the pallas_call wrappers, custom_vjp and platform dispatch in
:mod:`.ops`, the tile sizes per target in :mod:`.tiling`. docs/pallas.md describes the design.
"""

from jconv.impls.pallas.ops import conv_pallas, forward_valid, weight_grad_valid
from jconv.impls.pallas.tiling import BlockSizes, Problem, get_default, make_tiling

__all__ = ["BlockSizes", "Problem", "conv_pallas", "forward_valid", "get_default", "make_tiling", "weight_grad_valid"]
