"""Timing and accuracy harness: the library under ``python -m experiments`` (and notebooks).

Three parts, usable on their own:

* :class:`ResultStore`: an append-only, crash-safe ``results.jsonl``. Each row is written with
  one ``write``, then ``flush`` + ``fsync``; opening the store drops a torn last line (a run
  killed mid-write) and duplicate keys, so a re-run appends every missing row exactly once.
  Rows are keyed by :data:`KEY_FIELDS` ``(case, impl, pass, dtype, batch)``.
* Timing: :func:`compile_timed` (lower + compile, timed apart from running, with the
  executable's ``memory_analysis()``), :func:`time_interleaved` (warm-up, then rounds that run
  every candidate once each, in rotating order, until ``iters`` rounds or a time budget; the
  median of the rounds is what is reported). Every call ends in ``block_until_ready``.
* :func:`measure_group`: one layer (:class:`jconv.suite.Case`) at one batch, dtype and pass,
  for several implementations timed together: accuracy against a float64 reference (XLA at
  HIGHEST under ``jax.enable_x64``; HIGHEST float32 for layers above a FLOP budget, recorded in
  the row's ``reference`` field) and against XLA itself, time, GFLOP/s, memory, one row each.

Implementations (``impl`` of a row):

* ``"xla"``: ``lax.conv_general_dilated`` called directly in the layer's own layout (the
  baseline every speedup is relative to);
* any jconv impl string (``"lax"``, ``"auto"``, ``"pallas"``, ``"lax:im2col"`` ...), run through
  the public :func:`jconv.conv2d` by :meth:`Case.apply`; Pallas on CPU runs interpreted and its
  row says ``interpreted: true`` (its time is not a speed measurement);
* ``"torch"``: ``torch.nn.functional.conv2d`` (``conv_transpose2d`` for the transposed layer) on
  the same data, NCHW, with ``torch.set_num_threads`` set to the core count; only when torch is
  importable;
* ``"gemm_peak"``: a plain ``jnp.dot`` of the same size as a dense layer's convolution as one
  GEMM (``M = N*Ho*Wo``, ``K = KH*KW*C_in``, ``N = C_out``), pass ``"fwd"`` only, dense layers
  (``groups == 1``) only: the machine's matmul rate for that size, so a conv's GFLOP/s can be
  read as a percentage of it. Its error fields are empty.

FLOPs: ``2 * multiply-adds`` of the forward (bias not counted); ``fwd+bwd`` (the gradient of
``sum(y * ct)`` with respect to x, w and b) counts 3x the forward.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from jconv.suite import Case
from jconv.testing import max_errors, scaled_error, tolerance

KEY_FIELDS = ("case", "impl", "pass", "dtype", "batch")
PASSES = ("fwd", "fwd+bwd")
PEERS = ("xla", "torch", "gemm_peak")  # impls that are not jconv's own


def row_key(row: dict) -> tuple:
    return tuple(row[k] for k in KEY_FIELDS)


# --------------------------------------------------------------------------------------------
# Crash-safe result store
# --------------------------------------------------------------------------------------------


def _json_safe(v: Any) -> Any:
    """JSON without NaN/Infinity tokens: non-finite floats become the strings 'nan'/'inf'."""
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def as_float(v: Any) -> float | None:
    """A row's numeric field back as a float (None stays None; 'inf'/'nan' strings parsed)."""
    if v is None:
        return None
    return float(v)


