"""Train the seed's MNIST CNN (jconv.linen.Conv2D layers): ``run(config, workdir)``.

    python -m jconv_experiments --config=configs/digits.py --workdir=runs/digits   # embedded data
    python -m jconv_experiments --config=configs/mnist.py --workdir=runs/mnist     # real MNIST
    python -m jconv_experiments --config=configs/digits.py --config.quantize=True --workdir=runs/q


Thin: the library is :func:`jconv_experiments.train.train_and_evaluate` (optax, jit, data-parallel
sharding, orbax checkpoints with resume, metrics.jsonl, filters.png, feature_maps.png, the
speed ratio against flax.linen.Conv). Rerunning with the same workdir resumes.
``config.quantize``: then the trained convolutions are quantized to int8 and evaluated and timed
against float32 (:func:`jconv_experiments.quantize.run_quantized`: ``quantized.jsonl``,
``report.md``, and ``"quantized"`` in ``summary.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from jconv.files import atomic_write
from jconv_experiments import quantize
from jconv_experiments.train import _datasets, build_model, train_and_evaluate


def run(config, workdir):
    out = train_and_evaluate(config, workdir)
    if out["records"]:
        last = out["records"][-1]
        print(f"train_mnist: epoch {last['epoch']}: test accuracy {last['test_accuracy']:.4f} "
              f"({config.dataset}); results in {workdir}")
    if out["speed"]:
        s = out["speed"]
        print(f"train_mnist: train step {s['jconv_step_ms']:.2f} ms with jconv ({s['impl']}) vs "
              f"{s['flax_step_ms']:.2f} ms with flax.linen.Conv: ratio {s['ratio_jconv_over_flax']:.2f}")
    if config.get("quantize", False) and jax.process_index() == 0:
        out["quantized"] = _quantize(config, workdir, out["params"])
    return out


def _quantize(config, workdir, params) -> dict:
    train, test = _datasets(config)
    rec = quantize.run_quantized(config, workdir, build_model(config), params, train, test)
    summary = Path(workdir) / "summary.json"
    if summary.exists():
        atomic_write(summary, json.dumps(dict(json.loads(summary.read_text()), quantized=rec), indent=2) + "\n")
    speed = (f"; forward {rec['float32_ms']:.2f} ms float32 vs {rec['int8_ms']:.2f} ms int8 "
             f"({rec['ratio_float32_over_int8']:.2f}x), {rec['int8_xla_ms']:.2f} ms int8 with xla"
             if "float32_ms" in rec else "")
    print(f"train_mnist: int8 test accuracy {rec['int8_accuracy']:.4f} vs float32 {rec['float32_accuracy']:.4f} "
          f"({rec['difference_pp']:+.2f} pp){speed}")
    return rec
