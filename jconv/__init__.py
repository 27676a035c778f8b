"""jconv: an accelerator-portable Conv2D for JAX.

    import jconv
    y = jconv.conv2d(x, w, b, stride=2, padding="SAME", groups=4, impl="auto")

Public API: :func:`conv2d`, :func:`conv_general_dilated` (drop-in for
``lax.conv_general_dilated``), the seed's arithmetic (:func:`output_size`,
:func:`conv_params`, :func:`receptive_field`, :func:`conv_flops`), :class:`ConvSpec`, and the
tuner (:func:`tune`, :func:`use_tune_cache`: measure candidates, ``auto`` reads the cache).
Flax modules live in :mod:`jconv.linen` and :mod:`jconv.nnx`.
"""

from jconv.conv import conv2d, conv_general_dilated, plan_for
from jconv.tuning import TuneResult, tune, use_tune_cache
from jconv.geometry import (
    ConvSpec,
    conv_flops,
    conv_params,
    dense_params,
    output_size,
    parse_conv2d,
    receptive_field,
)

__version__ = "0.1.0"

__all__ = [
    "conv2d",
    "conv_general_dilated",
    "plan_for",
    "tune",
    "use_tune_cache",
    "TuneResult",
    "ConvSpec",
    "parse_conv2d",
    "output_size",
    "conv_params",
    "receptive_field",
    "conv_flops",
    "dense_params",
]