class ResultStore:
    """``results.jsonl``: one JSON object per line, keyed by :data:`KEY_FIELDS`.

    Opening it repairs what a crash can leave: a last line without its newline (a torn write)
    or any line that does not parse is dropped, and so is a second row with a key already seen.
    When something was dropped the file is rewritten atomically (temp file, fsync, rename).
    """

    def __init__(self, path: str):
        self.path = path
        self.dropped: list[str] = []
        self.rows: list[dict] = []
        self._keys: set[tuple] = set()
        self._load()

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline; else a torn write
        if tail:
            self.dropped.append(tail.decode("utf-8", "replace"))
        for raw in lines:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                key = row_key(row)
            except (ValueError, KeyError, TypeError):
                self.dropped.append(raw.decode("utf-8", "replace"))
                continue
            if key in self._keys:
                self.dropped.append(raw.decode("utf-8", "replace"))
                continue
            self._keys.add(key)
            self.rows.append(row)
        if self.dropped:
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for row in self.rows:
                f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def __contains__(self, key: tuple) -> bool:
        return tuple(key) in self._keys

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: dict) -> None:
        key = row_key(row)
        if key in self._keys:
            raise ValueError(f"ResultStore.append: row key {key} is already stored")
        line = json.dumps(_json_safe(row)) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._keys.add(key)
        self.rows.append(json.loads(line))

    def drop_where(self, pred: Callable[[dict], bool]) -> int:
        """Remove the rows for which ``pred`` holds (e.g. failed rows, to retry them)."""
        keep = [r for r in self.rows if not pred(r)]
        n = len(self.rows) - len(keep)
        if n:
            self.rows = keep
            self._keys = {row_key(r) for r in keep}
            self._rewrite()
        return n


def load_rows(path: str) -> list[dict]:
    """The rows of a results.jsonl (repairing it as :class:`ResultStore` does)."""
    return list(ResultStore(path).rows)


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit(cwd: str | None = None) -> str | None:
    cwd = cwd or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def torch_module():
    """``torch`` if importable, else None (it is an optional peer, never required)."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    return torch


def env_info() -> dict:
    """Device, platform, versions, CPU model, core count and commit, for env.json."""
    import flax  # noqa: PLC0415
    import jax  # noqa: PLC0415
    import jaxlib  # noqa: PLC0415

    dev = jax.devices()[0]
    torch = torch_module()
    return {
        "platform": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "torch": None if torch is None else torch.__version__,
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
        "commit": _git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


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
    import jax  # noqa: PLC0415

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


# --------------------------------------------------------------------------------------------
# Measuring one layer
# --------------------------------------------------------------------------------------------


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
    import jax.numpy as jnp  # noqa: PLC0415

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


def _layer_fn(case: Case, impl: str, precision):
    if impl == "xla":
        return lambda x, w, b: case.reference(x, w, b, precision=precision)
    return lambda x, w, b: case.apply(x, w, b, impl=impl, precision=precision)


def pass_fn(case: Case, impl: str, pass_: str, precision=None) -> Callable:
    """``f(x, w, b)``: the forward, or the gradients of ``sum(y * ct)`` (``f(x, w, b, ct)``)."""
    return layer_pass(_layer_fn(case, impl, precision), pass_, has_bias=case.bias)


def layer_pass(layer: Callable, pass_: str, *, has_bias: bool) -> Callable:
    """``layer(x, w, b)`` for ``pass_ == "fwd"``; for ``"fwd+bwd"`` ``f(x, w, b, ct)``, the
    gradients of ``sum(y * ct)`` for x, w (and b). ``ct`` is an argument, never a captured
    constant: XLA would fold a constant into the program (the tuner once measured 47 ms for a
    program whose real counterpart takes 78)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    if pass_ == "fwd":
        return layer

    def loss(x, w, b, ct):
        y = layer(x, w, b)
        return jnp.sum(y.astype(jnp.float32) * ct.astype(jnp.float32))

    return jax.grad(loss, argnums=(0, 1, 2) if has_bias else (0, 1))


def _args(case: Case, pass_: str, arrays: dict) -> tuple:
    b = arrays.get("b")
    return (arrays["x"], arrays["w"], b) + ((arrays["ct"],) if pass_ != "fwd" else ())


