"""The reference backend: XLA's own convolution, ``lax.conv_general_dilated``.

Forward, input gradient and weight gradient are XLA's: the gradients are the transposes JAX
defines for ``lax.conv_general_dilated`` (``jax.linear_transpose``), so ``impl="xla"`` computes
exactly what JAX's autodiff of XLA's conv computes. On GPU and TPU this is the vendor-tuned path
(cuDNN, the TPU convolution emitter) and ``auto`` runs it there (docs/performance.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jconv.spec import ExecSpec
from jconv.impls import registry

DN = ("NHWC", "HWIO", "NHWC")


def forward(x, w, spec: ExecSpec, target=None):
    """``lax.conv_general_dilated`` of the execute spec (zero padding and input dilation included)."""
    pet = None if spec.out_dtype == spec.dtype else jnp.dtype(spec.out_dtype)
    y = lax.conv_general_dilated(
        x.astype(spec.dtype), w.astype(spec.dtype), window_strides=spec.stride, padding=spec.padding,
        lhs_dilation=spec.lhs_dilation, rhs_dilation=spec.dilation, dimension_numbers=DN,
        feature_group_count=spec.groups, precision=spec.precision, preferred_element_type=pet,
    )
    return y.astype(spec.out_dtype)


def _x_aval(spec: ExecSpec):
    h, w = spec.in_size
    return jax.ShapeDtypeStruct((spec.batch, h, w, spec.in_channels), spec.dtype)


def input_grad(dy, w, spec: ExecSpec, target=None):
    """XLA's transpose of the forward in ``x``."""
    (dx,) = jax.linear_transpose(lambda x_: forward(x_, w, spec), _x_aval(spec))(dy.astype(spec.out_dtype))
    return dx


def weight_grad(x, dy, spec: ExecSpec, target=None):
    """XLA's transpose of the forward in ``w``."""
    w_aval = jax.ShapeDtypeStruct(spec.kernel_shape, spec.dtype)
    (dw,) = jax.linear_transpose(lambda w_: forward(x, w_, spec), w_aval)(dy.astype(spec.out_dtype))
    return dw


XLA = registry.Algorithm("xla", forward, input_grad, weight_grad,
                         summary="lax.conv_general_dilated, forward and both gradients")


def _choose(spec: ExecSpec, platform: str) -> tuple[str, str]:
    return "xla", "requested"


def _auto(spec: ExecSpec, platform: str) -> tuple[str, str]:
    """Every valid spec: the last entry of each platform's order in :mod:`jconv.select`."""
    if platform != "cpu":
        return "xla", f"{platform}: XLA's convolution (cuDNN / TPU emitter) is the vendor-tuned path"
    return "xla", "XLA's CPU convolution, forward and backward"


BACKEND = registry.register(registry.Backend(
    name="xla", algorithms={"xla": XLA}, choose=_choose, auto=_auto,
    tune_candidates=lambda spec, platform: ["xla"],
    summary="XLA's convolution (lax.conv_general_dilated)",
))
