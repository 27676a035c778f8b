"""The whole-network report (``configs/models.py``, :mod:`jconv_experiments.networks`).

Rows are keyed (model, dtype, pass, candidate): ``jconv`` (jconv's Flax modules), ``xla``
(flax's, the baseline), ``torch`` and ``torch_compile`` (the PyTorch twin). One function per
section; :func:`markdown` puts them together; :func:`plot_all` draws ``models.png``.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

from jconv_experiments.bench.profile import CATEGORIES
from jconv_experiments.bench.store import as_float
from jconv_experiments.report.common import fmt_err, fmt_ms, machine_line, save, table

PLOTS = ("models.png",)
ORDER = ("jconv", "xla", "torch", "torch_compile")
_COLORS = {"jconv": "#55a868", "xla": "#4c72b0", "torch": "#8172b3", "torch_compile": "#c44e52"}
_CAT_COLORS = {"conv": "#c44e52", "norm": "#dd8452", "dense": "#937860", "other layers": "#8c8c8c",
               "loss+optimizer": "#4c72b0", "unattributed": "#dddddd"}


def _models(rows):
    return list(dict.fromkeys(r["model"] for r in rows))


def _variants(rows, model=None):
    return list(dict.fromkeys((r["dtype"], r["pass"]) for r in rows if model is None or r["model"] == model))


def _by(rows) -> dict[tuple, dict]:
    return {(r["model"], r["dtype"], r["pass"], r["candidate"]): r for r in rows}


def _t(row) -> float | None:
    return as_float(row.get("time_median_s")) if row and not row.get("error") else None


def ratio(rows, model, dtype, pass_, num: str, den: str) -> float | None:
    """time(den) / time(num): how many times faster ``num`` runs than ``den``."""
    by = _by(rows)
    a, b = _t(by.get((model, dtype, pass_, num))), _t(by.get((model, dtype, pass_, den)))
    return b / a if a and b else None


def geomean(values) -> float | None:
    v = [x for x in values if x]
    return math.exp(sum(math.log(x) for x in v) / len(v)) if v else None


def section_header(env: dict) -> list[str]:
    if not env:
        return []
    cfg = env.get("config", {})
    la0, la1 = env.get("load_average_start"), env.get("load_average_end")
    bf16 = "avx512_bf16" in (env.get("cpu_isa") or [])
    return [machine_line(env), "",
            f"**Run**: batch {cfg.get('batch')}, models `{cfg.get('models')}`, dtypes `{cfg.get('dtypes')}`, "
            f"jconv impl `{cfg.get('impl')}`; {cfg.get('rounds')} rounds of {cfg.get('block')} calls per candidate "
            f"(the first of each block untimed; at most {cfg.get('max_time_s')} s per group after "
            f"{cfg.get('min_rounds')} rounds; a call over {cfg.get('slow_call_s')} s runs once per round). "
            f"Load average (1, 5, 15 min) at the start {la0}, at the end {la1}"
            + (f"; {env['wall_s'] / 60:.1f} min" if env.get("wall_s") else "") + ".", "",
            "**bfloat16**: " + ("the CPU has bfloat16 instructions (avx512_bf16)." if bf16 else
                                "this CPU has no bfloat16 instructions (no avx512_bf16): every bfloat16 "
                                "number is what each library does without them (converting, or slower "
                                "paths), not a bfloat16 speed."), ""]


def matches(row) -> bool:
    """Whether a row's outputs match: against the float64 train step where the row was checked
    against it (``within_tol_vs64``, a float32 train step with ``config.reference64``), else
    against XLA's (``within_tol``)."""
    return bool(row.get("within_tol_vs64", row.get("within_tol")))


