"""The reference: XLA's own convolution, ``lax.conv_general_dilated``."""

from __future__ import annotations

from jax import lax

from jconv.geometry import ConvSpec
from jconv.impls.common import add_bias


def conv_xla(x, w, b, spec: ConvSpec):
    pet = None if spec.out_dtype == spec.dtype else spec.out_dtype
    y = lax.conv_general_dilated(
        x,
        w,
        window_strides=spec.stride,
        padding=spec.padding,
        lhs_dilation=spec.lhs_dilation,
        rhs_dilation=spec.dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=spec.groups,
        precision=spec.precision,
        preferred_element_type=pet,
    )
    return add_bias(y, b).astype(spec.out_dtype)
