"""jconv: an accelerator-portable Conv2D for JAX.

  import jconv
  y = jconv.conv2d(x, w, b, stride=2, padding="SAME", groups=4, impl="auto")

Public API: :func:`conv2d`, :func:`conv_general_dilated` (drop-in for
``lax.conv_general_dilated``), :func:`plan_for`, the seed's arithmetic (:func:`output_size`,
:func:`conv_params`, :func:`receptive_field`, :func:`conv_flops`), :class:`ConvSpec`, the
tuner (:func:`tune`, :func:`use_tune_cache`: measure candidates, ``auto`` reads the cache), and
:func:`implementations` (the registered backends). The Flax modules :mod:`jconv.linen`,
:mod:`jconv.nnx` and the seed's model :mod:`jconv_experiments.models` are reachable as attributes, loaded on
first use (importing jconv does not import flax's training stack).
"""

import importlib

from jconv.conv import conv2d, conv_general_dilated, plan_for
from jconv.arithmetic import conv_flops, conv_params, dense_params, output_size, receptive_field
from jconv.geometry import parse_conv2d
from jconv.impls import registry as _registry
from jconv.tune_cache import use_tune_cache
from jconv.spec import ConvSpec, ExecSpec
from jconv.tuning import TuneResult, tune

__version__ = "0.1.0"

_LAZY = ("linen", "nnx", "targets", "aot")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"jconv.{name}")
    raise AttributeError(f"module 'jconv' has no attribute {name!r}")


def implementations() -> dict[str, str]:
    """The impls ``conv2d`` accepts here: each available backend with its summary, and each
    optional one that is not available with the reason."""
    out = {b.name: b.summary for b in _registry.backends()}
    out.update({name: f"unavailable: {why}" for name, why in _registry.unavailable().items()})
    return out


__all__ = [
    "conv2d",
    "conv_general_dilated",
    "plan_for",
    "tune",
    "use_tune_cache",
    "TuneResult",
    "ConvSpec",
    "ExecSpec",
    "parse_conv2d",
    "output_size",
    "conv_params",
    "receptive_field",
    "conv_flops",
    "dense_params",
    "implementations",
]
