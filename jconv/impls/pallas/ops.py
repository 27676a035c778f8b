"""The ``pallas`` backend: forward, input gradient and weight gradient of a spec, each Pallas.

* forward: the padded (and input-dilated) ``x`` convolved by :func:`.calls.forward_valid`;
* input gradient: the same forward kernel on the cotangent dilated by the stride and padded,
  with the flipped, in/out-swapped kernel (:meth:`ExecSpec.input_grad_spec`; XLA pads, flips and
  transposes around the kernel);
* weight gradient: its own kernels (window^T @ cotangent, reduced over batch and row tiles).

The convolution primitive (:mod:`jconv.primitive`) lowers each for the platform it compiles for
(interpreted on the CPU, Mosaic on TPU, Triton on CUDA) and makes every derivative out of them,
so a derivative of a Pallas op is again a Pallas op. Nothing falls back to XLA's convolution.

On CPU and CUDA each op is a ``custom_partitioning`` function that XLA's partitioner splits along
the batch (:mod:`jconv.impls.partitioning`); on TPU a batch-sharded input is split by ``shard_map`` when the
mesh is known while tracing (``split_batch``; see docs/pallas.md, Sharding).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax

from jconv.spec import ExecSpec
from jconv.impls import registry
from jconv.impls.common import pad_input, transpose_kernel
from jconv.impls import partitioning
from jconv.impls.pallas import calls
from jconv.targets import TRITON_MIN_CAPABILITY, Target


def _check_target(target: Target) -> None:
    if target.platform == "cuda" and not target.triton_ok:
        raise NotImplementedError(
            f"conv2d: impl='pallas' compiles with Triton on GPUs, which needs compute capability "
            f"{'%d.%d' % TRITON_MIN_CAPABILITY} or newer; {target.describe()} is older. Use impl='xla'"
        )


# The three functions of a spec, unpartitioned. ``blocks`` and ``interpret`` (tests: explicit
# tiles, TPU interpret mode with race detection) go to every pallas_call they make. A batch whose
# operands would not fit the target's memory budget runs in chunks of examples, one after the
# other (``lax.map``): the temporaries of one chunk are alive at a time.


def _in_chunks(fn, a, chunk: int):
    """``fn`` over the leading (batch) axis of ``a`` in chunks of ``chunk`` examples, one after
    the other (``lax.map``), results concatenated. The batch is zero-padded to a multiple of
    ``chunk`` and the padding cropped from the result."""
    n = a.shape[0]
    k = -(-n // chunk)
    if k * chunk != n:
        a = jnp.pad(a, ((0, k * chunk - n),) + ((0, 0),) * (a.ndim - 1))
    out = lax.map(fn, a.reshape((k, chunk) + a.shape[1:]))
    return out.reshape((k * chunk,) + out.shape[2:])[:n]


def _chunk_of(spec: ExecSpec, target: Target, kind: str, dtype, blocks) -> int:
    return spec.batch if blocks is not None else calls.batch_chunk(spec, target, kind, dtype)


def spec_forward(x, w, spec: ExecSpec, target: Target, *, blocks=None, interpret=None):
    vspec = spec.valid_spec()
    chunk = _chunk_of(vspec, target, "fwd", x.dtype, blocks)

    def run(x_, s=spec):
        return calls.forward_valid(pad_input(x_, s), w, s.valid_spec(), target=target, out_dtype=s.out_dtype,
                                   precision=s.precision, blocks=blocks, interpret=interpret)

    if chunk >= spec.batch:
        return run(x)
    return _in_chunks(lambda xc: run(xc, dataclasses.replace(spec, batch=chunk)), x, chunk)


def spec_input_grad(dy, w, spec: ExecSpec, target: Target, *, blocks=None, interpret=None):
    ig = spec.input_grad_spec()
    ct = jnp.promote_types(dy.dtype, w.dtype)
    wt = transpose_kernel(w.astype(ct), spec.groups)
    chunk = _chunk_of(ig.valid_spec(), target, "fwd", ct, blocks)

    def run(dy_, s=ig):
        gp = pad_input(dy_.astype(ct), s)  # dilated by the stride, padded (or cropped)
        with calls.role("input gradient"):
            return calls.forward_valid(gp, wt, s.valid_spec(), target=target, out_dtype=spec.dtype,
                                       precision=spec.precision, blocks=blocks, interpret=interpret)

    if chunk >= spec.batch:
        return run(dy)
    return _in_chunks(lambda gc: run(gc, dataclasses.replace(ig, batch=chunk)), dy, chunk)


def spec_weight_grad(x, dy, spec: ExecSpec, target: Target, *, blocks=None, interpret=None):
    """float32 dw."""
    vspec = spec.valid_spec()
    chunk = _chunk_of(vspec, target, "dw", jnp.promote_types(x.dtype, dy.dtype), blocks)

    def run(x_, dy_, s=spec):
        with calls.role("weight gradient"):
            return calls.weight_grad_valid(pad_input(x_, s), dy_, s.kernel_shape, s.valid_spec(), target=target,
                                           precision=s.precision, blocks=blocks, interpret=interpret)

    if chunk >= spec.batch:
        return run(x, dy)
    local = dataclasses.replace(spec, batch=chunk)
    n = spec.batch
    k = -(-n // chunk)
    pad = ((0, k * chunk - n),)
    xs = jnp.pad(x, pad + ((0, 0),) * 3).reshape((k, chunk) + x.shape[1:])
    gs = jnp.pad(dy, pad + ((0, 0),) * 3).reshape((k, chunk) + dy.shape[1:])
    return lax.map(lambda a: run(a[0], a[1], local), (xs, gs)).sum(axis=0)


def _forward(x, w, spec, target):  # custom_partitioning takes positional functions only
    return spec_forward(x, w, spec, target)


def _input_grad(dy, w, spec, target):
    return spec_input_grad(dy, w, spec, target)


def _weight_grad(x, dy, spec, target):
    return spec_weight_grad(x, dy, spec, target)


_forward_op = partitioning.batch_op(_forward)
_input_grad_op = partitioning.batch_op(_input_grad)
_weight_grad_op = partitioning.batch_sum_op(_weight_grad)


def _partitioned(target: Target) -> bool:
    return target.platform in partitioning.PARTITIONED_PLATFORMS


def forward(x, w, spec: ExecSpec, target: Target):
    _check_target(target)
    return (_forward_op if _partitioned(target) else _forward)(x, w, spec, target)


def input_grad(dy, w, spec: ExecSpec, target: Target):
    _check_target(target)
    return (_input_grad_op if _partitioned(target) else _input_grad)(dy, w, spec, target)


def weight_grad(x, dy, spec: ExecSpec, target: Target):
    _check_target(target)
    dw = (_weight_grad_op if _partitioned(target) else _weight_grad)(x, dy, spec, target)
    return dw.astype(spec.dtype)


#: the dtypes the kernels compute (operands and result)
DTYPES = ("float16", "bfloat16", "float32")


def supports(spec: ExecSpec) -> str | None:
    """Floating operands and results of :data:`DTYPES`. (An empty convolution never reaches a
    backend: :func:`jconv.conv2d` returns lax's zeros for it.)"""
    if "float64" in (spec.dtype, spec.out_dtype):
        return "impl='pallas' does not support float64 (no f64 matmul in TPU/GPU kernels); use impl='lax' or impl='xla'"
    for what, name in (("operands", spec.dtype), ("result", spec.out_dtype)):
        if name not in DTYPES:
            return (f"impl='pallas' computes {', '.join(DTYPES)} convolutions, not {name} {what}; "
                    "impl='xla' runs every dtype")
    return None


PALLAS = registry.Algorithm("pallas", forward, input_grad, weight_grad, supports=supports,
                            summary="Pallas kernels: interpreted on CPU, Mosaic on TPU, Triton on CUDA")

BACKEND = registry.register(registry.Backend(
    name="pallas", algorithms={"pallas": PALLAS}, choose=lambda spec, platform: ("pallas", "requested"),
    tune_candidates=lambda spec, platform: [] if platform == "cpu" else ["pallas"],
    platforms=("cpu", "tpu", "cuda"), interpreted=("cpu",), split_batch=True,
    summary="the Pallas kernel (Mosaic on TPU, Triton on CUDA, interpreted on CPU)",
))
