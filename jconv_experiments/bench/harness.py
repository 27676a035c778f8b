"""Measuring one layer: accuracy and time of several implementations, timed together.

:func:`measure_group` runs one layer (:class:`jconv_experiments.suite.Case`) at one batch, dtype and pass
for several implementations: accuracy against a float64 reference (XLA at HIGHEST under
``jax.enable_x64``; HIGHEST float32 for layers above a FLOP budget, recorded in the row's
``reference`` field) and against XLA itself, time, GFLOP/s, memory, one row each.

Implementations (``impl`` of a row):

* a peer (:mod:`jconv_experiments.bench.peers`): ``"xla"``, the baseline every speedup is
  relative to (``lax.conv_general_dilated`` called directly in the layer's own layout),
  ``"torch"``, ``"gemm_peak"``;
* any jconv impl string (``"lax"``, ``"auto"``, ``"pallas"``, ``"lax:im2col"`` ...), run through
  the public :func:`jconv.conv2d` by :meth:`Case.apply`; a backend that runs interpreted on this
  platform (Pallas on CPU) gets ``interpreted: true`` and is timed apart (not a speed figure).

FLOPs: ``2 * multiply-adds`` of the forward (bias not counted); ``fwd+bwd`` (the gradient of
``sum(y * ct)`` with respect to x, w and b) counts 3x the forward.
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jconv_experiments.bench.peers import BASELINE, PEERS
from jconv.timing import compile_timed, layer_pass, time_fields, time_interleaved
from jconv import select
from jconv_experiments.suite import Case
from jconv.testing import max_errors, scaled_error, tolerance

PASSES = ("fwd", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How :func:`measure_group` measures (the compare config's timing/accuracy fields)."""

    warmup: int = 1
    iters: int = 10
    min_iters: int = 3
    max_time_s: float = 10.0          # per group, for the interleaved rounds
    block: int = 3                    # calls per candidate per round (first not recorded)
    interpreted_iters: int = 1        # Pallas on CPU: timed apart, this many calls
    precision: str | None = None      # None: each impl's default ("default" in configs)
    x64_reference_max_gflop: float = 2.0  # float64 reference up to this many GFLOP (the pass's)
    grad_tol_factor: float = 4.0      # gradients are longer reductions: tolerance x this
    torch_threads: int = 0            # 0: os.cpu_count()
    seed: int = 0


def _np_dtype(dtype: str):
    return np.dtype(jnp.dtype(dtype))


