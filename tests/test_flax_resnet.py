"""Flax's ImageNet ResNet pattern (examples/imagenet/models.py: blocks that take ``conv`` as a
module parameter and call it unnamed, BatchNorm, a 7x7 stride-2 stem, max pooling, a dense head)
with jconv's modules swapped in.

* linen: variables made with ``conv=nn.Conv`` drive ``conv=jconv.linen.Conv`` unchanged (the
  same tree, the same logits, the same batch statistics updates), while ``jconv.linen.Conv2D``
  auto-names the unnamed convs ``Conv2D_<i>``, so flax's checkpoint does not load into it: the
  module to recommend for existing models is ``jconv.linen.Conv``.
* nnx: parameters are named after attributes, so ``jconv.nnx.Conv2D`` in place of ``nnx.Conv``
  gives the same state (names and values, from the same ``Rngs``) and the same logits.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax import traverse_util

import jconv.linen as jl
import jconv.nnx as jn
from jconv.testing import assert_close


class BasicBlock(nn.Module):
    """Two 3x3 convs; a 1x1 projection when the shape changes."""

    filters: int
    conv: Any
    norm: Any
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
        y = self.norm(scale_init=nn.initializers.zeros_init())(self.conv(self.filters, (3, 3))(y))
        if x.shape != y.shape:
            x = self.norm(name="norm_proj")(self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(x))
        return self.act(x + y)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4; a projection when the shape changes."""

    filters: int
    conv: Any
    norm: Any
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        y = self.act(self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
        y = self.norm(scale_init=nn.initializers.zeros_init())(self.conv(self.filters * 4, (1, 1))(y))
        if x.shape != y.shape:
            x = self.norm(name="norm_proj")(self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(x))
        return self.act(x + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    block_cls: Any
    num_classes: int = 10
    num_filters: int = 8
    conv: Any = nn.Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(self.conv, use_bias=False)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2**i, conv=conv, norm=norm, act=nn.relu, strides=strides)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


BLOCKS = [BasicBlock, Bottleneck]


def _x(seed=1):
    return jax.random.normal(jax.random.key(seed), (2, 32, 32, 3))


def _paths(variables):
    return set(traverse_util.flatten_dict(variables["params"], sep="/"))


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.__name__)
def test_flax_variables_drive_jconv_linen_conv(block):
    x = _x()
    ref = ResNet([1, 1], block, conv=nn.Conv)
    ours = ResNet([1, 1], block, conv=jl.Conv)
    variables = ref.init(jax.random.key(0), x, train=False)
    # the same tree and values from the same key: a flax checkpoint loads as it is
    jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(0), x, train=False), variables)
    assert any("Conv_1" in p for p in _paths(variables))  # the blocks' unnamed convs
    # evaluation: the same logits
    assert_close(ours.apply(variables, x, train=False), ref.apply(variables, x, train=False), jnp.float32)
    # training mode: the same logits and the same running statistics
    y_ref, upd_ref = ref.apply(variables, x, train=True, mutable=["batch_stats"])
    y, upd = ours.apply(variables, x, train=True, mutable=["batch_stats"])
    assert_close(y, y_ref, jnp.float32)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float32, factor=2), upd, upd_ref)


def test_flax_gradients_through_jconv_linen_conv():
    x, labels = _x(), jnp.arange(2) % 10
    variables = ResNet([1, 1], BasicBlock).init(jax.random.key(0), x, train=False)

    def loss(model):
        def f(params):
            logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                    train=True, mutable=["batch_stats"])
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

        return f

    g_ref = jax.grad(loss(ResNet([1, 1], BasicBlock, conv=nn.Conv)))(variables["params"])
    g = jax.grad(loss(ResNet([1, 1], BasicBlock, conv=jl.Conv)))(variables["params"])
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float32, factor=10), g, g_ref)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.__name__)
def test_conv2d_auto_names_differ(block):
    """``jconv.linen.Conv2D`` names the unnamed convs after its own class: flax's checkpoint
    does not load into it (explicitly named layers still match)."""
    x = _x()
    flax_vars = ResNet([1, 1], block, conv=nn.Conv).init(jax.random.key(0), x, train=False)
    conv2d_vars = ResNet([1, 1], block, conv=jl.Conv2D).init(jax.random.key(0), x, train=False)
    ours, theirs = _paths(conv2d_vars), _paths(flax_vars)
    assert ours != theirs
    assert {p for p in ours ^ theirs if "Conv" in p} == ours ^ theirs  # only the auto-named convs
    assert {p.replace("Conv2D_", "Conv_") for p in ours} == theirs
    named = {p for p in theirs if p.startswith("conv_init/") or "/conv_proj/" in p}
    assert named and {p for p in ours & theirs if "conv" in p.lower()} == named
    with pytest.raises(flax.errors.ScopeParamNotFoundError):
        ResNet([1, 1], block, conv=jl.Conv2D).apply(flax_vars, x, train=False)


class NnxBlock(nnx.Module):
    """The same basic block in nnx: layers are attributes, ``conv`` a class parameter."""

    def __init__(self, cin, filters, strides, *, conv, rngs):
        self.conv1 = conv(cin, filters, (3, 3), strides, use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(filters, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.conv2 = conv(filters, filters, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(filters, momentum=0.9, epsilon=1e-5, scale_init=nnx.initializers.zeros_init(),
                                 rngs=rngs)
        self.proj = nnx.data(None)  # a layer when the shape changes
        if strides != (1, 1) or cin != filters:
            self.proj = conv(cin, filters, (1, 1), strides, use_bias=False, rngs=rngs)
            self.bn_proj = nnx.BatchNorm(filters, momentum=0.9, epsilon=1e-5, rngs=rngs)

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.proj is not None:
            x = self.bn_proj(self.proj(x))
        return nnx.relu(x + y)


class NnxResNet(nnx.Module):
    def __init__(self, *, conv, rngs, width=8, num_classes=10):
        self.conv_init = conv(3, width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False, rngs=rngs)
        self.bn_init = nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.blocks = nnx.List([NnxBlock(width, width, (1, 1), conv=conv, rngs=rngs),
                                NnxBlock(width, 2 * width, (2, 2), conv=conv, rngs=rngs)])
        self.head = nnx.Linear(2 * width, num_classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn_init(self.conv_init(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))


def test_nnx_conv2d_is_a_drop_in_for_nnx_conv():
    x = _x()
    ref, ours = NnxResNet(conv=nnx.Conv, rngs=nnx.Rngs(0)), NnxResNet(conv=jn.Conv2D, rngs=nnx.Rngs(0))
    ref_state, state = nnx.state(ref), nnx.state(ours)
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)  # the same names
    jax.tree.map(np.testing.assert_array_equal, state, ref_state)  # the same values
    for mode in ("train", "eval"):
        getattr(ref, mode)()
        getattr(ours, mode)()
        assert_close(ours(x), ref(x), jnp.float32, what=mode)
    # the running statistics updated in training mode match too
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float32, factor=2),
                 nnx.state(ours, nnx.BatchStat), nnx.state(ref, nnx.BatchStat))
