"""The Colab run's steps, each its own process: ``python -m jconv_experiments.colab <step>``.

    python -m jconv_experiments.colab env      --workdir=DIR [--full]   device, versions, plan -> device.json
    python -m jconv_experiments.colab tests    --workdir=DIR            device tests -> tests.log, tests.json
    python -m jconv_experiments.colab compare  --workdir=DIR            comparison -> compare/
    python -m jconv_experiments.colab verdict  --workdir=DIR            -> verdict.txt (never fails on a value)
    python -m jconv_experiments.colab archive  --workdir=DIR            -> one .tar.gz (archive_path.txt)
    python -m jconv_experiments.colab all      --workdir=DIR [--full]   the five in order, one process each
    python -m jconv_experiments.colab plan                              every runtime's plan and estimates

Why one process per step: on a TPU VM only one process may hold the chips (libtpu locks them;
a second process fails with ``ABORTED: The TPU is already in use by process with pid N``), and
on a GPU every JAX process preallocates 75% of the memory. So each step that touches the device
runs alone and exits before the next starts, and the notebook's kernel never imports jax
(:mod:`jconv_experiments.colab_setup`). ``tests`` runs pytest as a child of a step process that
itself never initialises JAX. On a GPU every step runs with ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
(the comparison's PyTorch peer shares the GPU with JAX in one process).

The device path is the CPU path: the platform decides the config and test selection
(:mod:`jconv_experiments.colab_plan`), nothing else differs. Every step appends its wall time
and estimate to ``steps.jsonl``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

from jconv_experiments import colab_setup

STEPS = ("env", "tests", "compare", "verdict", "archive")
JAX_PLATFORMS = {"tpu": "tpu,cpu", "gpu": "cuda,cpu", "cpu": "cpu"}


def _platform_env(runtime: str) -> None:
    """Environment for this step's JAX (set before jax is imported; children inherit it)."""
    os.environ.setdefault("JAX_PLATFORMS", JAX_PLATFORMS[runtime])
    if runtime == "gpu":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, obj) -> None:
    """Atomically (temp file + rename); without importing jconv, whose import loads jax."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def _record(workdir: str, step: str, t0: float, rc: int, estimate_s: float | None) -> None:
    line = {"step": step, "wall_s": round(time.time() - t0, 1), "estimate_s": estimate_s, "rc": rc,
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(os.path.join(workdir, "steps.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")


def _device(workdir: str) -> dict:
    dev = _read_json(os.path.join(workdir, "device.json"))
    if dev is None:
        raise SystemExit(f"colab: {workdir}/device.json is missing: run the env step first "
                         "(python -m jconv_experiments.colab env --workdir=...)")
    return dev


# --------------------------------------------------------------------------------------------
# env: the device, the versions, the plan
# --------------------------------------------------------------------------------------------


def device_facts() -> dict:
    """This process's JAX device, versions and jconv's target for it (initialises the backend)."""
    import jax
    import jaxlib

    import jconv
    from jconv import targets
    from jconv_experiments.bench.env import git_commit

    dev = jax.devices()[0]
    platform = jax.default_backend()
    cc = getattr(dev, "compute_capability", None)
    if platform in ("gpu", "tpu"):
        target = targets.for_device_kind(platform, dev.device_kind, cc)
    else:
        target = targets.CPU
    cc = target.compute_capability if platform == "gpu" else None
    try:
        colab = importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:
        colab = False
    return {"platform": platform, "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "compute_capability": list(cc) if cc else None,
            "target": target.name if target.known else None, "target_described": target.describe(),
            "triton_ok": target.triton_ok if platform == "gpu" else None,
            "jconv": jconv.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "python": sys.version.split()[0], "commit": git_commit(), "colab": colab,
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _print_plan(dev: dict, plan: dict) -> None:
    from jconv_experiments.colab_plan import fmt_s

    t, c = plan["tests"], plan["compare"]
    print(f"plan ({plan['variant']}), estimated from committed measurements (jconv_experiments/colab_plan.py):")
    print(f"  tests:      pytest {' '.join(t['args'])}: {t['estimate']['rows']} tests, ~{fmt_s(t['estimate']['seconds'])}"
          f" ({t['estimate']['basis']})")
    print(f"  comparison: configs/{c['config']}.py: {c['estimate']['rows']} rows, ~{fmt_s(c['estimate']['seconds'])}"
          f" ({c['estimate']['basis']})")
    print(f"  together:   ~{fmt_s(plan['total_s'])}, plus about a minute for env, verdict and archive")
    if plan["not_applicable"]:
        na = plan["not_applicable"]
        print(f"  not applicable here (skipped, not failures): {', '.join(na['dtypes'] + na['impls'])}: {na['reason']}")


def step_env(workdir: str, variant: str) -> int:
    from jconv_experiments import colab_plan

    dev = device_facts()
    print(f"jax {dev['jax']} (jaxlib {dev['jaxlib']}), jconv {dev['jconv']} (commit {dev['commit']}), "
          f"Python {dev['python']}{', on Colab' if dev['colab'] else ''}")
    print(f"device: {dev['device_count']} x {dev['device_kind']} ({dev['platform']}); jconv target: {dev['target_described']}")
    if dev["platform"] == "tpu":
        print("Pallas kernels are compiled by Mosaic for this TPU.")
    elif dev["platform"] == "gpu":
        print("Pallas kernels are compiled by Triton." if dev["triton_ok"] else
              "Pallas' Triton path needs compute capability 8.0 or newer: impl='pallas' is a clear error here.")
    else:
        print("No accelerator: this run is on the CPU (the smoke config and a test subset; Pallas interpreted).")
    dev["plan"] = colab_plan.plan(dev["platform"], dev["target"], variant, dev["compute_capability"])
    _print_plan(dev, dev["plan"])
    _write_json(os.path.join(workdir, "device.json"), dev)
    return 0


# --------------------------------------------------------------------------------------------
# tests: pytest in a child process (this process never initialises JAX)
# --------------------------------------------------------------------------------------------


def _junit_counts(path: str) -> dict:
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            failed.append({"test": name, "message": (bad.get("message") or "")[:300]})
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_tests"] = failed[:200]
    return counts


def step_tests(workdir: str, repo: str) -> int:
    from jconv_experiments.colab_plan import fmt_s

    dev = _device(workdir)
    t = dev["plan"]["tests"]
    xml = os.path.join(workdir, "tests.xml")
    cmd = [sys.executable, "-m", "pytest", *t["args"], "-p", "no:cacheprovider", f"--junitxml={xml}", "-q",
           "-o", "console_output_style=progress"]
    print(f"tests: {t['estimate']['rows']} tests, estimated ~{fmt_s(t['estimate']['seconds'])}; log: tests.log")
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    with open(os.path.join(workdir, "tests.log"), "w") as log:
        # no compile-only checks in the background (tests/conftest.py, make test's JCONV_AOT_EARLY):
        # they would start JAX in more processes beside the tests, and only one may hold a TPU
        env = {k: v for k, v in os.environ.items() if k != "JCONV_AOT_EARLY"}
        proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            text = chunk.decode("utf-8", "replace")
            sys.stdout.write(text)
            sys.stdout.flush()
            log.write(text)
        rc = proc.wait()
    result = {"returncode": rc, "seconds": round(time.time() - t0, 1), "args": t["args"]}
    try:
        result.update(_junit_counts(xml))
    except (OSError, ValueError) as e:  # pytest died before writing it: the log says why
        result["junit_error"] = f"{type(e).__name__}: {e}"
    result["passed_all"] = rc == 0 and result.get("tests", 0) > 0
    _write_json(os.path.join(workdir, "tests.json"), result)
    print(f"tests: {'passed' if result['passed_all'] else 'NOT all passed'} in {fmt_s(result['seconds'])} "
          f"(estimated {fmt_s(t['estimate']['seconds'])})")
    return 0 if result["passed_all"] else 1


# --------------------------------------------------------------------------------------------
# compare: the comparison config for this device
# --------------------------------------------------------------------------------------------


def step_compare(workdir: str) -> int:
    from jconv_experiments import colab_plan, compare
    from jconv_experiments.colab_plan import fmt_s

    dev = _device(workdir)
    c = dev["plan"]["compare"]
    na = dev["plan"]["not_applicable"]
    config = colab_plan.load_config(c["config"], na)
    print(f"comparison: configs/{c['config']}.py, {c['estimate']['rows']} rows, estimated "
          f"~{fmt_s(c['estimate']['seconds'])}; resumable (a re-run skips the rows already measured)")
    if na:
        print(f"  not applicable here, skipped: {', '.join(na['dtypes'] + na['impls'])} ({na['reason']})")
    t0 = time.time()
    os.environ.setdefault("TQDM_MININTERVAL", "2")  # the row counter: an update every 2 s at most
    compare.run(config, os.path.join(workdir, "compare"))
    print(f"comparison: done in {fmt_s(time.time() - t0)} (estimated {fmt_s(c['estimate']['seconds'])})")
    return 0


# --------------------------------------------------------------------------------------------


def _estimate(workdir: str, step: str) -> float | None:
    dev = _read_json(os.path.join(workdir, "device.json")) or {}
    return ((dev.get("plan") or {}).get(step) or {}).get("estimate", {}).get("seconds")


def run_step(step: str, workdir: str, variant: str) -> int:
    from jconv_experiments import colab_archive

    repo = colab_setup.checkout_of_installed() or os.getcwd()
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    if step == "env":
        rc = step_env(workdir, variant)
    elif step == "tests":
        rc = step_tests(workdir, repo)
    elif step == "compare":
        rc = step_compare(workdir)
    elif step == "verdict":
        rc = colab_archive.verdict(workdir)
    else:
        rc = colab_archive.archive(workdir, repo)
    _record(workdir, step, t0, rc, _estimate(workdir, step) if step in ("tests", "compare") else None)
    return rc


def run_all(workdir: str, variant: str) -> int:
    """Every step in order, each in a new process (the one-process rule), all run even after a
    failure (the verdict and the archive say what happened)."""
    worst = 0
    for step in STEPS:
        args = [sys.executable, "-m", "jconv_experiments.colab", step, f"--workdir={workdir}"]
        rc = subprocess.run(args + (["--full"] if variant == "full" and step == "env" else [])).returncode
        worst = worst or rc
    return worst


def print_plans() -> None:
    from jconv_experiments import colab_plan
    from jconv_experiments.colab_plan import fmt_s

    for platform, target, cc in (("tpu", "v5e", None), ("tpu", "v6e", None), ("gpu", "l4", (8, 9)),
                                 ("gpu", "a100", (8, 0)), ("gpu", "t4", (7, 5))):
        for variant in colab_plan.VARIANTS:
            p = colab_plan.plan(platform, target, variant, cc)
            print(f"{target:5s} {variant:5s} tests ~{fmt_s(p['tests']['estimate']['seconds']):>8s} "
                  f"({p['tests']['estimate']['rows']} tests)  comparison ~{fmt_s(p['compare']['estimate']['seconds']):>8s} "
                  f"({p['compare']['estimate']['rows']} rows, configs/{p['compare']['config']}.py)  "
                  f"together ~{fmt_s(p['total_s'])}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jconv_experiments.colab", description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=STEPS + ("all", "plan", "count-compiles"))
    parser.add_argument("--workdir", default=os.environ.get("JCONV_NOTEBOOK_WORKDIR", "runs/colab"))
    parser.add_argument("--full", action="store_true", help="the full variant (hours): every device test, the default suite")
    parser.add_argument("--out", default=None, help="count-compiles: where to write the rows")
    args = parser.parse_args(argv)
    runtime = colab_setup.detect_runtime()
    _platform_env(runtime)
    variant = "full" if args.full else "quick"
    if args.step == "plan":
        print_plans()
        return 0
    if args.step == "count-compiles":
        from jconv_experiments import colab_compiles

        return colab_compiles.measure(args.out)
    if args.step == "all":
        return run_all(args.workdir, variant)
    return run_step(args.step, args.workdir, variant)


if __name__ == "__main__":
    sys.exit(main())