def reference_outputs(case: Case, pass_: str, arrays: dict, *, use_x64: bool) -> tuple[list[np.ndarray], str]:
    """The reference result(s) as float64 NumPy arrays, and which reference it was.

    ``use_x64``: XLA at HIGHEST in float64 on the host CPU (where the CPU backend is available);
    else XLA at HIGHEST in float32 on the default device."""
    import jax  # noqa: PLC0415

    fn = pass_fn(case, "xla", pass_, precision="highest")
    if use_x64:
        try:  # float64 on the host: accelerators emulate it slowly or not at all (TPU)
            host = jax.devices("cpu")[0]
        except RuntimeError:
            host = None
        with jax.enable_x64(True), jax.default_device(host):
            args = tuple(None if a is None else np.asarray(a, np.float64) for a in _args(case, pass_, arrays))
            if pass_ != "fwd":  # the loss in float64 too
                import jax.numpy as jnp  # noqa: PLC0415

                layer = _layer_fn(case, "xla", "highest")
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
    """tolerance(dtype), widened where the default precision computes float32 in fewer bits:
    TPU (bfloat16 passes: bfloat16's tolerance) and GPU (TF32: float16's tolerance)."""
    eff = dtype
    if dtype == "float32" and precision in (None, "default"):
        eff = {"tpu": "bfloat16", "gpu": "float16", "cuda": "float16", "rocm": "float16"}.get(platform_, dtype)
    return tolerance(eff) * (grad_factor if pass_ != "fwd" else 1.0)


def _layer_bytes(case: Case, batch: int, dtype: str, pass_: str) -> int:
    """Minimum memory traffic: every tensor touched once (fwd: x, w, b, y; fwd+bwd: those,
    plus ct, dx, dw, db)."""
    spec = case.spec(batch, "float32")
    item = _np_dtype(dtype).itemsize
    n = math.prod(spec.x_shape) + math.prod(spec.w_shape) + math.prod(spec.out_shape)
    n += case.out_channels if case.bias else 0
    return int(item * (n if pass_ == "fwd" else 2 * n))


def gemm_shape(case: Case, batch: int) -> tuple[int, int, int] | None:
    """(M, K, N) of the layer as one GEMM, for dense layers (groups == 1); else None."""
    if case.groups != 1:
        return None
    spec = case.spec(batch, "float32")
    ho, wo = spec.out_size
    kh, kw = spec.kernel_size
    return batch * ho * wo, kh * kw * spec.in_channels, spec.out_channels


