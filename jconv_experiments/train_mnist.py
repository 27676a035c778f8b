"""Train the seed's MNIST CNN (jconv.linen.Conv2D layers): ``run(config, workdir)``.

    python -m jconv_experiments --config=configs/digits.py --workdir=runs/digits   # embedded data
    python -m jconv_experiments --config=configs/mnist.py --workdir=runs/mnist     # real MNIST

Thin: the library is :func:`jconv_experiments.train.train_and_evaluate` (optax, jit, data-parallel
sharding, orbax checkpoints with resume, metrics.jsonl, filters.png, feature_maps.png, the
speed ratio against flax.linen.Conv). Rerunning with the same workdir resumes.
"""

from __future__ import annotations

from jconv_experiments.train import train_and_evaluate


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
    return out
