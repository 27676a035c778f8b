"""The way back: check a Colab results archive and add it to the docs.

    python -m jconv_experiments.ingest jconv_results_tpu_tpu_v5_lite.tar.gz [more.tar.gz ...]
    python -m jconv_experiments.ingest --regenerate          # rebuild the tables only

An archive (written by the notebook's last cell, :mod:`jconv_experiments.colab_archive`) is
checked before anything is written: its format and version, every file against the manifest's
size and SHA-256, the rows against the manifest's count and the device (each row's platform and
device kind are the device's), jax at the version this checkout pins (a mismatch is noted in the
tables, not refused). A CPU run is refused unless ``--allow-cpu`` (it is the notebook's own
test, not a device). The run goes to ``docs/perf/devices/<device>/<run>/`` (results, env,
device, tests, steps, verdict and the compile matrix's prediction; no plots or logs: the tables
are rebuilt from the rows), and ``docs/perf/devices/README.md`` is regenerated from every run
there (:mod:`jconv_experiments.report.device`). Ingesting the same archive twice changes
nothing; a different run under the same name is an error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tarfile

from jconv_experiments.colab_archive import ARCNAME, FORMAT, FORMAT_VERSION, slug

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "perf", "devices")
COMMAND = "python -m jconv_experiments.ingest --regenerate"
#: archive member -> file name in the run's directory
KEPT = {"manifest.json": "manifest.json", "device.json": "device.json", "tests.json": "tests.json",
        "steps.jsonl": "steps.jsonl", "verdict.txt": "verdict.txt", "compare/results.jsonl": "results.jsonl",
        "compare/env.json": "env.json", "compile_matrix_predicted.jsonl": "compile_matrix_predicted.jsonl"}
REQUIRED = ("manifest.json", "device.json", "compare/results.jsonl")
MAX_MEMBER_BYTES = 50_000_000


class ArchiveError(ValueError):
    pass


def _err(path: str, what: str) -> ArchiveError:
    return ArchiveError(f"ingest: {os.path.basename(path)}: {what}")


def read_archive(path: str) -> dict[str, bytes]:
    """The archive's files by name (without the top folder); refuses links, absolute or ``..``
    paths and oversized members."""
    files = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar.getmembers():
                if m.isdir():
                    continue
                name = m.name
                if not m.isfile() or name.startswith("/") or ".." in name.split("/"):
                    raise _err(path, f"member {name!r} is not a plain file inside the archive")
                if not name.startswith(ARCNAME + "/"):
                    raise _err(path, f"member {name!r} is outside {ARCNAME}/")
                if m.size > MAX_MEMBER_BYTES:
                    raise _err(path, f"member {name!r} is {m.size} bytes (limit {MAX_MEMBER_BYTES})")
                files[name[len(ARCNAME) + 1:]] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise _err(path, f"not a readable .tar.gz ({e})") from None
    return files


def _jax_pin() -> str | None:
    try:
        with open(os.path.join(ROOT, "pyproject.toml")) as f:
            m = re.search(r'"jax\[tpu\]==([0-9][^"]*)"', f.read())
        return m.group(1) if m else None
    except OSError:
        return None


def check(path: str, files: dict[str, bytes], *, allow_cpu: bool = False) -> dict:
    """Validate an archive's contents; return {manifest, device, rows, warnings}."""
    for name in REQUIRED:
        if name not in files:
            raise _err(path, f"has no {name} (not a complete jconv results archive)")
    try:
        manifest = json.loads(files["manifest.json"])
        device = json.loads(files["device.json"])
        rows = [json.loads(line) for line in files["compare/results.jsonl"].decode().splitlines() if line.strip()]
    except ValueError as e:
        raise _err(path, f"a file does not parse: {e}") from None
    if manifest.get("format") != FORMAT:
        raise _err(path, f"manifest format (={manifest.get('format')!r}) is not {FORMAT!r}")
    if not isinstance(manifest.get("format_version"), int) or manifest["format_version"] > FORMAT_VERSION:
        raise _err(path, f"format_version (={manifest.get('format_version')!r}) is newer than this checkout's "
                   f"{FORMAT_VERSION}: update jconv first")
    for name, meta in manifest.get("files", {}).items():
        data = files.get(name)
        if data is None:
            raise _err(path, f"the manifest lists {name}, which is missing")
        if len(data) != meta.get("bytes") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise _err(path, f"{name} does not match the manifest's size and SHA-256 (damaged or edited)")
    if manifest.get("rows") != len(rows):
        raise _err(path, f"results.jsonl has {len(rows)} rows, the manifest says {manifest.get('rows')}")
    if not rows:
        raise _err(path, "the comparison has no rows: nothing to add")
    platform, kind = device.get("platform"), device.get("device_kind")
    if manifest.get("device", {}).get("device_kind") != kind:
        raise _err(path, f"manifest device (={manifest.get('device', {}).get('device_kind')!r}) is not "
                   f"device.json's (={kind!r})")
    wrong = [r for r in rows if r.get("platform") != platform or r.get("device_kind") != kind]
    if wrong:
        r = wrong[0]
        raise _err(path, f"{len(wrong)} row(s) are from another device, e.g. {r.get('case')} {r.get('impl')}: "
                   f"{r.get('platform')}/{r.get('device_kind')} (device.json: {platform}/{kind})")
    if platform not in ("tpu", "gpu") and not allow_cpu:
        raise _err(path, f"ran on {platform!r}, not an accelerator (the notebook's CPU run); --allow-cpu to add it anyway")
    warnings = []
    pin = _jax_pin()
    if pin and device.get("jax") != pin:
        warnings.append(f"ran with jax {device.get('jax')}; this checkout pins {pin}")
    return {"manifest": manifest, "device": device, "rows": rows, "warnings": warnings}


