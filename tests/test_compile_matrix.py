"""The compile matrix experiment (configs/compile.py): what it compiles, and one small real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aot_helpers import _env, require_compiler
from configs import compile as compile_config
from jconv_experiments import compile_matrix, programs
from jconv_experiments.bench.peers import PEERS
from jconv_experiments.suite import SUITES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**kw):
    c = compile_config.get_config()
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.mark.parametrize("field,value,match", [
    ("targets", "v5e,h200", r"config\.targets \(='v5e,h200'\) names unknown target 'h200'"),
    ("configs", "tpu,nope", r"config\.configs \(='tpu,nope'\) names no config configs/nope\.py"),
    ("configs", "default", r"config\.configs \(='default'\) includes 'default', whose platform"),
    ("suite", "huge", r"config\.suite \(='huge'\) must be"),
    ("workers", 0, r"config\.workers \(=0\) must be >= 1"),
    ("dtypes", "float64", r"config\.dtypes \(='float64'\) names 'float64'"),
    ("passes", "bwd", r"config\.passes \(='bwd'\) names 'bwd'"),
])
def test_bad_config_is_a_clear_error(field, value, match):
    with pytest.raises(ValueError, match=match):
        compile_matrix.validate(_config(**{field: value}))


def test_work_items_are_the_configs_work_on_their_targets():
    """Each target gets its platform's configs' suite, batch, dtypes, passes and jconv impls
    (peers other than xla skipped); colab_tpu's work goes to the TPUs Colab offers only; a
    program two configs share is one item naming both."""
    works = compile_matrix.work_items(_config())
    keys = [w.key for w in works]
    assert len(keys) == len(set(keys))
    works = [w for w in works if not programs.is_model(w)]  # the layers' work (models: the next test)
    assert not [w for w in works if w.impl in PEERS and w.impl != "xla"]
    tpu_b32 = {w.target for w in works if w.batch == 32 and w.target.startswith("v")}
    assert tpu_b32 == {"v5e", "v6e"}  # configs/colab_tpu.py: compile_targets
    for t in ("v4", "v5e", "v5p", "v6e"):
        full = [w for w in works if w.target == t and w.batch == 64]
        assert len(full) == len(SUITES["full"]) * 2 * 2 * 4  # layers x dtypes x passes x impls
    l4 = [w for w in works if w.target == "l4"]
    assert {w.batch for w in l4} == {32}
    assert len(l4) == len(SUITES["full"]) * 2 * 2 * 4
    shared = next(w for w in l4 if w.case == SUITES["default"][0])
    assert set(shared.configs) == {"gpu", "colab_gpu"}
    # auto plans XLA on accelerators: compiled once, under xla's key
    auto = next(w for w in l4 if w.impl == "auto")
    xla = next(w for w in l4 if w.impl == "xla" and w.case == auto.case and w.dtype == auto.dtype
               and w.pass_ == auto.pass_)
    assert compile_matrix._program_key(auto) == compile_matrix._program_key(xla)


def test_model_work_is_each_networks_model_train_step_on_v5e_and_l4():
    """configs/models.py's models, at its batch and dtypes, with jconv's modules (its impl) and
    flax's (xla), one train step each, for the model targets only."""
    from configs import models

    sub = models.get_config()
    works = [w for w in compile_matrix.work_items(_config()) if programs.is_model(w)]
    names = sub.models.split(",")
    assert len(works) == 2 * len(names) * 2 * 2  # targets x models x dtypes x (auto, xla)
    assert {w.target for w in works} == {"v5e", "l4"} and {w.case for w in works} == set(names)
    assert {w.impl for w in works} == {"auto", "xla"} and {w.batch for w in works} == {sub.batch}
    assert {w.pass_ for w in works} == {"train"} and all(w.configs == ("models",) for w in works)
    assert not [w for w in compile_matrix.work_items(_config(targets="v4,h100")) if programs.is_model(w)]
    assert not [w for w in compile_matrix.work_items(_config(models="")) if programs.is_model(w)]
    with pytest.raises(ValueError, match=r"config\.models \(='tpu'\) includes 'tpu', which is not a networks"):
        compile_matrix.validate(_config(models="tpu"))


def test_order_takes_kernels_first_and_targets_in_turn():
    config = _config(configs="gpu", models="")
    works = compile_matrix._order(compile_matrix.work_items(config), config.first)
    first = works[:3]
    assert {w.impl for w in first} == {"pallas"} and len({w.target for w in first}) == 3
    order = ["pallas", "xla", "lax", "auto"]
    ranks = [order.index(w.impl) for w in works]
    assert ranks == sorted(ranks)


def test_a_small_matrix_runs_resumes_and_reports(tmp_path):
    """One layer's gradient for a v5e, xla and pallas (libtpu, no TPU): every row compiled with
    its figures, the auto row copied from xla's program, a re-run adds nothing, and the report
    is written."""
    require_compiler("tpu")
    work = str(tmp_path / "m")
    cmd = [sys.executable, "-m", "jconv_experiments", "--config=configs/compile.py", f"--workdir={work}",
           "--config.targets=v5e", "--config.configs=colab_tpu", "--config.suite=mnist_conv2",
           "--config.impls=xla,auto,pallas", "--config.dtypes=float32", "--config.passes=fwd+bwd",
           "--config.workers=1", "--config.models="]
    for attempt in range(2):
        out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        with open(os.path.join(work, "results.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        assert len(rows) == 3, (attempt, len(rows))  # xla, auto, pallas
    assert all(r["compiled"] and r["target"] == "v5e" and r["batch"] == 32 for r in rows), rows
    pallas = [r for r in rows if r["impl"] == "pallas"]
    assert all(r["pallas_kernels"] >= 1 and r["xla_convolutions"] == 0 for r in pallas)
    assert all(r.get("same_program_as") == "xla" for r in rows if r["impl"] == "auto")
    assert all(r["compile_s"] > 0 for r in rows if r["impl"] != "auto")
    assert os.path.exists(os.path.join(work, "report.md"))


def test_report_marks_compiled_refused_failed_and_missing():
    from jconv_experiments.report import compile as compile_report

    def row(impl, dtype, p, **kw):
        return dict(target="l4", device_kind="NVIDIA L4", case="mnist_conv2", impl=impl, dtype=dtype,
                    batch=32, **{"pass": p}, **kw)

    rows = [row("xla", "float32", "fwd", compiled=True, compile_s=1.0),
            row("xla", "float32", "fwd+bwd", compiled=True, compile_s=2.0),
            row("pallas", "float32", "fwd", compiled=False, error="KernelFitError: ...", error_kind="jconv"),
            row("pallas", "float32", "fwd+bwd", compiled=False, error="XlaRuntimeError: boom", error_kind="compiler")]
    verdict = "\n".join(compile_report.section_verdict(rows))
    assert "**no** (4 rows)" in verdict and "| l4 | NVIDIA L4 | 2 | 1 | 1 | 4 |" in verdict
    per = "\n".join(compile_report.section_per_target(rows))
    assert "| case | batch | xla | pallas |" in per and "| mnist_conv2 | 32 | ✓✓ | –✗ |" in per
    rows.append(row("xla", "bfloat16", "fwd", compiled=True, compile_s=1.0))
    per = "\n".join(compile_report.section_per_target(rows))
    assert "| mnist_conv2 | 32 | ✓✓✓· | –✗·· |" in per  # bfloat16 fwd+bwd of xla is not in the rows
    failures = "\n".join(compile_report.section_failures(rows))
    assert "XlaRuntimeError: boom" in failures and "KernelFitError" in failures
