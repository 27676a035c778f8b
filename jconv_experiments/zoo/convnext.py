"""ConvNeXt-T (Liu et al. 2022) in Flax, the convolution module a parameter.

A 4x4 stride-4 patchify stem with LayerNorm; four stages of (3, 3, 9, 3) blocks at widths
(96, 192, 384, 768), each stage after the first opened by LayerNorm and a 2x2 stride-2 conv;
a block is a 7x7 depthwise conv, LayerNorm, a 4x dense expansion, exact GELU, a dense
projection, a learned per-channel layer scale and the residual. Global mean pooling,
LayerNorm, dense head. LayerNorm epsilon 1e-6; conv and dense kernels truncated normal (0.02)
as the paper initialises them. No stochastic depth (the twins are compared step for step).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["ConvNeXt", "ConvNeXtBlock", "convnext_tiny"]

ModuleDef = Any
_INIT = nn.initializers.truncated_normal(0.02)


class ConvNeXtBlock(nn.Module):
    dim: int
    conv: ModuleDef
    dtype: Any = jnp.float32
    layer_scale_init: float = 1e-6

    @nn.compact
    def __call__(self, x):
        y = self.conv(self.dim, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=self.dim, name="dwconv")(x)
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(y)
        y = nn.Dense(4 * self.dim, dtype=self.dtype, kernel_init=_INIT, name="pwconv1")(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dense(self.dim, dtype=self.dtype, kernel_init=_INIT, name="pwconv2")(y)
        gamma = self.param("gamma", nn.initializers.constant(self.layer_scale_init), (self.dim,))
        return x + jnp.reshape(gamma, (1, 1, 1, self.dim)).astype(y.dtype) * y


class ConvNeXt(nn.Module):
    """``__call__(x, train)``: NHWC images -> logits (``train`` changes nothing: no BatchNorm,
    no dropout; it is there so every zoo model is called alike)."""

    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    num_classes: int = 1000
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        del train
        conv = functools.partial(self.conv, dtype=self.dtype, kernel_init=_INIT)
        norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=self.dtype)
        x = conv(self.dims[0], (4, 4), (4, 4), padding="VALID", name="stem")(x)
        x = norm(name="stem_norm")(x)
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            if i > 0:
                x = norm(name=f"down{i}_norm")(x)
                x = conv(dim, (2, 2), (2, 2), padding="VALID", name=f"down{i}")(x)
            for j in range(depth):
                x = ConvNeXtBlock(dim, conv, self.dtype, name=f"stage{i}_block{j}")(x)
        x = norm(name="head_norm")(jnp.mean(x, axis=(1, 2)))
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_INIT, name="head")(x)
        return jnp.asarray(x, self.dtype)


convnext_tiny = functools.partial(ConvNeXt, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
