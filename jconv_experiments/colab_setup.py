"""The notebook kernel's side of the Colab run: install, run each step in its own process, archive.

Standard library only (``packaging``, IPython and ``google.colab`` when present): the kernel of
``notebooks/colab_tpu.ipynb`` imports this module and **never imports jax**. On a TPU VM only
one process may hold the chips (libtpu takes a lock; a second process fails with ``ABORTED: The
TPU is already in use by process with pid N``), and on a GPU each JAX process preallocates 75%
of the memory. So every step that touches the device is a separate process,
``python -m jconv_experiments.colab <step>`` (:mod:`jconv_experiments.colab`), started only
after the previous one has exited; the kernel only starts them, streams their output, and shows
their files.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

#: the distributions that make up JAX for each runtime (each must be at jconv's pinned version)
JAX_DISTS = {"cpu": ("jax", "jaxlib"), "gpu": ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt"),
             "tpu": ("jax", "jaxlib", "libtpu")}
#: the pyproject extra that pins JAX for each runtime, and the extras every run needs
JAX_EXTRA = {"cpu": None, "gpu": "cuda", "tpu": "tpu"}
RUN_EXTRAS = ("experiments", "testing")
#: what the placeholder in pyproject's [project.urls] looks like until the repository is filled in
PLACEHOLDER = "OWNER"


def detect_runtime() -> str:
    """``tpu``, ``gpu`` or ``cpu``, without importing jax (as scripts/accelerator.sh does)."""
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        if "GPU" in listed:
            return "gpu"
    if glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*") or any(
            os.environ.get(v) for v in ("TPU_ACCELERATOR_TYPE", "TPU_NAME", "COLAB_TPU_ADDR")):
        return "tpu"
    return "cpu"


# --------------------------------------------------------------------------------------------
# where jconv is, and where it came from
# --------------------------------------------------------------------------------------------


def checkout_of_installed() -> str | None:
    """The checkout an importable ``jconv_experiments`` lives in (an editable install or a
    PYTHONPATH entry), found without importing jconv; None when there is none with configs/."""
    spec = importlib.util.find_spec("jconv_experiments")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = os.path.dirname(os.path.abspath(list(spec.submodule_search_locations)[0]))
    ok = all(os.path.isdir(os.path.join(root, d)) for d in ("configs", "tests", "jconv"))
    return root if ok else None


def _urls_from_pyproject(path: str) -> dict[str, str]:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        return {}
    try:
        with open(path, "rb") as f:
            return dict(tomllib.load(f).get("project", {}).get("urls", {}))
    except (OSError, ValueError):
        return {}


def _urls_from_metadata() -> dict[str, str]:
    try:
        entries = importlib.metadata.metadata("jconv").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    return dict(tuple(p.strip() for p in e.split(",", 1)) for e in entries if "," in e)


def repo_url(default: str = "", checkout: str | None = None) -> str:
    """The git URL to clone jconv from: ``$JCONV_REPO_URL``, else the installed package's
    ``Repository`` URL (pyproject's ``[project.urls]``), else a checkout's pyproject, else
    ``default``; "" while the placeholder has not been filled in."""
    candidates = [os.environ.get("JCONV_REPO_URL", ""), _urls_from_metadata().get("Repository", "")]
    if checkout:
        candidates.append(_urls_from_pyproject(os.path.join(checkout, "pyproject.toml")).get("Repository", ""))
    candidates.append(default)
    return next((u for u in candidates if u and PLACEHOLDER not in u), "")


# --------------------------------------------------------------------------------------------
# install: only what is missing or at the wrong version
# --------------------------------------------------------------------------------------------


def jax_pin(checkout: str) -> str:
    """The jax version jconv's accelerator extras pin (``jax[tpu]==X`` in pyproject.toml)."""
    with open(os.path.join(checkout, "pyproject.toml")) as f:
        m = re.search(r'"jax\[tpu\]==([0-9][^"]*)"', f.read())
    if not m:
        raise RuntimeError(f"colab_setup.jax_pin: no jax[tpu]==<version> pin in {checkout}/pyproject.toml")
    return m.group(1)


def installed_versions(dists) -> dict[str, str | None]:
    out = {}
    for d in dists:
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            out[d] = None
    return out


def _base_version(v: str) -> str:
    return re.split(r"[+]", v)[0]


def install_plan(runtime: str, versions: dict[str, str | None], pin: str, *, jconv_from_checkout: bool,
                 extras_missing: list[str]) -> tuple[list[str], list[str]]:
    """What pip must install, and why (one line each). ``versions``: the installed versions of
    :data:`JAX_DISTS` for ``runtime`` (None: missing); ``extras_missing``: requirements of the
    run extras that are not satisfied. Colab's preinstalled jax is kept when it is jconv's pin."""
    if runtime not in JAX_DISTS:
        raise ValueError(f"colab_setup.install_plan: runtime (={runtime!r}) must be one of {tuple(JAX_DISTS)}")
    reasons = []
    for d in JAX_DISTS[runtime]:
        v = versions.get(d)
        if v is None:
            reasons.append(f"{d}: missing")
        elif d != "libtpu" and _base_version(v) != pin:
            reasons.append(f"{d}: {v} installed, jconv needs {pin}")
    extras = list(RUN_EXTRAS)
    if reasons and JAX_EXTRA[runtime]:
        extras.append(JAX_EXTRA[runtime])  # jax[tpu]==pin / jax[cuda12]==pin
    requirements = []
    if reasons or extras_missing or not jconv_from_checkout:
        requirements.append(f"-e .[{','.join(extras)}]")
        if reasons and JAX_EXTRA[runtime] is None:
            requirements.append(f"jax=={pin}")
        reasons += [f"{r}: not satisfied" for r in extras_missing]
        if not jconv_from_checkout:
            reasons.append("jconv: not installed from this checkout")
    return requirements, reasons


def unsatisfied(checkout: str, extras=RUN_EXTRAS) -> list[str]:
    """The requirements of jconv and its ``extras`` that the installed packages do not meet
    (by name only when ``packaging`` is not available)."""
    try:
        import tomllib
    except ImportError:
        return []
    with open(os.path.join(checkout, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project.get("dependencies", []))
    for e in extras:
        reqs += [r for r in project.get("optional-dependencies", {}).get(e, []) if not r.startswith("jconv[")]
    out = []
    for r in reqs:
        try:
            from packaging.requirements import Requirement

            req = Requirement(r)
            name, ok = req.name, None
            v = installed_versions([name])[name]
            ok = v is not None and (not req.specifier or req.specifier.contains(v, prereleases=True))
        except ImportError:
            name = re.split(r"[<>=!\[ ;]", r, 1)[0]
            ok = installed_versions([name])[name] is not None
        if not ok:
            out.append(r)
    return out


def all_versions() -> dict[str, str]:
    """{distribution name (lower case): version} of everything installed."""
    return {(d.metadata["Name"] or "").lower(): d.version for d in importlib.metadata.distributions()}


def modules_of(dist: str) -> set[str]:
    """The module names a distribution's files provide (``google/protobuf/__init__.py`` ->
    ``google.protobuf``), so a namespace shared by many distributions is told apart."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return set()
    out = set()
    for f in files:
        parts = str(f).replace("\\", "/").split("/")
        if parts[-1].endswith(".py") and ".." not in parts and not parts[0].endswith((".dist-info", ".data")):
            name = ".".join(parts)[:-3]
            out.add(name[: -len(".__init__")] if name.endswith(".__init__") else name)
    return out


def restart_needed(before: dict[str, str], after: dict[str, str], loaded, modules=modules_of) -> list[str]:
    """The distributions pip changed (``before``/``after``: :func:`all_versions`) whose modules
    this process has imported (``loaded``: names in ``sys.modules``): those need a restart."""
    loaded = set(loaded)
    out = []
    for dist, old in sorted(before.items()):
        new = after.get(dist)
        if new != old and modules(dist) & loaded:
            out.append(f"{dist} {old} -> {new or 'removed'}")
    return out


def pip_install(checkout: str, requirements: list[str], log_path: str) -> bool:
    """``pip install`` in ``checkout``; pip's output goes to ``log_path``, and its last lines to
    the screen when it fails. True on success."""
    cmd = [sys.executable, "-m", "pip", "install", "--progress-bar=off"]
    for r in requirements:
        cmd += (r.split(" ", 1) if r.startswith("-e ") else [r])
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True)
    with open(log_path, "w") as f:
        f.write(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0:
        print("\n".join((proc.stdout + proc.stderr).splitlines()[-60:]))
        print(f"PIP FAILED (exit code {proc.returncode}); its whole output: {log_path}")
        return False
    done = [ln for ln in proc.stdout.splitlines() if ln.startswith("Successfully installed")]
    print((done[0] if done else "pip: nothing new") + f"  ({time.time() - t0:.0f} s; log: {log_path})")
    return True


def install(checkout: str, runtime: str, log_dir: str) -> dict:
    """Install what is missing or mismatched for ``runtime`` and say whether the kernel must be
    restarted. Returns ``{"ok", "restart", "installed"}``; prints every decision."""
    pin = jax_pin(checkout)
    versions = installed_versions(JAX_DISTS[runtime])
    have = ", ".join(f"{d} {v or '-'}" for d, v in versions.items())
    print(f"runtime: {runtime}; jconv needs jax {pin}; this runtime has: {have}")
    requirements, reasons = install_plan(runtime, versions, pin,
                                         jconv_from_checkout=checkout_of_installed() == checkout,
                                         extras_missing=unsatisfied(checkout))
    if not requirements:
        print("install: nothing to do (jconv and every requirement are installed at the right versions)")
        return {"ok": True, "restart": [], "installed": False}
    print("install, because:\n  " + "\n  ".join(reasons))
    if os.environ.get("JCONV_NO_INSTALL"):  # the test suite: never pip into a shared environment
        print(f"install: not run (JCONV_NO_INSTALL is set): pip install {' '.join(requirements)}")
        return {"ok": False, "restart": [], "installed": False}
    before = all_versions()
    ok = pip_install(checkout, requirements, os.path.join(log_dir, "install.log"))
    importlib.invalidate_caches()
    restart = restart_needed(before, all_versions(), sys.modules) if ok else []
    if restart:
        print("RESTART NEEDED: pip changed packages this kernel had already imported: " + "; ".join(restart)
              + ".\n  Runtime -> Restart session, then Runtime -> Run all (the install is skipped the second time).")
    elif ok:
        print("no restart needed: this kernel has imported none of the packages pip changed "
              "(each step below is a new Python process, which loads the new versions)")
    return {"ok": ok, "restart": restart, "installed": True}


# --------------------------------------------------------------------------------------------
# the steps: one process each, one at a time
# --------------------------------------------------------------------------------------------


def step(name: str, repo: str, workdir: str, *args: str, env: dict | None = None) -> int:
    """Run ``python -m jconv_experiments.colab <name> --workdir=<workdir> <args>`` in ``repo``,
    streaming its output here; return its exit code (never raises, so *Run all* goes on to the
    archive). The step's process is the only one touching the device until it exits."""
    cmd = [sys.executable, "-u", "-m", "jconv_experiments.colab", name, f"--workdir={workdir}", *args]
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            sys.stdout.write(chunk.decode("utf-8", "replace"))
            sys.stdout.flush()
        rc = proc.wait()
    except Exception as e:  # noqa: BLE001 - reported; the archive still gets written
        print(f"step {name}: could not run: {type(e).__name__}: {e}")
        return 1
    if rc:
        print(f"step {name}: exit code {rc} (recorded; the next cells go on)")
    return rc


def show_report(workdir: str) -> None:
    """Show the comparison's report.md (up to its plots) and the plots, if they exist."""
    from IPython.display import Image, Markdown, display

    report = os.path.join(workdir, "compare", "report.md")
    if not os.path.exists(report):
        print(f"no report: {report} was not written (see the comparison step's output)")
        return
    with open(report) as f:
        display(Markdown(f.read().split("## Plots")[0]))
    for png in sorted(glob.glob(os.path.join(workdir, "compare", "*.png"))):
        display(Image(filename=png))


def write_archive(repo: str | None, workdir: str) -> str | None:
    """The archive: the ``archive`` step when jconv is there, else (an install that failed) a
    plain tar of whatever the workdir holds. Downloaded in Colab; returns its path."""
    os.makedirs(workdir, exist_ok=True)
    path = None
    if repo is not None and step("archive", repo, workdir) == 0:
        with open(os.path.join(workdir, "archive_path.txt")) as f:
            path = f.read().strip()
    if path is None:
        path = os.path.join(os.path.dirname(os.path.abspath(workdir)), "jconv_results_incomplete.tar.gz")
        with tarfile.open(path, "w:gz") as tar:
            tar.add(workdir, arcname="jconv_results")
        print(f"ARCHIVE {path} ({os.path.getsize(path) / 1e6:.2f} MB; written without jconv: the run did not finish)")
    try:
        from google.colab import files  # noqa: PLC0415 - only on Colab
    except ImportError:
        print("(not on Colab: no download; the file is at the path above)")
    else:
        files.download(path)
    return path


__all__ = ["detect_runtime", "checkout_of_installed", "repo_url", "jax_pin", "install_plan", "install",
           "restart_needed", "step", "show_report", "write_archive"]
