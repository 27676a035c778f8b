"""The Colab run's verdict and archive: read the step's files, never touch the device.

:func:`verdict` prints and writes ``verdict.txt`` from ``device.json``, ``tests.json`` and the
comparison's ``results.jsonl``; every value goes through :func:`num` (the result store writes
non-finite floats as the strings ``"nan"``/``"inf"``), so a NaN is *reported*, never a crash.
:func:`archive` packs the workdir into one ``jconv_results_<platform>_<device>.tar.gz`` with a
``manifest.json`` (format version, device, versions, row counts, file sizes and hashes) and the
compile matrix's rows for the same programs on this device's target (what was predicted), kept
under :data:`MAX_BYTES` so it attaches to an issue. ``python -m jconv_experiments.ingest`` reads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
import time

FORMAT = "jconv-colab-results"
FORMAT_VERSION = 1
MAX_BYTES = 10_000_000      # GitHub takes 25 MB per attached file; keep well under it
ARCNAME = "jconv_results"


def num(v, spec: str = ".2e") -> str:
    """``v`` formatted as a number when it is one (NaN and infinities spelled out), else as text."""
    if v is None:
        return "-"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return format(f, spec)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _rows(workdir: str) -> list[dict]:
    from jconv_experiments.bench.store import load_rows

    path = os.path.join(workdir, "compare", "results.jsonl")
    return load_rows(path) if os.path.exists(path) else []


def _fmt_s(s) -> str:
    from jconv_experiments.colab_plan import fmt_s

    try:
        return fmt_s(float(s))
    except (TypeError, ValueError):
        return "?"


# --------------------------------------------------------------------------------------------
# verdict
# --------------------------------------------------------------------------------------------


def _device_lines(dev: dict | None) -> list[str]:
    if dev is None:
        return ["  device: unknown (the env step did not finish: see its output)"]
    line = (f"  device: {dev.get('device_kind')} ({dev.get('platform')}, jconv target "
            f"{dev.get('target') or 'none'}), {dev.get('device_count')} device(s); jax {dev.get('jax')}, "
            f"jconv {dev.get('jconv')} (commit {dev.get('commit')})")
    if dev.get("platform") not in ("tpu", "gpu"):
        line += "\n  -- ran on CPU, not an accelerator"
    return [line]


def _tests_lines(tests: dict | None, dev: dict | None) -> tuple[list[str], str]:
    if tests is None:
        return ["  tests: did not run (no tests.json: see the tests step's output)"], "incomplete"
    est = ((dev or {}).get("plan") or {}).get("tests", {}).get("estimate", {}).get("seconds")
    out = [f"  tests: {tests.get('passed', '?')} passed, {tests.get('failures', '?')} failed, "
           f"{tests.get('errors', '?')} errors, {tests.get('skipped', '?')} skipped in {_fmt_s(tests.get('seconds'))} "
           f"(estimated {_fmt_s(est)}): {'yes' if tests.get('passed_all') else 'no'}"]
    if tests.get("junit_error"):
        out.append(f"    pytest wrote no report ({tests['junit_error']}): tests.log says why")
    for f in tests.get("failed_tests", [])[:15]:
        out.append(f"    failed: {f.get('test')}: {str(f.get('message'))[:160]}")
    return out, ("pass" if tests.get("passed_all") else "fail")


def _nonfinite(row: dict) -> list[str]:
    bad = []
    for k in ("scaled_err", "scaled_err_vs_xla"):
        v = row.get(k)
        if v is not None and num(v) in ("NaN", "inf", "-inf"):
            bad.append(f"{k} {num(v)}")
    return bad


def _compare_lines(rows: list[dict], dev: dict | None) -> tuple[list[str], str]:
    from jconv_experiments.report.compare import summary

    plan = (dev or {}).get("plan") or {}
    c = plan.get("compare", {})
    if not rows:
        return ["  comparison: no rows (see the comparison step's output)"], "incomplete"
    s = summary(rows)
    out = [f"  comparison: {len(rows)} rows (configs/{c.get('config')}.py; planned about "
           f"{c.get('estimate', {}).get('rows', '?')})",
           f"  all impls agree with XLA within tolerance: {'yes' if s['all_agree_with_xla'] else 'no'}"]
    for r in s["failed"]:
        out.append(f"    did not run: {r['case']} {r['impl']} {r['pass']} {r['dtype']}: {str(r.get('error'))[:140]}")
    for r in s["disagree"]:
        out.append(f"    disagrees: {r['case']} {r['impl']} {r['pass']} {r['dtype']}: scaled error vs XLA "
                   f"{num(r.get('scaled_err_vs_xla'))} > tolerance {num(r.get('tol'))}")
    for r in s["out_of_tolerance"]:
        out.append(f"    outside tolerance vs the reference: {r['case']} {r['impl']} {r['pass']} {r['dtype']}: "
                   f"{num(r.get('scaled_err'))} > {num(r.get('tol'))}")
    nonfinite = [(r, b) for r in rows if r.get("error") is None for b in [_nonfinite(r)] if b]
    for r, b in nonfinite:
        out.append(f"    non-finite: {r['case']} {r['impl']} {r['pass']} {r['dtype']}: {', '.join(b)}")
    geo = {k: g for k, g in s["geomean_speedup"].items() if g is not None}
    if geo:
        out.append("  geometric-mean speedup over XLA (timed, compiled rows only):")
        for (impl, pass_, dtype), g in sorted(geo.items()):
            out.append(f"    {impl:8s} {pass_:8s} {dtype:9s} {num(g, '.2f')}x")
    interp = sorted({r["impl"] for r in rows if r.get("interpreted") and not r.get("error")})
    if interp:
        out.append(f"  interpreted (accuracy only, no speed): {', '.join(interp)}")
    ok = s["all_agree_with_xla"] and not s["out_of_tolerance"] and not nonfinite
    return out, ("pass" if ok else "fail")


def verdict_text(workdir: str) -> str:
    """The verdict; each part that cannot be evaluated says so (and the whole is incomplete)."""
    dev = _read_json(os.path.join(workdir, "device.json"))
    lines = ["VERDICT"]
    states = []
    parts = [lambda: (_device_lines(dev), None),
             lambda: _tests_lines(_read_json(os.path.join(workdir, "tests.json")), dev),
             lambda: _compare_lines(_rows(workdir), dev)]
    for part in parts:
        try:
            text, state = part()
        except Exception as e:  # noqa: BLE001 - the verdict reports, it never stops Run all
            text, state = [f"  (could not evaluate this part: {type(e).__name__}: {e})"], "incomplete"
        lines += text
        if state:
            states.append(state)
    na = ((dev or {}).get("plan") or {}).get("not_applicable") or {}
    if na:
        lines.append(f"  not applicable here (skipped, not failures): {', '.join(na.get('dtypes', []) + na.get('impls', []))}: "
                     f"{na.get('reason')}")
    overall = "FAIL" if "fail" in states else ("INCOMPLETE" if "incomplete" in states else "PASS")
    lines.append(f"  OVERALL: {overall}")
    return "\n".join(lines) + "\n"


def verdict(workdir: str) -> int:
    text = verdict_text(workdir)
    print(text, end="")
    with open(os.path.join(workdir, "verdict.txt"), "w") as f:
        f.write(text)
    return 0


# --------------------------------------------------------------------------------------------
# archive
# --------------------------------------------------------------------------------------------


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_").lower() or "unknown"


def predicted_rows(repo: str, target: str | None, rows: list[dict]) -> list[dict]:
    """The committed compile matrix's rows for the programs this run measured, on its target."""
    path = os.path.join(repo, "docs", "perf", "compile_matrix.jsonl")
    if not target or not os.path.exists(path):
        return []
    keys = {(r["case"], r["impl"], r["dtype"], r["pass"], r["batch"]) for r in rows}
    out = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r["target"] == target and (r["case"], r["impl"], r["dtype"], r["pass"], r["batch"]) in keys:
                out.append(r)
    return out


