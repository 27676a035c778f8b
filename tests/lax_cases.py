"""The 2-D cases of JAX's own convolution tests, as data.

JAX tests ``lax.conv_general_dilated`` (and ``lax.conv``, ``conv_with_general_padding``,
``conv_transpose``, ``conv_general_dilated_patches``, which call it) in ``tests/lax_test.py`` and
``tests/lax_autodiff_test.py``. The facts those tests use (dtype lists, shapes, dimension
numbers, paddings, dilations, group counts, ``preferred_element_type`` pairs, gradient orders)
are restated here as grids; tests/conformance_lax.py runs them against every backend, and
docs/conformance.md maps each JAX test to ours. The grids are the JAX tag we pin (0.10.2); the
JAX source is not needed to run them.

A grid is a list of *axes*, each a list of dicts (one dict per value, as JAX's
``sample_product`` takes them); a case merges one dict from each axis. :func:`grid` picks the
cases a level runs: ``"values"`` (every value of every axis at least once: ``make test``; axes
of many like values, such as the eight (batch, in, out) size triples or the 81 explicit pads,
thinned to a few: :class:`Long`), ``"pairs"`` (the slow grid: every value of every whole axis,
and every pair of values of any two axes, the long ones thinned to twice as many).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Any

import numpy as np

# ---- dtypes (JAX's lax_test_util lists; 64-bit ones run under jax.enable_x64) ----------------

FLOATS = ("bfloat16", "float16", "float32", "float64")
COMPLEX = ("complex64", "complex128")
INTS = ("int8", "int16", "int32", "int64")
UINTS = ("uint8", "uint16", "uint32", "uint64")
ALL = FLOATS + COMPLEX + INTS + UINTS + ("bool",)
#: what lax_autodiff_test differentiates: grad_inexact_dtypes (float32/64, complex64/128)
GRAD_INEXACT = ("float32", "float64", "complex64", "complex128")
#: testConvPreferredElement's (input, preferred_element_type) pairs
PREFERRED = (
    ("float16", "float16"), ("float16", "float32"), ("float16", "float64"), ("bfloat16", "bfloat16"),
    ("bfloat16", "float32"), ("bfloat16", "float64"), ("float32", "float32"), ("float32", "float64"),
    ("float64", "float64"), ("int8", "int8"), ("int8", "int16"), ("int8", "int32"), ("int8", "int64"),
    ("int16", "int16"), ("int16", "int32"), ("int16", "int64"), ("int32", "int32"), ("int32", "int64"),
    ("int64", "int64"), ("complex64", "complex64"), ("complex64", "complex128"), ("complex128", "complex128"),
    ("int8", "float16"), ("int8", "bfloat16"), ("int8", "float32"), ("int8", "float64"), ("int16", "float16"),
    ("int16", "bfloat16"), ("int16", "float32"), ("int16", "float64"), ("int32", "float32"), ("int32", "float64"),
    ("int64", "float64"),
)

NCHW = ("NCHW", "OIHW", "NCHW")  # lax.conv's layout
NHWC = ("NHWC", "HWIO", "NHWC")
#: testConvGeneralDilated's dimension numbers and the permutations from NCHW/OIHW shapes
GENERAL_DNS = ((NCHW, (0, 1, 2, 3), (0, 1, 2, 3)), (NHWC, (0, 2, 3, 1), (2, 3, 1, 0)),
               (("NCHW", "HWIO", "NHWC"), (0, 1, 2, 3), (2, 3, 1, 0)))
#: testConvGeneralDilatedGrad's
GRAD_DNS = ((NCHW, (0, 1, 2, 3), (0, 1, 2, 3)), (NHWC, (0, 2, 3, 1), (2, 3, 1, 0)),
            (("NHWC", "OIHW", "NCHW"), (0, 2, 3, 1), (0, 1, 2, 3)))


def is_x64(*dtypes) -> bool:
    return any(np.dtype(d).itemsize == 8 or d == "complex128" for d in dtypes if d is not None)


@dataclasses.dataclass(frozen=True)
class Case:
    """One ``conv_general_dilated(lhs, rhs, **kwargs)`` call: shapes in the call's own layouts."""

    lhs: tuple
    rhs: tuple
    dtype: str
    kw: tuple  # sorted (name, value) items of the keyword arguments

    @property
    def kwargs(self) -> dict:
        return dict(self.kw)

    @property
    def x64(self) -> bool:
        return is_x64(self.dtype, self.kwargs.get("preferred_element_type"))

    def __str__(self):
        kw = ", ".join(f"{k}={v}" for k, v in self.kw)
        return f"{self.dtype} lhs{self.lhs} rhs{self.rhs} {kw}"


