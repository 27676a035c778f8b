"""A U-Net (Ronneberger et al. 2015) in Flax with transposed convolutions for up-sampling,
the convolution and transposed-convolution modules parameters.

``depth`` levels down: two 3x3 convs (padding 1, no bias) each followed by BatchNorm
(momentum 0.9, epsilon 1e-5) and ReLU, then 2x2 max pooling; a bottom level of twice the
width; back up: a 3x3 stride-2 transposed conv halving the width (the input-dilated
convolution with pads ((1, 2), (1, 2)): ``in * 2`` out, PyTorch's ``ConvTranspose2d(k=3,
s=2, padding=1, output_padding=1)``), the skip connection concatenated, two 3x3 convs; a 1x1
conv to per-pixel class logits. Widths ``features * 2**level``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["UNet", "DoubleConv"]

ModuleDef = Any
UP_PADDING = ((1, 2), (1, 2))


class DoubleConv(nn.Module):
    features: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        for k in (1, 2):
            x = self.conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name=f"conv{k}")(x)
            x = nn.relu(self.norm(name=f"bn{k}")(x))
        return x


class UNet(nn.Module):
    """``__call__(x, train)``: NHWC images (sides divisible by ``2**depth``) -> NHWC logits."""

    num_classes: int = 2
    features: int = 32
    depth: int = 4
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv
    conv_transpose: ModuleDef = nn.ConvTranspose

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(self.conv, dtype=self.dtype)
        up = functools.partial(self.conv_transpose, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype)
        skips = []
        for i in range(self.depth):
            x = DoubleConv(self.features * 2**i, conv, norm, name=f"down{i}")(x)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = DoubleConv(self.features * 2**self.depth, conv, norm, name="bottom")(x)
        for i in reversed(range(self.depth)):
            x = up(self.features * 2**i, (3, 3), strides=(2, 2), padding=UP_PADDING, name=f"up{i}")(x)
            x = DoubleConv(self.features * 2**i, conv, norm, name=f"dec{i}")(jnp.concatenate([skips[i], x], axis=-1))
        x = conv(self.num_classes, (1, 1), name="out")(x)
        return jnp.asarray(x, self.dtype)
