"""oneDNN CPU convolutions for JAX, called through XLA's FFI.

Three JAX-callable functions on channels-last arrays, each a single ``jax.ffi.ffi_call`` into
oneDNN (the library PyTorch uses for CPU convolutions):

* :func:`conv_forward`          x (N,H,W,Ci), w (KH,KW,Ci/g,Co) [, b (Co,)] -> y (N,Ho,Wo,Co)
                                (float32, bfloat16; int8/uint8 x int8 -> exact int32)
* :func:`conv_backward_data`    dy, w -> dx (the gradient with respect to x)
* :func:`conv_backward_weights` x, dy -> dw [, db]

They take static geometry keywords (``stride``, ``padding``, ``dilation``, ``groups``), work
under ``jax.jit``, and have no autodiff rules of their own: the caller wires them into a
differentiable primitive.

Importing never fails because of the native part: :func:`available` says whether the library
loaded and :func:`unavailable_reason` says why not.

Modules: :mod:`jconv_onednn._loader` (finding and loading the libraries, registering the FFI
targets), :mod:`jconv_onednn.settings` (capabilities and runtime settings),
:mod:`jconv_onednn.ops` (the calls).
"""

from __future__ import annotations

from jconv_onednn import _loader, ops, settings
from jconv_onednn._loader import TARGETS
from jconv_onednn.ops import (
    VMAP_METHOD,
    conv_backward_data,
    conv_backward_weights,
    conv_forward,
    conv_output_shape,
    describe,
    LAYOUTS,
)
from jconv_onednn.settings import (
    available,
    bf16_supported,
    cache_info,
    clear_cache,
    get_num_threads,
    int8_supported,
    onednn_version,
    set_cache_capacity,
    set_activations_layout,
    set_num_threads,
    set_weights_layout,
    unavailable_reason,
)

__all__ = [
    "available",
    "unavailable_reason",
    "onednn_version",
    "bf16_supported",
    "int8_supported",
    "conv_forward",
    "conv_backward_data",
    "conv_backward_weights",
    "conv_output_shape",
    "cache_info",
    "set_cache_capacity",
    "clear_cache",
    "describe",
    "set_weights_layout",
    "set_activations_layout",
    "set_num_threads",
    "get_num_threads",
    "TARGETS",
]

__version__ = "0.1.0"

# Load eagerly so that registration happens at import; failures are recorded, never raised
# (see available()/unavailable_reason()).
_loader.load()