def case(lhs, rhs, dtype, **kw) -> Case:
    return Case(tuple(lhs), tuple(rhs), dtype, tuple(sorted(kw.items())))


# ---- choosing cases from a grid ----------------------------------------------------------------


def _merge(combo) -> dict:
    out: dict = {}
    for d in combo:
        out.update(d)
    return out


def cover(axes: list[list[dict]], level: str, valid=lambda d: True, seed: int = 0) -> list[dict]:
    """Merged dicts covering ``axes`` at ``level`` ("values", "pairs" or "all"), valid ones only."""
    if level == "all":
        return [m for m in (_merge(c) for c in itertools.product(*axes)) if valid(m)]
    rng = random.Random(seed)
    sizes = [len(a) for a in axes]
    if level == "values":
        need = {(a, v) for a, n in enumerate(sizes) for v in range(n)}
        keys = lambda idx: {(a, v) for a, v in enumerate(idx)}  # noqa: E731
    elif level == "pairs":
        need = {(a, v, b, u) for a, b in itertools.combinations(range(len(axes)), 2)
                for v in range(sizes[a]) for u in range(sizes[b])}
        keys = lambda idx: {(a, idx[a], b, idx[b]) for a, b in itertools.combinations(range(len(idx)), 2)}  # noqa: E731
    else:
        raise ValueError(f"cover: level (={level!r}) must be 'values', 'pairs' or 'all'")
    out = []
    for _ in range(100000):
        if not need:
            break
        best, gain = None, 0
        for _ in range(300):  # the best of a random sample of candidates
            idx = tuple(rng.randrange(n) for n in sizes)
            g = len(keys(idx) & need)
            if g > gain:
                m = _merge(axes[a][v] for a, v in enumerate(idx))
                if valid(m):
                    best, gain = (idx, m), g
        if best is None:  # what is left is invalid in every combination sampled: drop it
            break
        need -= keys(best[0])
        out.append(best[1])
    return out


# ---- the grids -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Long:
    """An axis of many like values (the eight (batch, in, out) size triples, permutations, the
    81 explicit pads): ``keep`` of them, evenly spread, at the ``"values"`` level (its first
    ``head`` always among them), twice as many in the pairs of the slow level."""

    values: tuple
    keep: int = 2
    head: int = 0

    def thinned(self, keep: int) -> list:
        head, rest = list(self.values[:self.head]), list(self.values[self.head:])
        n = max(keep - self.head, 1)
        if len(rest) <= n:
            return list(self.values)
        return head + [rest[int(k * len(rest) / n)] for k in range(n)]


def grid(axes: list, level: str, valid=lambda d: True, seed: int = 0) -> list[dict]:
    """The cases of ``level``: ``"values"``: every value of every axis, long axes thinned;
    ``"pairs"``: every value of every whole axis, and every pair of values of two axes with the
    long ones thinned to twice their ``keep``."""
    def resolve(factor):
        return [a.thinned(a.keep * factor) if isinstance(a, Long) else a for a in axes]

    if level == "values":
        return cover(resolve(1), "values", valid, seed)
    if level != "pairs":
        raise ValueError(f"grid: level (={level!r}) must be 'values' or 'pairs'")
    whole = [list(a.values) if isinstance(a, Long) else a for a in axes]
    out, seen = [], set()
    for m in cover(whole, "values", valid, seed) + cover(resolve(2), "pairs", valid, seed):
        if repr(m) not in seen:
            seen.add(repr(m))
            out.append(m)
    return out


def conv_cases(level: str) -> list[Case]:
    """testConv, testConvAgainstNumpy: lax.conv (NCHW), string padding, float dtypes."""
    axes = [Long(tuple(dict(lhs=(b, i, 9, 10), rhs=(j, i, 4, 5)) for b, i, j in itertools.product([2, 3], repeat=3))),
            [dict(dtype=d) for d in FLOATS],
            [dict(strides=s) for s in [(1, 1), (1, 2), (2, 1)]],
            [dict(padding=p) for p in ["VALID", "SAME", "SAME_LOWER"]]]
    return [case(m["lhs"], m["rhs"], m["dtype"], window_strides=m["strides"], padding=m["padding"],
                 dimension_numbers=NCHW) for m in grid(axes, level, seed=1)]


