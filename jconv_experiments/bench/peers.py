"""Peers: other implementations measured beside jconv's, as candidates like any impl.

* ``"xla"`` (:data:`BASELINE`): ``lax.conv_general_dilated`` called directly in the layer's own
  layout, what a JAX user runs today: every speedup is relative to it, and the accuracy of every
  row is also compared against it. (Not jconv's ``impl="xla"`` backend, which runs the same XLA
  convolution through jconv's primitive.)
* ``"torch"``: ``torch.nn.functional.conv2d`` (``conv_transpose2d`` for the transposed layer) on
  the same data, NCHW, with ``torch.set_num_threads`` set to the core count; only when torch is
  importable (an optional dependency, never required).
* ``"gemm_peak"``: a plain ``jnp.dot`` of the same size as a dense layer's convolution as one
  GEMM (``M = N*Ho*Wo``, ``K = KH*KW*C_in``, ``N = C_out``), forward only, dense layers only: the
  machine's matmul rate for that size, so a conv's GFLOP/s can be read as a percentage of it.

A :class:`Peer` says when it gives a row (``applies``) and builds a candidate
(:meth:`Peer.make`): a callable that runs once and blocks, the outputs to check (or None), and
the row fields it adds. The harness (:func:`jconv_experiments.bench.harness.measure_group`) times peers in
the same rounds as jconv's impls.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jconv.timing import compile_timed, layer_pass
from jconv_experiments.suite import Case


@dataclasses.dataclass(frozen=True)
class Candidate:
    run: Callable[[], Any]                # one call, blocking until ready
    outputs: list[np.ndarray] | None      # float64 results in the layer's layout (None: not checked)
    fields: dict                          # row fields this candidate sets


@dataclasses.dataclass(frozen=True)
class Peer:
    name: str
    summary: str
    available: Callable[[], bool]
    applies: Callable[[Case, str], bool]  # (case, pass) -> gives a row
    build: Callable[..., Candidate]       # (case, batch, pass_, arrays, dtype, precision, settings, platform)
    #: computes the layer (its outputs are checked and it has a speedup); False: a yardstick
    convolution: bool = True
    #: ``(case, precision) -> layer(x, w, b)``: the peer as a JAX function (an XLA program the
    #: compile matrix can compile for a target); None: not a JAX program
    layer: Callable[[Case, Any], Callable] | None = None

    def make(self, *args, **kwargs) -> Candidate:
        return self.build(*args, **kwargs)


def torch_module():
    """``torch`` if importable, else None (it is an optional peer, never required)."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    return torch


def gemm_shape(case: Case, batch: int) -> tuple[int, int, int] | None:
    """(M, K, N) of the layer as one GEMM, for dense layers (groups == 1); else None."""
    if case.groups != 1:
        return None
    spec = case.spec(batch, "float32")
    ho, wo = spec.out_size
    kh, kw = spec.kernel_size
    return batch * ho * wo, kh * kw * spec.in_channels, spec.out_channels




def _xla_layer(case: Case, precision) -> Callable:
    return lambda x, w, b: case.reference(x, w, b, precision=precision)


def _xla_candidate(case, batch, pass_, arrays, dtype, precision, settings, platform_) -> Candidate:
    args = tuple(jax.device_put(arrays[k]) if arrays.get(k) is not None else None for k in ("x", "w", "b"))
    if pass_ != "fwd":
        args += (jax.device_put(arrays["ct"]),)
    fn = layer_pass(_xla_layer(case, precision), pass_, has_bias=case.bias)
    exe, csec, mem = compile_timed(fn, *args)
    out = jax.block_until_ready(exe(*args))
    outs = [np.asarray(o, np.float64) for o in jax.tree_util.tree_leaves(out)]
    return Candidate(lambda: jax.block_until_ready(exe(*args)), outs, dict(mem, compile_s=csec))


def _np_dtype(dtype: str):
    return np.dtype(jnp.dtype(dtype))


def _gemm_candidate(case, batch, pass_, arrays, dtype, precision, settings, platform_) -> Candidate:
    m, k, n = gemm_shape(case, batch)
    rng = np.random.default_rng(settings.seed)
    a = jax.device_put(rng.standard_normal((m, k), dtype=np.float32).astype(_np_dtype(dtype)))
    bm = jax.device_put(rng.standard_normal((k, n), dtype=np.float32).astype(_np_dtype(dtype)))
    exe, csec, mem = compile_timed(lambda a, b: jnp.dot(a, b, precision=precision), a, bm)
    jax.block_until_ready(exe(a, bm))
    nbytes = _np_dtype(dtype).itemsize * (m * k + k * n + m * n)
    fields = dict(mem, compile_s=csec, flops=2 * m * k * n, gemm_mkn=[m, k, n], bytes=nbytes,
                  intensity=2 * m * k * n / nbytes, reference=None)
    return Candidate(lambda: jax.block_until_ready(exe(a, bm)), None, fields)


def _torch_run(case: Case, pass_: str, arrays: dict, dtype: str, threads: int, platform_: str):
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




def _torch_candidate(case, batch, pass_, arrays, dtype, precision, settings, platform_) -> Candidate:
    run, outs = _torch_run(case, pass_, arrays, dtype, settings.torch_threads, platform_)
    return Candidate(run, outs, {"plan": f"torch {torch_module().__version__}"})


#: the peer every speedup is relative to
BASELINE = "xla"

PEERS: dict[str, Peer] = {
    BASELINE: Peer(BASELINE, "lax.conv_general_dilated called directly (XLA's convolution)", lambda: True,
                   lambda case, pass_: True, _xla_candidate, layer=_xla_layer),
    "torch": Peer("torch", "PyTorch (torch.nn.functional.conv2d)", lambda: torch_module() is not None,
                  lambda case, pass_: True, _torch_candidate),
    "gemm_peak": Peer("gemm_peak", "a same-size GEMM (jnp.dot): the machine's matmul rate", lambda: True,
                      lambda case, pass_: pass_ == "fwd" and gemm_shape(case, 1) is not None, _gemm_candidate,
                  convolution=False),
}

__all__ = ["Peer", "Candidate", "PEERS", "BASELINE", "torch_module", "gemm_shape"]
