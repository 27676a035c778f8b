"""The way back: a results archive (jconv_experiments.colab_archive) checked and added to the
docs by ``python -m jconv_experiments.ingest``. The notebook's own archive is ingested in
tests/test_notebook.py; here a synthetic GPU run exercises every check and table."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from jconv_experiments import colab_archive, ingest
from jconv_experiments.report import device as device_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIND = "NVIDIA L4"


def _row(case, impl, *, error=None, err=1e-4, vs_xla=1e-4, t=1e-3, dtype="float32", pass_="fwd"):
    r = {"case": case, "impl": impl, "pass": pass_, "dtype": dtype, "batch": 32, "platform": "gpu",
         "device_kind": KIND, "tol": 1e-2, "reference": "float32-highest", "interpreted": False, "error": error}
    if error is None:
        r.update(scaled_err=err, within_tol=colab_archive.num(err) not in ("NaN", "inf") and float(err) <= 1e-2,
                 scaled_err_vs_xla=vs_xla, agrees_with_xla=colab_archive.num(vs_xla) not in ("NaN", "inf")
                 and float(vs_xla) <= 1e-2, time_median_s=t)
    return r


ROWS = [_row("mnist_conv2", "xla", t=2e-3), _row("mnist_conv2", "lax", t=1e-3),
        _row("mnist_conv2", "pallas", error="NotImplementedError: Triton needs 8.0"),
        _row("mnist_conv2", "auto", err="nan", vs_xla="nan"), _row("mnist_conv2", "gemm_peak", t=5e-4)]
MATRIX = [{"target": "l4", "case": "mnist_conv2", "impl": i, "dtype": "float32", "pass": "fwd", "batch": 32,
           "compiled": i != "lax", "error_kind": None if i != "lax" else "jconv",
           "error": None if i != "lax" else "KernelFitError: too big"} for i in ("xla", "lax", "pallas")]


def _workdir(tmp_path, rows=ROWS, time_utc="2026-12-06T10:00:00Z"):
    """A run's workdir as the steps write it, and a checkout with a compile matrix."""
    wd = tmp_path / "run" / "wd"
    (wd / "compare").mkdir(parents=True)
    pin = ingest._jax_pin()
    dev = {"platform": "gpu", "device_kind": KIND, "device_count": 1, "target": "l4", "compute_capability": [8, 9],
           "jconv": "0.1.0", "jax": pin, "jaxlib": pin, "python": "3.12.0", "commit": "abcdef0123456", "time_utc": time_utc,
           "plan": {"variant": "quick", "not_applicable": {}, "tests": {"estimate": {"seconds": 240.0}},
                    "compare": {"config": "colab_gpu_quick", "estimate": {"seconds": 400.0, "rows": 5}}}}
    (wd / "device.json").write_text(json.dumps(dev))
    (wd / "compare" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (wd / "tests.json").write_text(json.dumps({"tests": 10, "passed": 9, "failures": 1, "errors": 0, "skipped": 0,
                                               "seconds": 200.0, "passed_all": False}))
    (wd / "steps.jsonl").write_text(json.dumps({"step": "compare", "wall_s": 380.0, "estimate_s": 400.0, "rc": 0}) + "\n")
    (wd / "tests.log").write_text("F........." + "x" * 2_000_000)
    colab_archive.verdict(str(wd))
    repo = tmp_path / "repo"
    (repo / "docs" / "perf").mkdir(parents=True, exist_ok=True)
    (repo / "docs" / "perf" / "compile_matrix.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MATRIX))
    return wd, repo


def _rewrite(path, out, edit):
    """A copy of the archive with ``edit(files)`` applied to its {name: bytes}."""
    files = ingest.read_archive(str(path))
    edit(files)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name if name.startswith("/") or ".." in name else f"jconv_results/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.write_bytes(buf.getvalue())
    return str(out)


def test_archive_manifest_prediction_and_size(tmp_path):
    wd, repo = _workdir(tmp_path)
    path, m = colab_archive.build(str(wd), str(repo))
    assert os.path.basename(path) == "jconv_results_gpu_nvidia_l4.tar.gz"
    assert m["format"] == colab_archive.FORMAT and m["rows"] == len(ROWS) and m["device"]["target"] == "l4"
    assert m["predicted_rows"] == 3  # xla, lax, pallas have matrix rows; auto and gemm_peak do not
    files = ingest.read_archive(path)
    assert b"earlier output cut" in files["tests.log"] and len(files["tests.log"]) < 1_100_000
    assert "OVERALL: FAIL" in files["verdict.txt"].decode()


def test_archive_drops_optional_files_to_fit(tmp_path, monkeypatch):
    wd, repo = _workdir(tmp_path)
    (wd / "tests.xml").write_bytes(os.urandom(300_000))
    monkeypatch.setattr(colab_archive, "MAX_BYTES", 250_000)
    path, m = colab_archive.build(str(wd), str(repo))
    assert m["left_out"] == ["tests.xml (archive over 0 MB)"] and os.path.getsize(path) <= 250_000
    assert "tests.xml" not in ingest.read_archive(path)


def test_ingest_adds_the_run_and_regenerates_the_tables(tmp_path):
    wd, repo = _workdir(tmp_path)
    path, _ = colab_archive.build(str(wd), str(repo))
    docs = tmp_path / "docs"
    out = subprocess.run([sys.executable, "-m", "jconv_experiments.ingest", path, f"--docs={docs}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run = docs / "nvidia_l4" / "2026_12_06t10_00_00z_abcdef0"
    assert sorted(os.listdir(run)) == sorted(["manifest.json", "device.json", "tests.json", "steps.jsonl", "verdict.txt",
                                              "results.jsonl", "compile_matrix_predicted.jsonl"])
    md = (docs / "README.md").read_text()
    assert "| NVIDIA L4 | l4 | 2026-12-06 | 9/10 | 5 | no |" in md and "| FAIL |" in md
    # speed vs XLA: lax 2x, pallas failed, auto timed
    assert "| mnist_conv2 | 32 | fwd | float32 | 2 | 2.00x | 2.00x | failed |" in md
    # accuracy: NaN shown, over the tolerance
    assert "NaN **over**" in md
    # compiled vs the matrix: xla and auto ran (auto has no row), lax ran though the matrix
    # refused it, pallas failed though the matrix compiled it
    assert "| ran | 1 | 1 | 0 | 1 |" in md and "| failed | 1 | 0 | 0 | 0 |" in md
    assert "- mnist_conv2 lax fwd float32: matrix refused (clear error) (KernelFitError: too big); ran here" in md
    assert "- mnist_conv2 pallas fwd float32: matrix compiled; here: NotImplementedError: Triton needs 8.0" in md
    assert "(6.3 min; estimated 6.7 min)" in md
    again = subprocess.run([sys.executable, "-m", "jconv_experiments.ingest", path, f"--docs={docs}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already there: unchanged" in again.stdout


def test_ingest_refuses_damaged_or_foreign_archives(tmp_path):
    wd, repo = _workdir(tmp_path)
    path, _ = colab_archive.build(str(wd), str(repo))
    docs = str(tmp_path / "docs")

    def refused(name, edit, match):
        bad = _rewrite(path, tmp_path / name, edit)
        with pytest.raises(ingest.ArchiveError, match=match):
            ingest.ingest(bad, docs)

    def tamper(files):
        files["compare/results.jsonl"] = files["compare/results.jsonl"].replace(b'"xla"', b'"lax"', 1)

    refused("tampered.tar.gz", tamper, "does not match the manifest's size and SHA-256")

    def newer(files):
        m = json.loads(files["manifest.json"])
        m["format_version"] = colab_archive.FORMAT_VERSION + 1
        files["manifest.json"] = json.dumps(m).encode()

    refused("newer.tar.gz", newer, "is newer than this checkout's")

    def foreign(files):
        rows = files["compare/results.jsonl"].replace(KIND.encode(), b"TPU v5 lite")
        m = json.loads(files["manifest.json"])
        m["files"]["compare/results.jsonl"] = {"bytes": len(rows), "sha256": __import__("hashlib").sha256(rows).hexdigest()}
        files["compare/results.jsonl"], files["manifest.json"] = rows, json.dumps(m).encode()

    refused("foreign.tar.gz", foreign, r"5 row\(s\) are from another device")
    refused("escape.tar.gz", lambda f: f.update({"../evil": b"x"}), "is not a plain file inside the archive")
    refused("missing.tar.gz", lambda f: f.pop("compare/results.jsonl"), "has no compare/results.jsonl")
    assert not os.path.exists(docs) or not os.listdir(docs)
    # the same run name with other rows: refused, the first kept
    ingest.ingest(path, docs)
    wd2, repo2 = _workdir(tmp_path / "second", rows=ROWS[:2])
    path2, _ = colab_archive.build(str(wd2), str(repo2))
    with pytest.raises(ingest.ArchiveError, match="already holds a different run of the same name"):
        ingest.ingest(path2, docs)


def test_compiled_vs_predicted_counts():
    cv = device_report.compiled_vs_predicted(ROWS, MATRIX)
    assert cv["counts"] == {("ok", "ran"): 1, ("jconv", "ran"): 1, ("ok", "failed"): 1, ("no row", "ran"): 1}
    assert [(r["impl"], e) for r, _, e in cv["mismatches"]] == [("lax", "jconv"), ("pallas", "ok")]


def test_regenerate_with_no_runs(tmp_path):
    path = ingest.regenerate(str(tmp_path / "none"))
    with open(path) as f:
        assert "No device runs ingested yet." in f.read()
