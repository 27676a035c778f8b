"""The tuner: measure the candidate implementations of one convolution on this machine, keep
the fastest in a cache file, and let ``impl="auto"`` read it.

  import jconv
  jconv.tune(x, w, b, padding=1, groups=32, cache="tune.json")  # once, on the user's shapes
  y = jconv.conv2d(x, w, b, padding=1, groups=32)               # auto now runs the winner

  JCONV_TUNE_CACHE=tune.json python train.py                     # or: jconv.use_tune_cache(path)

Why: the rules in :mod:`jconv.select` are static, but some choices depend on more than the
rules look at: which algorithm wins a big, thin dense layer's weight gradient on the CPU
changes with the batch (docs/performance.md, the tuner). Only a measurement on the user's
shapes settles those.

What is measured: every candidate (each registered backend's ``tune_candidates`` that can run
the spec on the platform: on the CPU ``"xla"``, each lax algorithm and oneDNN's where its
plugin is installed; ``"xla"`` and ``"pallas"`` on GPU/TPU) is compiled and called twice; candidates whose
second call is more than ``prune`` times slower than the best are dropped; the rest are timed together
by :func:`jconv.timing.time_interleaved` (blocks of calls, medians); the rules' choice stays
unless another candidate beats it by more than ``margin``. Every array, the cotangent too, is an
argument of the timed program (a captured one would be folded into it as a constant and the
measurement would not be the real program's). The objective is
``"fwd+bwd"`` (the gradient of ``sum(y * ct)`` for x, w and b: training) or ``"fwd"``
(inference). One algorithm runs both passes of a call (each has its own backward), so there
is one entry per convolution, for the objective it was tuned for.

The cache is a JSON file keyed by platform, device kind and the execute spec
(:class:`~jconv.spec.ExecSpec`: shapes, stride, padding, groups, dtypes, precision, the
caller's layout). Only an exact match is used; an entry naming an algorithm that cannot
run the spec (a stale file) is ignored with a warning. Writes go to a temporary file that
replaces the old one, so a crash never leaves a torn cache. The cache is read when a
convolution is planned, which for jitted code is at trace time: tune before you jit.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jconv import select
from jconv.conv import conv2d, parse_call
from jconv.geometry import dtype_kind, fmt
from jconv.impls import registry
from jconv.spec import ConvSpec, ExecSpec
from jconv.timing import layer_pass, time_interleaved
from jconv.tune_cache import device_key, format_times, lookup, store, use_tune_cache

log = logging.getLogger("jconv.tuning")

# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` measured: ``best`` is the impl string ``auto`` will now run."""

    best: str
    objective: str
    times_ms: dict[str, float]      # median per candidate that was timed
    dropped: dict[str, str]         # candidate -> why it was not timed (error, too slow)
    key: str
    cache: str | None


OBJECTIVES = ("fwd", "fwd+bwd")


def candidates_for(spec: ExecSpec, platform: str) -> list[str]:
    """The impls :func:`tune` measures for an execute spec by default: each registered backend's
    candidates on ``platform`` (interpreted backends are never speed candidates)."""
    out = []
    for backend in registry.backends():
        if backend.tune_candidates is None or platform in backend.interpreted:
            continue
        out += [c for c in backend.tune_candidates(spec, platform) if c not in out]
    return out


def _check_settings(objective, iters, prune, margin) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"tune: objective (={objective!r}) must be one of {OBJECTIVES}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"tune: iters (={fmt(iters)}) must be an int >= 1")
    if not isinstance(prune, (int, float)) or prune < 1:
        raise ValueError(f"tune: prune (={fmt(prune)}) must be a number >= 1")
    if not isinstance(margin, (int, float)) or margin < 0:
        raise ValueError(f"tune: margin (={fmt(margin)}) must be a number >= 0")


def _checked_candidates(candidates: Sequence[str]) -> list[str]:
    if isinstance(candidates, str) or not candidates:
        raise ValueError(f"tune: candidates (={fmt(candidates)}) must be a non-empty list of impl strings")
    for c in candidates:
        base, algo = registry.parse_impl("tune", c)
        if base == "auto" or (not algo and len(registry.get(base).algorithms) > 1):
            raise ValueError("tune: candidates must name implementations ('xla', 'pallas', 'lax:<algorithm>'), "
                             f"not 'auto' or a backend with several algorithms (got {list(candidates)})")
    return list(dict.fromkeys(candidates))


def _random_args(spec: ConvSpec, objective: str, seed: int) -> tuple:
    """Random ``(x, w, b[, ct])`` of the call's shapes; every array an argument of the timed
    program, the cotangent too (see :func:`jconv.timing.layer_pass`)."""
    rng = np.random.default_rng(seed)

    def arr(shape, dtype):
        return jnp.asarray(rng.standard_normal(shape, np.float32), dtype)

    x, w = arr(spec.x_shape, spec.dtype), arr(spec.w_shape, spec.dtype)
    b = arr((spec.out_channels,), spec.dtype) if spec.has_bias else None
    return (x, w, b) if objective == "fwd" else (x, w, b, arr(spec.out_shape, spec.out_dtype))


