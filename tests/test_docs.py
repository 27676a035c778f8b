"""The README's results block is what benchmarks/readme_results.py generates from the committed
run (docs/perf/default_cpu.*): numbers, commit and machine cannot drift from the rows."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import readme_results  # noqa: E402


def test_readme_results_block_is_generated_from_the_committed_rows():
    assert readme_results.main(["--check"]) == 0


def test_a_changed_number_in_the_block_fails_the_check(tmp_path, monkeypatch):
    with open(readme_results.README) as f:
        text = f.read()
    head, block, tail = readme_results._split(text)
    assert "| fwd+bwd |" in block, "the block has the excerpt's rows"
    i = block.index("| fwd+bwd |") + len("| fwd+bwd | ")
    digit = next(j for j in range(i, len(block)) if block[j].isdigit())
    changed = block[:digit] + str((int(block[digit]) + 1) % 10) + block[digit + 1:]
    readme = tmp_path / "README.md"
    readme.write_text(head + changed + tail)
    monkeypatch.setattr(readme_results, "README", str(readme))
    assert readme_results.main(["--check"]) == 1


def test_performance_bfloat16_without_instructions_table_is_generated():
    """docs/performance.md's table 2b is what benchmarks/perf_table.py prints from the committed
    run, with that command beside it, and the run recorded a CPU without bfloat16 instructions."""
    import json

    import perf_table

    path = os.path.join(ROOT, "docs", "perf", "cpu_full_bf16_no_isa.jsonl")
    with open(os.path.join(ROOT, "docs", "performance.md")) as f:
        doc = f.read()
    assert perf_table.build(perf_table.load(path), "bfloat16", "lax") in doc
    assert "benchmarks/perf_table.py docs/perf/cpu_full_bf16_no_isa.jsonl bfloat16 --vs lax" in doc
    with open(path.replace(".jsonl", ".env.json")) as f:
        env = json.load(f)
    assert env["lscpu"] and "avx512_bf16" not in env["cpu_isa"]
