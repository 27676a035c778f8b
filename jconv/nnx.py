"""Flax nnx modules that run jconv: drop-ins for ``flax.nnx.Conv`` and ``flax.nnx.ConvTranspose``.

  from flax import nnx
  import jconv.nnx

  nnx.Conv(1, 32, (3, 3), padding="VALID", rngs=rngs)                # before
  jconv.nnx.Conv2D(1, 32, 3, padding="VALID", rngs=rngs)             # after
  nnx.ConvTranspose(32, 16, (3, 3), strides=2, rngs=rngs)            # before
  jconv.nnx.ConvTranspose(32, 16, (3, 3), strides=2, rngs=rngs)      # after

Subclasses of flax's modules: the same constructor arguments, defaults, parameters (``kernel``,
``bias``), shapes and initialisation (flax's own constructor draws the same keys from ``rngs``
in the same order), so ``nnx.state`` of one loads into the other. nnx names parameters after
attributes, not classes, so the class name never shows in a state. Extra: ``impl`` (and, for
:class:`Conv2D`, ``padding_mode``, ``flip_kernel`` and ``activation``) from :func:`jconv.conv2d`. An int
``kernel_size`` means ``(k, k)``. The static arguments are normalised once, in the constructor
(:mod:`jconv.flax_conv`); change them by building a new module.

(To keep flax's own ``nnx.Conv`` and only swap the convolution primitive, pass
``nnx.Conv(..., conv_general_dilated=jconv.conv_general_dilated)``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes
from flax.nnx.nn.linear import default_bias_init, default_kernel_init

from jconv.conv import conv_general_dilated
from jconv.flax_conv import (flax_conv2d, flax_conv_transpose, parse_activation, parse_conv_args,
                             parse_conv_transpose_args)
from jconv.linen import check_mask

__all__ = ["Conv2D", "ConvTranspose"]


def _no_sharding(fn: str, out_sharding) -> None:
    if out_sharding is not None:
        raise NotImplementedError(f"{fn}: out_sharding (={out_sharding}) is not supported; leave it None")


def _kernel_and_bias(module):
    """The module's (masked) kernel and bias values."""
    kernel = module.kernel[...]
    if module.mask is not None:
        kernel = kernel * module.mask
    return kernel, (module.bias[...] if module.bias is not None else None)


