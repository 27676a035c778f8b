"""Flax linen modules that run jconv: drop-ins for ``flax.linen.Conv`` and ``flax.linen.ConvTranspose``.

Swap one class name::

  import flax.linen as nn
  import jconv.linen

  nn.Conv(32, (3, 3), padding="VALID")                  # before
  jconv.linen.Conv(32, (3, 3), padding="VALID")         # after: same params, same init, same output
  nn.ConvTranspose(16, (3, 3), strides=2)               # before
  jconv.linen.ConvTranspose(16, (3, 3), strides=2)      # after

Same fields, defaults, parameter names (``kernel``, ``bias``), shapes and initialisers as flax's
modules, so checkpoints load unchanged; plus ``impl`` (and, for convolutions, ``padding_mode``,
``flip_kernel``) from :func:`jconv.conv2d`. Differences:

* they are 2-D only: an int ``kernel_size`` means ``(k, k)`` (flax would read it as 1-D);
* :class:`Conv2D` auto-names its instances ``Conv2D_0, ...``; :class:`Conv` is the same module
  under flax's class name, so auto-named layers are ``Conv_0, ...`` as in flax (recommended for
  existing models and checkpoints). :class:`ConvTranspose` keeps flax's name.

The fields are normalised once per call by :mod:`jconv.flax_conv` (errors name the field);
:func:`jconv.conv2d` or :func:`jconv.conv_general_dilated` then checks the call with the
input's shapes (errors like ``conv2d: groups (=3) must divide input channels (=4)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from flax.linen.linear import default_kernel_init
from flax.linen import initializers

from jconv.flax_conv import (flax_conv2d, flax_conv_transpose, parse_activation, parse_conv_args,
                             parse_conv_transpose_args)

__all__ = ["Conv2D", "Conv", "ConvTranspose"]


def check_mask(fn: str, mask, shape: tuple) -> None:
    """flax's rule: a mask has the kernel's shape."""
    if mask is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{fn}: mask.shape (={tuple(mask.shape)}) must equal the kernel shape (={tuple(shape)})")


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
      activation: None (default), ``"relu"`` or ``nn.relu``: ``relu(conv + bias)`` with the bias
        and ReLU as the convolution's epilogue (:mod:`jconv.fused`; one pass less over the
        output with oneDNN); any other callable is applied to the output.

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
    activation: Any = None

    @nn.compact
    def __call__(self, inputs):
        """``inputs``: ``(*batch_dims, H, W, C)`` (no batch dims: one example)."""
        fn = type(self).__name__
        activation = parse_activation(fn, self.activation)
        args = parse_conv_args(
            fn, kernel_size=self.kernel_size, strides=self.strides, padding=self.padding,
            input_dilation=self.input_dilation, kernel_dilation=self.kernel_dilation,
            feature_group_count=self.feature_group_count, padding_mode=self.padding_mode,
        )
        shape = args.kernel_size + (inputs.shape[-1] // args.feature_group_count, self.features)
        check_mask(fn, self.mask, shape)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        if self.mask is not None:
            kernel = kernel * self.mask
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return flax_conv2d(
            inputs, kernel, bias, args, flip_kernel=self.flip_kernel, precision=self.precision,
            preferred_element_type=self.preferred_element_type, impl=self.impl, fn=fn, activation=activation,
        )


class Conv(Conv2D):
    """:class:`Conv2D` under flax's class name, so auto-named layers are ``Conv_0, Conv_1, ...``
    exactly as with ``flax.linen.Conv``: the module to put in place of ``nn.Conv`` in existing
    models (their checkpoints load unchanged)."""


class ConvTranspose(nn.Module):
    """2-D transposed convolution with ``flax.linen.ConvTranspose``'s fields, computed by jconv's
    input-dilated convolution (:func:`jconv.conv_general_dilated` with ``lhs_dilation = strides``).

    Attributes (as ``flax.linen.ConvTranspose``):
      features: number of filters (output channels).
      kernel_size: int ``k`` (meaning ``(k, k)``) or ``(kh, kw)``.
      strides, kernel_dilation: int or pair (None, the default, means 1).
      padding: ``"SAME"`` (default: output ``in * stride``), ``"VALID"`` (``in * stride +
        max(k_eff - stride, 0)``), ``"CIRCULAR"`` (the VALID result wrapped periodically onto
        ``in * stride``), an int, ``(ph, pw)`` or ``((top, bottom), (left, right))``: explicit pads
        of the input-dilated convolution, as in ``lax.conv_transpose`` (negative pads crop).
      transpose_kernel: the kernel is stored ``(KH, KW, features, in)`` and flipped in H and W
        (the gradient of a forward conv with that kernel, as in TensorFlow/Keras).
      use_bias, mask, dtype, param_dtype, precision, kernel_init, bias_init, promote_dtype,
      preferred_element_type: as in flax.
    jconv extra:
      impl: ``"auto"``, ``"xla"``, ``"lax"``, ``"lax:<algorithm>"``, ``"pallas"``, ``"onednn"``
        (an impl that cannot run an input-dilated convolution raises and says why).

    Auto-named instances are ``ConvTranspose_0, ...``, as with flax. Example: in place of
    ``nn.ConvTranspose(8, (3, 3), strides=2)``, with the same parameters:

    >>> import jax, jax.numpy as jnp, flax.linen as nn, numpy as np
    >>> from jconv.linen import ConvTranspose
    >>> x = jnp.ones((1, 16, 16, 4))
    >>> params = ConvTranspose(8, (3, 3), strides=2).init(jax.random.key(0), x)
    >>> jax.tree.map(jnp.shape, params)
    {'params': {'bias': (8,), 'kernel': (3, 3, 4, 8)}}
    >>> y = ConvTranspose(8, (3, 3), strides=2).apply(params, x)
    >>> y.shape
    (1, 32, 32, 8)
    >>> bool(np.allclose(y, nn.ConvTranspose(8, (3, 3), strides=2).apply(params, x), atol=1e-5))
    True
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: None | int | Sequence[int] = None
    padding: Any = "SAME"
    kernel_dilation: None | int | Sequence[int] = None
    use_bias: bool = True
    mask: Any = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = default_kernel_init
    bias_init: Any = initializers.zeros_init()
    transpose_kernel: bool = False
    promote_dtype: Any = promote_dtype
    preferred_element_type: Any = None
    impl: str = "auto"

    @nn.compact
    def __call__(self, inputs):
        """``inputs``: ``(*batch_dims, H, W, C)`` (no batch dims: one example)."""
        fn = type(self).__name__
        args = parse_conv_transpose_args(
            fn, kernel_size=self.kernel_size, strides=self.strides, padding=self.padding,
            kernel_dilation=self.kernel_dilation,
        )
        channels = (self.features, inputs.shape[-1]) if self.transpose_kernel else (inputs.shape[-1], self.features)
        shape = args.kernel_size + channels
        check_mask(fn, self.mask, shape)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        if self.mask is not None:
            kernel = kernel * self.mask
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return flax_conv_transpose(
            inputs, kernel, bias, args, transpose_kernel=self.transpose_kernel, precision=self.precision,
            preferred_element_type=self.preferred_element_type, impl=self.impl, fn=fn,
        )
