"""oneDNN CPU convolutions for JAX, called through XLA's FFI.

Three JAX-callable functions on channels-last arrays, each a single
``jax.ffi.ffi_call`` into oneDNN (the library PyTorch uses for CPU
convolutions):

* :func:`conv_forward`          x (N,H,W,Ci), w (KH,KW,Ci/g,Co) [, b (Co,)] -> y (N,Ho,Wo,Co)
* :func:`conv_backward_data`    dy, w -> dx (the gradient with respect to x)
* :func:`conv_backward_weights` x, dy -> dw [, db]

They take static geometry keywords (``stride``, ``padding``, ``dilation``,
``groups``), work under ``jax.jit``, and have no autodiff rules of their own:
the caller wires them into a differentiable primitive.

Importing never fails because of the native part: :func:`available` says
whether the library loaded and :func:`unavailable_reason` says why not.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys
import threading
from typing import Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "available",
    "unavailable_reason",
    "onednn_version",
    "bf16_supported",
    "conv_forward",
    "conv_backward_data",
    "conv_backward_weights",
    "conv_output_shape",
    "cache_info",
    "set_cache_capacity",
    "clear_cache",
    "describe",
    "set_weights_layout",
    "set_num_threads",
    "get_num_threads",
    "TARGETS",
]

__version__ = "0.1.0"

_LIB_NAME = "libjconv_onednn.so"
_DNNL_SONAME = "libdnnl.so.3"

# FFI target names, as registered with XLA (platform "cpu").
TARGETS = {
    "fwd": "jconv_onednn_conv_fwd",
    "fwd_bias": "jconv_onednn_conv_fwd_bias",
    "bwd_data": "jconv_onednn_conv_bwd_data",
    "bwd_weights": "jconv_onednn_conv_bwd_weights",
    "bwd_weights_bias": "jconv_onednn_conv_bwd_weights_bias",
}

# Batched calls (jax.vmap) loop over the mapped axis, calling oneDNN once per
# element; see README.md for why.
VMAP_METHOD = "sequential"

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_dnnl: Optional[ctypes.CDLL] = None
_reason: Optional[str] = None
_loaded = False


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def _libdnnl_candidates():
    """Where libdnnl.so.3 may be, best first."""
    paths = []
    explicit = os.environ.get("JCONV_ONEDNN_LIBDNNL")
    if explicit:
        paths.append(explicit)
    # The onednn-cpu-gomp wheel installs it as a "data" file: <prefix>/lib.
    # Ask the installed distribution where it put it (works for venvs,
    # --user and --prefix installs alike).
    try:
        dist = importlib.metadata.distribution("onednn-cpu-gomp")
        for f in dist.files or ():
            if f.name == _DNNL_SONAME:
                paths.append(str(dist.locate_file(f)))
    except importlib.metadata.PackageNotFoundError:
        pass
    for prefix in (sys.prefix, sys.base_prefix):
        paths.append(os.path.join(prefix, "lib", _DNNL_SONAME))
    seen, out = set(), []
    for p in paths:
        p = os.path.realpath(p)
        if p not in seen and os.path.exists(p):
            seen.add(p)
            out.append(p)
    return out


def _load() -> None:
    global _lib, _dnnl, _reason, _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
        try:
            # Preload oneDNN globally so that the plugin's DT_NEEDED entry
            # resolves to it whatever the RPATH says; fall back to the
            # plugin's RPATH ($ORIGIN/../../..) and the system search path.
            errors = []
            for path in _libdnnl_candidates():
                try:
                    _dnnl = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                    break
                except OSError as e:  # pragma: no cover - depends on the host
                    errors.append(f"{path}: {e}")
            lib_path = os.environ.get("JCONV_ONEDNN_LIBRARY") or os.path.join(
                os.path.dirname(os.path.abspath(__file__)), _LIB_NAME)
            try:
                lib = ctypes.CDLL(lib_path)
            except OSError as e:
                detail = "; ".join(errors)
                _reason = (f"could not load {lib_path}: {e}"
                           + (f" (tried libdnnl: {detail})" if detail else ""))
                return
            _setup_signatures(lib)
            import jax

            for name in TARGETS.values():
                jax.ffi.register_ffi_target(
                    name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
            _lib = lib
        except Exception as e:  # pragma: no cover - defensive
            _reason = f"{type(e).__name__}: {e}"


def _setup_signatures(lib: ctypes.CDLL) -> None:
    i32p = ctypes.POINTER(ctypes.c_int32)
    i64p = ctypes.POINTER(ctypes.c_int64)
    lib.jconv_onednn_version.argtypes = [i32p]
    lib.jconv_onednn_version.restype = None
    lib.jconv_onednn_bf16_supported.argtypes = []
    lib.jconv_onednn_bf16_supported.restype = ctypes.c_int32
    lib.jconv_onednn_cpu_isa.argtypes = []
    lib.jconv_onednn_cpu_isa.restype = ctypes.c_int32
    lib.jconv_onednn_cache_stats.argtypes = [i64p]
    lib.jconv_onednn_cache_stats.restype = None
    lib.jconv_onednn_set_cache_capacity.argtypes = [ctypes.c_int64]
    lib.jconv_onednn_set_cache_capacity.restype = None
    lib.jconv_onednn_clear_cache.argtypes = []
    lib.jconv_onednn_clear_cache.restype = None
    lib.jconv_onednn_set_weights_policy.argtypes = [ctypes.c_int32]
    lib.jconv_onednn_set_weights_policy.restype = None
    lib.jconv_onednn_get_weights_policy.argtypes = []
    lib.jconv_onednn_get_weights_policy.restype = ctypes.c_int32
    lib.jconv_onednn_set_num_threads.argtypes = [ctypes.c_int32]
    lib.jconv_onednn_set_num_threads.restype = None
    lib.jconv_onednn_get_num_threads.argtypes = []
    lib.jconv_onednn_get_num_threads.restype = ctypes.c_int32
    lib.jconv_onednn_describe.argtypes = [
        ctypes.c_int32, ctypes.c_int32, i64p, ctypes.c_char_p, ctypes.c_int64]
    lib.jconv_onednn_describe.restype = ctypes.c_int32


def _require():
    _load()
    if _lib is None:
        raise RuntimeError(f"jconv_onednn is unavailable: {_reason}")
    return _lib


def available() -> bool:
    """True when the native library and oneDNN loaded and the targets are registered."""
    _load()
    return _lib is not None


def unavailable_reason() -> Optional[str]:
    """Why :func:`available` is False, else None."""
    _load()
    return _reason


def onednn_version() -> Optional[Tuple[int, int, int]]:
    """(major, minor, patch) of the oneDNN library in use, or None if unavailable."""
    if not available():
        return None
    out = (ctypes.c_int32 * 3)()
    _lib.jconv_onednn_version(out)
    return tuple(out)


def bf16_supported() -> bool:
    """True when this CPU runs bfloat16 convolutions natively (AVX512_BF16, AMX, AVX2-VNNI-2)."""
    return available() and bool(_lib.jconv_onednn_bf16_supported())


def cache_info() -> dict:
    """Primitive-cache statistics.

    entries, capacity, hits, misses of the plan cache, and how many calls got
    their oneDNN scratchpad from XLA (xla_scratch_calls) or from the plugin's
    per-thread buffer (thread_scratch_calls; XLA:CPU provides no FFI scratch).
    """
    out = (ctypes.c_int64 * 6)()
    _require().jconv_onednn_cache_stats(out)
    keys = ("entries", "capacity", "hits", "misses", "xla_scratch_calls",
            "thread_scratch_calls")
    return dict(zip(keys, (int(v) for v in out)))


def set_cache_capacity(capacity: int) -> None:
    """Bound the primitive cache (default 512 entries); 0 disables caching."""
    _require().jconv_onednn_set_cache_capacity(int(capacity))


def clear_cache() -> None:
    """Drop every cached primitive and reset the statistics."""
    _require().jconv_onednn_clear_cache()


def set_weights_layout(layout: str) -> None:
    """Choose how weights reach oneDNN (a tuning knob; the default is "any").

    "any": oneDNN picks its preferred (blocked) weight layout and the plugin
    reorders HWIO <-> that layout on every call.  "plain": oneDNN receives the
    HWIO weights as they are (no reorder; oneDNN may then fall back to slower
    kernels).  Changing it affects plans built afterwards (the cache key
    includes it).
    """
    codes = {"any": 0, "plain": 1}
    if layout not in codes:
        raise ValueError(f"layout must be 'any' or 'plain', got {layout!r}")
    _require().jconv_onednn_set_weights_policy(codes[layout])


def set_num_threads(n: Optional[int]) -> None:
    """OpenMP threads per oneDNN convolution; None or 0 restores the default.

    The default is OMP_NUM_THREADS when it was set before the plugin loaded,
    else the number of CPUs.  Takes effect on the next call (from whichever
    XLA thread makes it); primitives are cached per thread count.
    """
    _require().jconv_onednn_set_num_threads(int(n or 0))


def get_num_threads() -> int:
    """The OpenMP thread count the next convolutions will use."""
    return int(_require().jconv_onednn_get_num_threads())


# ---------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------

IntPair = Union[int, Sequence[int]]
Padding = Union[int, Sequence[int], Sequence[Sequence[int]]]


def _pair(v: IntPair, name: str) -> Tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v}")
    return v


def _padding(p: Padding) -> Tuple[int, int, int, int]:
    """((top, bottom), (left, right)) | (ph, pw) | int -> (top, bottom, left, right)."""
    if isinstance(p, str):
        raise ValueError("padding must be explicit numbers, e.g. ((1, 1), (1, 1)); "
                         "string paddings such as 'SAME' are resolved by the caller")
    if isinstance(p, (int, np.integer)):
        return (int(p),) * 4
    p = tuple(p)
    if len(p) != 2:
        raise ValueError(f"padding must be ((top, bottom), (left, right)), got {p}")
    out = []
    for q in p:
        if isinstance(q, (int, np.integer)):
            out += [int(q), int(q)]
        else:
            q = tuple(int(a) for a in q)
            if len(q) != 2:
                raise ValueError(f"padding must be ((top, bottom), (left, right)), got {p}")
            out += list(q)
    if min(out) < 0:
        raise ValueError(f"padding must be non-negative, got {p}")
    return tuple(out)


def _out_size(n, k, s, d, p0, p1):
    span = (k - 1) * d + 1
    return max(0, (n + p0 + p1 - span) // s + 1)


def conv_output_shape(x_shape, w_shape, *, stride=1, padding=0, dilation=1):
    """NHWC output shape of a convolution of x_shape (NHWC) with w_shape (HWIO).

    As in XLA, a spatial size is 0 when the dilated kernel is larger than the
    padded input.
    """
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    pt, pb, pl, pr = _padding(padding)
    n, h, w, _ = x_shape
    kh, kw, _, co = w_shape
    return (n, _out_size(h, kh, sh, dh, pt, pb), _out_size(w, kw, sw, dw, pl, pr), co)


_DTYPES = ("float32", "bfloat16")


def _check_dtypes(*arrays):
    dt = np.dtype(arrays[0].dtype)
    for a in arrays[1:]:
        if np.dtype(a.dtype) != dt:
            raise TypeError(f"jconv_onednn: all operands must share one dtype, "
                            f"got {[str(np.dtype(b.dtype)) for b in arrays]}")
    if dt.name not in _DTYPES:
        raise TypeError(f"jconv_onednn: unsupported dtype {dt.name}; supported: "
                        "float32, bfloat16")
    if dt.name == "bfloat16" and not bf16_supported():
        raise TypeError("jconv_onednn: this CPU has no native bfloat16 support "
                        "(AVX512_BF16, AMX or AVX2-VNNI-2); use float32")
    return dt


def _check_geometry(x_shape, w_shape, groups):
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ValueError(f"expected NHWC input and HWIO kernel, got shapes "
                         f"{tuple(x_shape)} and {tuple(w_shape)}")
    groups = int(groups)
    ci, co = x_shape[3], w_shape[3]
    if groups < 1 or ci % groups or co % groups or w_shape[2] * groups != ci:
        raise ValueError(f"groups={groups} does not fit input channels {ci}, "
                         f"kernel {tuple(w_shape)}")
    return groups


def _attrs(stride, padding, dilation, groups):
    return dict(
        stride=np.asarray(_pair(stride, "stride"), np.int64),
        padding=np.asarray(_padding(padding), np.int64),
        dilation=np.asarray(_pair(dilation, "dilation"), np.int64),
        groups=np.int64(groups),
    )


def _check_positive(stride, dilation):
    if min(_pair(stride, "stride")) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if min(_pair(dilation, "dilation")) < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")


# ---------------------------------------------------------------------------
# The three convolutions
# ---------------------------------------------------------------------------

def conv_forward(x, w, b=None, *, stride: IntPair = 1, padding: Padding = 0,
                 dilation: IntPair = 1, groups: int = 1):
    """y = conv(x, w) [+ b], channels-last.

    x: (N, H, W, C_in); w: (KH, KW, C_in // groups, C_out), output channel
    g * (C_out // groups) + o belongs to group g; b: (C_out,) or None.
    stride, dilation: int or (h, w); dilation is the kernel (rhs) dilation,
    1 = dense.  padding: ((top, bottom), (left, right)), non-negative.
    Returns (N, Ho, Wo, C_out) in the input dtype (float32 or bfloat16).
    Equivalent to ``lax.conv_general_dilated(x, w, stride, padding,
    rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups) + b``.
    """
    import jax

    _require()
    _check_positive(stride, dilation)
    groups = _check_geometry(x.shape, w.shape, groups)
    operands = (x, w) if b is None else (x, w, b)
    dt = _check_dtypes(*operands)
    if b is not None and tuple(b.shape) != (w.shape[3],):
        raise ValueError(f"bias shape {tuple(b.shape)} should be ({w.shape[3]},)")
    out_shape = conv_output_shape(x.shape, w.shape, stride=stride,
                                  padding=padding, dilation=dilation)
    target = TARGETS["fwd"] if b is None else TARGETS["fwd_bias"]
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(out_shape, dt),
                            vmap_method=VMAP_METHOD)
    return call(*operands, **_attrs(stride, padding, dilation, groups))


def conv_backward_data(dy, w, *, x_shape, stride: IntPair = 1,
                       padding: Padding = 0, dilation: IntPair = 1,
                       groups: int = 1):
    """dx = the gradient of conv_forward with respect to x, given dy.

    dy: (N, Ho, Wo, C_out); w as in :func:`conv_forward`; x_shape: the
    (N, H, W, C_in) shape of the forward input (needed because several input
    sizes give the same output size when stride > 1).  Returns dx of shape
    x_shape in dy's dtype.
    """
    import jax

    _require()
    _check_positive(stride, dilation)
    x_shape = tuple(int(d) for d in x_shape)
    groups = _check_geometry(x_shape, w.shape, groups)
    dt = _check_dtypes(dy, w)
    expect = conv_output_shape(x_shape, w.shape, stride=stride, padding=padding,
                               dilation=dilation)
    if tuple(dy.shape) != expect:
        raise ValueError(f"dy shape {tuple(dy.shape)} does not match the forward "
                         f"output shape {expect}")
    call = jax.ffi.ffi_call(TARGETS["bwd_data"], jax.ShapeDtypeStruct(x_shape, dt),
                            vmap_method=VMAP_METHOD)
    return call(dy, w, **_attrs(stride, padding, dilation, groups))


def conv_backward_weights(x, dy, *, w_shape, stride: IntPair = 1,
                          padding: Padding = 0, dilation: IntPair = 1,
                          groups: int = 1, with_bias: bool = False):
    """dw (and db) = the gradients of conv_forward with respect to w (and b).

    x: (N, H, W, C_in); dy: (N, Ho, Wo, C_out); w_shape: (KH, KW,
    C_in // groups, C_out).  Returns dw (HWIO, x's dtype), or (dw, db) with
    db = dy summed over N, Ho, Wo when with_bias is True.
    """
    import jax

    _require()
    _check_positive(stride, dilation)
    w_shape = tuple(int(d) for d in w_shape)
    groups = _check_geometry(x.shape, w_shape, groups)
    dt = _check_dtypes(x, dy)
    expect = conv_output_shape(x.shape, w_shape, stride=stride, padding=padding,
                               dilation=dilation)
    if tuple(dy.shape) != expect:
        raise ValueError(f"dy shape {tuple(dy.shape)} does not match the forward "
                         f"output shape {expect}")
    attrs = _attrs(stride, padding, dilation, groups)
    if with_bias:
        call = jax.ffi.ffi_call(
            TARGETS["bwd_weights_bias"],
            (jax.ShapeDtypeStruct(w_shape, dt),
             jax.ShapeDtypeStruct((w_shape[3],), dt)),
            vmap_method=VMAP_METHOD)
        dw, db = call(x, dy, **attrs)
        return dw, db
    call = jax.ffi.ffi_call(TARGETS["bwd_weights"], jax.ShapeDtypeStruct(w_shape, dt),
                            vmap_method=VMAP_METHOD)
    return call(x, dy, **attrs)


def describe(op: str, x_shape, w_shape, *, stride=1, padding=0, dilation=1,
             groups=1, dtype="float32", bias=False) -> str:
    """The oneDNN implementation chosen for one convolution (diagnostics).

    op: "fwd", "bwd_data" or "bwd_weights".  Builds (and caches) the plan.
    Example result: "brg:avx512_core +weight-reorder scratch=4096".
    """
    lib = _require()
    ops = {"fwd": 0, "bwd_data": 1, "bwd_weights": 2}
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    pt, pb, pl, pr = _padding(padding)
    n, h, w, ci = x_shape
    kh, kw, _, co = w_shape
    geom = (ctypes.c_int64 * 17)(n, h, w, ci, kh, kw, co, sh, sw, dh, dw,
                                 pt, pb, pl, pr, int(groups), int(bool(bias)))
    buf = ctypes.create_string_buffer(512)
    rc = lib.jconv_onednn_describe(ops[op], 1 if np.dtype(dtype).name == "bfloat16" else 0,
                                   geom, buf, len(buf))
    text = buf.value.decode()
    if rc != 0:
        raise RuntimeError(f"jconv_onednn: {text}")
    return text


# Load eagerly so that registration happens at import; failures are recorded,
# never raised (see available()/unavailable_reason()).
_load()
