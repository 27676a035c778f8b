"""MobileNetV2 (Sandler et al. 2018) in Flax, the convolution module a parameter.

The torchvision layout: a 3x3 stride-2 stem to 32 channels, 17 inverted residual blocks
(1x1 expansion by t, 3x3 depthwise carrying the stride, 1x1 linear projection; a residual
where stride 1 keeps the width), a 1x1 conv to 1280, global mean pooling and a dense head.
BatchNorm (momentum 0.9, epsilon 1e-5) after every conv, ReLU6. Padding is explicit and
symmetric (1 for the 3x3 convs), as in PyTorch. No dropout before the head (the twins are
compared step for step; a random mask would differ between frameworks).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["MobileNetV2", "ConvBNAct", "InvertedResidual", "INVERTED_RESIDUAL_SETTING"]

ModuleDef = Any

#: (expansion t, output channels c, repeats n, first stride s) per stage
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channels rounded to a multiple of ``divisor``, never below 90% of ``v``."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class ConvBNAct(nn.Module):
    """conv -> BatchNorm -> activation (none when ``act`` is None)."""

    features: int
    kernel: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    groups: int = 1
    act: Any = nn.relu6

    @nn.compact
    def __call__(self, x):
        p = (self.kernel - 1) // 2
        x = self.conv(self.features, (self.kernel, self.kernel), (self.strides, self.strides),
                      padding=((p, p), (p, p)), feature_group_count=self.groups, name="conv")(x)
        x = self.norm(name="bn")(x)
        return x if self.act is None else self.act(x)


class InvertedResidual(nn.Module):
    features: int
    strides: int
    expand: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        hidden = cin * self.expand
        y = x
        if self.expand != 1:
            y = ConvBNAct(hidden, 1, self.conv, self.norm, name="expand")(y)
        y = ConvBNAct(hidden, 3, self.conv, self.norm, strides=self.strides, groups=hidden, name="depthwise")(y)
        y = ConvBNAct(self.features, 1, self.conv, self.norm, act=None, name="project")(y)
        return x + y if self.strides == 1 and cin == self.features else y


class MobileNetV2(nn.Module):
    """``__call__(x, train)``: NHWC images -> logits."""

    num_classes: int = 1000
    width: float = 1.0
    setting: tuple = INVERTED_RESIDUAL_SETTING  # (t, c, n, s) per stage
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype)
        x = ConvBNAct(make_divisible(32 * self.width), 3, conv, norm, strides=2, name="stem")(x)
        i = 0
        for t, c, n, s in self.setting:
            for j in range(n):
                x = InvertedResidual(make_divisible(c * self.width), s if j == 0 else 1, t, conv, norm,
                                     name=f"block{i}")(x)
                i += 1
        x = ConvBNAct(make_divisible(1280 * max(1.0, self.width)), 1, conv, norm, name="last")(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return jnp.asarray(x, self.dtype)
