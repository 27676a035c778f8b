"""``jconv.linen.Conv2D``: a drop-in for ``flax.linen.Conv`` that runs :func:`jconv.conv2d`.

Swap one class name::

  import flax.linen as nn
  import jconv.linen

  nn.Conv(32, (3, 3), padding="VALID")          # before
  jconv.linen.Conv2D(32, 3, padding="VALID")    # after: same params, same init, same output

Same fields, defaults, parameter names (``kernel`` HWIO, ``bias``), shapes and initialisers as
``flax.linen.Conv``, so checkpoints load unchanged; plus ``padding_mode``, ``flip_kernel``,
``preferred_element_type`` and ``impl`` from :func:`jconv.conv2d`. Differences:

* it is 2-D only: an int ``kernel_size`` means ``(k, k)`` (flax would read it as 1-D);
* auto-named instances are called ``Conv2D_0, ...``; :class:`Conv` is the same module under the
  class name ``Conv`` for models that rely on flax's auto-names (``Conv_0``) in checkpoints.

Flax's argument conventions are translated here (``"CIRCULAR"``/``"REFLECT"`` padding -> a jconv
``padding_mode`` with flax's pads, ``input_dilation > 1`` -> :func:`jconv.conv_general_dilated`,
``mask``, dtype promotion via flax's ``promote_dtype``); every conv argument is then checked by
jconv's one parser (:func:`jconv.geometry.parse_conv2d`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from flax.linen.linear import default_kernel_init
from flax.linen import initializers

from jconv import geometry
from jconv.conv import conv2d, conv_general_dilated

__all__ = ["Conv2D", "Conv", "flax_conv2d"]

_FLAX_PAD_MODES = {"CIRCULAR": "circular", "REFLECT": "reflect"}


def _one_if_none(v):
    return 1 if v is None else v  # flax's backward-compatible sentinel for "broadcast 1"


def flax_conv2d(
    inputs,
    kernel,
    bias,
    *,
    strides=1,
    padding="SAME",
    input_dilation=1,
    kernel_dilation=1,
    feature_group_count=1,
    padding_mode="zeros",
    flip_kernel=False,
    precision=None,
    preferred_element_type=None,
    impl="auto",
    fn="Conv2D",
):
    """Flax's Conv calling convention -> :func:`jconv.conv2d` (or ``conv_general_dilated``).

    ``inputs`` are channels-last with any number of leading batch dimensions (none: one
    example), ``kernel`` HWIO, ``bias`` ``(features,)`` or None, all already promoted to one
    dtype. Shared by :class:`Conv2D` and :class:`jconv.nnx.Conv2D`.
    """
    strides = _one_if_none(strides)
    kernel_dilation = _one_if_none(kernel_dilation)
    input_dilation = geometry.pair(fn, "input_dilation", _one_if_none(input_dilation))

    # Flax flattens several leading batch dimensions into one (and restores them after).
    batch_shape = inputs.shape[:-3] if inputs.ndim > 4 else None
    if batch_shape is not None:
        inputs = jnp.reshape(inputs, (-1,) + inputs.shape[-3:])

    if isinstance(padding, str) and padding.upper() in _FLAX_PAD_MODES:
        mode = _FLAX_PAD_MODES[padding.upper()]
        if padding_mode not in ("zeros", mode):
            raise ValueError(
                f"{fn}: padding (={padding!r}) already sets padding_mode={mode!r}, which "
                f"conflicts with padding_mode (={padding_mode!r})"
            )
        # flax pads ((k_eff - 1) // 2, k_eff // 2) per axis, then runs VALID at the given
        # strides: exactly SAME's pads at stride 1. Ask the parser for them.
        padding = geometry.parse_conv2d(
            inputs.shape, inputs.dtype, kernel.shape, kernel.dtype,
            padding="SAME", dilation=kernel_dilation, groups=feature_group_count, fn=fn,
        ).padding
        padding_mode = mode
    elif isinstance(padding, str) and padding.upper() == "CAUSAL":
        raise ValueError(f"{fn}: padding (={padding!r}) is only defined for 1-D convolutions (as in flax)")

    if input_dilation == (1, 1):
        y = conv2d(
            inputs, kernel, bias,
            stride=strides, padding=padding, dilation=kernel_dilation,
            groups=feature_group_count, padding_mode=padding_mode, flip_kernel=flip_kernel,
            impl=impl, precision=precision, preferred_element_type=preferred_element_type,
        )
    else:
        # Input dilation (transposed convolution) is conv_general_dilated's lhs_dilation.
        if padding_mode != "zeros" or flip_kernel:
            raise NotImplementedError(
                f"{fn}: input_dilation (={input_dilation}) > 1 supports only zero padding without "
                f"flip_kernel; got padding_mode={padding_mode!r}, flip_kernel={flip_kernel}"
            )
        if not isinstance(padding, str):  # int / (ph, pw) / pairs -> the (lo, hi) pairs lax takes
            padding = geometry.resolve_padding(fn, padding, (1, 1), (1, 1), (1, 1), allow_negative=True)
        unbatched = inputs.ndim == 3
        y = conv_general_dilated(
            inputs[None] if unbatched else inputs, kernel, strides, padding,
            lhs_dilation=input_dilation, rhs_dilation=kernel_dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=feature_group_count,
            precision=precision, preferred_element_type=preferred_element_type, impl=impl,
        )
        if unbatched:
            y = y[0]
        if bias is not None:
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + bias.shape)

    if batch_shape is not None:
        y = jnp.reshape(y, batch_shape + y.shape[1:])
    return y


def kernel_shape(fn: str, kernel_size, in_features: int, features: int, feature_group_count) -> tuple:
    """HWIO kernel shape, as flax builds it (``kernel_size + (in // groups, features)``)."""
    kh, kw = geometry.pair(fn, "kernel_size", kernel_size)
    if not geometry.is_int(feature_group_count) or feature_group_count < 1:
        raise (TypeError if not geometry.is_int(feature_group_count) else ValueError)(
            f"{fn}: feature_group_count (={feature_group_count!r}) must be an int >= 1"
        )
    return (kh, kw, in_features // feature_group_count, features)


class Conv2D(nn.Module):
    """2-D convolution with ``flax.linen.Conv``'s fields, computed by :func:`jconv.conv2d`.

    Attributes (as ``flax.linen.Conv``):
      features: number of filters (output channels).
      kernel_size: int ``k`` (meaning ``(k, k)``) or ``(kh, kw)``.
      strides, input_dilation, kernel_dilation: int or pair (None means 1).
      padding: ``"SAME"`` (default), ``"VALID"``, ``"CIRCULAR"``, ``"REFLECT"``, an int, ``(ph, pw)``
        or ``((top, bottom), (left, right))``.
      feature_group_count, use_bias, mask, dtype, param_dtype, precision, kernel_init,
      bias_init, promote_dtype: as in flax.
    jconv extras:
      padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"`` for numeric padding.
      flip_kernel: True computes true convolution.
      preferred_element_type: output dtype of the convolution.
      impl: ``"auto"``, ``"xla"``, ``"lax"``, ``"lax:<algorithm>"``, ``"pallas"`` or ``"onednn"``.

    Example: in place of ``nn.Conv(32, (3, 3))``, with the same parameters:

    >>> import jax, jax.numpy as jnp, flax.linen as nn, numpy as np
    >>> from jconv.linen import Conv2D
    >>> x = jnp.ones((1, 28, 28, 1))
    >>> params = Conv2D(32, (3, 3), padding="VALID").init(jax.random.key(0), x)
    >>> jax.tree.map(jnp.shape, params)
    {'params': {'bias': (32,), 'kernel': (3, 3, 1, 32)}}
    >>> y = Conv2D(32, (3, 3), padding="VALID").apply(params, x)
    >>> bool(np.allclose(y, nn.Conv(32, (3, 3), padding="VALID").apply(params, x), atol=1e-5))
    True
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: None | int | Sequence[int] = 1
    padding: Any = "SAME"
    input_dilation: None | int | Sequence[int] = 1
    kernel_dilation: None | int | Sequence[int] = 1
    feature_group_count: int = 1
    use_bias: bool = True
    mask: Any = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = default_kernel_init
    bias_init: Any = initializers.zeros_init()
    promote_dtype: Any = promote_dtype
    padding_mode: str = "zeros"
    flip_kernel: bool = False
    preferred_element_type: Any = None
    impl: str = "auto"

    @nn.compact
    def __call__(self, inputs):
        """``inputs``: ``(*batch_dims, H, W, C)`` (no batch dims: one example)."""
        fn = type(self).__name__
        shape = kernel_shape(fn, self.kernel_size, inputs.shape[-1], self.features, self.feature_group_count)
        if self.mask is not None and tuple(self.mask.shape) != shape:
            raise ValueError(f"{fn}: mask.shape (={tuple(self.mask.shape)}) must equal the kernel shape (={shape})")
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        if self.mask is not None:
            kernel = kernel * self.mask
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return flax_conv2d(
            inputs, kernel, bias,
            strides=self.strides, padding=self.padding, input_dilation=self.input_dilation,
            kernel_dilation=self.kernel_dilation, feature_group_count=self.feature_group_count,
            padding_mode=self.padding_mode, flip_kernel=self.flip_kernel, precision=self.precision,
            preferred_element_type=self.preferred_element_type, impl=self.impl, fn=fn,
        )


class Conv(Conv2D):
    """:class:`Conv2D` under flax's class name, so auto-named layers are ``Conv_0, Conv_1, ...``
    exactly as with ``flax.linen.Conv`` (checkpoints of auto-named models load unchanged)."""
