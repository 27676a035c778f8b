"""The whole-network experiment (configs/models.py) end to end on the zoo's small models:
rows checked against XLA, timed, profiled; resumable; the report; bad configs."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from configs import models as models_config
from jconv_experiments import networks
from jconv_experiments.bench.store import load_rows

HAS_TORCH = importlib.util.find_spec("torch") is not None


def small(**kw):
    c = models_config.get_config()
    c.update(dict(small=True, batch=4, rounds=1, min_rounds=1, models="resnet50,unet", dtypes="float32",
                  candidates="jconv,xla" + (",torch" if HAS_TORCH else ""), torch_compile="",
                  profile="jconv,xla" + (",torch" if HAS_TORCH else ""), report=True))
    c.update(kw)
    return c


def test_small_run_checks_times_profiles_resumes_and_reports(tmp_path):
    wd = str(tmp_path)
    networks.run(small(), wd)
    rows = load_rows(os.path.join(wd, "results.jsonl"), networks.KEY)
    cands = 3 if HAS_TORCH else 2
    assert len(rows) == 2 * 2 * cands  # models x passes x candidates
    for r in rows:
        assert r["within_tol"], r
        assert r["time_median_s"] > 0 and r["iters"] >= 1 and r["speedup_vs_xla"] > 0
        assert r["breakdown_s"]["conv"] > 0, r
        assert ("err_logits" in r) == (r["pass"] == "inference")
        assert r["load_average"] is None or len(r["load_average"]) == 3
    jconv_rows = [r for r in rows if r["candidate"] == "jconv"]
    assert all("x" in r["plan"] and ":" in r["plan"] for r in jconv_rows)  # e.g. "onednn:onednn x9"
    assert all(r["speedup_vs_xla"] == 1.0 for r in rows if r["candidate"] == "xla")
    env = json.loads(Path(wd, "env.json").read_text())
    assert env["lscpu"] and env["config"]["experiment"] == "networks" and "load_average_start" in env
    report = Path(wd, "report.md").read_text()
    assert "## Where the time goes" in report and "**yes**" in report and "U-Net" in report
    assert os.path.getsize(os.path.join(wd, "models.png")) > 10_000
    # a second run measures nothing more
    before = Path(wd, "results.jsonl").read_text()
    networks.run(small(), wd)
    assert Path(wd, "results.jsonl").read_text() == before


@pytest.mark.parametrize("field,value,match", [
    ("models", "resnet50,vgg", r"config\.models \(='resnet50,vgg'\) names \['vgg'\]"),
    ("candidates", "jconv,torch", r"must include the baseline 'xla'"),
    ("passes", "fwd", r"config\.passes \(='fwd'\) names \['fwd'\]"),
    ("dtypes", "", r"config\.dtypes \(=''\) names nothing"),
    ("rounds", 0, r"config\.rounds \(=0\) must be >= 1"),
])
def test_bad_config_is_a_clear_error(field, value, match):
    with pytest.raises(ValueError, match=match):
        networks.validate(small(**{field: value}))