def _members(workdir: str) -> list[tuple[str, str]]:
    """(path on disk, name in the archive) of everything the run wrote, largest-optional last."""
    names = ["device.json", "steps.jsonl", "tests.json", "tests.log", "install.log", "verdict.txt",
             "compare/results.jsonl", "compare/env.json", "compare/report.md", "compare/speedup.png",
             "compare/errors.png", "compare/roofline.png", "tests.xml"]
    return [(os.path.join(workdir, n), n) for n in names if os.path.isfile(os.path.join(workdir, n))]


#: dropped in this order when the archive would be larger than MAX_BYTES
_OPTIONAL = ("tests.xml", "compare/roofline.png", "compare/errors.png", "compare/speedup.png", "install.log")
_TAIL_BYTES = 1_000_000  # tests.log: its last MB at most


def _blob(path: str, name: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if name.endswith(".log") and len(data) > _TAIL_BYTES:
        data = b"[... earlier output cut to fit the archive ...]\n" + data[-_TAIL_BYTES:]
    return data


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{ARCNAME}/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build(workdir: str, repo: str) -> tuple[str, dict]:
    """Write the archive beside ``workdir``; return its path and its manifest."""
    dev = _read_json(os.path.join(workdir, "device.json")) or {}
    files = {name: _blob(path, name) for path, name in _members(workdir)}
    rows = []
    try:
        rows = _rows(workdir)
    except Exception as e:  # noqa: BLE001 - a damaged file is archived as it is
        files["archive_errors.txt"] = f"results.jsonl could not be read: {e}\n".encode()
    predicted = predicted_rows(repo, dev.get("target"), rows)
    files["compile_matrix_predicted.jsonl"] = "".join(json.dumps(r) + "\n" for r in predicted).encode()
    tests = _read_json(os.path.join(workdir, "tests.json")) or {}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "device": {k: dev.get(k) for k in ("platform", "device_kind", "device_count", "target", "compute_capability")},
        "versions": {k: dev.get(k) for k in ("jconv", "jax", "jaxlib", "python", "commit")},
        "variant": (dev.get("plan") or {}).get("variant"),
        "config": ((dev.get("plan") or {}).get("compare") or {}).get("config"),
        "rows": len(rows), "predicted_rows": len(predicted),
        "tests": {k: tests.get(k) for k in ("tests", "passed", "failures", "errors", "skipped", "passed_all")},
        "run_time_utc": dev.get("time_utc"), "archived_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "left_out": [],
    }
    while True:
        manifest["files"] = {n: {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()}
        data = _tar({**files, "manifest.json": json.dumps(manifest, indent=2).encode()})
        drop = next((n for n in _OPTIONAL if n in files), None)
        if len(data) <= MAX_BYTES or drop is None:
            break
        del files[drop]
        manifest["left_out"].append(f"{drop} (archive over {MAX_BYTES / 1e6:.0f} MB)")
    name = f"jconv_results_{slug(dev.get('platform', 'unknown'))}_{slug(dev.get('device_kind', 'unknown'))}.tar.gz"
    path = os.path.join(os.path.dirname(os.path.abspath(workdir)), name)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)
    return path, manifest


def archive(workdir: str, repo: str) -> int:
    path, m = build(workdir, repo)
    with open(os.path.join(workdir, "archive_path.txt"), "w") as f:
        f.write(path + "\n")
    size = os.path.getsize(path)
    print(f"ARCHIVE {path} ({size / 1e6:.2f} MB: {m['rows']} comparison rows, {m['predicted_rows']} compile-matrix "
          f"rows predicted for target {m['device'].get('target')}, tests.log, verdict)")
    if m["left_out"]:
        print("  left out to fit: " + "; ".join(m["left_out"]))
    from jconv_experiments.colab_setup import repo_url

    url = repo_url(checkout=repo)
    where = f"{url.removesuffix('.git')}/issues/new" if url else "the repository you got jconv from"
    print(f"Attach it to a new issue titled 'results: {m['device'].get('device_kind')}' at {where} "
          "(a maintainer runs: python -m jconv_experiments.ingest <archive>).")
    return 0


__all__ = ["num", "verdict", "verdict_text", "archive", "build", "predicted_rows", "slug", "FORMAT", "FORMAT_VERSION",
           "MAX_BYTES"]
