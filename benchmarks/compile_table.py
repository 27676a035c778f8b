"""The compile-matrix tables of docs/pallas.md, from the committed rows.

    .venv/bin/python benchmarks/compile_table.py docs/perf/compile_matrix.jsonl

The rows come from ``python -m jconv_experiments --config=configs/compile.py --workdir=runs/compile``
(copied to docs/perf/compile_matrix.jsonl); the sections are the experiment report's
(:mod:`jconv_experiments.report.compile`): the verdict per target, one table per target, the failures.
"""

from __future__ import annotations

import sys

from jconv_experiments.bench.store import load_rows
from jconv_experiments.report import compile as compile_report

KEY = ("target", "case", "impl", "dtype", "pass", "batch")


def markdown(path: str) -> str:
    rows = load_rows(path, KEY)
    md = []
    for section in (compile_report.section_verdict(rows), compile_report.section_per_target(rows),
                    compile_report.section_failures(rows), compile_report.section_compile_time(rows)):
        md += [line.replace("## ", "### ", 1) if line.startswith("## ") else
               line.replace("### ", "#### ", 1) if line.startswith("### ") else line for line in section]
    return "\n".join(md)


if __name__ == "__main__":
    print(markdown(sys.argv[1] if len(sys.argv) > 1 else "docs/perf/compile_matrix.jsonl"))
