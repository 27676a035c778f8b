"""``make test``'s share of a long grid; the whole grid runs in ``make test-all``.

A grid whose cases each cost seconds (a compile of a gradient, a second order, an interpreted
kernel) keeps a share of them in ``make test``: every ``every``-th case, the first always, so
each kind of case the grid lists (the grids are written one feature per line) is met by a case
near it; the others are marked ``slow`` (``make test-all``, which ``.ci/run`` runs). Where a grid
has a case that alone catches something (the one negative padding, the one NCHW case), name it
in ``keep``.

    @pytest.mark.parametrize("c", share(GRID, every=3, keep=(7,)), ids=_ids)
    @pytest.mark.parametrize("kwargs,shape", share(CASES, every=2, args=2))
"""

from __future__ import annotations

import pytest
from _pytest.mark.structures import ParameterSet


def slow_unless(cases, quick):
    """``cases`` with those for which ``quick(case)`` is false marked slow (``make test-all``)."""
    return [case if quick(case) else pytest.param(case, marks=pytest.mark.slow) for case in cases]


def forced_algorithm(impl: str) -> bool:
    """Whether ``impl`` forces one algorithm of a backend (``"lax:taps"``), not its own choice."""
    return ":" in impl


def share(cases, every: int, keep=(), args: int = 1):
    """``cases`` with all but every ``every``-th one (and the indices in ``keep``) marked slow;
    ``args``: how many argument names the parametrization has (a case is their tuple)."""
    out = []
    for i, case in enumerate(cases):
        quick = i % every == 0 or i in keep
        if isinstance(case, ParameterSet):
            values = case.values
        else:
            values = tuple(case) if args > 1 else (case,)
        marks = tuple(getattr(case, "marks", ())) + (() if quick else (pytest.mark.slow,))
        case_id = getattr(case, "id", None)
        out.append(pytest.param(*values, marks=marks, id=case_id))
    return out
