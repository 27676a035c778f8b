"""docs/models.md: its tables are what ``python -m jconv_experiments.networks --table`` prints
from the committed run (docs/perf/models_cpu.jsonl + .env.json), and that command is beside them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from jconv_experiments import networks
from jconv_experiments.report.networks import docs_table, targets_table

REPO = Path(__file__).resolve().parents[1]
ROWS = REPO / "docs" / "perf" / "models_cpu.jsonl"
ENV = REPO / "docs" / "perf" / "models_cpu.env.json"
DOC = REPO / "docs" / "models.md"
REF64 = REPO / "docs" / "perf" / "models_reference64.jsonl"
CATS = {"conv": 0.05, "norm": 0.01, "dense": 0.0, "other layers": 0.01, "loss+optimizer": 0.0, "unattributed": 0.0}


def _row(pass_, cand, t, **kw):
    return dict({"model": "resnet50", "dtype": "float32", "pass": pass_, "candidate": cand, "time_median_s": t,
                 "within_tol": True}, **kw)


def test_docs_table_ratios_come_from_the_times():
    rows = [_row("inference", "jconv", 0.1, breakdown_s=CATS), _row("inference", "xla", 0.2),
            _row("inference", "torch", 0.15), _row("inference", "torch_compile", 0.05),
            _row("train", "jconv", 0.3), _row("train", "xla", 0.45), _row("train", "torch", 0.6, within_tol=False)]
    md = docs_table(rows)
    assert "| resnet50 | float32 | inference | 100 | 200 | 150 | 50 | 2.00x | 1.50x | 0.50x |  | yes |" in md
    assert "| resnet50 | float32 | train | 300 | 450 | 600 | - | 1.50x | 2.00x | - | 3.00x | **no** |" in md
    assert "| resnet50 | float32 | inference | 50 | 20 | 71% | - | - | - | - | - | - |" in md  # conv, rest, share
    # a train row checked against the float64 step: that verdict, not the comparison with XLA's
    rows[-1].update(within_tol_vs_xla=False, within_tol_vs64=True)
    assert "| resnet50 | float32 | train | 300 | 450 | 600 | - | 1.50x | 2.00x | - | 3.00x | yes |" in docs_table(rows)


def test_targets_table_splits_the_wall_time_as_the_profile_does():
    """The conv time for a target is the peer's time / the factor less the time outside the
    convolutions; the profile's categories (here 0.08 s against 0.1 s timed) are scaled to the
    wall time first."""
    prof = {"conv": 0.06, "norm": 0.02}  # conv 75% of the profile: 75 of the 100 ms timed
    rows = [_row("inference", "jconv", 0.1, breakdown_s=prof), _row("inference", "xla", 0.12),
            _row("inference", "torch", 0.3), _row("train", "jconv", 0.5, breakdown_s={"conv": 0.1, "norm": 0.4}),
            _row("train", "torch", 0.52), _row("train", "xla", 1.0)]
    md = targets_table(rows)
    # vs PyTorch: 3.0x >= 1.5x, met; vs XLA: 1.2x, convs may take 120/1.5 - 25 = 55 ms of their 75: 1.36x faster
    assert "| resnet50 | float32 | inference | >= 1.5x PyTorch | 3.00x | yes | 75 | 25 | 175 | - |" in md
    assert "| resnet50 | float32 | inference | >= 1.5x XLA | 1.20x | no | 75 | 25 | 55 | 1.36x |" in md
    # train: conv 100 of 500 ms, the rest 400 > 520 / 1.3: no conv time reaches it
    assert "| resnet50 | float32 | train | >= 1.3x PyTorch | 1.04x | no | 100 | 400 | < 0 | **none** |" in md
    assert "| resnet50 | float32 | 5.00x (over) | 8.33x (over) | 1.73x |" in md  # train / forward per library


def test_docs_models_tables_are_generated_from_the_committed_run():
    if not ROWS.exists():
        pytest.fail(f"{ROWS} is missing: docs/models.md's tables come from it")
    rows = [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]
    assert rows and all(set(networks.KEY) <= set(r) for r in rows)
    doc = DOC.read_text()
    for part in (docs_table(rows), targets_table(rows)):
        assert part in doc, "docs/models.md differs: python -m jconv_experiments.networks --table " \
                            "docs/perf/models_cpu.jsonl prints its tables"
    assert "python -m jconv_experiments.networks --table docs/perf/models_cpu.jsonl" in doc
    env = json.loads(ENV.read_text())
    assert env["lscpu"] and env["config"]["experiment"] == "networks" and env.get("load_average_start")
    assert env["cpu_model"] in doc
    assert "(img/models_cpu.png)" in doc and (REPO / "docs" / "img" / "models_cpu.png").stat().st_size > 10_000


def test_docs_models_reference64_table_is_generated_from_the_committed_run():
    """The float64 reference's table is what benchmarks/models_reference64.py --table prints."""
    spec = importlib.util.spec_from_file_location("models_reference64", REPO / "benchmarks" / "models_reference64.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [json.loads(line) for line in REF64.read_text().splitlines() if line.strip()]
    assert {r["candidate"] for r in rows} == set(mod.CANDIDATES) and all(r["err_grads_vs64"] > 0 for r in rows)
    doc = DOC.read_text()
    assert mod.table(rows) in doc, "docs/models.md differs: python benchmarks/models_reference64.py --table " \
                                   "docs/perf/models_reference64.jsonl prints its table"
    assert "benchmarks/models_reference64.py --table\ndocs/perf/models_reference64.jsonl" in doc
    assert json.loads(REF64.with_suffix(".env.json").read_text())["lscpu"]


def test_docs_are_linked():
    assert "docs/models.md" in (REPO / "README.md").read_text()
    assert "models.md" in (REPO / "docs" / "experiments.md").read_text()
    assert "docs/models.md" in (REPO / "configs" / "models.py").read_text()


def test_docs_convnext_layers_table_is_generated_from_the_committed_run():
    """ConvNeXt-T's convolutions one by one: the table is what benchmarks/convnext_layers.py --table prints."""
    spec = importlib.util.spec_from_file_location("convnext_layers", REPO / "benchmarks" / "convnext_layers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = REPO / "docs" / "perf" / "convnext_layers_cpu.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert [(r["layer"], r["uses"]) for r in rows] == [(layer[0], layer[-1]) for layer in mod.layers()], \
        "the committed rows are not ConvNeXt-T's convolutions as jconv_experiments.zoo builds it: measure again"
    doc = DOC.read_text()
    assert mod.table(str(path)) in doc, "docs/models.md differs: python benchmarks/convnext_layers.py --table " \
                                        "docs/perf/convnext_layers_cpu.jsonl prints its table"
    assert "python benchmarks/convnext_layers.py --table docs/perf/convnext_layers_cpu.jsonl" in doc
    assert json.loads(path.with_suffix(".env.json").read_text())["lscpu"]
