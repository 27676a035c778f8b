"""The compile-matrix report: what compiles where (``experiments/compile_matrix.py``).

Rows are keyed (target, case, impl, dtype, pass, batch); ``compiled`` or an ``error`` whose
``error_kind`` is ``"jconv"`` (refused while tracing with a clear error: the layer cannot run
as a kernel on that target) or ``"compiler"`` (the compiler failed, crashed or timed out: a bug
to fix). One function per section; :func:`markdown` puts them together.
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict

from jconv_experiments.bench.store import as_float
from jconv_experiments.programs import MODEL_PASS
from jconv_experiments.report.common import fmt_bytes, impl_order, machine_line, save, table

PLOTS = ("compile.png",)
_MARK = {"ok": "✓", "jconv": "–", "compiler": "✗"}


def status(row: dict) -> str:
    if row.get("compiled"):
        return "ok"
    return "jconv" if row.get("error_kind") == "jconv" else "compiler"


def summary(rows: list[dict]) -> dict:
    """Per target: compiled, refused by jconv with a clear error, failed in the compiler."""
    per = defaultdict(lambda: {"ok": 0, "jconv": 0, "compiler": 0})
    for r in rows:
        per[r["target"]][status(r)] += 1
    bad = [r for r in rows if status(r) == "compiler"]
    return {"rows": len(rows), "per_target": dict(per), "compiler_failures": bad,
            "all_compile_or_clear_error": not bad}


def _targets(rows):
    return list(dict.fromkeys(r["target"] for r in rows))


def _variants(rows):
    return [(d, p) for d in dict.fromkeys(r["dtype"] for r in rows) for p in dict.fromkeys(r["pass"] for r in rows)]


def section_header(env: dict) -> list[str]:
    if not env:
        return []
    cfg = env.get("config", {})
    return [machine_line(env), "",
            f"**Config**: targets `{cfg.get('targets')}`, the work of configs `{cfg.get('configs')}`"
            + (f", suite `{cfg.get('suite')}`" if cfg.get("suite") else "") + ". Compile-only: libtpu's topologies "
            "for TPUs, the CUDA plugin's deviceless compiler for GPUs (target configs in jconv/gpu_targets).", ""]


def section_verdict(rows: list[dict]) -> list[str]:
    s = summary(rows)
    md = ["## Verdict", "",
          f"- Every program compiles or is refused by jconv with a clear error: "
          f"{'**yes**' if s['all_compile_or_clear_error'] else '**no**'} ({len(rows)} rows).", ""]
    lines = []
    for t in _targets(rows):
        c = s["per_target"][t]
        kind = next(r["device_kind"] for r in rows if r["target"] == t)
        lines.append([t, kind, c["ok"], c["jconv"], c["compiler"], sum(c.values())])
    md += [table(["target", "device", "compiled", "refused (clear error)", "compiler failed", "rows"], lines), ""]
    return md


def _is_model(row) -> bool:
    return row["pass"] == MODEL_PASS


def section_per_target(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if not _is_model(r)]
    if not rows:
        return []
    variants = _variants(rows)
    legend = ", ".join(f"{d} {p}" for d, p in variants)
    md = ["## Per target", "",
          f"Each cell: {legend}, in that order. ✓ compiled; – refused while tracing with a clear error "
          "(does not fit the target: see Failures); ✗ the compiler failed; · not in the rows (a run that "
          "has not finished).", ""]
    for t in _targets(rows):
        rs = [r for r in rows if r["target"] == t]
        impls = impl_order({r["impl"] for r in rs})
        by = {(r["case"], r["impl"], r["dtype"], r["pass"], r["batch"]): r for r in rs}
        groups = list(dict.fromkeys((r["case"], r["batch"]) for r in rs))
        lines = []
        for case, batch in groups:
            cells = []
            for impl in impls:
                marks = [by.get((case, impl, d, p, batch)) for d, p in variants]
                cells.append("".join(_MARK[status(r)] if r else "·" for r in marks))
            lines.append([case, batch] + cells)
        md += [f"### {t} ({rs[0]['device_kind']})", "", table(["case", "batch"] + impls, lines), ""]
    return md


def section_models(rows: list[dict]) -> list[str]:
    """Whole networks' train steps: compiled or not, compile seconds and temporary memory."""
    rows = [r for r in rows if _is_model(r)]
    if not rows:
        return []
    lines = [[r["target"], r["case"], r["batch"], r["dtype"], r["impl"], _MARK[status(r)],
              f"{as_float(r['compile_s']):.0f}" if r.get("compile_s") is not None else "-",
              fmt_bytes(r.get("temp_bytes")), f"{as_float(r['flops']) / 1e9:.0f}" if r.get("flops") else "-"]
             for r in rows]
    return ["## Whole networks (train steps)", "",
            "One full train step (forward and backward in training mode, the optimiser) of each model of the "
            "networks config: `auto` with jconv's conv modules, `xla` with flax's.", "",
            table(["target", "model", "batch", "dtype", "impl", "compiled", "compile s", "temp", "GFLOP"], lines), ""]


