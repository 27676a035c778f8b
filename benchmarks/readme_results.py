"""The README's results block, generated from a committed `make run`.

    python benchmarks/readme_results.py            # rewrite README.md's block from docs/perf/default_cpu.*
    python benchmarks/readme_results.py --check    # exit 1 if README.md's block differs (tests/test_docs.py)
    python benchmarks/readme_results.py --from runs/default   # commit a new run first: copies its rows
                                                              # and env into docs/perf/, then rewrites

The rows are `make run`'s (`configs/default.py`, `runs/default/results.jsonl` and `env.json`);
the block states the machine, versions, commit and wall time they came from, the report's
verdict lines, and the rows of :data:`EXCERPT` (one per kind of layer).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jconv_experiments.bench.store import as_float, load_rows  # noqa: E402
from jconv_experiments.report import compare as compare_report  # noqa: E402

ROWS = os.path.join(ROOT, "docs", "perf", "default_cpu.jsonl")
ENV = os.path.join(ROOT, "docs", "perf", "default_cpu.env.json")
README = os.path.join(ROOT, "README.md")
BEGIN = "<!-- results:begin"
END = "<!-- results:end -->"
#: (case, pass) rows shown: depthwise, grouped, 1x1, transposed, strided 3x3, a large 3x3, a dense forward
EXCERPT = (("mobilenetv2_dw3x3_s1", "fwd+bwd"), ("resnext_g32_3x3", "fwd+bwd"), ("resnet50_s2_1x1_expand", "fwd+bwd"),
           ("unet_up_transposed", "fwd+bwd"), ("resnet50_s2_3x3", "fwd+bwd"), ("unet_3x3_256", "fwd+bwd"),
           ("vgg16_conv4_2", "fwd"))
COLUMNS = ("xla", "auto", "torch")


def _wall(rows: list[dict], env: dict) -> str:
    stamps = [datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ") for t in
              [env.get("time_utc")] + [r.get("time_utc") for r in rows] if t]
    seconds = int((max(stamps) - min(stamps)).total_seconds())
    return f"{seconds // 60} min {seconds % 60} s"


def _cell(row: dict | None, xla_s: float | None) -> str:
    if row is None or row.get("error") or row.get("time_median_s") is None:
        return "-"
    t = as_float(row["time_median_s"])
    ms = f"{t * 1e3:.3g}"
    return ms if xla_s is None or row["impl"] == "xla" else f"{ms} ({xla_s / t:.2f}x)"


def render(rows: list[dict], env: dict) -> str:
    """The block's text (between the markers)."""
    cfg = env.get("config", {})
    torch = env.get("torch")
    lines = [
        f"`make run` (`configs/default.py`: suite `{cfg.get('suite')}`, {', '.join(cfg.get('dtypes', []))}, "
        f"batch {cfg.get('batch')} lowered to <= {cfg.get('max_fwd_gflop')} GFLOP per forward) on "
        f"{env.get('cpu_model')} ({env.get('cpu_count')} cores; {', '.join(env.get('cpu_isa', []))}), "
        f"jax {env.get('jax')}, " + (f"PyTorch {torch}" if torch else "without PyTorch")
        + f", commit {str(env.get('commit'))[:7]}, {str(env.get('time_utc'))[:10]}: {len(rows)} rows "
        f"in {_wall(rows, env)}. Implementations are timed together in rounds of short blocks (the "
        "first call of each untimed); single rows move by 10-40% between runs. Excerpt of the "
        "report (`runs/default/report.md`):",
        "",
    ]
    verdict = compare_report.section_verdict(compare_report._View(rows))[2:]
    lines += ["> " + v for v in verdict if v]
    by = {(r["case"], r["impl"], r["pass"]): r for r in rows}
    impls = [i for i in COLUMNS if any(r["impl"] == i for r in rows)]
    lines += [">", "> | case | batch | pass | " + " | ".join(f"{i} ms" for i in impls) + " |",
              "> |---|---|---|" + "---|" * len(impls)]
    for case, pass_ in EXCERPT:
        first = next((r for r in rows if r["case"] == case and r["pass"] == pass_), None)
        if first is None:
            continue
        xla = by.get((case, "xla", pass_))
        xla_s = as_float(xla["time_median_s"]) if xla and xla.get("time_median_s") is not None else None
        cells = [_cell(by.get((case, i, pass_)), xla_s) for i in impls]
        lines.append(f"> | {case} | {first['batch']} | {pass_} | " + " | ".join(cells) + " |")
    lines += ["", "![speedup over XLA per layer](docs/img/speedup_default_cpu.png)"]
    return "\n".join(lines)


def _split(text: str) -> tuple[str, str, str]:
    a = text.index(BEGIN)
    a = text.index("\n", a) + 1
    b = text.index(END)
    return text[:a], text[a:b], text[b:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md's block is not the generated one")
    ap.add_argument("--from", dest="run", help="a make run workdir to commit into docs/perf first")
    args = ap.parse_args(argv)
    if args.run:
        shutil.copyfile(os.path.join(args.run, "results.jsonl"), ROWS)
        shutil.copyfile(os.path.join(args.run, "env.json"), ENV)
        png = os.path.join(args.run, "speedup.png")
        if os.path.exists(png):
            shutil.copyfile(png, os.path.join(ROOT, "docs", "img", "speedup_default_cpu.png"))
    with open(ENV) as f:
        env = json.load(f)
    block = render(load_rows(ROWS), env) + "\n"
    with open(README) as f:
        text = f.read()
    head, old, tail = _split(text)
    if args.check:
        if old != block:
            print("README.md's results block differs from the committed rows; run "
                  "`python benchmarks/readme_results.py`", file=sys.stderr)
            return 1
        return 0
    with open(README, "w") as f:
        f.write(head + block + tail)
    print(f"README.md: results block from {os.path.relpath(ROWS, ROOT)} ({str(env.get('commit'))[:7]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
