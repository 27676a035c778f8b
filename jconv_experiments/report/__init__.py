"""Reports from a workdir's ``results.jsonl`` (+ ``env.json``): ``report.md`` and PNG plots.

  from jconv_experiments import report
  report.build_report("runs/default")   # -> "runs/default/report.md"

Everything is derived from the rows, so a report can be rebuilt at any time:
``python -m jconv_experiments report --workdir=DIR``. The comparison (:mod:`.compare`) and the compile
matrix (:mod:`.compile`) each have their sections and plots; :func:`build_report` picks by the
experiment the workdir's ``env.json`` names (or the rows' fields).
"""

from __future__ import annotations

import json
import os

from jconv_experiments.bench.store import load_rows
from jconv.files import atomic_write
from jconv_experiments.report import compare, compile, networks  # noqa: A004 - the compile-matrix report
from jconv_experiments.report.compare import PLOTS, markdown, speedups, summary

_KEYS = {"compare": ("case", "impl", "pass", "dtype", "batch"),
         "compile_matrix": ("target", "case", "impl", "dtype", "pass", "batch"),
         "networks": ("model", "dtype", "pass", "candidate")}
_MODULES = {"compare": compare, "compile_matrix": compile, "networks": networks}


def _kind(env: dict, path: str) -> str:
    name = env.get("config", {}).get("experiment")
    if name in _KEYS:
        return name
    with open(path) as f:
        first = f.readline()
    if '"candidate"' in first:
        return "networks"
    return "compile_matrix" if '"target"' in first else "compare"


def build_report(workdir: str) -> str:
    """Rebuild ``report.md`` and the PNG plots in ``workdir``; return the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    path = os.path.join(workdir, "results.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"build_report: workdir (={workdir!r}) has no results.jsonl")
    env = {}
    if os.path.exists(os.path.join(workdir, "env.json")):
        with open(os.path.join(workdir, "env.json")) as f:
            env = json.load(f)
    kind = _kind(env, path)
    rows = load_rows(path, _KEYS[kind])
    module = _MODULES[kind]
    module.plot_all(rows, workdir)
    return atomic_write(os.path.join(workdir, "report.md"), module.markdown(rows, env, module.PLOTS))


__all__ = ["build_report", "markdown", "summary", "speedups", "PLOTS", "compare", "compile", "networks"]
