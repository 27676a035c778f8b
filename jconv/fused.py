"""The convolution with its epilogue: ``max(0, conv(x, w) + b)`` in one pass where the backend
has one (``Algorithm.forward_relu``: oneDNN's post-ops), for every backend.

A custom call ends XLA's fusion: after the convolution's custom call, the bias and the ReLU are
one more pass over the output (read and write), which a backend with an epilogue does while the
output is in registers. ``relu_p`` is that forward, one primitive of ``(x, w, b)``:

* lowering: the backend's ``forward_relu`` where its algorithm has one, else the forward of
  :mod:`jconv.primitive` followed by the bias and the ReLU (the same as unfused);
* differentiation (``jax.custom_jvp``): the tangent of ``z = max(0, y)``, ``y = conv(x, w) + b``,
  is ``(z > 0) * (conv(dx, w) + conv(x, dw) + db)``, made of the convolution primitive's own
  (bilinear) kinds, so reverse mode runs the backend's input and weight gradients on the
  masked cotangent, and forward mode, higher orders and ``vmap`` hold as for the convolution;
* ``vmap`` of the forward: the unfused composition under the convolution's batching rule;
* batch sharding: as for the convolution (the backend's custom partitioning, or ``shard_map``
  over a mesh known while tracing).

NaN: composed, the ReLU is ``jax.nn.relu`` (NaN stays NaN); oneDNN's epilogue on its jit kernels
is the hardware max, which turns a NaN output into 0 (its GEMM-based kernels keep NaN). The
gradient masks with ``z > 0``, so a NaN turned into 0 gets a zero gradient, as its value.

:func:`jconv.conv2d` ``activation="relu"`` and the Flax modules' ``activation`` field use it.
Where the epilogue pays and where it does not: docs/performance.md (the oneDNN section).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

from jconv import primitive, targets
from jconv.impls import registry
from jconv.impls.common import add_bias
from jconv.spec import ExecSpec

#: the epilogues :func:`conv_relu` computes (``None``: the bias alone, no epilogue)
ACTIVATIONS = ("relu",)

relu_p = Primitive("jconv_conv_bias_relu")


def relu(y):
    """``max(0, y)`` in ``y``'s own dtype (``jax.nn.relu`` promotes a boolean ``y``)."""
    return jnp.maximum(y, jnp.zeros((), y.dtype))


def _unfused(x, w, b, *, spec, impl, algorithm):
    y = primitive.conv_p.bind(x, w, kind="fwd", spec=spec, impl=impl, algorithm=algorithm)
    return relu(add_bias(y, b, axis=spec.channel_axis))


def _abstract_eval(x, w, b, *, spec, impl, algorithm):
    return jax.core.ShapedArray(spec.out_shape, jnp.dtype(spec.out_dtype))


relu_p.def_abstract_eval(_abstract_eval)
relu_p.def_impl(lambda x, w, b, **params: jax.jit(functools.partial(relu_p.bind, **params))(x, w, b))


def _lowering(platform: str):
    def rule(ctx, x, w, b, *, spec, impl, algorithm):
        alg = registry.get(impl).algorithm(algorithm)
        if alg.forward_relu is None or platform not in registry.get(impl).platforms:
            return mlir.lower_fun(functools.partial(_unfused, spec=spec, impl=impl, algorithm=algorithm),
                                  multiple_results=False)(ctx, x, w, b)
        target, _ = targets.resolve(platform, getattr(ctx.avals_in[0], "sharding", None))

        def lowered(x_, w_, b_):
            return alg.forward_relu(x_, w_, b_, spec, target).astype(spec.out_dtype)

        return mlir.lower_fun(lowered, multiple_results=False)(ctx, x, w, b)

    return rule


for _platform in primitive.LOWERING_PLATFORMS:
    mlir.register_lowering(relu_p, _lowering(_platform), platform=_platform)


def _batch_rule(args, dims, *, spec, impl, algorithm):
    """Any vmap: the unfused composition, batched by the convolution's own rule."""
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    args = [a if d is not None else jnp.broadcast_to(a, (size,) + a.shape) for a, d in zip(args, dims)]
    dims = [d if d is not None else 0 for d in dims]
    f = functools.partial(_unfused, spec=spec, impl=impl, algorithm=algorithm)
    return jax.vmap(f, in_axes=tuple(dims))(*args), 0


batching.primitive_batchers[relu_p] = _batch_rule
primitive._require_devices_during_lowering(relu_p)  # noqa: SLF001 (a backend's custom partitioning)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _conv_relu(x, w, b, spec, impl, algorithm):
    return relu_p.bind(x, w, b, spec=spec, impl=impl, algorithm=algorithm)


def _conv_relu_jvp(spec, impl, algorithm, primals, tangents):
    """Symbolic zeros skipped: a gradient of the weights alone (a constant ``x``) runs no
    convolution of a zero ``dx``."""
    x, w, b = primals
    dx, dw, db = tangents
    z = _conv_relu(x, w, b, spec, impl, algorithm)
    params = dict(kind="fwd", spec=spec, impl=impl, algorithm=algorithm)
    terms = [primitive.conv_p.bind(t, p, **params) for t, p in ((dx, w), (x, dw)) if not _zero(t)]
    dy = functools.reduce(jnp.add, terms) if terms else jnp.zeros(z.shape, z.dtype)
    if not _zero(db):
        dy = add_bias(dy, db, axis=spec.channel_axis)
    return z, jnp.where(z > 0, dy.astype(z.dtype), jnp.zeros((), z.dtype))


def _zero(t) -> bool:
    return isinstance(t, SymbolicZero)


_conv_relu.defjvp(_conv_relu_jvp, symbolic_zeros=True)


def conv_relu(x, w, b, *, spec: ExecSpec, impl: str, algorithm: str):
    """``max(0, conv(x, w) + b)`` of execute spec ``spec`` by ``impl``'s ``algorithm`` (``b``
    of shape (C_out,)); split over a known batch mesh where the backend needs it."""
    return primitive.over_batch_shards(lambda s, *a: _conv_relu(*a, s, impl, algorithm), spec, impl, x, w, b)


__all__ = ["relu_p", "conv_relu", "relu", "ACTIVATIONS"]
