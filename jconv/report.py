"""report.md and PNG plots from a workdir's ``results.jsonl`` (+ ``env.json``).

    from jconv import report
    report.build_report("runs/default")   # -> "runs/default/report.md"

Everything here is derived from the rows (see :mod:`jconv.bench` for their fields), so the
report can be rebuilt at any time: ``python -m experiments report --workdir=DIR``.

* speedup of an impl = XLA's median time / the impl's, for the same (case, pass, dtype, batch);
  geometric means over layers per impl, pass and dtype;
* accuracy = scaled error (``max|a - ref| / max(1, max|ref|)``, :mod:`jconv.testing`) against
  the float64 (or HIGHEST float32: the ``reference`` column) reference, ``ok`` when within the
  row's tolerance; the verdict asks whether every impl agrees with XLA within tolerance;
* interpreted rows (Pallas on CPU) count for accuracy, never for speed;
* "% of GEMM" = a conv's GFLOP/s over the same-size GEMM's (``gemm_peak`` row), forward.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

from jconv.bench import as_float, geomean, load_rows

PLOTS = ("speedup.png", "errors.png", "roofline.png")
_ORDER = ("xla", "lax", "auto", "pallas", "torch", "gemm_peak")


def _impl_order(impls) -> list[str]:
    impls = set(impls)
    known = [i for i in _ORDER if i in impls]
    return known + sorted(impls - set(known))


def _group(row) -> tuple:
    return row["case"], row["pass"], row["dtype"], row["batch"]


def _timed(row) -> bool:
    return row.get("error") is None and not row.get("interpreted") and row.get("time_median_s") is not None


def speedups(rows: list[dict]) -> dict[tuple, float]:
    """(case, impl, pass, dtype, batch) -> XLA time / impl time (timed, non-interpreted rows)."""
    xla = {_group(r): as_float(r["time_median_s"]) for r in rows if r["impl"] == "xla" and _timed(r)}
    out = {}
    for r in rows:
        if r["impl"] in ("xla", "gemm_peak") or not _timed(r):
            continue
        t_x = xla.get(_group(r))
        t = as_float(r["time_median_s"])
        if t_x and t:
            out[(r["case"], r["impl"], r["pass"], r["dtype"], r["batch"])] = t_x / t
    return out


def summary(rows: list[dict]) -> dict:
    """The verdict: agreement with XLA and geometric-mean speedups (also used by the notebook)."""
    sp = speedups(rows)
    geo: dict[tuple[str, str, str], float] = {}
    by = defaultdict(list)
    for (case, impl, pass_, dtype, _), s in sp.items():
        by[(impl, pass_, dtype)].append(s)
    for k, v in by.items():
        geo[k] = geomean(v)
    checked = [r for r in rows if r["impl"] != "gemm_peak"]
    failed_runs = [r for r in checked if r.get("error")]
    disagree = [r for r in checked if r.get("error") is None and r["impl"] != "xla"
                and r.get("agrees_with_xla") is False]
    out_of_tol = [r for r in checked if r.get("error") is None and r.get("within_tol") is False]
    return {
        "rows": len(rows),
        "all_agree_with_xla": not disagree and not failed_runs,
        "disagree": disagree,
        "failed": failed_runs,
        "out_of_tolerance": out_of_tol,
        "geomean_speedup": geo,
    }


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _fmt_err(v) -> str:
    v = as_float(v)
    if v is None:
        return "-"
    if v == 0:
        return "0"
    return f"{v:.1e}"


def _fmt_ms(v) -> str:
    v = as_float(v)
    return "-" if v is None else (f"{v * 1e3:.3g}" if v * 1e3 < 100 else f"{v * 1e3:.0f}")


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def _bytes(v) -> str:
    if v is None:
        return "-"
    v = float(v)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return str(v)


def markdown(rows: list[dict], env: dict | None = None, plots: tuple[str, ...] = PLOTS) -> str:
    env = env or {}
    s = summary(rows)
    sp = speedups(rows)
    impls = _impl_order({r["impl"] for r in rows})
    conv_impls = [i for i in impls if i != "gemm_peak"]
    groups = list(dict.fromkeys(_group(r) for r in rows))
    by_key = {(r["case"], r["impl"], r["pass"], r["dtype"], r["batch"]): r for r in rows}
    passes = list(dict.fromkeys(r["pass"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    interpreted = sorted({r["impl"] for r in rows if r.get("interpreted") and not r.get("error")})

    md = ["# jconv vs lax.conv_general_dilated", ""]
    if env:
        cfg = env.get("config", {})
        md += [
            f"**Machine**: {env.get('device_kind')} ({env.get('platform')}), {env.get('device_count')} device(s); "
            f"host CPU {env.get('cpu_model')}, {env.get('cpu_count')} cores. "
            f"jax {env.get('jax')}, jaxlib {env.get('jaxlib')}, flax {env.get('flax')}, "
            f"torch {env.get('torch') or 'not installed'}; commit {env.get('commit')}; {env.get('time_utc')}.",
            "",
            f"**Config**: suite `{cfg.get('suite')}`, batch {cfg.get('batch')} "
            f"(capped at {cfg.get('max_fwd_gflop')} GFLOP per forward), dtypes {cfg.get('dtypes')}, "
            f"precision {cfg.get('precision')}, impls {cfg.get('impls')}, "
            f"{cfg.get('iters')} timing rounds (median), warm-up {cfg.get('warmup')}.",
            "",
        ]
    md += ["## Verdict", ""]
    agree = "**yes**" if s["all_agree_with_xla"] else "**no**"
    md.append(f"- All implementations agree with XLA within tolerance: {agree} "
              f"({len(rows)} rows).")
    for r in s["disagree"]:
        md.append(f"  - disagrees: {r['case']} {r['impl']} {r['pass']} {r['dtype']}: scaled error vs XLA "
                  f"{_fmt_err(r.get('scaled_err_vs_xla'))} > {_fmt_err(r.get('tol'))}")
    failed_impls = defaultdict(list)
    for r in s["failed"]:
        failed_impls[r["impl"]].append(r)
    for impl, rs in failed_impls.items():
        md.append(f"  - {impl} did not run on {len(rs)} row(s): {rs[0]['error']}")
    if s["out_of_tolerance"]:
        names = sorted({f"{r['case']} {r['impl']} {r['pass']} {r['dtype']}" for r in s["out_of_tolerance"]})
        md.append(f"- Outside tolerance vs the reference: {len(names)} row(s): " + "; ".join(names[:8])
                  + (" ..." if len(names) > 8 else ""))
    geo_impls = _impl_order({k[0] for k, g in s["geomean_speedup"].items() if g is not None})
    for impl in geo_impls:
        parts = [f"{p} {d} **{g:.2f}x**" for (i, p, d), g in s["geomean_speedup"].items()
                 if i == impl and g is not None]
        md.append(f"- {impl}: geometric-mean speedup over XLA: " + ", ".join(parts))
    if interpreted:
        md.append(f"- {', '.join(interpreted)} ran interpreted (no compiled kernel on this platform): "
                  "checked for accuracy, left out of every speed figure.")
    md.append("")

    # geometric means
    cols = [(p, d) for d in dtypes for p in passes]
    timed_impls = [i for i in conv_impls if i != "xla" and any(k[0] == i for k in s["geomean_speedup"])]
    if timed_impls:
        md += ["## Geometric-mean speedup over XLA", "",
               _table(["impl"] + [f"{p} {d}" for p, d in cols],
                      [[i] + [("-" if s["geomean_speedup"].get((i, p, d)) is None
                               else f"{s['geomean_speedup'][(i, p, d)]:.2f}x") for p, d in cols]
                       for i in timed_impls]),
               "", "Speedup > 1: faster than `lax.conv_general_dilated` on the same layer, measured in the "
               "same interleaved rounds.", ""]

    # accuracy
    lines = []
    for g in groups:
        case, pass_, dtype, batch = g
        ref = next((by_key[(case, i, pass_, dtype, batch)].get("reference") for i in conv_impls
                    if (case, i, pass_, dtype, batch) in by_key), None)
        cells = []
        for i in conv_impls:
            r = by_key.get((case, i, pass_, dtype, batch))
            if r is None:
                cells.append("")
            elif r.get("error"):
                cells.append("failed")
            else:
                ok = "" if r.get("within_tol") else " **over**"
                cells.append(f"{_fmt_err(r.get('scaled_err'))}{ok}")
        tol = next((by_key[(case, i, pass_, dtype, batch)].get("tol") for i in conv_impls
                    if (case, i, pass_, dtype, batch) in by_key), None)
        lines.append([case, pass_, dtype, ref or "-", _fmt_err(tol)] + cells)
    md += ["## Accuracy", "",
           "Scaled error `max|y - ref| / max(1, max|ref|)` against the reference (fwd: y; fwd+bwd: "
           "the gradients dx, dw, db, worst of them); **over** marks a value above the tolerance.", "",
           _table(["case", "pass", "dtype", "reference", "tolerance"] + conv_impls, lines), ""]

    # speed
    lines = []
    for g in groups:
        case, pass_, dtype, batch = g
        cells = []
        for i in conv_impls:
            r = by_key.get((case, i, pass_, dtype, batch))
            if r is None:
                cells.append("")
            elif r.get("error"):
                cells.append("failed")
            elif r.get("interpreted"):
                cells.append(f"({_fmt_ms(r.get('time_median_s'))} interp.)")
            else:
                sx = sp.get((case, i, pass_, dtype, batch))
                cells.append(_fmt_ms(r.get("time_median_s")) + (f" ({sx:.2f}x)" if sx else ""))
        gflop = next((as_float(by_key[(case, i, pass_, dtype, batch)]["flops"]) / 1e9 for i in conv_impls
                      if (case, i, pass_, dtype, batch) in by_key), None)
        gemm = by_key.get((case, "gemm_peak", "fwd", dtype, batch))
        best = [as_float(by_key[(case, i, pass_, dtype, batch)].get("gflops")) for i in conv_impls
                if (case, i, pass_, dtype, batch) in by_key and _timed(by_key[(case, i, pass_, dtype, batch)])]
        best = [b for b in best if b]
        lines.append([case, batch, pass_, dtype, f"{gflop:.3g}" if gflop is not None else "-"] + cells
                     + [f"{max(best):.1f}" if best else "-",
                        f"{as_float(gemm['gflops']):.1f}" if gemm and gemm.get("gflops") and pass_ == "fwd" else "-"])
    md += ["## Speed", "",
           "Median milliseconds per call after warm-up (compile time excluded); in parentheses the "
           "speedup over XLA. fwd+bwd is the gradient of `sum(y * ct)` w.r.t. x, w, b (3x the forward "
           "FLOPs). `gemm GFLOP/s`: a plain matmul of the layer's im2col size in the same rounds.", "",
           _table(["case", "batch", "pass", "dtype", "GFLOP"] + [f"{i} ms" for i in conv_impls]
                  + ["best GFLOP/s", "gemm GFLOP/s"], lines), ""]

    # % of GEMM
    lines = []
    for g in groups:
        case, pass_, dtype, batch = g
        gemm = by_key.get((case, "gemm_peak", "fwd", dtype, batch))
        if pass_ != "fwd" or not gemm or not gemm.get("gflops"):
            continue
        peak = as_float(gemm["gflops"])
        cells = []
        for i in conv_impls:
            r = by_key.get((case, i, pass_, dtype, batch))
            cells.append(f"{100 * as_float(r['gflops']) / peak:.0f}%" if r and _timed(r) and r.get("gflops") else "-")
        lines.append([case, dtype, f"{peak:.1f}"] + cells)
    if lines:
        md += ["## Forward GFLOP/s as % of the same-size GEMM", "",
               _table(["case", "dtype", "gemm GFLOP/s"] + conv_impls, lines), ""]

    # memory
    lines = []
    for g in groups:
        case, pass_, dtype, batch = g
        cells = [_bytes(by_key[(case, i, pass_, dtype, batch)].get("temp_bytes"))
                 if (case, i, pass_, dtype, batch) in by_key else "" for i in conv_impls]
        lines.append([case, pass_, dtype] + cells)
    md += ["## Memory", "", "Temporary buffer bytes from `compiled.memory_analysis()` (`-`: not available, "
           "e.g. PyTorch).", "", _table(["case", "pass", "dtype"] + conv_impls, lines), ""]

    # compile time
    lines = []
    for g in groups:
        case, pass_, dtype, batch = g
        cells = []
        for i in conv_impls:
            r = by_key.get((case, i, pass_, dtype, batch))
            c = as_float(r.get("compile_s")) if r else None
            cells.append("-" if c is None else f"{c:.2f}")
        lines.append([case, pass_, dtype] + cells)
    md += ["## Compile time (s)", "", _table(["case", "pass", "dtype"] + conv_impls, lines), ""]

    failed = [r for r in rows if r.get("error")]
    if failed:
        md += ["## Failed rows", "",
               _table(["case", "impl", "pass", "dtype", "error"],
                      [[r["case"], r["impl"], r["pass"], r["dtype"], r["error"].replace("|", "/")] for r in failed]),
               ""]
    if plots:
        md += ["## Plots", ""] + [f"![{p[:-4]}]({p})" for p in plots] + [""]
    return "\n".join(md)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

_COLORS = {"xla": "#4c72b0", "lax": "#dd8452", "auto": "#55a868", "pallas": "#c44e52",
           "torch": "#8172b3", "gemm_peak": "#7f7f7f"}
_MARKERS = {"xla": "o", "lax": "s", "auto": "^", "pallas": "D", "torch": "v", "gemm_peak": "x"}


def _color(impl: str, i: int = 0):
    import matplotlib  # noqa: PLC0415

    return _COLORS.get(impl, matplotlib.colormaps["tab10"](i % 10))


def _panels(rows):
    return [(p, d) for d in dict.fromkeys(r["dtype"] for r in rows) for p in dict.fromkeys(r["pass"] for r in rows)]


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    import matplotlib.pyplot as plt  # noqa: PLC0415

    sp = speedups(rows)
    panels = [pd for pd in _panels(rows) if any(k[2:4] == pd for k in sp)]
    impls = _impl_order({k[1] for k in sp})
    cases = list(dict.fromkeys(r["case"] for r in rows))
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n + 1.5, 0.32 * len(cases) * max(1, len(impls)) / 2 + 1.8),
                             squeeze=False, sharey=True)
    height = 0.8 / max(1, len(impls))
    for ax, (pass_, dtype) in zip(axes[0], panels or [("fwd", "float32")]):
        for j, impl in enumerate(impls):
            ys, xs = [], []
            for ci, case in enumerate(cases):
                v = next((s for k, s in sp.items() if k[0] == case and k[1] == impl and k[2:4] == (pass_, dtype)), None)
                if v is not None:
                    ys.append(ci + (j - (len(impls) - 1) / 2) * height)
                    xs.append(v)
            ax.barh(ys, xs, height=height, color=_color(impl, j), label=impl)
            for y, x in zip(ys, xs):
                ax.text(x, y, f" {x:.2f}x", va="center", fontsize=6.5)
        ax.axvline(1.0, color="black", lw=1)
        _case_axis(ax, cases, f"{pass_}, {dtype}: speedup over XLA (>1 faster)",
                   "XLA time / impl time (log)", top=-0.5)
    if impls:
        axes[0][-1].legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_errors(rows: list[dict], path: str) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rs = [r for r in rows if r["impl"] != "gemm_peak" and r.get("error") is None and r.get("scaled_err") is not None]
    panels = [pd for pd in _panels(rows) if any((r["pass"], r["dtype"]) == pd for r in rs)]
    impls = _impl_order({r["impl"] for r in rs})
    cases = list(dict.fromkeys(r["case"] for r in rows))
    floor = 1e-12
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(5 * n + 1.5, 0.3 * len(cases) + 1.8), squeeze=False, sharey=True)
    for ax, (pass_, dtype) in zip(axes[0], panels or [("fwd", "float32")]):
        for j, impl in enumerate(impls):
            pts = [(max(as_float(r["scaled_err"]), floor), cases.index(r["case"]) + (j - (len(impls) - 1) / 2) * 0.12)
                   for r in rs if r["impl"] == impl and (r["pass"], r["dtype"]) == (pass_, dtype)]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=_color(impl, j),
                           marker=_MARKERS.get(impl, "o"), s=28, label=impl, zorder=3)
        tols = sorted({as_float(r["tol"]) for r in rs if (r["pass"], r["dtype"]) == (pass_, dtype)})
        for t in tols:
            ax.axvline(t, color="crimson", ls="--", lw=1)
        if tols:
            ax.text(tols[-1], -0.9, " tolerance", color="crimson", fontsize=8, va="bottom")
        _case_axis(ax, cases, f"{pass_}, {dtype}: scaled error vs reference",
                   f"max|y - ref| / max(1, max|ref|)  (log; 0 shown at {floor:g})", top=-1.2)
    if impls:
        axes[0][-1].legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_roofline(rows: list[dict], path: str) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rs = [r for r in rows if _timed(r) and r.get("gflops")]
    passes = list(dict.fromkeys(r["pass"] for r in rs)) or ["fwd"]
    impls = _impl_order({r["impl"] for r in rs})
    fig, axes = plt.subplots(1, len(passes), figsize=(6.5 * len(passes), 5), squeeze=False)
    gemm = [as_float(r["gflops"]) for r in rs if r["impl"] == "gemm_peak"]
    for ax, pass_ in zip(axes[0], passes):
        for j, impl in enumerate(impls):
            pts = [(as_float(r["intensity"]), as_float(r["gflops"])) for r in rs
                   if r["impl"] == impl and (r["pass"] == pass_ or impl == "gemm_peak")]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=_color(impl, j),
                           marker=_MARKERS.get(impl, "o"), s=30, label=impl, alpha=0.85, zorder=3)
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
    _save(fig, path)


def build_report(workdir: str) -> str:
    """Rebuild ``report.md`` and the PNG plots in ``workdir``; return the report's path."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    path = os.path.join(workdir, "results.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"build_report: workdir (={workdir!r}) has no results.jsonl")
    rows = load_rows(path)
    env = {}
    if os.path.exists(os.path.join(workdir, "env.json")):
        with open(os.path.join(workdir, "env.json")) as f:
            env = json.load(f)
    plot_speedup(rows, os.path.join(workdir, "speedup.png"))
    plot_errors(rows, os.path.join(workdir, "errors.png"))
    plot_roofline(rows, os.path.join(workdir, "roofline.png"))
    out = os.path.join(workdir, "report.md")
    with open(out + ".tmp", "w") as f:
        f.write(markdown(rows, env))
    os.replace(out + ".tmp", out)
    return out
