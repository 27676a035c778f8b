"""The comparison report: jconv's implementations vs ``lax.conv_general_dilated``.

* speedup of an impl = XLA's median time / the impl's, for the same (case, pass, dtype, batch);
  geometric means over layers per impl, pass and dtype;
* accuracy = scaled error (``max|a - ref| / max(1, max|ref|)``, :mod:`jconv.testing`) against
  the float64 (or HIGHEST float32: the ``reference`` column) reference, ``ok`` when within the
  row's tolerance; the verdict asks whether every impl agrees with XLA within tolerance;
* interpreted rows (Pallas on CPU) count for accuracy, never for speed;
* "% of GEMM" = a conv's GFLOP/s over the same-size GEMM's (``gemm_peak`` row), forward.

One function per section; :func:`markdown` puts them together.
"""

from __future__ import annotations

from collections import defaultdict

from jconv_experiments.bench.harness import geomean
from jconv_experiments.bench.peers import BASELINE, PEERS
from jconv_experiments.bench.store import as_float
from jconv_experiments.report.common import color, fmt_bytes, fmt_err, fmt_ms, impl_order, machine_line, marker, save, table

PLOTS = ("speedup.png", "errors.png", "roofline.png")


def _group(row) -> tuple:
    return row["case"], row["pass"], row["dtype"], row["batch"]


def _key(row) -> tuple:
    return row["case"], row["impl"], row["pass"], row["dtype"], row["batch"]


def _is_convolution(impl: str) -> bool:
    """A jconv impl or a peer that computes the layer (not a yardstick such as the GEMM peak)."""
    return impl not in PEERS or PEERS[impl].convolution


def _timed(row) -> bool:
    return row.get("error") is None and not row.get("interpreted") and row.get("time_median_s") is not None


def speedups(rows: list[dict], versus: str = BASELINE) -> dict[tuple, float]:
    """(case, impl, pass, dtype, batch) -> ``versus``'s time / impl time (timed, non-interpreted
    rows of the same group, so measured in the same rounds). ``versus``: the baseline (XLA) or
    another peer, e.g. ``"torch"``."""
    xla = {_group(r): as_float(r["time_median_s"]) for r in rows if r["impl"] == versus and _timed(r)}
    out = {}
    for r in rows:
        if r["impl"] == versus or not _is_convolution(r["impl"]) or not _timed(r):
            continue
        t_x = xla.get(_group(r))
        t = as_float(r["time_median_s"])
        if t_x and t:
            out[_key(r)] = t_x / t
    return out


def _geomeans(sp: dict[tuple, float]) -> dict[tuple, float]:
    by = defaultdict(list)
    for (case, impl, pass_, dtype, _), s in sp.items():
        by[(impl, pass_, dtype)].append(s)
    return {k: geomean(v) for k, v in by.items()}


def summary(rows: list[dict]) -> dict:
    """The verdict: agreement with XLA, geometric-mean speedups over XLA, and over each other
    peer that computes the layer (``geomean_vs``: peer -> {(impl, pass, dtype): ratio}); also
    used by the notebook."""
    geo = _geomeans(speedups(rows))
    peers = [p for p in PEERS if p != BASELINE and PEERS[p].convolution and any(r["impl"] == p for r in rows)]
    vs = {p: {k: g for k, g in _geomeans(speedups(rows, versus=p)).items() if k[0] != BASELINE} for p in peers}
    checked = [r for r in rows if _is_convolution(r["impl"])]
    failed_runs = [r for r in checked if r.get("error")]
    disagree = [r for r in checked if r.get("error") is None and r["impl"] != BASELINE
                and r.get("agrees_with_xla") is False]
    out_of_tol = [r for r in checked if r.get("error") is None and r.get("within_tol") is False]
    return {
        "rows": len(rows),
        "all_agree_with_xla": not disagree and not failed_runs,
        "disagree": disagree,
        "failed": failed_runs,
        "out_of_tolerance": out_of_tol,
        "geomean_speedup": geo,
        "geomean_vs": vs,
    }