def general_padding_cases(level: str) -> list[Case]:
    """testConvWithGeneralPadding(+AgainstNumpy): explicit pads, input and kernel dilation."""
    dil = [(1, 1), (1, 2), (2, 2)]
    axes = [Long(tuple(dict(lhs=(b, i, 9, 10), rhs=(j, i, 4, 5)) for b, i, j in itertools.product([1, 2, 3], repeat=3))),
            [dict(dtype=d) for d in FLOATS],
            [dict(strides=s) for s in [(1, 1), (1, 2), (2, 1)]],
            [dict(padding=p) for p in [((0, 0), (0, 0)), ((1, 2), (2, 0))]],
            [dict(lhs_dilation=d) for d in dil], [dict(rhs_dilation=d) for d in dil]]
    return [case(m["lhs"], m["rhs"], m["dtype"], window_strides=m["strides"], padding=m["padding"],
                 lhs_dilation=m["lhs_dilation"], rhs_dilation=m["rhs_dilation"], dimension_numbers=NCHW)
            for m in grid(axes, level, seed=2)]


def _permuted(shape, perm):
    return tuple(shape[p] for p in perm)


def general_dilated_cases(level: str, dtypes=ALL) -> list[Case]:
    """testConvGeneralDilated: batch and feature groups, a zero-width input, three dimension
    numbers, every dtype, large pads (an output from padding alone)."""
    dil = [(1, 1), (1, 2), (1, 4)]
    axes = [[dict(bgc=bg, fgc=fg) for bg, fg in [(1, 1), (2, 1), (1, 2)]],
            [dict(w=w) for w in [0, 10]],
            Long(tuple(dict(bij=bij) for bij in itertools.product([2, 3], repeat=3))),
            [dict(dn=dn) for dn in GENERAL_DNS],
            [dict(dtype=d) for d in dtypes],
            [dict(strides=s) for s in [(1, 1), (2, 1)]],
            [dict(padding=p) for p in [((1, 2), (2, 0)), ((10, 8), (7, 13))]],
            [dict(lhs_dilation=d) for d in dil], [dict(rhs_dilation=d) for d in dil]]
    out = []
    for m in grid(axes, level, seed=3):
        (b, i, j), bg, fg = m["bij"], m["bgc"], m["fgc"]
        dn, lp, rp = m["dn"]
        out.append(case(_permuted((b * bg, i * fg, 9, m["w"]), lp), _permuted((j * fg * bg, i, 4, 5), rp),
                        m["dtype"], window_strides=m["strides"], padding=m["padding"],
                        lhs_dilation=m["lhs_dilation"], rhs_dilation=m["rhs_dilation"], dimension_numbers=dn,
                        feature_group_count=fg, batch_group_count=bg))
    return out


def preferred_cases(level: str) -> list[Case]:
    """testConvPreferredElement: every (dtype, preferred_element_type) pair, lax.conv VALID, the
    shapes taken in turn (each pair with two of them at the slow level)."""
    shapes = [((b, i, 9, 10), (j, i, 4, 5)) for b, i, j in itertools.product([2, 3], repeat=3)]
    turns = 1 if level == "values" else 2
    combos = ((shapes[(k * turns + t) % len(shapes)], pair) for k, pair in enumerate(PREFERRED) for t in range(turns))
    return [case(lhs, rhs, d, window_strides=(1, 1), padding="VALID", dimension_numbers=NCHW,
                 preferred_element_type=p) for (lhs, rhs), (d, p) in combos]