def section_failures(rows: list[dict]) -> list[str]:
    bad = [r for r in rows if not r.get("compiled") and not r.get("same_program_as")]
    if not bad:
        return ["## Failures", "", "None.", ""]
    lines = [[r["target"], r["case"], r["impl"], r["dtype"], r["pass"], r["batch"], status(r),
              (r.get("error") or "")[:300]] for r in bad]
    return ["## Failures", "", table(["target", "case", "impl", "dtype", "pass", "batch", "kind", "error"], lines), ""]


def section_pallas(rows: list[dict]) -> list[str]:
    rs = [r for r in rows if r.get("compiled") and r.get("pallas_kernels")]
    if not rs:
        return []
    lines = []
    for r in rs:
        lines.append([r["target"], r["case"], r["dtype"], r["pass"], r["batch"], r.get("pallas_kernels"),
                      r.get("xla_convolutions"), f"{as_float(r.get('compile_s')):.1f}", fmt_bytes(r.get("temp_bytes"))])
    return ["## Pallas programs", "",
            "Kernels and XLA convolutions in the compiled program (a gradient pass holds the input- and "
            "weight-gradient kernels: the forward is not needed for them), compile seconds, and the "
            "temporaries XLA allocates (`memory_analysis()`).", "",
            table(["target", "case", "dtype", "pass", "batch", "kernels", "XLA convs", "compile s", "temp"], lines), ""]


def section_cost(rows: list[dict]) -> list[str]:
    rs = [r for r in rows if r.get("compiled") and r.get("optimal_seconds") is not None
          and as_float(r["optimal_seconds"]) > 0 and not r.get("same_program_as")]
    if not rs:
        return []
    lines = [[r["target"], r["case"], r["impl"], r["dtype"], r["pass"], r["batch"],
              f"{as_float(r.get('flops', 0)) / 1e9:.2f}", f"{as_float(r.get('bytes_accessed', 0)) / 1e6:.1f}",
              f"{1e6 * as_float(r['optimal_seconds']):.0f}"] for r in rs]
    return ["## The compiler's cost model", "",
            "From `compiled.cost_analysis()` where the backend reports it (TPU): GFLOP, MB accessed and the "
            "compiler's optimal time in microseconds. A model, not a measurement.", "",
            table(["target", "case", "impl", "dtype", "pass", "batch", "GFLOP", "MB", "optimal us"], lines), ""]


def section_compile_time(rows: list[dict]) -> list[str]:
    by = defaultdict(list)
    for r in rows:
        if r.get("compiled") and not r.get("same_program_as") and r.get("compile_s") is not None:
            by[(r["target"], r["impl"])].append(as_float(r["compile_s"]))
    if not by:
        return []
    impls = impl_order({k[1] for k in by})
    lines = []
    for t in _targets(rows):
        cells = []
        for i in impls:
            v = by.get((t, i))
            cells.append("-" if not v else f"{statistics.median(v):.1f} / {max(v):.0f}")
        lines.append([t] + cells)
    return ["## Compile seconds (median / max)", "", table(["target"] + impls, lines), ""]


