"""Time one training step of the seed's MNIST CNN: jconv's Conv2D vs ``flax.linen.Conv``.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/mnist_step.py --batch 128 --reps 30

Same model (jconv.models.MnistCNN), same params, Adam (optax), cross-entropy, dropout on;
the step is jitted whole. Candidates are timed interleaved after warm-up; medians and the ratio
to flax are printed (the issue's goal: jconv <= 0.8x flax's time).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jconv.models import MnistCNN


def make_step(model, tx):
    def loss_fn(params, x, y, key):
        logits = model.apply({"params": params}, x, deterministic=False, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(params, opt_state, x, y, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--impls", default="auto,lax", help="jconv impls to time besides flax")
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((a.batch, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, a.batch))
    key = jax.random.key(0)
    tx = optax.adam(1e-3)
    params = MnistCNN(conv="flax").init(jax.random.key(1), x, deterministic=True)["params"]
    cands = {"flax": MnistCNN(conv="flax")}
    for impl in a.impls.split(","):
        cands[f"jconv:{impl}"] = MnistCNN(conv="jconv", impl=impl)
    fns = {}
    for name, model in cands.items():
        step = make_step(model, tx)
        state = (params, tx.init(params))
        fns[name] = (lambda step=step, state=state: jax.block_until_ready(step(*state, x, y, key)))
    for f in fns.values():
        f(), f()
    times = {k: [] for k in fns}
    for r in range(a.reps):
        names = list(fns)
        for i in range(len(names)):
            k = names[(r + i) % len(names)]
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["flax"])
    for k, v in times.items():
        m = statistics.median(v)
        print(f"{k:12s} median {m * 1e3:8.2f} ms   {m / base:.2f}x flax's time")


if __name__ == "__main__":
    main()
