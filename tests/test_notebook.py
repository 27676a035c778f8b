"""notebooks/colab_tpu.ipynb under a TPU's one-process rule, emulated on the CPU; and its parts.

``tests/exclusive_device/sitecustomize.py`` makes the first process that initialises a JAX
backend hold an exclusive lock, and fails any other one exactly as libtpu does (``Unable to
initialize backend ...: ABORTED: The TPU is already in use by process with pid N``). The
notebook runs top to bottom under it (device tests, comparison, verdict, archive), and its
archive is then ingested; the old pattern (the kernel holding the device while pytest starts)
fails under the same rule.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile

import nbformat
import pytest
from nbclient import NotebookClient

from jconv_experiments import colab_archive, colab_plan, colab_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMULATION = os.path.join(ROOT, "tests", "exclusive_device")
IN_USE = re.compile(r"Unable to initialize backend 'cpu': ABORTED: The TPU is already in use by process with pid (\d+)")


def _text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append(o.get("text", ""))
        elif o.get("output_type") == "error":
            out.append("\n".join(o.get("traceback", [])))
        elif "data" in o:
            out.append(o["data"].get("text/plain", "") + o["data"].get("text/markdown", ""))
    return "".join(out)


def _exclusive(monkeypatch, tmp_path) -> str:
    lock = str(tmp_path / "device.lock")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JCONV_EMULATE_EXCLUSIVE_DEVICE", lock)
    # make test's background compile-only checks start JAX in other processes: not on a device
    monkeypatch.delenv("JCONV_AOT_EARLY", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([EMULATION, ROOT, os.environ.get("PYTHONPATH", "")]))
    return lock


def _execute(nb, cwd):
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def test_old_pattern_fails_under_the_one_process_rule(monkeypatch, tmp_path):
    """The notebook's former cells 2 and 4: the kernel imports jax and lists the devices, then
    starts pytest in a subprocess. Under the rule the tests never run."""
    _exclusive(monkeypatch, tmp_path)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os, jax\nprint(jax.devices(), os.getpid())"),
        nbformat.v4.new_code_cell(
            "import subprocess, sys\n"
            "proc = subprocess.run([sys.executable, '-m', 'pytest', 'tests/test_geometry.py', '-q', '-p', "
            "'no:cacheprovider'], capture_output=True, text=True)\n"
            "print('tests passed:', proc.returncode == 0)\nprint(proc.stdout[-3000:], proc.stderr[-3000:])"),
    ])
    _execute(nb, ROOT)
    kernel_pid = _text(nb.cells[0]).split()[-1]
    out = _text(nb.cells[1])
    assert "tests passed: False" in out
    m = IN_USE.search(out)
    assert m and m.group(1) == kernel_pid, out[-3000:]
    # the kernel has exited: the device is free again
    again = subprocess.run([sys.executable, "-c", "import jax; print(jax.devices())"], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "CpuDevice" in again.stdout, again.stderr[-2000:]


def test_notebook_runs_top_to_bottom_under_the_one_process_rule(monkeypatch, tmp_path):
    """Every step runs and finishes (device tests, comparison with the smoke config), the kernel
    never imports jax, the verdict is written, the archive holds the run, and ingesting it
    regenerates the device tables."""
    lock = _exclusive(monkeypatch, tmp_path)
    workdir = tmp_path / "nb_run"
    monkeypatch.setenv("JCONV_NOTEBOOK_WORKDIR", str(workdir))
    monkeypatch.setenv("JCONV_NO_INSTALL", "1")  # a missing package fails the test, never pips here
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "colab_tpu.ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint('kernel imported jax:', 'jax' in sys.modules)"))
    _execute(nb, ROOT)
    text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert not IN_USE.search(text), text[-4000:]
    assert "install: nothing to do" in text and "runtime: cpu" in text
    assert "No accelerator: this run is on the CPU" in text and "plan (quick)" in text
    assert re.search(r"tests: passed in .* \(estimated .*\)", text), text[-4000:]
    assert re.search(r"comparison: done in .* \(estimated .*\)", text)
    assert "## Verdict" in text  # the report's markdown was shown
    assert len([o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]) == 3
    assert "kernel imported jax: False" in _text(nb.cells[-1])
    verdict = (workdir / "verdict.txt").read_text()
    assert "ran on CPU, not an accelerator" in verdict and "OVERALL: PASS" in verdict, verdict
    assert "tests: 20 passed, 0 failed" in verdict
    steps = [json.loads(line) for line in (workdir / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == ["env", "tests", "compare", "verdict", "archive"]
    assert all(s["rc"] == 0 for s in steps), steps
    with open(lock) as f:
        assert f.read().strip().isdigit()  # the steps took the device, one at a time
    archive = tmp_path / "jconv_results_cpu_cpu.tar.gz"
    assert f"ARCHIVE {archive}" in text and "(not on Colab: no download" in text
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"jconv_results/manifest.json", "jconv_results/compare/results.jsonl", "jconv_results/tests.log",
            "jconv_results/verdict.txt", "jconv_results/device.json"} <= names
    # the way back: the maintainer's command on that archive
    docs = tmp_path / "docs"
    cmd = [sys.executable, "-m", "jconv_experiments.ingest", str(archive), f"--docs={docs}"]
    refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "not an accelerator" in refused.stderr
    done = subprocess.run(cmd + ["--allow-cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (docs / "README.md").read_text()
    rows = [json.loads(line) for line in (workdir / "compare" / "results.jsonl").read_text().splitlines()]
    assert "| cpu | cpu |" in table and f"| 20/20 | {len(rows)} | yes |" in table and "| PASS |" in table
    assert "#### Speed vs XLA per layer" in table and "| tiny_dense | 2 | fwd | float32 |" in table
    assert "#### Accuracy" in table and "#### Compiled here vs the compile matrix" in table


# --------------------------------------------------------------------------------------------
# the parts
# --------------------------------------------------------------------------------------------


def test_verdict_reports_nan_inf_and_errors_instead_of_crashing(tmp_path):
    base = {"pass": "fwd", "dtype": "float32", "batch": 2, "platform": "cpu", "device_kind": "cpu", "tol": 1e-5,
            "interpreted": False}
    rows = [dict(base, case="a", impl="xla", error=None, scaled_err=1e-7, within_tol=True, time_median_s=1e-3),
            dict(base, case="a", impl="lax", error=None, scaled_err="nan", within_tol=False, scaled_err_vs_xla="nan",
                 agrees_with_xla=False, time_median_s=2e-3),
            dict(base, case="a", impl="pallas", error=None, scaled_err="inf", within_tol=False,
                 scaled_err_vs_xla="inf", agrees_with_xla=False, time_median_s="inf"),
            dict(base, case="a", impl="auto", error="NotImplementedError: no kernel")]
    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tests.json").write_text("{not json")
    text = colab_archive.verdict_text(str(tmp_path))
    assert "disagrees: a lax fwd float32: scaled error vs XLA NaN > tolerance 1.00e-05" in text
    assert "disagrees: a pallas fwd float32: scaled error vs XLA inf" in text
    assert "non-finite: a lax fwd float32: scaled_err NaN, scaled_err_vs_xla NaN" in text
    assert "did not run: a auto fwd float32: NotImplementedError: no kernel" in text
    assert "tests: did not run" in text and "device: unknown" in text
    assert text.rstrip().endswith("OVERALL: FAIL")
    assert colab_archive.num("nan") == "NaN" and colab_archive.num("-inf") == "-inf" and colab_archive.num("x") == "x"


def test_install_plan_keeps_a_matching_jax_and_replaces_a_mismatched_one():
    pin = colab_setup.jax_pin(ROOT)
    ok = {"jax": pin, "jaxlib": pin, "libtpu": "0.0.1"}
    assert colab_setup.install_plan("tpu", ok, pin, jconv_from_checkout=True, extras_missing=[]) == ([], [])
    reqs, why = colab_setup.install_plan("tpu", {"jax": "0.4.33", "jaxlib": "0.4.33", "libtpu": None}, pin,
                                         jconv_from_checkout=True, extras_missing=[])
    assert reqs == ["-e .[experiments,testing,tpu]"]
    assert f"jax: 0.4.33 installed, jconv needs {pin}" in why and "libtpu: missing" in why
    reqs, why = colab_setup.install_plan("gpu", {"jax": pin, "jaxlib": pin, "jax-cuda12-plugin": pin,
                                                 "jax-cuda12-pjrt": pin}, pin, jconv_from_checkout=False,
                                         extras_missing=["hypothesis>=6.100"])
    assert reqs == ["-e .[experiments,testing]"] and "hypothesis>=6.100: not satisfied" in why
    reqs, _ = colab_setup.install_plan("cpu", {"jax": "0.4.1", "jaxlib": pin}, pin, jconv_from_checkout=True,
                                       extras_missing=[])
    assert reqs == ["-e .[experiments,testing]", f"jax=={pin}"]
    with pytest.raises(ValueError, match=r"install_plan: runtime \(='npu'\)"):
        colab_setup.install_plan("npu", {}, pin, jconv_from_checkout=True, extras_missing=[])


def test_restart_needed_names_loaded_packages_pip_changed():
    """Only a changed distribution whose modules the kernel imported needs a restart; a shared
    namespace (``google``) is told apart by the distribution's own modules."""
    mods = {"numpy": {"numpy", "numpy.linalg"}, "protobuf": {"google.protobuf"}, "six": {"six"}}.get
    before = {"numpy": "1.26.4", "protobuf": "4.25", "six": "1.16"}
    after = {"numpy": "2.1.0", "protobuf": "5.0", "six": "1.16"}
    loaded = {"numpy", "google", "google.colab", "six"}
    assert colab_setup.restart_needed(before, after, loaded, mods) == ["numpy 1.26.4 -> 2.1.0"]
    assert colab_setup.restart_needed(before, {}, {"six"}, mods) == ["six 1.16 -> removed"]
    assert colab_setup.restart_needed(before, before, loaded, mods) == []
    assert "pytest" in colab_setup.modules_of("pytest")  # real metadata