def markdown(rows: list[dict], env: dict | None = None, plots: tuple[str, ...] = PLOTS) -> str:
    md = ["# Compile matrix: jconv on GPU and TPU targets, compile-only", ""]
    for section in (section_header(env or {}), section_verdict(rows), section_per_target(rows),
                    section_models(rows), section_failures(rows), section_compile_time(rows), section_pallas(rows), section_cost(rows)):
        md += section
    if plots:
        md += ["## Plots", ""] + [f"![{p[:-4]}]({p})" for p in plots] + [""]
    return "\n".join(md)


def plot_compile(rows: list[dict], path: str) -> None:
    """Left: per target and layer, the share of programs that compiled (red: a compiler failure,
    amber: refused by jconv). Right: compile seconds per impl and target."""
    import matplotlib.pyplot as plt
    import numpy as np

    tgts = _targets(rows)
    cases = list(dict.fromkeys(r["case"] for r in rows))
    grid = np.zeros((len(cases), len(tgts)))
    worst = np.zeros((len(cases), len(tgts)), dtype=int)
    counts = defaultdict(lambda: [0, 0])
    for r in rows:
        i, j = cases.index(r["case"]), tgts.index(r["target"])
        counts[(i, j)][1] += 1
        st = status(r)
        counts[(i, j)][0] += st == "ok"
        worst[i, j] = max(worst[i, j], {"ok": 0, "jconv": 1, "compiler": 2}[st])
    for (i, j), (ok, n) in counts.items():
        grid[i, j] = ok / n
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(6 + 1.1 * len(tgts) + 6, 0.3 * len(cases) + 2.2),
                                 gridspec_kw={"width_ratios": [max(2, len(tgts)), 6]})
    colors = np.empty(grid.shape + (3,))
    for i in range(len(cases)):
        for j in range(len(tgts)):
            colors[i, j] = {0: (0.33, 0.66, 0.41), 1: (0.93, 0.69, 0.13), 2: (0.77, 0.31, 0.32)}[worst[i, j]]
            ok, n = counts[(i, j)]
            if n:
                a1.text(j, i, f"{ok}/{n}", ha="center", va="center", fontsize=7, color="white")
    a1.imshow(colors, aspect="auto")
    a1.set_xticks(range(len(tgts)))
    a1.set_xticklabels(tgts)
    a1.set_yticks(range(len(cases)))
    a1.set_yticklabels(cases, fontsize=7)
    a1.set_title("programs compiled (green: all; amber: some refused by jconv; red: compiler failed)", fontsize=8)
    impls = impl_order({r["impl"] for r in rows})
    width = 0.8 / max(1, len(impls))
    for k, impl in enumerate(impls):
        data = [[as_float(r["compile_s"]) for r in rows if r["target"] == t and r["impl"] == impl
                 and r.get("compiled") and not r.get("same_program_as")] for t in tgts]
        pos = [j + (k - (len(impls) - 1) / 2) * width for j in range(len(tgts))]
        for p, d in zip(pos, data):
            if d:
                a2.scatter([p] * len(d), d, s=6, alpha=0.5, label=impl if p == pos[0] or not a2.get_legend_handles_labels()[1].count(impl) else None)
    a2.set_yscale("log")
    a2.set_xticks(range(len(tgts)))
    a2.set_xticklabels(tgts)
    a2.set_ylabel("compile seconds (log)")
    a2.set_title("compile time per program", fontsize=9)
    handles, labels = a2.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    a2.legend(uniq.values(), uniq.keys(), fontsize=7)
    save(fig, path)


def plot_all(rows: list[dict], workdir: str) -> None:
    plot_compile(rows, os.path.join(workdir, "compile.png"))