def dimension_numbers_cases(level: str) -> list[Case]:
    """testConvGeneralDilatedLocal's convolution (n=2): every permutation of NCHW, OIHW and the
    output's NCHW, inexact dtypes, five precisions, SAME/VALID, strides (1, 2), rhs dilation (2, 1)."""
    lhs0, rhs0 = (2, 4, 7, 6), (5, 4, 2, 3)
    axes = [Long(tuple(dict(lhs=s) for s in map("".join, itertools.permutations("NCHW"))), 6),
            Long(tuple(dict(rhs=s) for s in map("".join, itertools.permutations("OIHW"))), 6),
            Long(tuple(dict(out=s) for s in map("".join, itertools.permutations("NCHW"))), 6),
            [dict(dtype=d) for d in FLOATS + COMPLEX],
            [dict(precision=p) for p in [None, "default", "high", "highest", ("default", "highest")]],
            [dict(padding=p) for p in ["SAME", "VALID"]]]
    out = []
    for m in grid(axes, level, seed=5):
        lshape = tuple(lhs0["NCHW".index(c)] for c in m["lhs"])
        rshape = tuple(rhs0["OIHW".index(c)] for c in m["rhs"])
        out.append(case(lshape, rshape, m["dtype"], window_strides=(1, 2), padding=m["padding"], rhs_dilation=(2, 1),
                        dimension_numbers=(m["lhs"], m["rhs"], m["out"]), precision=m["precision"]))
    return out


def patches_cases() -> list[dict]:
    """testConvGeneralDilatedPatchesOverlapping2D and the 2-D cases of ...NonOverlapping:
    ``conv_general_dilated_patches`` arguments (it runs a one-hot depthwise convolution)."""
    return [
        dict(lhs=(1, 2, 3, 1), filter_shape=(2, 2), strides=(1, 1), padding="SAME", dn=("NHWC", "OIHW", "NHWC")),
        dict(lhs=(3, 1, 4, 5), filter_shape=(1, 3), strides=(1, 3), padding=((3, 1), (2, 2)), dn=NCHW),
        dict(lhs=(3, 2, 5, 6), filter_shape=(4, 3), strides=(4, 3), padding=((5, 2), (2, 4)), dn=None),
        dict(lhs=(1, 2, 3, 4), filter_shape=(1, 1), strides=(1, 1), padding=((0, 0), (0, 0)),
             dn=("NCWH", "OHWI", "CNHW")),
        dict(lhs=(1, 2, 3, 4), filter_shape=(3, 2), strides=(1, 1), padding=((0, 0), (0, 0)),
             dn=("CWHN", "HOWI", "NCHW")),
    ]


def transpose_cases(level: str) -> list[dict]:
    """testConvTranspose2DT (transpose_kernel) and testConvTranspose2D: lax.conv_transpose
    arguments (NHWC/HWIO, use_consistent_padding), each the gradient of a forward conv."""
    pads = list(itertools.product(itertools.product([0, 1, 2], [0, 1, 2]), itertools.product([0, 1, 2], [0, 1, 2])))
    axes = [Long(tuple(dict(b=b, i=i, j=j, k=k) for b, i, j, k in itertools.product([2, 3], [2, 3], [2, 3], [3, 4, 5])),
                 3),
            [dict(dtype=d) for d in FLOATS],
            [dict(strides=s) for s in [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3)]],
            Long(tuple(dict(padding=p) for p in ["VALID", "SAME"] + pads), 5, head=2),
            [dict(rhs_dilation=d) for d in [None, (2, 2)]],
            [dict(transpose_kernel=t) for t in [True, False]]]
    return grid(axes, level, seed=6)


# ---- the gradient grids (lax_autodiff_test) --------------------------------------------------


def grad_conv_cases(level: str) -> list[Case]:
    """testConvGrad: lax.conv, float dtypes, strides, VALID/SAME."""
    axes = [Long(tuple(dict(lhs=(b, i, 3, 4), rhs=(j, i, 1, 2)) for b, i, j in itertools.product([2, 3], repeat=3))),
            [dict(strides=s) for s in [(1, 1), (1, 2), (2, 1)]],
            [dict(dtype=d) for d in FLOATS], [dict(padding=p) for p in ["VALID", "SAME"]]]
    return [case(m["lhs"], m["rhs"], m["dtype"], window_strides=m["strides"], padding=m["padding"],
                 dimension_numbers=NCHW, precision="highest") for m in grid(axes, level, seed=7)]


