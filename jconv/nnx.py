"""``jconv.nnx.Conv2D``: a drop-in for ``flax.nnx.Conv`` that runs :func:`jconv.conv2d`.

  from flax import nnx
  import jconv.nnx

  nnx.Conv(1, 32, (3, 3), padding="VALID", rngs=rngs)          # before
  jconv.nnx.Conv2D(1, 32, 3, padding="VALID", rngs=rngs)       # after

A subclass of ``flax.nnx.Conv``: the same constructor arguments, defaults, parameters
(``kernel`` HWIO, ``bias``), shapes and initialisation (the same keys drawn from ``rngs`` in the
same order), so ``nnx.state`` of one loads into the other. Extras from :func:`jconv.conv2d`:
``padding_mode``, ``flip_kernel`` and ``impl``. An int ``kernel_size`` means ``(k, k)``.

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
from jconv.linen import flax_conv2d, kernel_shape

__all__ = ["Conv2D"]


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
        rngs: nnx.Rngs,
        kernel_metadata=MappingProxyType({}),
        bias_metadata=MappingProxyType({}),
    ):
        kh, kw, _, _ = kernel_shape("Conv2D", kernel_size, in_features, out_features, feature_group_count)
        super().__init__(
            in_features, out_features, (kh, kw), strides,
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

    def __call__(self, inputs, out_sharding=None):
        """``inputs``: ``(*batch_dims, H, W, C)`` (no batch dims: one example)."""
        fn = "Conv2D"
        if out_sharding is not None:
            raise NotImplementedError(f"{fn}: out_sharding (={out_sharding}) is not supported; leave it None")
        if self.mask is not None and tuple(self.mask.shape) != tuple(self.kernel_shape):
            raise ValueError(
                f"{fn}: mask.shape (={tuple(self.mask.shape)}) must equal the kernel shape (={tuple(self.kernel_shape)})"
            )
        kernel = self.kernel[...]
        if self.mask is not None:
            kernel = kernel * self.mask
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        return flax_conv2d(
            inputs, kernel, bias,
            strides=self.strides, padding=self.padding, input_dilation=self.input_dilation,
            kernel_dilation=self.kernel_dilation, feature_group_count=self.feature_group_count,
            padding_mode=self.padding_mode, flip_kernel=self.flip_kernel, precision=self.precision,
            preferred_element_type=self.preferred_element_type, impl=self.impl, fn=fn,
        )
