"""Timing: compile apart from running, interleaved rounds of candidates (medians), and the
pass that is timed (forward, or forward and backward). The tuner and the experiments' harness
both measure with these.

Every call a timer makes ends in ``block_until_ready``. Times on shared machines are noisy:
compare implementations as ratios measured in the same rounds, never as absolute thresholds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp


def memory_stats(compiled) -> dict:
    """``compiled.memory_analysis()`` as a dict of byte counts ({} where unavailable)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return {}
    if m is None:
        return {}
    out = {}
    for field, name in (("temp_size_in_bytes", "temp_bytes"), ("argument_size_in_bytes", "argument_bytes"),
                        ("output_size_in_bytes", "output_bytes"),
                        ("generated_code_size_in_bytes", "code_bytes")):
        v = getattr(m, field, None)
        if v is not None:
            out[name] = int(v)
    return out


def compile_timed(fn: Callable, *args) -> tuple[Callable, float, dict]:
    """``jax.jit(fn)`` lowered and compiled for ``args``: (executable, seconds, memory dict)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0, memory_stats(compiled)


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    iters: int = 10,
    min_iters: int = 3,
    max_time_s: float = float("inf"),
    no_warmup: Iterable[str] = (),
    block: int = 1,
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, measured in interleaved rounds.

    Each ``fn`` must block until its result is ready. After ``warmup`` calls of each, round r
    runs every candidate in turn, starting at a rotating position (so no candidate always runs
    right after the same other one); rounds stop after ``iters``, or once ``max_time_s`` has
    passed and ``min_iters`` rounds are done. Candidates in ``no_warmup`` (already warm and
    slow) skip the warm-up calls.

    ``block``: calls of a candidate per round, back to back. With ``block > 1`` the first call
    of each block re-warms and is not recorded (``block - 1`` times per round are), because a
    call made right after *another* candidate is not the steady state a training loop sees:
    glibc has handed the other's freed buffers back to the OS, so this call's output
    page-faults afresh (a 64->256 1x1 conv: 6.9 ms called alternately with another jitted
    conv, 2.4 ms back to back, and 2.4 ms alternately once ``MALLOC_TRIM_THRESHOLD_`` and
    ``MALLOC_MMAP_THRESHOLD_`` are raised), the other's worker threads may still spin, and the
    caches hold its data. Candidates in ``no_warmup`` (slow ones) run one recorded call per
    round.
    """
    names = list(fns)
    skip = set(no_warmup)
    for name in names:
        for _ in range(0 if name in skip else warmup):
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(iters):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            n_calls = 1 if (block <= 1 or name in skip) else block
            for k in range(n_calls):
                t0 = time.perf_counter()
                fns[name]()
                if n_calls == 1 or k > 0:
                    times[name].append(time.perf_counter() - t0)
        if r + 1 >= min_iters and time.perf_counter() - start > max_time_s:
            break
    return times


def layer_pass(layer: Callable, pass_: str, *, has_bias: bool) -> Callable:
    """``layer(x, w, b)`` for ``pass_ == "fwd"``; for ``"fwd+bwd"`` ``f(x, w, b, ct)``, the
    gradients of ``sum(y * ct)`` for x, w (and b). ``ct`` is an argument, never a captured
    constant: XLA would fold a constant into the program (the tuner once measured 47 ms for a
    program whose real counterpart takes 78)."""
    if pass_ == "fwd":
        return layer

    def loss(x, w, b, ct):
        y = layer(x, w, b)
        return jnp.sum(y.astype(jnp.float32) * ct.astype(jnp.float32))

    return jax.grad(loss, argnums=(0, 1, 2) if has_bias else (0, 1))


def time_fields(ts: list[float], flops: int) -> dict:
    """Row fields of a list of call times: median, min, count and GFLOP/s at the median."""
    med = statistics.median(ts)
    return {"time_median_s": med, "time_min_s": min(ts), "iters": len(ts),
            "gflops": flops / med / 1e9 if med > 0 else None}


__all__ = ["memory_stats", "compile_timed", "time_interleaved", "time_fields", "layer_pass"]
