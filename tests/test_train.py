"""Training the seed's model: outputs, resume after a kill, 4 devices vs 1, config checks.

Tiny runs on a subset of the embedded digits; the compiled steps are shared between runs in
this process (jconv_experiments.train caches them), so most runs cost about a second.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import matplotlib.image
import numpy as np
import pytest

from configs.digits import get_config
from jconv_experiments.train import train_and_evaluate

REPO = Path(__file__).resolve().parents[1]


def tiny(**overrides):
    c = get_config()
    c.train_subset = 128
    c.test_subset = 96
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_epochs = 2
    c.progress = False
    c.plots = False
    c.speed_rounds = 0
    c.impl = "lax"  # jconv's own algorithms ("auto" may pick XLA on CPU)
    c.update(overrides)
    return c


def read_metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """An uninterrupted 2-epoch run on all 4 (forced) CPU devices."""
    wd = tmp_path_factory.mktemp("uninterrupted")
    return wd, train_and_evaluate(tiny(), wd)


def test_run_writes_metrics_checkpoints_and_pictures(tmp_path):
    assert jax.device_count() == 4  # tests/conftest.py forces 4 host devices: data parallel
    out = train_and_evaluate(tiny(plots=True, speed_rounds=2, progress=True), tmp_path)
    recs = read_metrics(tmp_path)
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and epochs == out["records"]
    for r in epochs:
        assert r["num_devices"] == 4 and r["step"] == 4 * r["epoch"]
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["epoch_time_s"] > 0 and np.isfinite(r["train_loss"])
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    (speed,) = [r for r in recs if r["kind"] == "speed"]
    assert speed["jconv_step_ms"] > 0 and speed["flax_step_ms"] > 0
    assert speed["ratio_jconv_over_flax"] == pytest.approx(speed["jconv_step_ms"] / speed["flax_step_ms"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_test_accuracy"] == epochs[-1]["test_accuracy"] and summary["plan"].startswith("conv1: ")
    h, w = matplotlib.image.imread(tmp_path / "filters.png").shape[:2]
    assert h > 100 and w > 100
    assert matplotlib.image.imread(tmp_path / "feature_maps.png").shape[1] > 500


def test_resume_continues_exactly(tmp_path, two_epochs):
    """1 epoch, stop, then continue to 2 == the uninterrupted 2-epoch run."""
    ref_dir, ref = two_epochs
    first = train_and_evaluate(tiny(num_epochs=1), tmp_path)
    assert len(first["records"]) == 1
    second = train_and_evaluate(tiny(num_epochs=2), tmp_path)
    assert len(second["losses"]) == 4  # only epoch 2 ran
    assert second["records"] == [dict(r, epoch_time_s=s["epoch_time_s"], eval_time_s=s["eval_time_s"],
                                      examples_per_s=s["examples_per_s"])
                                 for r, s in zip(ref["records"], second["records"])]
    jax.tree.map(np.testing.assert_array_equal, second["params"], ref["params"])
    # asking again for 2 epochs trains nothing and keeps the metrics
    again = train_and_evaluate(tiny(num_epochs=2), tmp_path)
    assert again["losses"] == [] and [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]


def test_four_devices_match_one(tmp_path, two_epochs):
    """The loss curve with the batch sharded over 4 devices matches 1 device."""
    _, four = two_epochs
    one = train_and_evaluate(tiny(num_devices=1), tmp_path)
    assert one["records"][0]["num_devices"] == 1 and four["records"][0]["num_devices"] == 4
    np.testing.assert_allclose(one["losses"], four["losses"], rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose([r["test_accuracy"] for r in one["records"]],
                               [r["test_accuracy"] for r in four["records"]], atol=1.5 / 96)


def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    """`python -m jconv_experiments` killed (SIGKILL) after its first checkpoint; restarted, it
    continues from the last checkpoint and ends where an uninterrupted run ends."""
    wd = tmp_path / "killed"
    args = [sys.executable, "-m", "jconv_experiments", "--config=configs/digits.py", f"--workdir={wd}",
            "--config.train_subset=64", "--config.test_subset=32", "--config.batch_size=32",
            "--config.eval_batch_size=64", "--config.num_epochs=400", "--config.progress=False",
            "--config.plots=False", "--config.speed_rounds=0", "--config.impl=lax"]
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not (wd / "checkpoints" / "1").is_dir():
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 240 s"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpts = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts and ckpts[-1] < 400  # killed mid-run
    end = ckpts[-1] + 1
    cfg = tiny(train_subset=64, test_subset=32, num_epochs=end)
    resumed = train_and_evaluate(cfg, wd)
    assert len(resumed["losses"]) == 2  # only the last epoch ran after the restart
    epochs = [r["epoch"] for r in read_metrics(wd)]
    assert epochs == list(range(1, end + 1))  # each epoch recorded once
    ref = train_and_evaluate(cfg, tmp_path / "ref")
    np.testing.assert_allclose([r["train_loss"] for r in resumed["records"]],
                               [r["train_loss"] for r in ref["records"]], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), resumed["params"], ref["params"])


@pytest.mark.parametrize("overrides,msg", [
    (dict(batch_size=30), "batch_size (=30) must be divisible by the number of devices (=4)"),
    (dict(num_devices=5), "num_devices (=5) must be 0 (all) or 1..4"),
    (dict(optimizer="rmsprop"), "optimizer (='rmsprop')"),
    (dict(dataset="cifar"), "name (='cifar')"),
])
def test_bad_config(tmp_path, overrides, msg):
    with pytest.raises(ValueError) as e:
        train_and_evaluate(tiny(**overrides), tmp_path)
    assert msg in str(e.value)


def test_configs_are_runner_ready():
    from configs import mnist

    for c in (get_config(), mnist.get_config()):
        assert c.experiment == "train_mnist"
        for field in ("num_epochs", "batch_size", "learning_rate", "dataset", "impl"):
            assert field in c
    assert mnist.get_config().dataset == "mnist"


def test_trains_on_mnist_idx_files(tmp_path):
    """configs/mnist.py's path end to end, on small IDX files written here."""
    from configs import mnist
    from test_data import make_mnist_dir

    make_mnist_dir(tmp_path / "idx", n_train=64, n_test=40)
    c = mnist.get_config()
    c.update(dict(data_dir=str(tmp_path / "idx"), cache_dir=str(tmp_path / "cache"), num_epochs=1,
                  batch_size=32, eval_batch_size=64, impl="lax", progress=False, plots=False, speed_rounds=0))
    out = train_and_evaluate(c, tmp_path / "run")
    (rec,) = out["records"]
    assert rec["step"] == 2 and 0.0 <= rec["test_accuracy"] <= 1.0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test_examples"] == 40
    assert not (tmp_path / "cache").exists()  # read from data_dir, nothing downloaded
