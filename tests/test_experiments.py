"""The experiments runner: configs, crash-safe results, resume, report (timing never asserted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from configs import smoke
from jconv_experiments import compare
from jconv import plan_for
from jconv_experiments import bench, report
from jconv_experiments.suite import CASES, Case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROW_FIELDS = {"case", "impl", "pass", "dtype", "batch", "layout", "platform", "device_kind", "precision",
              "reference", "flops", "bytes", "intensity", "tol", "error", "interpreted", "plan",
              "time_utc"}
MEASURED_FIELDS = {"max_abs_err", "max_rel_err", "scaled_err", "within_tol", "scaled_err_vs_xla",
                   "agrees_with_xla", "compile_s", "time_median_s", "time_min_s", "iters", "gflops",
                   "temp_bytes"}
ENV_FIELDS = {"platform", "device_kind", "jax", "jaxlib", "flax", "torch", "cpu_model", "cpu_count",
              "commit", "config"}


def _cli(*args, timeout=300, **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "jconv_experiments", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def _keys(path):
    with open(path) as f:
        return [bench.row_key(json.loads(line)) for line in f]


# --------------------------------------------------------------------------------------------
# ResultStore
# --------------------------------------------------------------------------------------------


def _row(case="a", impl="xla", p="fwd", d="float32", b=1, **kw):
    return {"case": case, "impl": impl, "pass": p, "dtype": d, "batch": b, **kw}


def test_store_appends_and_repairs_torn_and_duplicate_lines(tmp_path):
    path = str(tmp_path / "results.jsonl")
    s = bench.ResultStore(path)
    s.append(_row(impl="xla", t=float("inf")))
    s.append(_row(impl="lax"))
    with pytest.raises(ValueError, match="already stored"):
        s.append(_row(impl="lax"))
    with open(path) as f:
        first = f.read()
    assert '"inf"' in first and "Infinity" not in first  # strict JSON
    # a duplicate, garbage, and a torn last line (a kill mid-write)
    with open(path, "a") as f:
        f.write(json.dumps(_row(impl="xla")) + "\n")
        f.write("not json\n")
        f.write('{"case": "a", "impl": "auto", "pa')
    s2 = bench.ResultStore(path)
    assert len(s2.dropped) == 3
    assert [r["impl"] for r in s2.rows] == ["xla", "lax"]
    with open(path) as f:
        assert f.read() == first  # rewritten: exactly the good rows
    assert ("a", "lax", "fwd", "float32", 1) in s2
    assert bench.as_float(s2.rows[0]["t"]) == float("inf")
    s2.append(_row(impl="auto"))
    assert _keys(path) == [("a", i, "fwd", "float32", 1) for i in ("xla", "lax", "auto")]
    assert s2.drop_where(lambda r: r["impl"] == "lax") == 1
    assert [k[1] for k in _keys(path)] == ["xla", "auto"]


def test_time_interleaved_counts_calls():
    calls = {"a": 0, "b": 0}

    def mk(k):
        def f():
            calls[k] += 1
        return f

    times = bench.time_interleaved({"a": mk("a"), "b": mk("b")}, warmup=2, iters=5)
    assert [len(times["a"]), len(times["b"])] == [5, 5]
    assert calls == {"a": 7, "b": 7}
    times = bench.time_interleaved({"a": mk("a")}, warmup=0, iters=100, min_iters=2, max_time_s=0.0)
    assert len(times["a"]) == 2


def test_time_interleaved_blocks_drop_the_first_call_of_each_block():
    order = []
    fns = {k: (lambda k=k: order.append(k)) for k in "ab"}
    times = bench.time_interleaved(fns, warmup=0, iters=2, block=3, no_warmup=("b",))
    assert order == ["a", "a", "a", "b", "b", "a", "a", "a"]
    assert [len(times["a"]), len(times["b"])] == [4, 2]  # a: 2 of 3 per round; b (slow): 1 of 1


# --------------------------------------------------------------------------------------------
# measure_group
# --------------------------------------------------------------------------------------------


def test_measure_group_rows_and_a_failing_impl_is_recorded_not_swapped():
    case = CASES["tiny_dense"]
    rows = bench.measure_group(case, 2, "float32", "fwd", ["xla", "lax:depthwise", "auto", "gemm_peak"],
                               bench.Settings(iters=2, warmup=0, min_iters=1, block=3))
    by = {r["impl"]: r for r in rows}
    assert list(by) == ["xla", "lax:depthwise", "auto", "gemm_peak"]
    assert by["lax:depthwise"]["error"].startswith("ValueError: conv2d: impl (='lax:depthwise')")
    assert "time_median_s" not in by["lax:depthwise"]
    for impl in ("xla", "auto"):
        r = by[impl]
        assert r["error"] is None and r["within_tol"] and r["agrees_with_xla"], r
        assert r["reference"] == "float64" and r["iters"] == 4  # 2 rounds x (block - 1) timed calls
        assert MEASURED_FIELDS <= set(r)
    p = plan_for(case.spec(2), "auto")
    assert by["auto"]["plan"] == f"{p.impl}:{p.algorithm}"
    assert by["auto"]["speedup_vs_xla"] == pytest.approx(by["xla"]["time_median_s"] / by["auto"]["time_median_s"])
    assert by["gemm_peak"]["gemm_mkn"] == [2 * 8 * 8, 3 * 3 * 4, 8]
    assert by["gemm_peak"].get("scaled_err") is None


@pytest.mark.skipif(bench.torch_module() is None, reason="torch not installed (optional peer)")
def test_torch_peer_matches_reference_including_transposed_and_nhwc():
    transposed = Case("t_transposed", (5, 5), 3, 4, (3, 3), padding=((1, 2), (1, 2)), lhs_dilation=(2, 2))
    st = bench.Settings(iters=1, warmup=0, min_iters=1)
    for case in (transposed, CASES["tiny_depthwise"]):
        for p in bench.PASSES:
            (row,) = [r for r in bench.measure_group(case, 2, "float32", p, ["torch"], st)]
            assert row["error"] is None and row["within_tol"] and row["agrees_with_xla"], row


def test_fwd_bwd_bfloat16_within_tolerance():
    rows = bench.measure_group(CASES["tiny_grouped_s2_nchw"], 2, "bfloat16", "fwd+bwd", ["xla", "lax"],
                               bench.Settings(iters=1, warmup=0, min_iters=1))
    for r in rows:
        assert r["error"] is None and r["within_tol"], r
        assert r["tol"] == pytest.approx(4e-2 * 4.0)


# --------------------------------------------------------------------------------------------
# Config validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, match", [
    ("suite", "nosuch_case", r"compare: config.suite \(='nosuch_case'\) names unknown cases"),
    ("dtypes", ("float33",), r"compare: config.dtypes \(=\('float33',\)\) must contain only"),
    ("impls", ("xla", "cudnn"), r"compare: config.impls .* contains 'cudnn'"),
    ("passes", ("bwd",), r"compare: config.passes"),
    ("precision", "fastest", r"compare: config.precision \(='fastest'\)"),
    ("batch", 0, r"compare: config.batch \(=0\) must be >= 1"),
    ("interpreted_cases", "resnet_nope", r"compare: config.interpreted_cases"),
])
def test_config_bad_values(field, value, match):
    cfg = smoke.get_config()
    cfg[field] = value
    with pytest.raises(ValueError, match=match):
        compare.validate(cfg)


def test_every_shipped_config_validates_and_documents_its_launch():
    import importlib

    for name in ("default", "smoke", "cpu_full", "gpu", "tpu", "colab_tpu"):
        mod = importlib.import_module(f"configs.{name}")
        cfg = mod.get_config()
        compare.validate(cfg)
        assert cfg.experiment == "compare"
        assert f"--config=configs/{name}.py" in mod.__doc__
        assert compare.planned_keys(cfg)


def test_cli_rejects_unknown_field_and_bad_value(tmp_path):
    r = _cli("--config=configs/smoke.py", "--config.no_such_field=1", f"--workdir={tmp_path}")
    assert r.returncode != 0 and "no_such_field" in r.stderr
    r = _cli("--config=configs/smoke.py", "--config.batch=two", f"--workdir={tmp_path}")
    assert r.returncode != 0 and "batch" in r.stderr
    r = _cli("--config=configs/smoke.py", "--config.dtypes=('float33',)", f"--workdir={tmp_path}")
    assert r.returncode != 0 and "compare: config.dtypes" in r.stderr
    r = _cli("--config=configs/smoke.py", "--config.experiment=nope", f"--workdir={tmp_path}")
    assert r.returncode != 0 and "names no module jconv_experiments/nope.py" in r.stderr
    assert not os.path.exists(tmp_path / "results.jsonl")
    r = _cli("report", f"--workdir={tmp_path}")
    assert r.returncode != 0 and "has no results.jsonl" in r.stderr


# --------------------------------------------------------------------------------------------
# End to end: kill -9, repair, resume, report
# --------------------------------------------------------------------------------------------


def test_smoke_run_killed_resumed_and_reported(tmp_path):
    workdir = tmp_path / "run"
    results = workdir / "results.jsonl"
    planned = compare.planned_keys(smoke.get_config())
    assert len(planned) == len(set(planned)) > 10

    # 1. start, kill -9 once some rows are in, then simulate a torn write on top
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "jconv_experiments", "--config=configs/smoke.py",
                             f"--workdir={workdir}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    n = 0
    while time.time() < deadline and proc.poll() is None:
        n = len(_keys(results)) if results.exists() else 0
        if n >= 7:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert 7 <= n < len(planned), "the run should have been killed mid-way"
    with open(results, "a") as f:
        f.write('{"case": "tiny_dense", "impl": "xla", "pass": "fw')

    # 2. re-run: repaired, completed, every planned row exactly once
    r = _cli("--config=configs/smoke.py", f"--workdir={workdir}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "repaired results.jsonl" in r.stderr
    keys = _keys(results)
    assert sorted(keys) == sorted(planned)
    for name in ("env.json", "report.md", *report.PLOTS):
        assert (workdir / name).stat().st_size > 0, name
    for png in report.PLOTS:
        assert (workdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # every field present; the jconv impls and the baseline ran and are accurate
    rows = bench.load_rows(str(results))
    for row in rows:
        assert ROW_FIELDS <= set(row), row
        if row["error"] is None and row["impl"] != "gemm_peak":
            assert MEASURED_FIELDS <= set(row), row
        if row["impl"] in ("xla", "lax", "auto"):
            assert row["error"] is None and row["within_tol"] and row["agrees_with_xla"], row
        if row["impl"] == "pallas" and row["error"] is None:
            assert row["interpreted"] and row["within_tol"], row
    with open(workdir / "env.json") as f:
        env_json = json.load(f)
    assert ENV_FIELDS <= set(env_json) and env_json["config"]["suite"] == "smoke"
    md = (workdir / "report.md").read_text()
    for section in ("## Verdict", "## Accuracy", "## Speed", "## Memory", "speedup.png"):
        assert section in md
    assert "geometric-mean speedup over XLA" in md

    # 3. resume adds nothing
    before = results.read_bytes()
    r = _cli("--config=configs/smoke.py", f"--workdir={workdir}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert results.read_bytes() == before

    # 4. the report alone, from results.jsonl
    for name in ("report.md", *report.PLOTS):
        (workdir / name).unlink()
    r = _cli("report", f"--workdir={workdir}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (workdir / "report.md").read_text() == md
    assert all((workdir / p).exists() for p in report.PLOTS)


def test_report_from_synthetic_rows():
    base = dict(dtype="float32", batch=1, flops=10**9, bytes=10**6, intensity=1000.0, tol=2e-5,
                scaled_err=1e-7, within_tol=True, agrees_with_xla=True, interpreted=False, error=None)
    rows = [
        dict(base, case="c1", impl="xla", **{"pass": "fwd"}, time_median_s=0.2, gflops=5.0),
        dict(base, case="c1", impl="lax", **{"pass": "fwd"}, time_median_s=0.1, gflops=10.0),
        dict(base, case="c2", impl="xla", **{"pass": "fwd"}, time_median_s=0.1, gflops=10.0),
        dict(base, case="c2", impl="lax", **{"pass": "fwd"}, time_median_s=0.2, gflops=5.0),
        dict(base, case="c2", impl="pallas", **{"pass": "fwd"}, time_median_s=9.0, gflops=0.1,
             interpreted=True),
    ]
    s = report.summary(rows)
    assert s["all_agree_with_xla"]
    assert s["geomean_speedup"][("lax", "fwd", "float32")] == pytest.approx(1.0)  # sqrt(2 * 0.5)
    assert ("pallas", "fwd", "float32") not in s["geomean_speedup"]  # interpreted: no speed
    md = report.markdown(rows, plots=())
    assert "(9e+03 interp.)" in md or "interp.)" in md
    rows.append(dict(base, case="c1", impl="auto", **{"pass": "fwd"}, error="NotImplementedError: x"))
    rows.append(dict(base, case="c2", impl="auto", **{"pass": "fwd"}, agrees_with_xla=False, within_tol=False,
                     scaled_err=1.0, scaled_err_vs_xla=1.0, time_median_s=0.1))
    s = report.summary(rows)
    assert not s["all_agree_with_xla"] and len(s["failed"]) == 1 and len(s["disagree"]) == 1
    assert "**no**" in report.markdown(rows, plots=())