def _torch_candidate(case: Case, pass_: str, arrays: dict, dtype: str, threads: int, platform_: str):
    """(callable, outputs-as-numpy-in-the-layer's-layout) for PyTorch, or raise."""
    torch = torch_module()
    if torch is None:
        raise NotImplementedError("torch is not importable")
    import torch.nn.functional as F  # noqa: N812, PLC0415

    torch.set_num_threads(threads or os.cpu_count() or 1)
    dev = "cuda" if (platform_ == "gpu" and torch.cuda.is_available()) else "cpu"
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "float64": torch.float64}[dtype]
    spec = case.spec(arrays["x"].shape[0], "float32")
    nhwc = case.layout == "NHWC"

    def t(a):
        return torch.from_numpy(np.asarray(a, np.float32)).to(device=dev, dtype=tdt)

    x = t(arrays["x"])
    w = t(arrays["w"])
    if nhwc:
        x = x.permute(0, 3, 1, 2).contiguous()   # NHWC -> NCHW
        w = w.permute(3, 2, 0, 1).contiguous()   # HWIO -> OIHW
    b = t(arrays["b"]) if case.bias else None
    ct = t(arrays["ct"])
    if nhwc:
        ct = ct.permute(0, 3, 1, 2).contiguous()
    (pt, pb), (pl, pr) = spec.padding
    if case.lhs_dilation != (1, 1):
        if case.groups != 1:
            raise NotImplementedError("torch peer: grouped transposed convolution not mapped")
        # lax: dilate input by s, pad (lo, hi), cross-correlate with w  ==  torch
        # conv_transpose2d(stride=s, padding=d*(k-1)-lo, output_padding=hi-lo) with w flipped,
        # weight laid out (C_in, C_out, KH, KW).
        (kh, kw), (dh, dw) = case.kernel_size, case.dilation
        pad = (dh * (kh - 1) - pt, dw * (kw - 1) - pl)
        opad = (pb - pt, pr - pl)
        if min(pad) < 0 or min(opad) < 0:
            raise NotImplementedError("torch peer: this transposed padding has no conv_transpose2d form")
        wt = torch.flip(w, dims=(2, 3)).transpose(0, 1).contiguous()

        def conv(xx, ww, bb):
            return F.conv_transpose2d(xx, ww, bb, stride=case.lhs_dilation, padding=pad,
                                      output_padding=opad, dilation=case.dilation)
        w = wt
    else:
        sym = pt == pb and pl == pr

        def conv(xx, ww, bb):
            if not sym:
                xx = F.pad(xx, (pl, pr, pt, pb))
            return F.conv2d(xx, ww, bb, stride=case.stride, padding=(pt, pl) if sym else 0,
                            dilation=case.dilation, groups=case.groups)

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def to_layout(a, kind):
        a = a.detach().to("cpu", torch.float64).numpy()
        if nhwc and kind == "act":
            return a.transpose(0, 2, 3, 1)
        if kind == "w":
            if case.lhs_dilation != (1, 1):  # back from (C_in, C_out, KH, KW) flipped
                a = a.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
            if nhwc:
                return a.transpose(2, 3, 1, 0)
        return a

    if pass_ == "fwd":
        def run():
            with torch.no_grad():
                y = conv(x, w, b)
            sync()
            return y

        outs = [to_layout(run(), "act")]
        return run, outs

    xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    bg = None if b is None else b.clone().requires_grad_(True)
    params = [p for p in (xg, wg, bg) if p is not None]

    def run():
        y = conv(xg, wg, bg)
        grads = torch.autograd.grad(y, params, grad_outputs=ct)
        sync()
        return grads

    g = run()
    outs = [to_layout(g[0], "act"), to_layout(g[1], "w")] + ([to_layout(g[2], "b")] if bg is not None else [])
    return run, outs


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
    """One row per impl for ``case`` at ``batch``/``dtype``/``pass_``, timed together.

    An impl that fails (e.g. one not implemented yet) gets a row with ``error`` set and no
    numbers; it is never replaced by another implementation. ``compare_to_xla`` also runs the
    XLA baseline (untimed unless "xla" is in ``impls``) so every row has ``scaled_err_vs_xla``.
    """
    import jax  # noqa: PLC0415

    impls = list(dict.fromkeys(impls))
    platform_ = jax.default_backend()
    device_kind = jax.devices()[0].device_kind
    precision = None if settings.precision in (None, "default") else settings.precision
    arrays = make_inputs(case, batch, dtype, settings.seed)
    dev_arrays = {k: jax.device_put(v) for k, v in arrays.items()}
    args = _args(case, pass_, dev_arrays)
    spec = case.spec(batch, dtype)
    flops = spec.flops * (1 if pass_ == "fwd" else 3)
    nbytes = _layer_bytes(case, batch, dtype, pass_)
    tol = effective_tolerance(dtype, platform_, settings.precision, pass_, settings.grad_tol_factor)

    use_x64 = flops / 1e9 <= settings.x64_reference_max_gflop
    ref, ref_kind = reference_outputs(case, pass_, arrays, use_x64=use_x64)

    base = {
        "case": case.name, "pass": pass_, "dtype": dtype, "batch": batch, "layout": case.layout,
        "platform": platform_, "device_kind": device_kind,
        "precision": settings.precision or "default", "reference": ref_kind,
        "flops": flops, "bytes": nbytes, "intensity": flops / nbytes, "tol": tol,
        # not every impl has these (PyTorch: no XLA executable): None where not applicable
        "compile_s": None, "temp_bytes": None, "argument_bytes": None, "output_bytes": None,
    }
    rows: dict[str, dict] = {}
    runners: dict[str, Callable[[], Any]] = {}
    interpreted_runners: dict[str, Callable[[], Any]] = {}
    outputs: dict[str, list[np.ndarray]] = {}
    slow: set[str] = set()

    want = list(impls)
    if compare_to_xla and "xla" not in want:
        want.append("xla")  # for scaled_err_vs_xla only: no row, not timed
    for impl in want:
        row = dict(base, impl=impl, error=None, interpreted=False, plan=None)
        if impl == "gemm_peak":
            shape = gemm_shape(case, batch)
            if pass_ != "fwd" or shape is None:
                continue
            m, k, n = shape
            rng = np.random.default_rng(settings.seed)
            a = jax.device_put(rng.standard_normal((m, k), dtype=np.float32).astype(_np_dtype(dtype)))
            bm = jax.device_put(rng.standard_normal((k, n), dtype=np.float32).astype(_np_dtype(dtype)))
            import jax.numpy as jnp  # noqa: PLC0415

            exe, csec, mem = compile_timed(lambda a, b: jnp.dot(a, b, precision=precision), a, bm)
            jax.block_until_ready(exe(a, bm))
            row.update(mem, compile_s=csec, flops=2 * m * k * n, gemm_mkn=[m, k, n],
                       bytes=_np_dtype(dtype).itemsize * (m * k + k * n + m * n))
            row["intensity"] = row["flops"] / row["bytes"]
            row["reference"] = None
            runners[impl] = (lambda exe=exe, a=a, bm=bm: jax.block_until_ready(exe(a, bm)))
            rows[impl] = row
            continue
        try:
            if impl == "torch":
                run, outs = _torch_candidate(case, pass_, arrays, dtype, settings.torch_threads, platform_)
                row["plan"] = f"torch {torch_module().__version__}"
                runners[impl] = run
            else:
                if impl != "xla":
                    from jconv import plan_for  # noqa: PLC0415

                    p = plan_for(spec, impl)
                    row["plan"] = f"{p.impl}:{p.algorithm}"
                    row["plan_reason"] = p.reason
                    row["interpreted"] = p.impl == "pallas" and platform_ == "cpu"
                fn = pass_fn(case, impl, pass_, precision)
                exe, csec, mem = compile_timed(fn, *args)
                t0 = time.perf_counter()
                out = jax.block_until_ready(exe(*args))
                if time.perf_counter() - t0 > settings.max_time_s / max(1, settings.iters):
                    slow.add(impl)  # this first call was its warm-up
                outs = [np.asarray(o, np.float64) for o in jax.tree_util.tree_leaves(out)]
                row.update(mem, compile_s=csec)
                call = (lambda exe=exe: jax.block_until_ready(exe(*args)))
                (interpreted_runners if row["interpreted"] else runners)[impl] = call
        except Exception as e:  # noqa: BLE001 - recorded in the row, never swapped for another impl
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
            rows[impl] = row
            continue
        outputs[impl] = outs
        row.update(compare_outputs(outs, ref))
        row["within_tol"] = bool(row["scaled_err"] <= tol)
        rows[impl] = row

    if "xla" not in impls:
        runners.pop("xla", None)
        rows.pop("xla", None)
    for impl, row in rows.items():
        if impl in outputs and "xla" in outputs:
            row["scaled_err_vs_xla"] = max(scaled_error(a, e) for a, e in zip(outputs[impl], outputs["xla"]))
            row["agrees_with_xla"] = bool(row["scaled_err_vs_xla"] <= tol)

    if runners:
        times = time_interleaved(runners, warmup=settings.warmup, iters=settings.iters,
                                 min_iters=settings.min_iters, max_time_s=settings.max_time_s,
                                 no_warmup=slow, block=settings.block)
        for impl, ts in times.items():
            rows[impl].update(_time_fields(ts, rows[impl]["flops"]))
        if "xla" in times:  # same rounds: the ratio the report uses
            for impl in times:
                if impl not in ("xla", "gemm_peak"):
                    rows[impl]["speedup_vs_xla"] = rows["xla"]["time_median_s"] / rows[impl]["time_median_s"]
    if interpreted_runners:
        times = time_interleaved(interpreted_runners, warmup=0, iters=settings.interpreted_iters,
                                 min_iters=1, max_time_s=0.0)
        for impl, ts in times.items():
            rows[impl].update(_time_fields(ts, rows[impl]["flops"]))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return [dict(rows[i], time_utc=stamp) for i in impls if i in rows]


def _time_fields(ts: list[float], flops: int) -> dict:
    med = statistics.median(ts)
    return {"time_median_s": med, "time_min_s": min(ts), "iters": len(ts),
            "gflops": flops / med / 1e9 if med > 0 else None}


def geomean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))
