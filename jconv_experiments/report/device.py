"""Per-device tables from runs on real devices (``docs/perf/devices/``, written by
``python -m jconv_experiments.ingest``): speed vs XLA per layer, accuracy, and what compiled
there against what the compile matrix predicted for the same programs on that target.

A run is a directory with ``device.json``, ``results.jsonl`` (the comparison's rows),
``tests.json``, ``steps.jsonl`` and ``compile_matrix_predicted.jsonl``. One function per
section; :func:`markdown` puts every device's runs together, newest first.
"""

from __future__ import annotations

import math
from collections import defaultdict

from jconv_experiments.bench.peers import BASELINE
from jconv_experiments.bench.store import as_float
from jconv_experiments.report.common import fmt_err, fmt_ms, impl_order, table
from jconv_experiments.report.compare import speedups, summary
from jconv_experiments.report.compile import status as matrix_status


def _fmt_s(v) -> str:
    try:
        s = float(v)
    except (TypeError, ValueError):
        return "?"
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def _err(v) -> str:
    """A scaled error; NaN and infinities spelled out (the result store writes them as strings)."""
    f = as_float(v) if v is not None else None
    if f is not None and not math.isfinite(f):
        return "NaN" if math.isnan(f) else "inf"
    return fmt_err(v)


def _key(r: dict) -> tuple:
    return r["case"], r["impl"], r["dtype"], r["pass"], r["batch"]


def _groups(rows):
    return list(dict.fromkeys((r["case"], r["pass"], r["dtype"], r["batch"]) for r in rows))


def _impls(rows):
    return [i for i in impl_order({r["impl"] for r in rows}) if i != "gemm_peak"]


def section_summary(run: dict) -> list[str]:
    dev, tests, steps = run["device"], run.get("tests") or {}, {s["step"]: s for s in run.get("steps", [])}
    plan = dev.get("plan") or {}
    est = {k: (plan.get(k) or {}).get("estimate", {}).get("seconds") for k in ("tests", "compare")}
    s = summary(run["rows"]) if run["rows"] else None
    lines = [f"- **Run**: {dev.get('time_utc')}, jconv {dev.get('jconv')} (commit `{str(dev.get('commit'))[:12]}`), "
             f"jax {dev.get('jax')} / jaxlib {dev.get('jaxlib')}, Python {dev.get('python')}; "
             f"{plan.get('variant')} variant, `configs/{(plan.get('compare') or {}).get('config')}.py`.",
             f"- **Tests**: {tests.get('passed', '?')} passed, {tests.get('failures', '?')} failed, "
             f"{tests.get('errors', '?')} errors, {tests.get('skipped', '?')} skipped "
             f"({_fmt_s(tests.get('seconds'))}; estimated {_fmt_s(est['tests'])}).",
             f"- **Comparison**: {len(run['rows'])} rows ({_fmt_s(steps.get('compare', {}).get('wall_s'))}; "
             f"estimated {_fmt_s(est['compare'])}); every impl agrees with XLA within tolerance: "
             f"{'**yes**' if s and s['all_agree_with_xla'] else '**no**'}."]
    na = plan.get("not_applicable") or {}
    if na:
        lines.append(f"- **Not applicable** (skipped): {', '.join(na.get('dtypes', []) + na.get('impls', []))}: {na.get('reason')}.")
    for w in run.get("warnings", []):
        lines.append(f"- **Note**: {w}")
    return lines + [""]


def section_speed(rows: list[dict]) -> list[str]:
    """Per layer: XLA's median ms, and each impl's speedup over it (same rounds)."""
    sp = speedups(rows)
    by = {_key(r): r for r in rows}
    impls = [i for i in _impls(rows) if i != BASELINE]
    lines = []
    for case, pass_, dtype, batch in _groups(rows):
        x = by.get((case, BASELINE, dtype, pass_, batch))
        cells = []
        for i in impls:
            r = by.get((case, i, dtype, pass_, batch))
            s = sp.get((case, i, pass_, dtype, batch))
            cells.append("" if r is None else "failed" if r.get("error") else "interp." if r.get("interpreted")
                         else f"{s:.2f}x" if s else "-")
        lines.append([case, batch, pass_, dtype, fmt_ms(x.get("time_median_s")) if x else "-"] + cells)
    return ["#### Speed vs XLA per layer", "",
            "XLA's median milliseconds, and each impl's speedup over it (XLA time / impl time, timed in the "
            "same rounds; > 1 is faster); interp.: interpreted (no compiled kernel here), not a speed figure.", "",
            table(["layer", "batch", "pass", "dtype", "xla ms"] + impls, lines), ""]


