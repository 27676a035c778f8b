"""ResNet in Flax's ImageNet-example pattern: the blocks take ``conv`` and ``norm`` as module
parameters and call them unnamed (auto-named ``Conv_0``, ``BatchNorm_0``, ...), so a variables
tree made with ``conv=flax.linen.Conv`` drives ``conv=jconv.linen.Conv`` unchanged.

The architecture of flax's ``examples/imagenet/models.py``: a 7x7 stride-2 stem with explicit
padding 3, BatchNorm (momentum 0.9, epsilon 1e-5), 3x3 max pooling stride 2 (``SAME``), stages
of bottleneck blocks with the stride on the 3x3 conv (ResNet v1.5), a zero-initialised scale on
each block's last BatchNorm, a projection ``conv_proj``/``norm_proj`` where the shape changes,
global mean pooling and a dense head. Convolutions keep flax's default ``SAME`` padding: on
even inputs a strided 3x3 conv pads (0, 1) (the PyTorch twin pads the same way).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["ResNet", "ResNetBlock", "BottleneckResNetBlock", "resnet50", "resnet18"]

ModuleDef = Any


class ResNetBlock(nn.Module):
    """Two 3x3 convs (the basic block)."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
        y = self.norm(scale_init=nn.initializers.zeros_init())(self.conv(self.filters, (3, 3))(y))
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.act(self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
        y = self.norm(scale_init=nn.initializers.zeros_init())(self.conv(self.filters * 4, (1, 1))(y))
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """``__call__(x, train)``: NHWC images -> logits. ``conv`` is the convolution module
    (``flax.linen.Conv`` or ``jconv.linen.Conv``, or a ``functools.partial`` of one)."""

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int = 1000
    num_filters: int = 64
    dtype: Any = jnp.float32
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2**i, strides=strides, conv=conv, norm=norm, act=self.act)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return jnp.asarray(x, self.dtype)


resnet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckResNetBlock)
resnet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=ResNetBlock)