def run_name(device: dict) -> str:
    return f"{slug(device.get('time_utc') or 'unknown_time')}_{str(device.get('commit') or 'nocommit')[:7]}"


def _same(path: str, data: bytes) -> bool:
    if not os.path.exists(path):
        return False
    with open(path, "rb") as f:
        return f.read() == data


def ingest(path: str, docs: str = DOCS, *, allow_cpu: bool = False) -> tuple[str, bool]:
    """Check ``path`` and add its run under ``docs``; return (run directory, added)."""
    files = read_archive(path)
    info = check(path, files, allow_cpu=allow_cpu)
    dest = os.path.join(docs, slug(info["device"].get("device_kind")), run_name(info["device"]))
    kept = {KEPT[n]: d for n, d in files.items() if n in KEPT}
    if info["warnings"]:
        kept["warnings.json"] = json.dumps(info["warnings"], indent=2).encode()
    if os.path.isdir(dest):
        if all(_same(os.path.join(dest, n), d) for n, d in kept.items() if n != "manifest.json"):
            return dest, False
        raise _err(path, f"{dest} already holds a different run of the same name")
    os.makedirs(dest + ".tmp", exist_ok=True)
    for name, data in kept.items():
        with open(os.path.join(dest + ".tmp", name), "wb") as f:
            f.write(data)
    os.replace(dest + ".tmp", dest)
    return dest, True


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f) if path.endswith(".json") else [json.loads(x) for x in f if x.strip()]
    except OSError:
        return None


def load_runs(docs: str = DOCS) -> list[dict]:
    """Every ingested run under ``docs``, grouped by device, newest first within each."""
    runs = []
    for dev_dir in sorted(d for d in os.listdir(docs) if os.path.isdir(os.path.join(docs, d))) if os.path.isdir(docs) else []:
        names = sorted((n for n in os.listdir(os.path.join(docs, dev_dir))
                        if os.path.exists(os.path.join(docs, dev_dir, n, "device.json"))), reverse=True)
        for name in names:
            d = os.path.join(docs, dev_dir, name)
            verdict = "?"
            if os.path.exists(os.path.join(d, "verdict.txt")):
                with open(os.path.join(d, "verdict.txt")) as f:
                    m = re.search(r"OVERALL: (\w+)", f.read())
                verdict = m.group(1) if m else "?"
            runs.append({"name": f"{dev_dir}/{name}", "device": _load(os.path.join(d, "device.json")),
                         "rows": _load(os.path.join(d, "results.jsonl")) or [],
                         "tests": _load(os.path.join(d, "tests.json")), "steps": _load(os.path.join(d, "steps.jsonl")) or [],
                         "predicted": _load(os.path.join(d, "compile_matrix_predicted.jsonl")) or [],
                         "warnings": _load(os.path.join(d, "warnings.json")) or [], "verdict": verdict})
    return runs


def regenerate(docs: str = DOCS) -> str:
    """Rebuild ``<docs>/README.md`` from every run there; return its path."""
    from jconv.files import atomic_write
    from jconv_experiments.report import device

    os.makedirs(docs, exist_ok=True)
    return atomic_write(os.path.join(docs, "README.md"), device.markdown(load_runs(docs), COMMAND))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jconv_experiments.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("archives", nargs="*", help="jconv_results_*.tar.gz from the Colab notebook")
    parser.add_argument("--docs", default=DOCS, help="where device runs live (default: docs/perf/devices)")
    parser.add_argument("--regenerate", action="store_true", help="only rebuild the tables")
    parser.add_argument("--allow-cpu", action="store_true", help="accept a run on the CPU (the notebook's own test)")
    args = parser.parse_args(argv)
    if not args.archives and not args.regenerate:
        parser.error("give one or more archives, or --regenerate")
    for path in args.archives:
        try:
            dest, added = ingest(path, args.docs, allow_cpu=args.allow_cpu)
        except ArchiveError as e:
            print(e, file=sys.stderr)
            return 2
        print(f"ingest: {path} -> {dest}" + ("" if added else " (already there: unchanged)"))
    print(f"ingest: tables: {regenerate(args.docs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["ingest", "check", "read_archive", "regenerate", "load_runs", "ArchiveError"]
