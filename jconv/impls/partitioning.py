"""XLA's SPMD partitioner splits a backend's custom calls along the batch (``custom_partitioning``).

A ``pallas_call`` (or a native FFI call) is a custom call XLA cannot split: on a batch-sharded
input it would gather the whole batch on every device. On CPU and CUDA each op of such a backend
(Pallas, oneDNN) is therefore a ``custom_partitioning``
function: when XLA partitions the program (a jit over sharded arrays, the mesh known only from
the arrays), it asks ``partition`` for a per-device program: the batch dim stays sharded as the
input is (over the same mesh axes), everything else is replicated (XLA gathers any other
sharding first), and each device runs the kernel on its own examples. The weight gradient, a sum
over the batch, is summed over the batch axes (an all-reduce of the small dw, in float32). A
batch that does not divide evenly over those axes runs unsplit (XLA would pad the shards with
rows that must not enter dw). On one device the function is inlined as is.

Not on TPU: libtpu in this JAX has no hook for the Python partitioner ("Custom emitter for
CustomSPMDPartitioning not found", jax-ml/jax#38196), so there a multi-device program must run
the op under ``shard_map`` (the primitive does that when the mesh is known while tracing:
``Backend.split_batch``); outside one, Mosaic refuses to lower it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning

#: platforms where XLA's partitioner can split the ops
PARTITIONED_PLATFORMS = ("cpu", "cuda")


def _batch_axes(arg, mesh, batch: int):
    """(mesh axes the batch dim of ``arg`` is sharded over, or None; number of shards)."""
    sharding = arg.sharding
    if not isinstance(sharding, jax.sharding.NamedSharding) or not len(sharding.spec):
        return None, 1
    axes = sharding.spec[0]
    names = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
    if not names:
        return None, 1
    shards = int(np.prod([mesh.shape[a] for a in names]))
    if shards == 1 or batch % shards:
        return None, 1
    return (names[0] if len(names) == 1 else tuple(names)), shards


def _partition_mesh(mesh, arg):
    """The mesh to partition over: the operand's (a NamedSharding's), else the context's."""
    sharding = arg.sharding
    return sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else mesh


def _named(mesh, *spec):
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


def _all_but_batch(rule: str) -> tuple[str, ...]:
    """Factors of an einsum-like sharding ``rule`` other than the batch ``n``, in order of
    appearance (the order Shardy requires): all must stay replicated."""
    names = rule.replace(",", " ").replace("->", " ").split()
    return tuple(dict.fromkeys(f for f in names if f != "n"))


def batch_op(body, *, bias: bool = False):
    """``body(act, w, spec, target) -> out`` with the batch of ``act`` and ``out`` in dim 0 (the
    forward, and the input gradient: a forward of the cotangent), split by XLA's partitioner.
    ``bias``: ``body(act, w, b, spec, target)``, ``b`` replicated (a fused epilogue's bias)."""
    operands = 3 if bias else 2

    def infer(spec, target, mesh, arg_shapes, result_shape):
        mesh = _partition_mesh(mesh, arg_shapes[0])
        return _named(mesh, _batch_axes(arg_shapes[0], mesh, spec.batch)[0])

    def partition(spec, target, mesh, arg_shapes, result_shape):
        mesh = _partition_mesh(mesh, arg_shapes[0])
        axes, shards = _batch_axes(arg_shapes[0], mesh, spec.batch)
        local = dataclasses.replace(spec, batch=spec.batch // shards)
        a_sh = _named(mesh, axes)
        args = (a_sh,) + (_named(mesh),) * (operands - 1)
        return mesh, functools.partial(body, spec=local, target=target), a_sh, args

    rule = "n x0 x1 x2, w0 w1 w2 w3" + (", b0" if bias else "") + " -> n y0 y1 y2"
    op = custom_partitioning(body, static_argnums=(operands, operands + 1))
    op.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule,
                     need_replication_factors=_all_but_batch(rule))
    return op


def batch_sum_op(body):
    """``body(x, g, spec, target) -> float32 dw``, a sum over the batch of ``x`` and ``g``: split
    along the batch by XLA's partitioner, the per-shard sums all-reduced in float32."""

    def summed(x, g, *, spec, target, axes):
        dw = body(x, g, spec, target)
        return dw if axes is None else lax.psum(dw, axes)

    def infer(spec, target, mesh, arg_shapes, result_shape):
        return _named(_partition_mesh(mesh, arg_shapes[0]))

    def partition(spec, target, mesh, arg_shapes, result_shape):
        mesh = _partition_mesh(mesh, arg_shapes[0])
        axes, shards = _batch_axes(arg_shapes[0], mesh, spec.batch)
        local = dataclasses.replace(spec, batch=spec.batch // shards)
        lower = functools.partial(summed, spec=local, target=target, axes=axes)
        return mesh, lower, _named(mesh), (_named(mesh, axes), _named(mesh, axes))

    rule = "n x0 x1 x2, n g0 g1 g2 -> d0 d1 d2 d3"
    op = custom_partitioning(body, static_argnums=(2, 3))
    op.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule,
                     need_replication_factors=_all_but_batch(rule))
    return op


__all__ = ["batch_op", "batch_sum_op", "PARTITIONED_PLATFORMS"]