class _View:
    """The rows indexed the ways the sections read them."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.summary = summary(rows)
        self.sp = speedups(rows)
        self.impls = [i for i in impl_order({r["impl"] for r in rows}) if i != "gemm_peak"]
        self.groups = list(dict.fromkeys(_group(r) for r in rows))
        self.by_key = {_key(r): r for r in rows}
        self.passes = list(dict.fromkeys(r["pass"] for r in rows))
        self.dtypes = list(dict.fromkeys(r["dtype"] for r in rows))

    def get(self, group, impl):
        case, pass_, dtype, batch = group
        return self.by_key.get((case, impl, pass_, dtype, batch))

    def first(self, group, field):
        return next((self.get(group, i).get(field) for i in self.impls if self.get(group, i) is not None), None)


def section_header(env: dict) -> list[str]:
    if not env:
        return []
    cfg = env.get("config", {})
    return [
        machine_line(env), "",
        f"**Config**: suite `{cfg.get('suite')}`, batch {cfg.get('batch')} "
        f"(capped at {cfg.get('max_fwd_gflop')} GFLOP per forward), dtypes {cfg.get('dtypes')}, "
        f"precision {cfg.get('precision')}, impls {cfg.get('impls')}, "
        f"{cfg.get('iters')} timing rounds (median), warm-up {cfg.get('warmup')}.", "",
    ]


def section_verdict(v: _View) -> list[str]:
    s = v.summary
    md = ["## Verdict", "",
          f"- All implementations agree with XLA within tolerance: {'**yes**' if s['all_agree_with_xla'] else '**no**'} "
          f"({len(v.rows)} rows)."]
    for r in s["disagree"]:
        md.append(f"  - disagrees: {r['case']} {r['impl']} {r['pass']} {r['dtype']}: scaled error vs XLA "
                  f"{fmt_err(r.get('scaled_err_vs_xla'))} > {fmt_err(r.get('tol'))}")
    failed = defaultdict(list)
    for r in s["failed"]:
        failed[r["impl"]].append(r)
    for impl, rs in failed.items():
        md.append(f"  - {impl} did not run on {len(rs)} row(s): {rs[0]['error']}")
    if s["out_of_tolerance"]:
        names = sorted({f"{r['case']} {r['impl']} {r['pass']} {r['dtype']}" for r in s["out_of_tolerance"]})
        md.append(f"- Outside tolerance vs the reference: {len(names)} row(s): " + "; ".join(names[:8])
                  + (" ..." if len(names) > 8 else ""))
    for impl in impl_order({k[0] for k, g in s["geomean_speedup"].items() if g is not None}):
        parts = [f"{p} {d} **{g:.2f}x**" for (i, p, d), g in s["geomean_speedup"].items() if i == impl and g is not None]
        md.append(f"- {impl}: geometric-mean speedup over XLA: " + ", ".join(parts))
    for peer, geo in s["geomean_vs"].items():
        for impl in impl_order({k[0] for k, g in geo.items() if g is not None}):
            parts = [f"{p} {d} **{g:.2f}x**" for (i, p, d), g in geo.items() if i == impl and g is not None]
            md.append(f"- {impl} vs {peer}: geometric-mean speedup over {peer}: " + ", ".join(parts))
    interpreted = sorted({r["impl"] for r in v.rows if r.get("interpreted") and not r.get("error")})
    if interpreted:
        md.append(f"- {', '.join(interpreted)} ran interpreted (no compiled kernel on this platform): "
                  "checked for accuracy, left out of every speed figure.")
    return md + [""]


def section_geomeans(v: _View) -> list[str]:
    geo = v.summary["geomean_speedup"]
    cols = [(p, d) for d in v.dtypes for p in v.passes]
    timed = [i for i in v.impls if i != BASELINE and any(k[0] == i for k in geo)]
    if not timed:
        return []
    lines = [[i] + ["-" if geo.get((i, p, d)) is None else f"{geo[(i, p, d)]:.2f}x" for p, d in cols] for i in timed]
    return ["## Geometric-mean speedup over XLA", "", table(["impl"] + [f"{p} {d}" for p, d in cols], lines), "",
            "Speedup > 1: faster than `lax.conv_general_dilated` on the same layer, measured in the same "
            "interleaved rounds.", ""]


def section_accuracy(v: _View) -> list[str]:
    lines = []
    for g in v.groups:
        cells = []
        for i in v.impls:
            r = v.get(g, i)
            if r is None:
                cells.append("")
            elif r.get("error"):
                cells.append("failed")
            else:
                cells.append(f"{fmt_err(r.get('scaled_err'))}{'' if r.get('within_tol') else ' **over**'}")
        lines.append([g[0], g[1], g[2], v.first(g, "reference") or "-", fmt_err(v.first(g, "tol"))] + cells)
    return ["## Accuracy", "",
            "Scaled error `max|y - ref| / max(1, max|ref|)` against the reference (fwd: y; fwd+bwd: the "
            "gradients dx, dw, db, worst of them); **over** marks a value above the tolerance.", "",
            table(["case", "pass", "dtype", "reference", "tolerance"] + v.impls, lines), ""]


def section_speed(v: _View) -> list[str]:
    lines = []
    for g in v.groups:
        case, pass_, dtype, batch = g
        cells = []
        for i in v.impls:
            r = v.get(g, i)
            if r is None:
                cells.append("")
            elif r.get("error"):
                cells.append("failed")
            elif r.get("interpreted"):
                cells.append(f"({fmt_ms(r.get('time_median_s'))} interp.)")
            else:
                sx = v.sp.get((case, i, pass_, dtype, batch))
                cells.append(fmt_ms(r.get("time_median_s")) + (f" ({sx:.2f}x)" if sx else ""))
        flops = v.first(g, "flops")
        gemm = v.by_key.get((case, "gemm_peak", "fwd", dtype, batch))
        best = [as_float(v.get(g, i).get("gflops")) for i in v.impls if v.get(g, i) is not None and _timed(v.get(g, i))]
        best = [b for b in best if b]
        lines.append([case, batch, pass_, dtype, f"{as_float(flops) / 1e9:.3g}" if flops is not None else "-"] + cells
                     + [f"{max(best):.1f}" if best else "-",
                        f"{as_float(gemm['gflops']):.1f}" if gemm and gemm.get("gflops") and pass_ == "fwd" else "-"])
    return ["## Speed", "",
            "Median milliseconds per call after warm-up (compile time excluded); in parentheses the "
            "speedup over XLA. fwd+bwd is the gradient of `sum(y * ct)` w.r.t. x, w, b (3x the forward "
            "FLOPs). `gemm GFLOP/s`: a plain matmul of the layer's im2col size in the same rounds.", "",
            table(["case", "batch", "pass", "dtype", "GFLOP"] + [f"{i} ms" for i in v.impls]
                  + ["best GFLOP/s", "gemm GFLOP/s"], lines), ""]


def section_gemm_fraction(v: _View) -> list[str]:
    lines = []
    for g in v.groups:
        case, pass_, dtype, batch = g
        gemm = v.by_key.get((case, "gemm_peak", "fwd", dtype, batch))
        if pass_ != "fwd" or not gemm or not gemm.get("gflops"):
            continue
        peak = as_float(gemm["gflops"])
        cells = []
        for i in v.impls:
            r = v.get(g, i)
            cells.append(f"{100 * as_float(r['gflops']) / peak:.0f}%" if r and _timed(r) and r.get("gflops") else "-")
        lines.append([case, dtype, f"{peak:.1f}"] + cells)
    if not lines:
        return []
    return ["## Forward GFLOP/s as % of the same-size GEMM", "", table(["case", "dtype", "gemm GFLOP/s"] + v.impls, lines), ""]


def section_memory(v: _View) -> list[str]:
    lines = [[g[0], g[1], g[2]] + [fmt_bytes(v.get(g, i).get("temp_bytes")) if v.get(g, i) else "" for i in v.impls]
             for g in v.groups]
    return ["## Memory", "", "Temporary buffer bytes from `compiled.memory_analysis()` (`-`: not available, "
            "e.g. PyTorch).", "", table(["case", "pass", "dtype"] + v.impls, lines), ""]


def section_compile_time(v: _View) -> list[str]:
    lines = []
    for g in v.groups:
        cells = []
        for i in v.impls:
            r = v.get(g, i)
            c = as_float(r.get("compile_s")) if r else None
            cells.append("-" if c is None else f"{c:.2f}")
        lines.append([g[0], g[1], g[2]] + cells)
    return ["## Compile time (s)", "", table(["case", "pass", "dtype"] + v.impls, lines), ""]


def section_failed(v: _View) -> list[str]:
    failed = [r for r in v.rows if r.get("error")]
    if not failed:
        return []
    return ["## Failed rows", "", table(["case", "impl", "pass", "dtype", "error"],
                                       [[r["case"], r["impl"], r["pass"], r["dtype"], r["error"]] for r in failed]), ""]


def section_plots(plots) -> list[str]:
    return ["## Plots", ""] + [f"![{p[:-4]}]({p})" for p in plots] + [""] if plots else []


def markdown(rows: list[dict], env: dict | None = None, plots: tuple[str, ...] = PLOTS) -> str:
    v = _View(rows)
    md = ["# jconv vs lax.conv_general_dilated", ""]
    for section in (section_header(env or {}), section_verdict(v), section_geomeans(v), section_accuracy(v),
                    section_speed(v), section_gemm_fraction(v), section_memory(v), section_compile_time(v),
                    section_failed(v), section_plots(plots)):
        md += section
    return "\n".join(md)


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------


def _panels(rows):
    return [(p, d) for d in dict.fromkeys(r["dtype"] for r in rows) for p in dict.fromkeys(r["pass"] for r in rows)]


def _case_axis(ax, cases: list[str], title: str, xlabel: str, *, top: float) -> None:
    """Log x axis, one labelled row per case, first case on top (the y axis is shared)."""
    ax.set_xscale("log")
    ax.set_title(title)
    ax.set_yticks(range(len(cases)))
    ax.set_yticklabels(cases, fontsize=8)
    ax.set_ylim(len(cases) - 0.5, top)
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.set_xlabel(xlabel)


def plot_speedup(rows: list[dict], path: str) -> None:
    import matplotlib.pyplot as plt

    sp = speedups(rows)
    panels = [pd for pd in _panels(rows) if any(k[2:4] == pd for k in sp)]
    impls = impl_order({k[1] for k in sp})
    cases = list(dict.fromkeys(r["case"] for r in rows))
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n + 1.5, 0.32 * len(cases) * max(1, len(impls)) / 2 + 1.8),
                             squeeze=False, sharey=True)
    height = 0.8 / max(1, len(impls))
    for ax, (pass_, dtype) in zip(axes[0], panels or [("fwd", "float32")]):
        for j, impl in enumerate(impls):
            ys, xs = [], []
            for ci, case in enumerate(cases):
                val = next((s for k, s in sp.items() if k[0] == case and k[1] == impl and k[2:4] == (pass_, dtype)), None)
                if val is not None:
                    ys.append(ci + (j - (len(impls) - 1) / 2) * height)
                    xs.append(val)
            ax.barh(ys, xs, height=height, color=color(impl, j), label=impl)
            for y, x in zip(ys, xs):
                ax.text(x, y, f" {x:.2f}x", va="center", fontsize=6.5)
        ax.axvline(1.0, color="black", lw=1)
        _case_axis(ax, cases, f"{pass_}, {dtype}: speedup over XLA (>1 faster)", "XLA time / impl time (log)", top=-0.5)
    if impls:
        axes[0][-1].legend(loc="lower right", fontsize=8)
    save(fig, path)


def plot_errors(rows: list[dict], path: str) -> None:
    import matplotlib.pyplot as plt

    rs = [r for r in rows if r["impl"] != "gemm_peak" and r.get("error") is None and r.get("scaled_err") is not None]
    panels = [pd for pd in _panels(rows) if any((r["pass"], r["dtype"]) == pd for r in rs)]
    impls = impl_order({r["impl"] for r in rs})
    cases = list(dict.fromkeys(r["case"] for r in rows))
    floor = 1e-12
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(5 * n + 1.5, 0.3 * len(cases) + 1.8), squeeze=False, sharey=True)
    for ax, (pass_, dtype) in zip(axes[0], panels or [("fwd", "float32")]):
        for j, impl in enumerate(impls):
            pts = [(max(as_float(r["scaled_err"]), floor), cases.index(r["case"]) + (j - (len(impls) - 1) / 2) * 0.12)
                   for r in rs if r["impl"] == impl and (r["pass"], r["dtype"]) == (pass_, dtype)]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color(impl, j), marker=marker(impl),
                           s=28, label=impl, zorder=3)
        tols = sorted({as_float(r["tol"]) for r in rs if (r["pass"], r["dtype"]) == (pass_, dtype)})
        for t in tols:
            ax.axvline(t, color="crimson", ls="--", lw=1)
        if tols:
            ax.text(tols[-1], -0.9, " tolerance", color="crimson", fontsize=8, va="bottom")
        _case_axis(ax, cases, f"{pass_}, {dtype}: scaled error vs reference",
                   f"max|y - ref| / max(1, max|ref|)  (log; 0 shown at {floor:g})", top=-1.2)
    if impls:
        axes[0][-1].legend(loc="lower right", fontsize=8)
    save(fig, path)


def plot_roofline(rows: list[dict], path: str) -> None:
    import matplotlib.pyplot as plt

    rs = [r for r in rows if _timed(r) and r.get("gflops")]
    passes = list(dict.fromkeys(r["pass"] for r in rs)) or ["fwd"]
    impls = impl_order({r["impl"] for r in rs})
    fig, axes = plt.subplots(1, len(passes), figsize=(6.5 * len(passes), 5), squeeze=False)
    gemm = [as_float(r["gflops"]) for r in rs if r["impl"] == "gemm_peak"]
    for ax, pass_ in zip(axes[0], passes):
        for j, impl in enumerate(impls):
            pts = [(as_float(r["intensity"]), as_float(r["gflops"])) for r in rs
                   if r["impl"] == impl and (r["pass"] == pass_ or impl == "gemm_peak")]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color(impl, j), marker=marker(impl),
                           s=30, label=impl, alpha=0.85, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        if gemm:
            ax.axhline(max(gemm), color="grey", ls="--", lw=1)
            ax.text(0.01, max(gemm), f" best measured GEMM: {max(gemm):.0f} GFLOP/s", color="grey",
                    fontsize=8, va="bottom", transform=ax.get_yaxis_transform())
        ax.set_xlabel("arithmetic intensity (FLOP / minimum bytes moved, log)")
        ax.set_ylabel("achieved GFLOP/s (log)")
        ax.set_title(f"{pass_}: achieved GFLOP/s vs arithmetic intensity")
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    save(fig, path)


def plot_all(rows: list[dict], workdir: str) -> None:
    import os

    plot_speedup(rows, os.path.join(workdir, "speedup.png"))
    plot_errors(rows, os.path.join(workdir, "errors.png"))
    plot_roofline(rows, os.path.join(workdir, "roofline.png"))
