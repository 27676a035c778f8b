"""What this machine runs, and the runtime settings of the native part.

Capabilities (:func:`onednn_version`, :func:`bf16_supported`, :func:`int8_supported`), the plan
cache (:func:`cache_info`, :func:`set_cache_capacity`, :func:`clear_cache`), the layout knobs
(:func:`set_weights_layout`, :func:`set_activations_layout`) and OpenMP threads per convolution (:func:`set_num_threads`,
:func:`get_num_threads`). README.md has the measurements behind the defaults.
"""

from __future__ import annotations

import ctypes
from typing import Optional, Tuple

from jconv_onednn import _loader


def available() -> bool:
    """True when the native library and oneDNN loaded and the targets are registered."""
    return _loader.library() is not None


def unavailable_reason() -> Optional[str]:
    """Why :func:`available` is False, else None."""
    return _loader.reason()


def onednn_version() -> Optional[Tuple[int, int, int]]:
    """(major, minor, patch) of the oneDNN library in use, or None if unavailable."""
    lib = _loader.library()
    if lib is None:
        return None
    out = (ctypes.c_int32 * 3)()
    lib.jconv_onednn_version(out)
    return tuple(out)


def bf16_supported() -> bool:
    """True when this CPU runs bfloat16 convolutions natively (AVX512_BF16, AMX, AVX2-VNNI-2)."""
    lib = _loader.library()
    return lib is not None and bool(lib.jconv_onednn_bf16_supported())


def int8_supported() -> bool:
    """True when this CPU runs exact int8 convolutions: VNNI (AVX512_VNNI, AVX-VNNI) or AMX.

    Without VNNI oneDNN's int8 kernels saturate int16 partial sums (and halve int8 weights to
    avoid it), which is not what ``lax`` computes, so the plugin refuses int8 there.
    """
    lib = _loader.library()
    return lib is not None and bool(lib.jconv_onednn_int8_supported())


def cache_info() -> dict:
    """Primitive-cache statistics.

    entries, capacity, hits, misses of the plan cache, and how many calls got their oneDNN
    scratchpad from XLA (xla_scratch_calls) or from the plugin's per-thread buffer
    (thread_scratch_calls; XLA:CPU provides no FFI scratch).
    """
    out = (ctypes.c_int64 * 6)()
    _loader.require().jconv_onednn_cache_stats(out)
    keys = ("entries", "capacity", "hits", "misses", "xla_scratch_calls", "thread_scratch_calls")
    return dict(zip(keys, (int(v) for v in out)))


def set_cache_capacity(capacity: int) -> None:
    """Bound the primitive cache (default 512 entries); 0 disables caching."""
    _loader.require().jconv_onednn_set_cache_capacity(int(capacity))


def clear_cache() -> None:
    """Drop every cached primitive and reset the statistics."""
    _loader.require().jconv_onednn_clear_cache()


def set_weights_layout(layout: str) -> None:
    """Choose how weights reach oneDNN (a tuning knob; the default is "any").

    "any": oneDNN picks its preferred (blocked) weight layout and the plugin reorders HWIO <->
    that layout on every call. "plain": oneDNN receives the HWIO weights as they are (no
    reorder; oneDNN may then fall back to slower kernels). Changing it affects plans built
    afterwards (the cache key includes it).
    """
    codes = {"any": 0, "plain": 1}
    if layout not in codes:
        raise ValueError(f"set_weights_layout: layout (={layout!r}) must be 'any' or 'plain'")
    _loader.require().jconv_onednn_set_weights_policy(codes[layout])


def set_activations_layout(layout: str) -> None:
    """Choose how activations (x, y and their gradients) reach oneDNN (a tuning knob; the
    default is "auto").

    "auto": per convolution (NCHW buffers are reordered to the layout oneDNN picks, NHWC ones
    are given as they are; README.md has the measurements). "plain": the caller's NHWC / NCHW
    buffers as they are. "any": oneDNN picks its layout and the plugin reorders to it and back
    on every call. Integer convolutions always take NHWC as it is. Affects plans built
    afterwards (the cache key includes it).
    """
    codes = {"auto": 0, "plain": 1, "any": 2}
    if layout not in codes:
        raise ValueError(f"set_activations_layout: layout (={layout!r}) must be 'auto', 'plain' or 'any'")
    _loader.require().jconv_onednn_set_activations_policy(codes[layout])


def set_num_threads(n: Optional[int]) -> None:
    """OpenMP threads per oneDNN convolution; None or 0 restores the default.

    The default is OMP_NUM_THREADS when it was set before the plugin loaded, else the number of
    CPUs. Takes effect on the next call (from whichever XLA thread makes it); primitives are
    cached per thread count.
    """
    _loader.require().jconv_onednn_set_num_threads(int(n or 0))


def get_num_threads() -> int:
    """The OpenMP thread count the next convolutions will use."""
    return int(_loader.require().jconv_onednn_get_num_threads())