def section_accuracy(rows: list[dict]) -> list[str]:
    by = {_key(r): r for r in rows}
    impls = _impls(rows)
    lines = []
    for case, pass_, dtype, batch in _groups(rows):
        cells = []
        for i in impls:
            r = by.get((case, i, dtype, pass_, batch))
            if r is None:
                cells.append("")
            elif r.get("error"):
                cells.append("failed")
            else:
                cells.append(_err(r.get("scaled_err")) + ("" if r.get("within_tol") else " **over**"))
        first = next((by[(case, i, dtype, pass_, batch)] for i in impls if (case, i, dtype, pass_, batch) in by), {})
        lines.append([case, pass_, dtype, first.get("reference", "-"), fmt_err(first.get("tol"))] + cells)
    return ["#### Accuracy", "", "Scaled error against the reference (`max|y - ref| / max(1, max|ref|)`); "
            "**over**: above the tolerance; NaN is shown as such.", "",
            table(["layer", "pass", "dtype", "reference", "tolerance"] + impls, lines), ""]


def compiled_vs_predicted(rows: list[dict], predicted: list[dict]) -> dict:
    """Counts of (what the matrix predicted, what happened here) for the run's jconv programs,
    and the rows where the two disagree."""
    pred = {_key(p): p for p in predicted}
    counts = defaultdict(int)
    mismatches = []
    for r in rows:
        if r["impl"] in ("gemm_peak", "torch"):
            continue
        p = pred.get(_key(r))
        expected = "no row" if p is None else matrix_status(p)
        here = "failed" if r.get("error") else "ran"
        counts[(expected, here)] += 1
        if (expected == "ok" and here == "failed") or (expected in ("jconv", "compiler") and here == "ran"):
            mismatches.append((r, p, expected))
    return {"counts": dict(counts), "mismatches": mismatches}


def section_compiled(run: dict) -> list[str]:
    cv = compiled_vs_predicted(run["rows"], run.get("predicted", []))
    target = run["device"].get("target")
    names = {"ok": "compiled", "jconv": "refused (clear error)", "compiler": "compiler failed", "no row": "no matrix row"}
    lines = [[here] + [cv["counts"].get((e, here), 0) for e in names] for here in ("ran", "failed")]
    md = ["#### Compiled here vs the compile matrix", "",
          f"Rows of this run by what the committed compile matrix says for the same program on `{target}` "
          "(columns) and what happened on the device (rows).", "",
          table(["here \\ matrix"] + list(names.values()), lines), ""]
    for r, p, expected in cv["mismatches"][:20]:
        md.append(f"- {r['case']} {r['impl']} {r['pass']} {r['dtype']}: matrix {names[expected]}"
                  + (f" ({str(p.get('error'))[:100]})" if p and p.get("error") else "")
                  + (f"; here: {str(r.get('error'))[:120]}" if r.get("error") else "; ran here"))
    return md + ([""] if cv["mismatches"] else [])


def section_overview(runs: list[dict]) -> list[str]:
    lines = []
    for run in runs:
        dev, tests = run["device"], run.get("tests") or {}
        s = summary(run["rows"]) if run["rows"] else None
        geo = [g for (i, p, d), g in (s or {}).get("geomean_speedup", {}).items() if i == "auto" and g]
        lines.append([dev.get("device_kind"), dev.get("target") or "-", str(dev.get("time_utc"))[:10],
                      f"{tests.get('passed', '?')}/{tests.get('tests', '?')}",
                      len(run["rows"]), "yes" if s and s["all_agree_with_xla"] else "no",
                      (f"{min(geo):.2f}x - {max(geo):.2f}x" if geo else "-"), run["verdict"]])
    return ["## Devices", "", table(["device", "target", "run", "tests passed", "rows", "all agree with XLA",
                                     "auto vs XLA (geomean range)", "verdict"], lines), ""]


def markdown(runs: list[dict], command: str) -> str:
    """Every run (newest first within each device), one section each."""
    md = ["# jconv on real devices", "",
          f"Generated by `{command}` from the runs in this directory (one per ingested archive of "
          "notebooks/colab_tpu.ipynb); do not edit by hand. How to get and ingest an archive: "
          "docs/experiments.md, \"The Colab notebook\".", ""]
    if not runs:
        return "\n".join(md + ["No device runs ingested yet.", ""])
    md += section_overview(runs)
    for run in runs:
        dev = run["device"]
        md += [f"### {dev.get('device_kind')} ({dev.get('platform')}, target `{dev.get('target')}`): "
               f"`{run['name']}`", ""]
        md += section_summary(run) + section_speed(run["rows"]) + section_accuracy(run["rows"]) + section_compiled(run)
    return "\n".join(md)


__all__ = ["markdown", "compiled_vs_predicted", "section_speed", "section_accuracy", "section_compiled"]
