"""Finding and loading the native library, and registering its FFI targets with XLA.

Loading happens once, at import of the package; a failure is recorded (:func:`reason`), never
raised, so that ``import jconv_onednn`` works on any machine.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys
import threading
from typing import Optional

_LIB_NAME = "libjconv_onednn.so"
_DNNL_SONAME = "libdnnl.so.3"

#: FFI target names, as registered with XLA (platform "cpu").
TARGETS = {
    "fwd": "jconv_onednn_conv_fwd",
    "fwd_bias": "jconv_onednn_conv_fwd_bias",
    "bwd_data": "jconv_onednn_conv_bwd_data",
    "bwd_weights": "jconv_onednn_conv_bwd_weights",
    "bwd_weights_bias": "jconv_onednn_conv_bwd_weights_bias",
}

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_dnnl: Optional[ctypes.CDLL] = None
_reason: Optional[str] = None
_loaded = False


def libdnnl_candidates() -> list[str]:
    """Where libdnnl.so.3 may be, best first: ``JCONV_ONEDNN_LIBDNNL``, the file the installed
    ``onednn-cpu-gomp`` distribution recorded (``<prefix>/lib``, wherever the prefix is), then
    ``sys.prefix/lib`` and ``sys.base_prefix/lib``. Only existing files."""
    paths = []
    explicit = os.environ.get("JCONV_ONEDNN_LIBDNNL")
    if explicit:
        paths.append(explicit)
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


def library_path() -> str:
    """The plugin's own library: ``JCONV_ONEDNN_LIBRARY``, else the file beside this module."""
    return os.environ.get("JCONV_ONEDNN_LIBRARY") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), _LIB_NAME)


def load() -> None:
    """Load oneDNN and the plugin library, register the FFI targets (once; never raises)."""
    global _lib, _dnnl, _reason, _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
        try:
            # Preload oneDNN globally so that the plugin's DT_NEEDED entry resolves to it
            # whatever the RUNPATH says; without it the plugin's RUNPATH ($ORIGIN/../../..)
            # and the system search path remain.
            errors = []
            for path in libdnnl_candidates():
                try:
                    _dnnl = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                    break
                except OSError as e:  # pragma: no cover - depends on the host
                    errors.append(f"{path}: {e}")
            lib_path = library_path()
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
    i32, i64 = ctypes.c_int32, ctypes.c_int64
    i32p, i64p = ctypes.POINTER(i32), ctypes.POINTER(i64)
    signatures = {
        "jconv_onednn_version": ([i32p], None),
        "jconv_onednn_bf16_supported": ([], i32),
        "jconv_onednn_int8_supported": ([], i32),
        "jconv_onednn_cpu_isa": ([], i32),
        "jconv_onednn_cache_stats": ([i64p], None),
        "jconv_onednn_set_cache_capacity": ([i64], None),
        "jconv_onednn_clear_cache": ([], None),
        "jconv_onednn_set_weights_policy": ([i32], None),
        "jconv_onednn_get_weights_policy": ([], i32),
        "jconv_onednn_set_activations_policy": ([i32], None),
        "jconv_onednn_get_activations_policy": ([], i32),
        "jconv_onednn_set_num_threads": ([i32], None),
        "jconv_onednn_get_num_threads": ([], i32),
        "jconv_onednn_describe": ([i32, i32, i64p, ctypes.c_char_p, i64], i32),
    }
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype


def library() -> Optional[ctypes.CDLL]:
    """The loaded library, or None."""
    load()
    return _lib


def reason() -> Optional[str]:
    """Why the library is not loaded, or None."""
    load()
    return _reason


def require() -> ctypes.CDLL:
    """The loaded library; RuntimeError with the reason when it is not."""
    load()
    if _lib is None:
        raise RuntimeError(f"jconv_onednn is unavailable: {_reason}")
    return _lib