class Conv2D(nnx.Conv):
    """2-D convolution with ``flax.nnx.Conv``'s arguments, computed by :func:`jconv.conv2d`.

    See :class:`jconv.linen.Conv2D` for the meaning of every argument.

    Example: in place of ``nnx.Conv(1, 32, (3, 3), rngs=rngs)``:

    >>> import jax.numpy as jnp, numpy as np
    >>> from flax import nnx
    >>> from jconv.nnx import Conv2D
    >>> conv = Conv2D(1, 32, (3, 3), padding="VALID", rngs=nnx.Rngs(0))
    >>> conv.kernel[...].shape, conv.bias[...].shape
    ((3, 3, 1, 32), (32,))
    >>> y = conv(jnp.ones((1, 28, 28, 1)))
    >>> y.shape
    (1, 26, 26, 32)
    >>> ref = nnx.Conv(1, 32, (3, 3), padding="VALID", rngs=nnx.Rngs(0))
    >>> bool(np.allclose(y, ref(jnp.ones((1, 28, 28, 1))), atol=1e-5))
    True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: None | int | Sequence[int] = 1,
        *,
        padding: Any = "SAME",
        input_dilation: None | int | Sequence[int] = 1,
        kernel_dilation: None | int | Sequence[int] = 1,
        feature_group_count: int = 1,
        use_bias: bool = True,
        mask: Any = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Any = default_kernel_init,
        bias_init: Any = default_bias_init,
        promote_dtype: Any = dtypes.promote_dtype,
        preferred_element_type: Any = None,
        padding_mode: str = "zeros",
        flip_kernel: bool = False,
        impl: str = "auto",
        activation: Any = None,
        rngs: nnx.Rngs,
        kernel_metadata=MappingProxyType({}),
        bias_metadata=MappingProxyType({}),
    ):
        fn = "Conv2D"
        activation = parse_activation(fn, activation)
        self.conv_args = parse_conv_args(
            fn, kernel_size=kernel_size, strides=strides, padding=padding, input_dilation=input_dilation,
            kernel_dilation=kernel_dilation, feature_group_count=feature_group_count, padding_mode=padding_mode,
        )
        super().__init__(
            in_features, out_features, self.conv_args.kernel_size, strides,
            padding=padding, input_dilation=input_dilation, kernel_dilation=kernel_dilation,
            feature_group_count=feature_group_count, use_bias=use_bias, mask=mask, dtype=dtype,
            param_dtype=param_dtype, precision=precision, kernel_init=kernel_init,
            bias_init=bias_init, conv_general_dilated=conv_general_dilated,
            promote_dtype=promote_dtype, preferred_element_type=preferred_element_type,
            rngs=rngs, kernel_metadata=kernel_metadata, bias_metadata=bias_metadata,
        )
        self.padding_mode = padding_mode
        self.flip_kernel = flip_kernel
        self.impl = impl
        self.activation = activation

    def __call__(self, inputs, out_sharding=None):
        """``inputs``: ``(*batch_dims, H, W, C)`` (no batch dims: one example)."""
        fn = "Conv2D"
        _no_sharding(fn, out_sharding)
        check_mask(fn, self.mask, self.kernel_shape)
        kernel, bias = _kernel_and_bias(self)
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        return flax_conv2d(
            inputs, kernel, bias, self.conv_args, flip_kernel=self.flip_kernel, precision=self.precision,
            preferred_element_type=self.preferred_element_type, impl=self.impl, fn=fn, activation=self.activation,
        )


class ConvTranspose(nnx.ConvTranspose):
    """2-D transposed convolution with ``flax.nnx.ConvTranspose``'s arguments, computed by
    jconv's input-dilated convolution. See :class:`jconv.linen.ConvTranspose` for the meaning of
    every argument.

    Example: in place of ``nnx.ConvTranspose(4, 8, (3, 3), strides=2, rngs=rngs)``:

    >>> import jax.numpy as jnp, numpy as np
    >>> from flax import nnx
    >>> from jconv.nnx import ConvTranspose
    >>> up = ConvTranspose(4, 8, (3, 3), strides=2, rngs=nnx.Rngs(0))
    >>> up.kernel[...].shape
    (3, 3, 4, 8)
    >>> y = up(jnp.ones((1, 16, 16, 4)))
    >>> y.shape
    (1, 32, 32, 8)
    >>> ref = nnx.ConvTranspose(4, 8, (3, 3), strides=2, rngs=nnx.Rngs(0))
    >>> bool(np.allclose(y, ref(jnp.ones((1, 16, 16, 4))), atol=1e-5))
    True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: None | int | Sequence[int] = None,
        *,
        padding: Any = "SAME",
        kernel_dilation: None | int | Sequence[int] = None,
        use_bias: bool = True,
        mask: Any = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Any = default_kernel_init,
        bias_init: Any = default_bias_init,
        transpose_kernel: bool = False,
        promote_dtype: Any = dtypes.promote_dtype,
        preferred_element_type: Any = None,
        impl: str = "auto",
        rngs: nnx.Rngs,
        kernel_metadata=MappingProxyType({}),
        bias_metadata=MappingProxyType({}),
    ):
        self.conv_args = parse_conv_transpose_args(
            "ConvTranspose", kernel_size=kernel_size, strides=strides, padding=padding,
            kernel_dilation=kernel_dilation,
        )
        super().__init__(
            in_features, out_features, self.conv_args.kernel_size, strides,
            padding=padding, kernel_dilation=kernel_dilation, use_bias=use_bias, mask=mask, dtype=dtype,
            param_dtype=param_dtype, precision=precision, kernel_init=kernel_init, bias_init=bias_init,
            transpose_kernel=transpose_kernel, promote_dtype=promote_dtype,
            preferred_element_type=preferred_element_type, rngs=rngs, kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )
        self.impl = impl

    def __call__(self, inputs):
        """``inputs``: ``(*batch_dims, H, W, C)`` (no batch dims: one example)."""
        fn = "ConvTranspose"
        check_mask(fn, self.mask, self.kernel_shape)
        kernel, bias = _kernel_and_bias(self)
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        return flax_conv_transpose(
            inputs, kernel, bias, self.conv_args, transpose_kernel=self.transpose_kernel,
            precision=self.precision, preferred_element_type=self.preferred_element_type, impl=self.impl, fn=fn,
        )
