"""Accuracy tolerances, one home for tests and experiments alike.

A result matches when ``max|actual - expected| <= tol(dtype) * max(1, max|expected|)``: an error
relative to the output's scale, keyed by the dtype the computation ran in (the coarser of input
and output dtypes). Accumulation is in float32 (float64 for float64), so the budget is set by
the rounding of the inputs/outputs plus a reduction-length allowance.

Tolerances follow the precision actually used: float32 at the default precision is computed in
bfloat16 passes on a TPU and in TF32 on recent GPUs, so there it gets bfloat16's and float16's
tolerance (:func:`effective_dtype`); at ``precision="highest"`` it keeps float32's.
"""

from __future__ import annotations

import numpy as np

from jconv.targets import planning_platform

TOLERANCES = {
    "float64": 1e-10,
    "float32": 2e-5,
    "float16": 1e-2,
    "bfloat16": 4e-2,
}

_COARSENESS = ["float64", "float32", "float16", "bfloat16"]


#: what float32 at the default precision is computed in, per platform
DEFAULT_PRECISION_DTYPE = {"tpu": "bfloat16", "gpu": "float16"}


#: complex dtypes get the tolerance of their parts' dtype
_COMPLEX_PARTS = {"complex64": "float32", "complex128": "float64"}


def effective_dtype(dtype, precision=None, platform: str | None = None) -> str:
    """The dtype whose tolerance applies: ``dtype`` (a complex one: its parts' dtype), or the
    lower-precision type float32 runs in at the default precision on ``platform`` (default:
    JAX's default backend)."""
    name = np.dtype(dtype).name
    name = _COMPLEX_PARTS.get(name, name)
    if name != "float32" or precision not in (None, "default"):
        return name
    return DEFAULT_PRECISION_DTYPE.get(planning_platform(platform), name)


def _exact(name: str) -> bool:
    """Integer and boolean results are exact (lax's integer convolution wraps; so must ours)."""
    return np.dtype(name).kind in "biu"


def tolerance(*dtypes, precision=None, platform: str | None = None) -> float:
    """The tolerance for a computation involving ``dtypes`` (the coarsest floating one wins; 0
    when every one is an integer or boolean type), at ``precision`` on ``platform`` (see
    :func:`effective_dtype`)."""
    names = [effective_dtype(d, precision, platform) for d in dtypes]
    names = [n for n in names if not _exact(n)]
    if not names:
        return 0.0
    for n in names:
        if n not in TOLERANCES:
            raise ValueError(f"tolerance: dtype (={n}) has no tolerance; known: {sorted(TOLERANCES)}")
    return TOLERANCES[max(names, key=_COARSENESS.index)]


def scaled_error(actual, expected) -> float:
    """``max|actual - expected| / max(1, max|expected|)`` in float64, complex128 for complex
    values (NaNs compared as equal)."""
    wide = np.complex128 if np.iscomplexobj(actual) or np.iscomplexobj(expected) else np.float64
    a = np.asarray(actual, dtype=wide)
    e = np.asarray(expected, dtype=wide)
    if a.shape != e.shape:
        raise ValueError(f"scaled_error: shapes differ: {a.shape} vs {e.shape}")
    if a.size == 0:
        return 0.0
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if (nan_a != nan_e).any():
        return float("inf")
    a, e = np.where(nan_a, 0, a), np.where(nan_e, 0, e)
    return float(np.max(np.abs(a - e)) / max(1.0, float(np.max(np.abs(e)))))


def max_errors(actual, expected) -> tuple[float, float]:
    """(max abs error, max relative error) for reports; relative uses |expected| + tiny."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.size == 0:
        return 0.0, 0.0
    abs_err = np.abs(a - e)
    rel = abs_err / (np.abs(e) + np.finfo(np.float32).tiny)
    return float(np.nanmax(abs_err)), float(np.nanmax(rel))


def assert_close(actual, expected, *dtypes, factor: float = 1.0, what: str = "result", precision=None) -> None:
    """Raise AssertionError unless ``actual`` matches ``expected`` within ``tolerance(dtypes)``
    (at ``precision``: None / "default" widens float32's on TPU and GPU, see the module doc)."""
    dtypes = dtypes or (np.asarray(actual).dtype,)
    tol = tolerance(*dtypes, precision=precision) * factor
    err = scaled_error(actual, expected)
    if not err <= tol:
        raise AssertionError(f"{what}: scaled error {err:.3g} > tolerance {tol:.3g} for {dtypes}")
