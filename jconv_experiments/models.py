"""The seed's MNIST CNN ("Tracing Through Your MNIST Model"), in flax linen and nnx.

    Input 28x28x1 -> Conv2D(32, 3, relu) -> MaxPool 2 -> Conv2D(64, 3, relu) -> MaxPool 2
    -> Flatten (1,600) -> Dropout 0.5 -> Dense 10

Per-layer parameters 320 / 18,496 / 16,010 and shapes 26x26x32, 13x13x32, 11x11x64, 5x5x64,
as in the seed. The convolutions are :class:`jconv.linen.Conv2D` (``impl`` selects jconv's
implementation); ``conv="flax"`` builds the identical model on ``flax.linen.Conv`` (same
parameter tree), the baseline for speed comparisons. Pooling, flatten and dropout are small
modules so that ``nn.tabulate`` lists every layer of the seed's table.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import jconv.linen
import jconv.nnx

__all__ = ["MnistCNN", "NnxMnistCNN", "MaxPool2D", "Flatten", "max_pool", "summary", "layer_table"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x, p: int):
    """Max over non-overlapping ``p x p`` windows of NHWC ``x``, floor (VALID) like Keras.

    The same values and gradients as ``nn.max_pool(x, (p, p), strides=(p, p))``: each window's
    gradient goes to its first maximum in row-major order. Computed as a reshape and a max, with
    an elementwise backward: XLA's CPU gradient of ``nn.max_pool`` (``select_and_scatter`` and
    an index-tracking ``reduce_window``) took a large share of the seed's training step on the
    CPU; this one removes it (measurements: docs/performance.md, the MNIST step).
    """
    return _max_pool_fwd(x, p)[0]


def _windows(x, p: int):
    n, h, w, c = x.shape
    if not (isinstance(p, int) and p >= 1):
        raise ValueError(f"max_pool: pool size (={p!r}) must be a positive int")
    if h < p or w < p:
        raise ValueError(f"max_pool: input {h}x{w} is smaller than the {p}x{p} window")
    return x[:, : h // p * p, : w // p * p].reshape(n, h // p, p, w // p, p, c)


def _max_pool_fwd(x, p: int):
    y = jnp.max(_windows(x, p), axis=(2, 4))
    return y, (x, y)


def _max_pool_bwd(p: int, res, g):
    x, y = res
    r, shape = _windows(x, p), x.shape
    found = jnp.zeros(y.shape, bool)
    rows = []
    for a in range(p):
        row = []
        for b in range(p):
            hit = (r[:, :, a, :, b, :] == y) & ~found  # the first maximum, row-major
            found = found | hit
            row.append(jnp.where(hit, g, jnp.zeros((), g.dtype)))
        rows.append(jnp.stack(row, axis=3))  # (N, Ho, Wo, p, C)
    dx = jnp.stack(rows, axis=2)  # (N, Ho, p, Wo, p, C)
    n, ho, _, wo, _, c = dx.shape
    dx = dx.reshape(n, ho * p, wo * p, c)
    dx = jnp.pad(dx, ((0, 0), (0, shape[1] - ho * p), (0, shape[2] - wo * p), (0, 0)))
    return (dx,)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


class MaxPool2D(nn.Module):
    """``MaxPooling2D(pool_size)``: non-overlapping windows, floor (VALID) like Keras
    (:func:`max_pool`)."""

    pool_size: int = 2

    @nn.compact
    def __call__(self, x):
        return max_pool(x, self.pool_size)


class Flatten(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jnp.reshape(x, (x.shape[0], -1))


class MnistCNN(nn.Module):
    """The seed's MNIST model. ``__call__(x, *, deterministic)``: x ``(N, 28, 28, 1)`` -> logits."""

    num_classes: int = 10
    dropout_rate: float = 0.5
    impl: str = "auto"
    conv: str = "jconv"  # "jconv" (jconv.linen.Conv2D) or "flax" (flax.linen.Conv), same params
    dtype: jnp.dtype | None = None

    def _conv(self, features: int, name: str) -> nn.Module:
        if self.conv == "jconv":
            return jconv.linen.Conv2D(features, 3, padding="VALID", impl=self.impl, dtype=self.dtype, name=name)
        if self.conv == "flax":
            return nn.Conv(features, (3, 3), padding="VALID", dtype=self.dtype, name=name)
        raise ValueError(f"MnistCNN: conv (={self.conv!r}) must be 'jconv' or 'flax'")

    @nn.compact
    def __call__(self, x, *, deterministic: bool):
        x = nn.relu(self._conv(32, "conv1")(x))
        x = MaxPool2D(2, name="pool1")(x)
        x = nn.relu(self._conv(64, "conv2")(x))
        x = MaxPool2D(2, name="pool2")(x)
        x = Flatten(name="flatten")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=deterministic, name="dropout")(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="dense")(x)


class NnxMnistCNN(nnx.Module):
    """The same model in flax.nnx, on :class:`jconv.nnx.Conv2D`. ``model.eval()`` disables dropout."""

    def __init__(self, *, num_classes: int = 10, dropout_rate: float = 0.5, impl: str = "auto", rngs: nnx.Rngs):
        self.conv1 = jconv.nnx.Conv2D(1, 32, 3, padding="VALID", impl=impl, rngs=rngs)
        self.conv2 = jconv.nnx.Conv2D(32, 64, 3, padding="VALID", impl=impl, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.dense = nnx.Linear(5 * 5 * 64, num_classes, rngs=rngs)

    def __call__(self, x):
        pool = functools.partial(max_pool, p=2)
        x = pool(nnx.relu(self.conv1(x)))
        x = pool(nnx.relu(self.conv2(x)))
        x = jnp.reshape(x, (x.shape[0], -1))
        return self.dense(self.dropout(x))


def layer_table(model: MnistCNN | None = None, batch: int = 1) -> list[tuple[str, tuple, int]]:
    """``[(layer, output shape without batch, parameters), ...]`` in the seed's order, from an
    abstract trace (no compute): the rows of "Tracing Through Your MNIST Model"."""
    model = model or MnistCNN()
    x = jax.ShapeDtypeStruct((batch, 28, 28, 1), jnp.float32)

    def run(x):
        return model.init_with_output(
            jax.random.key(0), x, deterministic=True, capture_intermediates=True
        )

    _, variables = jax.eval_shape(run, x)
    inter = variables["intermediates"]
    params = variables["params"]
    rows = [("input", (28, 28, 1), 0)]
    for name in ("conv1", "pool1", "conv2", "pool2", "flatten", "dropout", "dense"):
        shape = tuple(inter[name]["__call__"][0].shape[1:])
        n = sum(math.prod(p.shape) for p in jax.tree.leaves(params.get(name, {})))
        rows.append((name, shape, n))
    return rows


def summary(model: MnistCNN | None = None, *, tabulate: bool = True) -> str:
    """The seed's table (layer, output shape, params) and, with ``tabulate``, flax's."""
    model = model or MnistCNN()
    rows = layer_table(model)
    lines = [f"{'layer':<10} {'output shape':<22} {'params':>8}"]
    for name, shape, n in rows:
        lines.append(f"{name:<10} {'(batch, ' + ', '.join(map(str, shape)) + ')':<22} {n:>8,}")
    lines.append(f"{'total':<10} {'':<22} {sum(n for _, _, n in rows):>8,}")
    text = "\n".join(lines)
    if tabulate:
        tab = nn.tabulate(model, jax.random.key(0), console_kwargs={"width": 120, "force_terminal": False})
        text += "\n\n" + tab(jnp.zeros((1, 28, 28, 1)), deterministic=True)
    return text