def test_repository_url_is_one_value_in_pyproject_readme_and_notebook():
    """pyproject's [project.urls] Repository is the one thing to fill in; the README's Colab link
    is built from it, and the notebook reads it from the package metadata when installed."""
    urls = colab_setup._urls_from_pyproject(os.path.join(ROOT, "pyproject.toml"))
    repo = urls["Repository"]
    assert urls["Issues"] == repo + "/issues"
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    path = repo.removeprefix("https://github.com/")
    assert f"https://colab.research.google.com/github/{path}/blob/main/notebooks/colab_tpu.ipynb" in readme
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "colab_tpu.ipynb"), as_version=4)
    assert 'get_all("Project-URL")' in nb.cells[1].source
    if colab_setup.PLACEHOLDER in repo:  # not filled in yet: treated as no URL, never cloned
        assert colab_setup.repo_url(checkout=ROOT) == os.environ.get("JCONV_REPO_URL", "")


def test_plans_fit_the_budget_and_use_measured_programs():
    """The quick plans fit about 15 minutes on a v5e-1 and an L4 by the committed numbers, every
    program of the quick comparisons has a compile-matrix row, the full variant is the default
    suite, and a T4 skips what it cannot run."""
    for platform, target in (("tpu", "v5e"), ("gpu", "l4")):
        quick = colab_plan.plan(platform, target, "quick")
        assert quick["total_s"] <= 15 * 60, (target, quick["total_s"])
        assert "without a row" not in quick["compare"]["estimate"]["basis"]
        assert quick["tests"]["estimate"]["rows"] > 50
        full = colab_plan.plan(platform, target, "full")
        assert full["total_s"] > quick["total_s"] and full["tests"]["args"] == ["-m", "device", "tests"]
        assert colab_plan.load_config(full["compare"]["config"]).suite == "default"
    for args in colab_plan.TESTS.values():  # every entry names tests that exist (pytest errors otherwise)
        for entry in (a for a in args if a.startswith("tests")):
            assert any(colab_plan._selected(r["test"], [entry]) for r in colab_plan.test_compiles()), entry
    t4 = colab_plan.plan("gpu", "t4", "quick", (7, 5))
    assert t4["not_applicable"]["dtypes"] == ["bfloat16"] and t4["tests"]["args"][-2:] == ["-k", "not pallas and not bfloat16"]
    config = colab_plan.load_config("colab_gpu_quick", t4["not_applicable"])
    assert config.dtypes == ("float32",) and "pallas" not in config.impls
    assert colab_plan.not_applicable("gpu", (8, 9)) == {} and colab_plan.not_applicable("tpu", None) == {}


@pytest.mark.parametrize("name", ["colab_tpu_quick", "colab_gpu_quick", "colab_tpu", "colab_gpu"])
def test_colab_configs_validate_and_state_their_estimate(name):
    """Each states how to launch it and its estimated time; the quick ones run a subset of the
    full ones' programs (so the compile matrix, which compiles the full ones, covers them)."""
    import importlib

    from jconv_experiments import compare

    mod = importlib.import_module(f"configs.{name}")
    config = mod.get_config()
    compare.validate(config)
    assert f"--config=configs/{name}.py" in mod.__doc__ and "Estimated time" in mod.__doc__
    if name.endswith("_quick"):
        full = colab_plan.load_config(name.removesuffix("_quick"))
        keys = {(c.name, b, d, p) for c, b, d, p, _ in colab_plan.groups(config, full.platform)}
        assert keys <= {(c.name, b, d, p) for c, b, d, p, _ in colab_plan.groups(full, full.platform)}