def section_verdict(rows) -> list[str]:
    bad = [r for r in rows if r.get("error") or not matches(r)]
    vs64 = sum("within_tol_vs64" in r for r in rows)
    md = ["## Verdict", "",
          f"- Same parameters, same outputs (every candidate against flax.linen.Conv, within the config's "
          f"tolerance" + (f"; {vs64} float32 train rows against the float64 step, within max(tolerance, "
                          f"factor x XLA's own error)" if vs64 else "") +
          f"): {'**yes**' if not bad else '**no**'} ({len(rows)} rows).", ""]
    lines = []
    for dtype, pass_ in _variants(rows):
        cells = [dtype, pass_]
        for num, den in (("jconv", "xla"), ("jconv", "torch"), ("jconv", "torch_compile")):
            g = geomean(ratio(rows, m, dtype, pass_, num, den) for m in _models(rows))
            cells.append(f"{g:.2f}x" if g else "-")
        lines.append(cells)
    md += ["Geometric mean over the models of how many times faster jconv runs (time of the other / "
           "time of jconv; > 1: jconv faster):", "",
           table(["dtype", "pass", "vs XLA (flax.linen.Conv)", "vs PyTorch eager", "vs torch.compile"], lines), ""]
    if bad:
        md += ["Rows that failed or disagree:", "",
               table(["model", "dtype", "pass", "candidate", "error / errors"],
                     [[r["model"], r["dtype"], r["pass"], r["candidate"],
                       r.get("error") or _errs(r)] for r in bad]), ""]
    return md


def _errs(r) -> str:
    if "err_logits" in r:
        return f"logits {fmt_err(r['err_logits'])}"
    if "err_loss" in r:
        vs64 = f"; vs float64 grads {fmt_err(r['err_grads_vs64'])} (XLA's {fmt_err(r.get('xla_err_grads_vs64'))})" \
            if "err_grads_vs64" in r else ""
        return f"loss {fmt_err(r['err_loss'])}, grads {fmt_err(r.get('err_grads'))}{vs64}"
    return "-"


def section_models(rows) -> list[str]:
    md = ["## Per model", "",
          "Median milliseconds per call (inference: one forward; train: one full step). Speedup: XLA's time "
          "over the candidate's. Errors: scaled error against XLA (logits; or loss, gradients).", ""]
    by = _by(rows)
    for model in _models(rows):
        any_row = next(r for r in rows if r["model"] == model)
        md += [f"### {any_row.get('title', model)}", "",
               f"Input {any_row['batch']}x{any_row['image_size']}x{any_row['image_size']}x3, "
               f"{any_row.get('params', 0) / 1e6:.1f} M parameters.", ""]
        lines = []
        for dtype, pass_ in _variants(rows, model):
            for cand in ORDER:
                r = by.get((model, dtype, pass_, cand))
                if r is None:
                    continue
                sp = as_float(r.get("speedup_vs_xla"))
                lines.append([dtype, pass_, cand, r.get("error") and "error" or fmt_ms(r.get("time_median_s")),
                              f"{sp:.2f}x" if sp else "-", _errs(r), r.get("plan", "")])
        md += [table(["dtype", "pass", "candidate", "ms", "speedup vs XLA", "errors vs XLA", "what ran"], lines), ""]
    return md


def section_breakdown(rows) -> list[str]:
    md = ["## Where the time goes", "",
          "Milliseconds per call in each category, from a profile of the program (jconv_experiments/bench/"
          "profile.py): JAX from the compiled HLO's instructions, attributed through their Flax module path; "
          "PyTorch from torch.profiler's self time per op. XLA may run instructions on both cores at once, so "
          "the JAX categories may add up to more than the timed wall time. `conv %` is conv over the "
          "profiled total.", ""]
    lines = []
    for r in rows:
        b = r.get("breakdown_s")
        if not b:
            continue
        total = sum(b.values())
        lines.append([r["model"], r["dtype"], r["pass"], r["candidate"]]
                     + [fmt_ms(b.get(c, 0.0)) for c in CATEGORIES]
                     + [fmt_ms(total), fmt_ms(r.get("time_median_s")), f"{100 * b.get('conv', 0) / total:.0f}%" if total else "-"])
    if not lines:
        return []
    md += [table(["model", "dtype", "pass", "candidate"] + list(CATEGORIES) + ["profiled", "timed", "conv %"], lines), ""]
    return md


def section_compile(rows) -> list[str]:
    lines = [[r["model"], r["dtype"], r["pass"], r["candidate"], f"{as_float(r['compile_s']):.1f}",
              f"{as_float(r['temp_bytes']) / 2**20:.0f}" if r.get("temp_bytes") is not None else "-"]
             for r in rows if r.get("compile_s") is not None]
    if not lines:
        return []
    return ["## Compile time and memory", "",
            "Seconds to compile (XLA: lower + compile; torch.compile: the first call) and XLA's temporary "
            "buffer (MiB).", "", table(["model", "dtype", "pass", "candidate", "compile s", "temp MiB"], lines), ""]


