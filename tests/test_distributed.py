"""Training data-parallel across processes: ``python -m jconv_experiments`` started twice on
this machine with ``--config.distributed=True`` and a local coordinator (one CPU device each,
gloo collectives). The loss curve matches a one-process run; the checkpoint of each epoch is
written once (orbax's multi-process protocol: each array's bytes by one process, the commit by
process 0) and a run killed in either process resumes from it.

Slow: every run starts two fresh interpreters that compile the steps (about a minute each on
the 2-core development machine when it is shared).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs.digits import get_config
from jconv_experiments.train import train_and_evaluate

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SMALL = dict(train_subset=64, test_subset=32, batch_size=32, eval_batch_size=32, progress=False, plots=False,
             speed_rounds=0, impl="lax")


def tiny(**overrides):
    c = get_config()
    c.update(dict(SMALL, **overrides))
    return c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(workdir: Path, port: int, log_dir: Path, **overrides) -> list[subprocess.Popen]:
    """Both processes of a 2-process run (each with one CPU device), started at once."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    flags = [f"--config.{k}={v}" for k, v in dict(SMALL, **overrides).items()]
    procs = []
    for k in range(2):
        args = [sys.executable, "-m", "jconv_experiments", "--config=configs/digits.py", f"--workdir={workdir}",
                *flags, "--config.distributed=True", f"--config.coordinator_address=localhost:{port}",
                "--config.num_processes=2", f"--config.process_id={k}"]
        with open(log_dir / f"process{k}.log", "ab") as out:  # the child keeps its own descriptor
            procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def logs(log_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(log_dir.glob("process*.log")))


def wait_all(procs, log_dir: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"the 2-process run did not finish in {timeout} s\n{logs(log_dir)}") from None
    assert [p.returncode for p in procs] == [0, 0], logs(log_dir)


def epochs(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "epoch"]


def steps_on_disk(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def array_bytes(step_dir: Path) -> dict[str, int]:
    """Bytes of array data each process wrote into one checkpoint (orbax's ocdbt.process_<k>)."""
    out = {}
    for d in sorted((step_dir / "default").glob("ocdbt.process_*")):
        out[d.name] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and f.parent.name == "d")
    return out


def same_curve(two: list[dict], one: list[dict]) -> None:
    assert [r["epoch"] for r in two] == [r["epoch"] for r in one]
    assert {r["num_processes"] for r in two} == {2} and {r["num_devices"] for r in two} == {2}
    np.testing.assert_allclose([r["train_loss"] for r in two], [r["train_loss"] for r in one], rtol=1e-4)
    np.testing.assert_allclose([r["test_loss"] for r in two], [r["test_loss"] for r in one], rtol=1e-4)


def same_params(a, b) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)


@pytest.mark.parametrize("killed", [0, 1])
def test_two_processes_match_one_and_resume_after_a_kill(tmp_path, killed):
    """The seed's CNN on 2 processes, one of them SIGKILLed after the first checkpoint, both
    started again with the same command: the epochs' losses and the final parameters equal an
    uninterrupted one-process run's; every checkpoint is committed once, its arrays written
    once between the two processes."""
    wd, log_dir = tmp_path / "two", tmp_path
    procs = launch(wd, _free_port(), log_dir, num_epochs=400)
    try:
        deadline = time.monotonic() + 400
        while not (wd / "checkpoints" / "1" / "commit_success.txt").exists():
            assert all(p.poll() is None for p in procs), logs(log_dir)
            assert time.monotonic() < deadline, f"no checkpoint within 400 s\n{logs(log_dir)}"
            time.sleep(0.05)
        procs[killed].send_signal(signal.SIGKILL)
        procs[killed].wait()
        time.sleep(1.0)  # the survivor waits in a collective for a peer that is gone
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[killed].returncode == -signal.SIGKILL
    done = steps_on_disk(wd)
    assert done and done[-1] < 400  # killed mid-run
    end = done[-1] + 1
    wait_all(launch(wd, _free_port(), log_dir, num_epochs=end), log_dir)  # the same command again
    assert "resumed from the checkpoint" in (log_dir / "process0.log").read_text()
    two = epochs(wd)
    ref = train_and_evaluate(tiny(num_epochs=end, checkpoint=False), tmp_path / "one")
    same_curve(two, ref["records"])
    # the last checkpoint, read by a one-process run (nothing left to train), holds the same params
    restored = train_and_evaluate(tiny(num_epochs=end), wd)
    assert restored["losses"] == []
    same_params(restored["params"], ref["params"])
    # written once: one commit per step, and the two processes' array bytes add up to one copy
    ckpt = wd / "checkpoints" / str(end)
    assert sorted(p.name for p in ckpt.iterdir() if p.name == "commit_success.txt") == ["commit_success.txt"]
    one_proc = train_and_evaluate(tiny(num_epochs=1), tmp_path / "one_ckpt")
    assert one_proc["records"]
    by_process = array_bytes(ckpt)
    assert set(by_process) == {"ocdbt.process_0", "ocdbt.process_1"}
    single = sum(array_bytes(tmp_path / "one_ckpt" / "checkpoints" / "1").values())
    assert 0.8 * single < sum(by_process.values()) < 1.25 * single, (by_process, single)


def test_zoo_model_two_processes_match_one(tmp_path):
    """A zoo model at its small size (ResNet, BatchNorm: statistics over the global batch) on 2
    processes: the same loss curve as one process."""
    cfg = dict(model="resnet50", num_epochs=3, optimizer="sgd", learning_rate=0.05)
    wait_all(launch(tmp_path / "two", _free_port(), tmp_path, **cfg), tmp_path)
    ref = train_and_evaluate(tiny(checkpoint=False, **cfg), tmp_path / "one")
    two = epochs(tmp_path / "two")
    same_curve(two, ref["records"])
    assert two[-1]["train_loss"] < two[0]["train_loss"]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["model"] == "resnet50"