def grad_general_padding_cases(level: str) -> list[Case]:
    """testConvWithGeneralPaddingGrad: negative (cropping) pads, input dilation."""
    axes = [Long(tuple(dict(lhs=(b, i, 3, 4), rhs=(j, i, 1, 2)) for b, i, j in itertools.product([2, 3], repeat=3))),
            [dict(strides=s) for s in [(1, 1), (1, 2), (2, 1)]],
            [dict(padding=p) for p in [((0, 0), (0, 0)), ((-1, 0), (0, -1)), ((1, 0), (0, 1))]],
            [dict(lhs_dilation=d) for d in [(1, 1), (2, 1)]], [dict(dtype=d) for d in FLOATS]]
    return [case(m["lhs"], m["rhs"], m["dtype"], window_strides=m["strides"], padding=m["padding"],
                 lhs_dilation=m["lhs_dilation"], rhs_dilation=(1, 1), dimension_numbers=NCHW, precision="highest")
            for m in grid(axes, level, seed=8)]


def grad_general_dilated_cases(level: str) -> list[Case]:
    """testConvGeneralDilatedGrad: groups of both kinds, a zero-height input, a cropping pad,
    three dimension numbers, float and complex dtypes."""
    axes = [[dict(bgc=bg, fgc=fg) for bg, fg in [(1, 1), (2, 1), (1, 2)]],
            Long(tuple(dict(bij=bij) for bij in itertools.product([1, 2], repeat=3))),
            [dict(hw=hw) for hw in [(6, 7), (0, 4)]],
            [dict(strides=s) for s in [(1, 1), (1, 2), (2, 1)]],
            [dict(rhs_dilation=d) for d in [(1, 1), (2, 2)]], [dict(lhs_dilation=d) for d in [(1, 1), (2, 1)]],
            [dict(padding=p) for p in [((0, 0), (0, 0)), ((1, 0), (0, 1)), ((0, -1), (0, 0))]],
            [dict(dn=dn) for dn in GRAD_DNS], [dict(dtype=d) for d in GRAD_INEXACT]]
    valid = lambda m: not (m["hw"][0] == 0 and m["padding"] == ((0, -1), (0, 0)))  # noqa: E731 (as JAX)
    out = []
    for m in grid(axes, level, valid, seed=9):
        (b, i, j), bg, fg = m["bij"], m["bgc"], m["fgc"]
        dn, lp, rp = m["dn"]
        out.append(case(_permuted((b * bg, i * fg) + m["hw"], lp), _permuted((j * bg * fg, i, 1, 2), rp), m["dtype"],
                        window_strides=m["strides"], padding=m["padding"], lhs_dilation=m["lhs_dilation"],
                        rhs_dilation=m["rhs_dilation"], dimension_numbers=dn, feature_group_count=fg,
                        batch_group_count=bg, precision="highest"))
    return out


# ---- arrays ----------------------------------------------------------------------------------


def array(shape, dtype: str, rng: np.random.Generator) -> np.ndarray:
    """Values that exercise the dtype: small signed ints (overflowing int8 sums wrap, as lax's
    do), non-negative uints, random booleans, unit normals (complex: both parts)."""
    d = np.dtype(dtype)
    if d == np.bool_:
        return rng.integers(0, 2, shape).astype(d)
    if np.issubdtype(d, np.unsignedinteger):
        return rng.integers(0, 9, shape).astype(d)
    if np.issubdtype(d, np.integer):
        return rng.integers(-8, 9, shape).astype(d)
    if np.issubdtype(d, np.complexfloating):
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(d)
    return rng.normal(size=shape).astype(d)


def transpose_pads(n: int, k_eff: int, s: int, padding: Any) -> tuple[int, int]:
    """One axis of ``lax.conv_transpose``'s input-dilated convolution (``use_consistent_padding``):
    the transpose of the forward conv with ``padding`` whose output has ``n`` positions.

    The forward conv's input is ``n*s`` (SAME), ``n*s + max(k_eff - s, 0)`` (VALID) or that
    less the explicit pads; its transpose pads the cotangent by ``k_eff - 1 - lo`` before and
    ``k_eff - 1 - hi`` plus the rows the stride left over after."""
    from jax import lax

    if padding == "SAME":
        size = n * s
        (lo, hi), = lax.padtype_to_pads((size,), (k_eff,), (s,), "SAME")
    elif padding == "VALID":
        size, lo, hi = n * s + max(k_eff - s, 0), 0, 0
    else:
        lo, hi = padding
        size = n * s + max(k_eff - s, 0) - lo - hi
    left_over = (size + lo + hi - k_eff) % s
    return k_eff - 1 - lo, k_eff - 1 - hi + left_over