def _ms(row) -> str:
    if row is None:
        return "-"
    return "error" if row.get("error") else fmt_ms(row.get("time_median_s"))


def _x(v) -> str:
    return f"{v:.2f}x" if v else "-"


def docs_table(rows: list[dict]) -> str:
    """docs/models.md's tables (``python -m jconv_experiments.networks --table FILE``): per model,
    dtype and pass the median ms of each candidate, how many times faster jconv runs than each
    (time of the other / jconv's), jconv's train step over its forward, and whether every
    candidate's outputs match (:func:`matches`: XLA's, or the float64 step's where checked
    against it); then where the time goes (float32 profiles: conv and the rest)."""
    by = _by(rows)
    lines = []
    for model in _models(rows):
        for dtype, pass_ in _variants(rows, model):
            g = (model, dtype, pass_)
            fwd, trn = _t(by.get((model, dtype, "inference", "jconv"))), _t(by.get((model, dtype, "train", "jconv")))
            step = trn / fwd if pass_ == "train" and fwd and trn else None
            group = [r for r in rows if (r["model"], r["dtype"], r["pass"]) == g]
            ok = all(not r.get("error") and matches(r) for r in group)
            lines.append([model, dtype, pass_] + [_ms(by.get(g + (c,))) for c in ORDER]
                         + [_x(ratio(rows, *g, "jconv", c)) for c in ORDER[1:]]
                         + [_x(step) if pass_ == "train" else "", "yes" if ok else "**no**"])
    md = [table(["model", "dtype", "pass", "jconv ms", "XLA ms", "PyTorch ms", "torch.compile ms",
                 "jconv vs XLA", "vs PyTorch", "vs torch.compile", "train / forward", "same outputs"], lines)]
    prof = []
    for model in _models(rows):
        for dtype, pass_ in _variants(rows, model):
            cells = []
            for c in ("jconv", "xla", "torch"):
                b = (by.get((model, dtype, pass_, c)) or {}).get("breakdown_s")
                total = sum(b.values()) if b else 0.0
                cells += [fmt_ms(b["conv"]), fmt_ms(total - b["conv"]), f"{100 * b['conv'] / total:.0f}%"] \
                    if total else ["-", "-", "-"]
            if any(c != "-" for c in cells):
                prof.append([model, dtype, pass_] + cells)
    if prof:
        md += ["", table(["model", "dtype", "pass"] + [f"{n} {k}" for n in ("jconv", "XLA", "PyTorch")
                                                     for k in ("conv ms", "rest ms", "conv %")], prof)]
    return "\n".join(md)


#: Issue 22's speed targets for a model's float32 and bfloat16 rows: (pass, peer, at least this many
#: times faster than the peer); and a train step at most ``STEP_TARGET`` times its forward.
SPEED_TARGETS = (("inference", "torch", 1.5), ("inference", "xla", 1.5), ("train", "torch", 1.3))
STEP_TARGET = 3.2
_PEER = {"torch": "PyTorch", "xla": "XLA"}