def make_inputs(case: Case, batch: int, dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs for ``case``: x ~ N(0,1), w ~ N(0, 1/fan_in), b ~ N(0,1), and a
    cotangent ct ~ N(0,1) shaped like the output; NumPy arrays of ``dtype``."""
    rng = np.random.default_rng([seed, zlib.crc32(case.name.encode())])
    spec = case.spec(batch, "float32")
    fan_in = spec.group_in_channels * spec.kernel_size[0] * spec.kernel_size[1]
    dt = _np_dtype(dtype)
    out = {
        "x": rng.standard_normal(case.x_shape(batch), dtype=np.float32).astype(dt),
        "w": (rng.standard_normal(case.w_shape(), dtype=np.float32) / math.sqrt(fan_in)).astype(dt),
        "ct": rng.standard_normal(spec.out_shape, dtype=np.float32).astype(dt),
    }
    if case.bias:
        out["b"] = rng.standard_normal(case.b_shape(), dtype=np.float32).astype(dt)
    return out


def layer_fn(case: Case, impl: str, precision) -> Callable:
    """The layer as a JAX function ``f(x, w, b)``: a peer's program (the XLA baseline), or a
    jconv impl string through the public API (:meth:`Case.apply`)."""
    peer = PEERS.get(impl)
    if peer is None:
        return lambda x, w, b: case.apply(x, w, b, impl=impl, precision=precision)
    if peer.layer is None:
        raise ValueError(f"layer_fn: peer {impl!r} is not a JAX program")
    return peer.layer(case, precision)


def pass_fn(case: Case, impl: str, pass_: str, precision=None) -> Callable:
    """``f(x, w, b)``: the forward, or the gradients of ``sum(y * ct)`` (``f(x, w, b, ct)``)."""
    return layer_pass(layer_fn(case, impl, precision), pass_, has_bias=case.bias)


def _args(case: Case, pass_: str, arrays: dict) -> tuple:
    b = arrays.get("b")
    return (arrays["x"], arrays["w"], b) + ((arrays["ct"],) if pass_ != "fwd" else ())


def reference_outputs(case: Case, pass_: str, arrays: dict, *, use_x64: bool) -> tuple[list[np.ndarray], str]:
    """The reference result(s) as float64 NumPy arrays, and which reference it was.

    ``use_x64``: XLA at HIGHEST in float64 on the host CPU (where the CPU backend is available);
    else XLA at HIGHEST in float32 on the default device."""
    def layer(x, w, b):
        return case.reference(x, w, b, precision="highest")

    fn = layer_pass(layer, pass_, has_bias=case.bias)
    if use_x64:
        try:  # float64 on the host: accelerators emulate it slowly or not at all (TPU)
            host = jax.devices("cpu")[0]
        except RuntimeError:
            host = None
        with jax.enable_x64(True), jax.default_device(host):
            args = tuple(None if a is None else np.asarray(a, np.float64) for a in _args(case, pass_, arrays))
            if pass_ != "fwd":  # the loss in float64 too
                argnums = (0, 1, 2) if case.bias else (0, 1)
                fn = jax.grad(lambda x, w, b, ct: jnp.sum(layer(x, w, b) * ct), argnums=argnums)
            out = jax.jit(fn)(*args)
            outs = [np.asarray(o, np.float64) for o in jax.tree_util.tree_leaves(out)]
        return outs, "float64"
    args = tuple(None if a is None else np.asarray(a, np.float32) for a in _args(case, pass_, arrays))
    out = jax.jit(fn)(*args)
    return [np.asarray(o, np.float64) for o in jax.tree_util.tree_leaves(out)], "float32-highest"


def compare_outputs(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> dict:
    """max abs, max relative and scaled error (see jconv.testing) over all outputs."""
    if len(actual) != len(expected):
        raise ValueError(f"compare_outputs: {len(actual)} outputs vs {len(expected)} expected")
    abs_e = rel_e = sc = 0.0
    for a, e in zip(actual, expected):
        ab, re = max_errors(a, e)
        abs_e, rel_e = max(abs_e, ab), max(rel_e, re)
        sc = max(sc, scaled_error(a, e))
    return {"max_abs_err": abs_e, "max_rel_err": rel_e, "scaled_err": sc}


def effective_tolerance(dtype: str, platform_: str, precision: str | None, pass_: str,
                        grad_factor: float) -> float:
    """The row's tolerance: :func:`jconv.testing.tolerance` at the precision actually used on
    this platform, times ``grad_factor`` for gradients (longer reductions)."""
    return tolerance(dtype, precision=precision, platform=platform_) * (grad_factor if pass_ != "fwd" else 1.0)


def _layer_bytes(case: Case, batch: int, dtype: str, pass_: str) -> int:
    """Minimum memory traffic: every tensor touched once (fwd: x, w, b, y; fwd+bwd: those,
    plus ct, dx, dw, db)."""
    spec = case.spec(batch, "float32")
    item = _np_dtype(dtype).itemsize
    n = math.prod(spec.x_shape) + math.prod(spec.w_shape) + math.prod(spec.out_shape)
    n += case.out_channels if case.bias else 0
    return int(item * (n if pass_ == "fwd" else 2 * n))


@dataclasses.dataclass
class _Group:
    """One group's candidates while they are built: rows, outputs and blocking calls."""

    rows: dict[str, dict] = dataclasses.field(default_factory=dict)
    outputs: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    runners: dict[str, Callable[[], Any]] = dataclasses.field(default_factory=dict)
    interpreted: dict[str, Callable[[], Any]] = dataclasses.field(default_factory=dict)
    slow: set[str] = dataclasses.field(default_factory=set)


def _jconv_candidate(case: Case, impl: str, pass_: str, spec, args, precision, settings: Settings,
                     platform_: str, row: dict) -> tuple[Callable[[], Any], list[np.ndarray], bool]:
    """A jconv impl string: planned as ``conv2d`` plans it (the row says what ran and why, or
    conv2d's own error), compiled, run once."""
    p = select.plan(spec.execute_spec(), impl, fn="conv2d")
    row.update(plan=f"{p.impl}:{p.algorithm}", plan_reason=p.reason, interpreted=platform_ in p.interpreted_on)
    exe, csec, mem = compile_timed(pass_fn(case, impl, pass_, precision), *args)
    t0 = time.perf_counter()
    out = jax.block_until_ready(exe(*args))
    slow = time.perf_counter() - t0 > settings.max_time_s / max(1, settings.iters)  # this call was its warm-up
    row.update(mem, compile_s=csec)
    outs = [np.asarray(o, np.float64) for o in jax.tree_util.tree_leaves(out)]
    return (lambda: jax.block_until_ready(exe(*args))), outs, slow


def _time_group(g: _Group, settings: Settings) -> None:
    """Time the runners together (and the interpreted ones apart); the speedup over the baseline
    comes from the same rounds."""
    if g.runners:
        times = time_interleaved(g.runners, warmup=settings.warmup, iters=settings.iters,
                                 min_iters=settings.min_iters, max_time_s=settings.max_time_s,
                                 no_warmup=g.slow, block=settings.block)
        for impl, ts in times.items():
            g.rows[impl].update(time_fields(ts, g.rows[impl]["flops"]))
        if BASELINE in times:
            for impl in times:
                if impl != BASELINE and impl in g.outputs:  # a convolution (not a yardstick)
                    g.rows[impl]["speedup_vs_xla"] = g.rows[BASELINE]["time_median_s"] / g.rows[impl]["time_median_s"]
    if g.interpreted:
        times = time_interleaved(g.interpreted, warmup=0, iters=settings.interpreted_iters, min_iters=1, max_time_s=0.0)
        for impl, ts in times.items():
            g.rows[impl].update(time_fields(ts, g.rows[impl]["flops"]))


def measure_group(
    case: Case,
    batch: int,
    dtype: str,
    pass_: str,
    impls: Iterable[str],
    settings: Settings = Settings(),
    *,
    compare_to_xla: bool = True,
) -> list[dict]:
    """One row per impl (a jconv impl string or a peer) for ``case`` at ``batch``/``dtype``/
    ``pass_``, timed together.

    An impl that fails (e.g. one not implemented yet) gets a row with ``error`` set and no
    numbers; it is never replaced by another implementation. ``compare_to_xla`` also runs the
    baseline peer (:data:`~jconv_experiments.bench.peers.BASELINE`, untimed unless it is in
    ``impls``) so every row has ``scaled_err_vs_xla``.
    """
    impls = list(dict.fromkeys(impls))
    platform_ = jax.default_backend()
    precision = None if settings.precision in (None, "default") else settings.precision
    arrays = make_inputs(case, batch, dtype, settings.seed)
    args = _args(case, pass_, {k: jax.device_put(v) for k, v in arrays.items()})
    spec = case.spec(batch, dtype)
    flops = spec.flops * (1 if pass_ == "fwd" else 3)
    nbytes = _layer_bytes(case, batch, dtype, pass_)
    tol = effective_tolerance(dtype, platform_, settings.precision, pass_, settings.grad_tol_factor)
    ref, ref_kind = reference_outputs(case, pass_, arrays, use_x64=flops / 1e9 <= settings.x64_reference_max_gflop)
    base = {
        "case": case.name, "pass": pass_, "dtype": dtype, "batch": batch, "layout": case.layout,
        "platform": platform_, "device_kind": jax.devices()[0].device_kind,
        "precision": settings.precision or "default", "reference": ref_kind,
        "flops": flops, "bytes": nbytes, "intensity": flops / nbytes, "tol": tol,
        # not every impl has these (PyTorch: no XLA executable): None where not applicable
        "compile_s": None, "temp_bytes": None, "argument_bytes": None, "output_bytes": None,
    }
    g = _Group()
    for impl in impls + ([BASELINE] if compare_to_xla and BASELINE not in impls else []):
        row = dict(base, impl=impl, error=None, interpreted=False, plan=None)
        try:
            if impl in PEERS:
                if not PEERS[impl].applies(case, pass_):
                    continue
                cand = PEERS[impl].make(case, batch, pass_, arrays, dtype, precision, settings, platform_)
                row.update(cand.fields)
                run, outs = cand.run, cand.outputs
            else:
                run, outs, slow = _jconv_candidate(case, impl, pass_, spec, args, precision, settings, platform_, row)
                if slow:
                    g.slow.add(impl)
        except Exception as e:  # noqa: BLE001 - recorded in the row, never swapped for another impl
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
            g.rows[impl] = row
            continue
        (g.interpreted if row["interpreted"] else g.runners)[impl] = run
        if outs is not None:
            g.outputs[impl] = outs
            row.update(compare_outputs(outs, ref))
            row["within_tol"] = bool(row["scaled_err"] <= tol)
        g.rows[impl] = row
    if BASELINE not in impls:  # compared against, not timed
        g.runners.pop(BASELINE, None)
        g.rows.pop(BASELINE, None)
    for impl, row in g.rows.items():
        if impl in g.outputs and BASELINE in g.outputs:
            row["scaled_err_vs_xla"] = max(scaled_error(a, e) for a, e in zip(g.outputs[impl], g.outputs[BASELINE]))
            row["agrees_with_xla"] = bool(row["scaled_err_vs_xla"] <= tol)
    _time_group(g, settings)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return [dict(g.rows[i], time_utc=stamp) for i in impls if i in g.rows]


def geomean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


__all__ = ["Settings", "make_inputs", "layer_fn", "pass_fn", "layer_pass", "reference_outputs", "compare_outputs",
           "effective_tolerance", "measure_group", "geomean", "PASSES"]