def _compiled_runners(candidates, call, args, objective: str, platform: str, prune: float):
    """``(runners, dropped)``: a blocking call per candidate that compiles and runs, less those
    whose second call is over ``prune`` times the fastest; ``dropped`` says why each is out."""
    dropped: dict[str, str] = {}
    runners: dict[str, Callable[[], Any]] = {}
    first: dict[str, float] = {}
    has_bias = args[2] is not None
    for impl in candidates:
        if platform in registry.get(registry.parse_impl("tune", impl)[0]).interpreted:
            dropped[impl] = f"{impl} runs interpreted on the {platform}: not a speed candidate"
            continue
        try:
            fn = jax.jit(layer_pass(lambda x, w, b, impl=impl: call(x, w, b, impl), objective, has_bias=has_bias))
            exe = fn.lower(*args).compile()
            run = (lambda exe=exe: jax.block_until_ready(exe(*args)))
            run()  # the first call pays one-time costs
            t0 = time.perf_counter()
            run()
            first[impl] = time.perf_counter() - t0
            runners[impl] = run
        except Exception as e:  # noqa: BLE001 - a candidate that cannot run is reported, not fatal
            dropped[impl] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    if not runners:
        raise ValueError(f"tune: no candidate could run this convolution: {dropped}")
    fastest = min(first.values())
    for impl, t in first.items():
        if t > prune * fastest and len(runners) > 1:
            dropped[impl] = f"second call {t * 1e3:.1f} ms, over {prune}x the fastest ({fastest * 1e3:.1f} ms)"
            del runners[impl]
    return runners, dropped


def tune_spec(
    spec: ConvSpec,
    call: Callable[..., Any],
    *,
    objective: str = "fwd+bwd",
    candidates: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    iters: int = 5,
    prune: float = 2.0,
    margin: float = 0.05,
    seed: int = 0,
) -> TuneResult:
    """Tune one convolution given by its user-level ``spec`` and ``call(x, w, b, impl)``
    (which computes it in the caller's layout). :func:`tune` is the public front end."""
    _check_settings(objective, iters, prune, margin)
    if objective == "fwd+bwd" and dtype_kind(spec.dtype) not in ("float", "complex"):
        raise ValueError(f"tune: objective (={objective!r}) needs a gradient; a convolution of {spec.dtype} "
                         "operands has none (as in lax): use objective='fwd'")
    platform = jax.default_backend()
    espec = spec.execute_spec()
    candidates = candidates_for(espec, platform) if candidates is None else _checked_candidates(candidates)
    args = _random_args(spec, objective, seed)
    runners, dropped = _compiled_runners(candidates, call, args, objective, platform, prune)
    times = time_interleaved(runners, warmup=0, iters=iters, min_iters=iters, block=3)
    times_ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    best = min(times_ms, key=times_ms.get)
    rules = select.plan(espec, "auto", fn="tune", use_cache=False).explicit
    if rules in times_ms and times_ms[best] * (1 + margin) > times_ms[rules]:
        best = rules  # within the margin of the rules' choice: keep it (timings move by ~10%)
    key = device_key(espec, platform)
    entry = {
        "impl": best, "objective": objective, "times_ms": {k: round(v, 4) for k, v in times_ms.items()},
        "dropped": dropped, "jax": jax.__version__, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = store(key, entry, None if cache is None else os.fspath(cache))
    result = TuneResult(best, objective, times_ms, dropped, key, path)
    log.info("tune: %s -> %s", key, summary(result))
    return result


def tune(
    x,
    w,
    b=None,
    *,
    stride=1,
    padding="VALID",
    dilation=1,
    groups=1,
    layout="NHWC",
    padding_mode="zeros",
    flip_kernel=False,
    precision=None,
    preferred_element_type=None,
    objective: str = "fwd+bwd",
    candidates: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    iters: int = 5,
    prune: float = 2.0,
    margin: float = 0.05,
) -> TuneResult:
    """Measure the implementations of ``jconv.conv2d(x, w, b, **same arguments)`` here and make
    ``impl="auto"`` run the fastest for that exact call from now on.

    ``x``, ``w``, ``b``: arrays or ``jax.ShapeDtypeStruct`` (only shapes and dtypes are used;
    random data is timed). The convolution arguments are :func:`jconv.conv2d`'s.
    ``objective``: ``"fwd+bwd"`` (training, default) or ``"fwd"``. ``candidates``: impl
    strings to measure (default: :func:`candidates_for`). ``cache``: JSON file to merge the
    result into (default: the active cache, from :func:`use_tune_cache` or ``$JCONV_TUNE_CACHE``;
    with none, the choice lives in this process only). ``margin``: the rules' own choice is
    kept unless another candidate is faster by more than this fraction (default 5%; single
    timings here move by about that much). Returns a :class:`TuneResult`.
    """
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout,
              padding_mode=padding_mode, flip_kernel=flip_kernel, precision=precision,
              preferred_element_type=preferred_element_type)
    spec = parse_call("tune", x, w, b, **kw)

    def call(xx, ww, bb, impl):
        return conv2d(xx, ww, bb, impl=impl, **kw)

    return tune_spec(spec, call, objective=objective, candidates=candidates, cache=cache,
                     iters=iters, prune=prune, margin=margin)


def summary(result: TuneResult) -> str:
    """One line: the winner and every timed candidate."""
    return f"{result.best} ({result.objective}: {format_times(result.times_ms)})"


__all__ = ["tune", "tune_spec", "use_tune_cache", "lookup", "device_key", "candidates_for", "TuneResult",
           "summary", "format_times", "OBJECTIVES"]