def targets_table(rows: list[dict]) -> str:
    """docs/models.md's targets tables (``python -m jconv_experiments.networks --table FILE``).

    The first: per model, dtype, pass and target of ``SPEED_TARGETS``, jconv's ratio now and,
    where the row was profiled (float32), the time its convolutions may take for the target with
    the rest as it is (the peer's time / the factor - the rest) and how many times faster they
    would have to run ("none": the rest alone misses the target). The wall time is split into
    convolutions and the rest as the profile's categories split theirs (XLA runs instructions
    concurrently, so the categories add up to more or less than the wall time). The second: each
    library's train step over its own forward, against ``STEP_TARGET``."""
    by = _by(rows)
    lines = []
    for model in _models(rows):
        for dtype, pass_ in _variants(rows, model):
            row = by.get((model, dtype, pass_, "jconv"))
            b, t = (row or {}).get("breakdown_s"), _t(row)
            if not t:
                continue
            profiled = bool(b and sum(b.values()))
            conv = t * b["conv"] / sum(b.values()) if profiled else None  # the profile's share of t
            for p, peer, want in SPEED_TARGETS:
                peer_t = _t(by.get((model, dtype, pass_, peer)))
                if p != pass_ or not peer_t:
                    continue
                now = ratio(rows, model, dtype, pass_, "jconv", peer)
                met = bool(now and now >= want)
                cells = ["-"] * 4
                if profiled:
                    budget = peer_t / want - (t - conv)
                    cells = [fmt_ms(conv), fmt_ms(t - conv), fmt_ms(budget) if budget > 0 else "< 0",
                             "-" if met else ("**none**" if budget <= 0 else _x(conv / budget))]
                lines.append([model, dtype, pass_, f">= {want}x {_PEER[peer]}", _x(now), "yes" if met else "no"]
                             + cells)
    md = [table(["model", "dtype", "pass", "target", "jconv now", "met", "jconv convs ms", "jconv rest ms",
                 "convs may take ms", "convs must run faster by"], lines)]
    steps = []
    for model in _models(rows):
        for dtype in dict.fromkeys(d for d, _ in _variants(rows, model)):
            cells = []
            for c in ("jconv", "xla", "torch"):
                f, t = _t(by.get((model, dtype, "inference", c))), _t(by.get((model, dtype, "train", c)))
                cells.append(_x(t / f) + ("" if t / f <= STEP_TARGET else " (over)") if f and t else "-")
            steps.append([model, dtype] + cells)
    md += ["", table(["model", "dtype", f"train / forward: jconv (target <= {STEP_TARGET}x)", "XLA", "PyTorch"],
                     steps)]
    return "\n".join(md)


def markdown(rows: list[dict], env: dict | None = None, plots: tuple[str, ...] = PLOTS) -> str:
    md = ["# Whole networks: jconv, XLA and PyTorch", ""]
    for section in (section_header(env or {}), section_verdict(rows), section_models(rows),
                    section_breakdown(rows), section_compile(rows)):
        md += section
    if plots:
        md += ["## Plots", ""] + [f"![{p[:-4]}]({p})" for p in plots] + [""]
    return "\n".join(md)


def plot_models(rows: list[dict], path: str) -> None:
    """Left: speedup over XLA per model, pass and dtype (log scale). Right: where the time goes,
    stacked per model, pass and candidate (float32)."""
    import matplotlib.pyplot as plt

    groups = [(m, d, p) for m in _models(rows) for d, p in _variants(rows, m)]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(15, 0.45 * len(groups) + 2.5))
    cands = [c for c in ORDER if any(r["candidate"] == c for r in rows)]
    h = 0.8 / max(1, len(cands))
    by = _by(rows)
    for k, c in enumerate(cands):
        ys, xs = [], []
        for i, g in enumerate(groups):
            r = by.get(g + (c,))
            sp = as_float(r.get("speedup_vs_xla")) if r else None
            if sp:
                ys.append(i + (k - (len(cands) - 1) / 2) * h)
                xs.append(sp)
        a1.barh(ys, xs, height=h, color=_COLORS.get(c), label=c)
    a1.axvline(1.0, color="k", lw=0.8)
    a1.set_xscale("log")
    a1.set_yticks(range(len(groups)))
    a1.set_yticklabels([f"{m} {d} {p}" for m, d, p in groups], fontsize=7)
    a1.invert_yaxis()
    a1.set_xlabel("speedup over XLA (flax.linen.Conv), log")
    a1.legend(fontsize=7)
    stacks = [r for r in rows if r.get("breakdown_s") and r["dtype"] == "float32"]
    for i, r in enumerate(stacks):
        left = 0.0
        for cat in CATEGORIES:
            v = 1e3 * r["breakdown_s"].get(cat, 0.0)
            a2.barh(i, v, left=left, color=_CAT_COLORS[cat], label=cat if i == 0 else None)
            left += v
    a2.set_yticks(range(len(stacks)))
    a2.set_yticklabels([f"{r['model']} {r['pass']} {r['candidate']}" for r in stacks], fontsize=7)
    a2.invert_yaxis()
    a2.set_xlabel("ms per call, by category (profile, float32)")
    a2.legend(fontsize=7)
    save(fig, path)


def plot_all(rows: list[dict], workdir: str) -> None:
    plot_models(rows, os.path.join(workdir, "models.png"))


__all__ = ["markdown", "plot_all", "PLOTS", "ratio", "geomean", "docs_table"]
