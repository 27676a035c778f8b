"""Train the seed's MNIST CNN (or a small zoo model): ``train_and_evaluate(config, workdir)``.

* the model: ``config.model`` ``"mnist_cnn"`` (the seed's) or a :mod:`jconv_experiments.zoo` name,
  built at its small size (BatchNorm statistics travel in the state as ``model_state``);
* optax optimiser; jit-compiled train and eval steps;
* data parallel over all devices with ``jax.sharding``: a 1-D mesh ``("data",)``, each
  batch sharded along it, parameters and optimiser state replicated (BatchNorm's batch
  statistics are over the global batch). Several processes: ``config.distributed`` calls
  :func:`jax.distributed.initialize` (:func:`initialize_distributed`) with the config's
  ``coordinator_address``, ``num_processes`` and ``process_id``, or, without an address, with
  what JAX detects (Cloud TPU pod slices, SLURM, Open MPI, ...); every process reads the same
  data and feeds its own slice of each global batch; the state is created by a jitted init
  (replicated, identical in every process); process 0 writes metrics, pictures and the summary;
* an orbax checkpoint after every epoch; a run that is killed and started again with the same
  workdir resumes from the last checkpoint and continues exactly as an uninterrupted run would
  (data order and dropout keys are functions of (seed, epoch, step));
* ``metrics.jsonl``: one ``{"kind": "epoch", ...}`` record per epoch (train loss,
  ``test_accuracy``, times) and a ``{"kind": "speed", ...}`` record comparing the same train
  step with ``flax.linen.Conv`` (interleaved, medians); ``summary.json``; a tqdm progress bar;
  ``filters.png`` (the 32 first-layer 3x3 filters) and ``feature_maps.png`` (one test digit
  through both conv layers).
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jconv import primitive
from jconv.files import atomic_write
from jconv.timing import time_interleaved
from jconv_experiments import data as data_lib
from jconv_experiments.models import MnistCNN
from jconv_experiments import zoo

__all__ = ["train_and_evaluate", "make_mesh", "create_state", "make_train_step", "make_eval_step",
           "compare_step_speed", "plot_filters", "plot_feature_maps", "initialize_distributed", "build_model"]


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def initialize_distributed(config) -> None:
    """``jax.distributed.initialize`` as ``config`` says (nothing unless ``config.distributed``).

    With ``coordinator_address`` (``"host:port"`` of process 0) the config names the processes
    (``num_processes``, ``process_id``); without it JAX detects them (Cloud TPU pod slices, SLURM,
    Open MPI, ...). On the CPU the processes' collectives are ``config.cpu_collectives``
    (gloo over TCP by default). Every process then sees every device (``jax.devices()``) and
    its own (``jax.local_devices()``)."""
    if not config.get("distributed", False):
        return
    if config.get("cpu_collectives", ""):
        jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
    address = config.get("coordinator_address", "")
    if not address:
        jax.distributed.initialize()
        return
    n, k = int(config.get("num_processes", 0)), int(config.get("process_id", -1))
    if n < 1:
        raise ValueError(f"train_and_evaluate: num_processes (={n}) must be >= 1 with a coordinator_address")
    if not 0 <= k < n:
        raise ValueError(f"train_and_evaluate: process_id (={k}) must be in 0..{n - 1}")
    jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=k,
                               heartbeat_timeout_seconds=int(config.get("heartbeat_timeout_s", 100)))


def build_model(config, conv: str | None = None):
    """The config's model: the seed's ``MnistCNN``, or a zoo model at its small size (with
    ``config.num_classes`` classes). ``conv``: ``"jconv"`` or ``"flax"`` (default: the config's)."""
    name, conv = config.get("model", "mnist_cnn"), conv or config.get("conv", "jconv")
    if name == "mnist_cnn":
        return MnistCNN(impl=config.impl, conv=conv, dropout_rate=config.dropout_rate)
    if name not in zoo.MODELS:
        raise ValueError(f"train_and_evaluate: model (={name!r}) must be 'mnist_cnn' or one of {sorted(zoo.MODELS)}")
    return zoo.build(name, {"jconv": "jconv", "flax": "xla"}[conv], impl=config.impl, small=True,
                     num_classes=int(config.get("num_classes", 10)))


def _mode(model, train: bool) -> dict:
    """The call's mode keyword: the seed's model takes ``deterministic``, the zoo's ``train``."""
    return {"deterministic": not train} if isinstance(model, MnistCNN) else {"train": train}


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D ``("data",)`` mesh over all devices (``num_devices`` > 0: the first that many local
    devices, single-process only)."""
    devices = jax.devices()
    if num_devices:
        local = jax.local_devices()
        if jax.process_count() > 1 or not 1 <= num_devices <= len(local):
            raise ValueError(
                f"train_and_evaluate: num_devices (={num_devices}) must be 0 (all) or 1..{len(local)} "
                "(local devices, single process)"
            )
        devices = local[:num_devices]
    return Mesh(np.asarray(devices), ("data",))


def _optimizer_key(config) -> tuple:
    name = config.get("optimizer", "adam")
    if name not in ("adam", "sgd"):
        raise ValueError(f"train_and_evaluate: optimizer (={name!r}) must be 'adam' or 'sgd'")
    return (name, float(config.learning_rate), float(config.get("momentum", 0.9)))


@functools.lru_cache(maxsize=None)
def _optimizer_from_key(key: tuple) -> optax.GradientTransformation:
    name, lr, momentum = key
    return optax.adam(lr) if name == "adam" else optax.sgd(lr, momentum=momentum)


def _optimizer(config) -> optax.GradientTransformation:
    return _optimizer_from_key(_optimizer_key(config))


def create_state(model, tx, seed: int, replicated: NamedSharding, input_shape: tuple = (28, 28, 1)) -> dict:
    """``{"params", "opt_state", "step"}`` (+ ``"model_state"``: the other variable collections,
    BatchNorm's statistics), replicated over the mesh: made by a jitted init whose outputs are
    replicated, the same in every process (``device_put`` of a local array onto devices of
    other processes is not)."""

    def init():
        variables = model.init(jax.random.key(seed), jnp.zeros((1,) + tuple(input_shape)), **_mode(model, False))
        params = variables["params"]
        state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
        rest = {k: v for k, v in variables.items() if k != "params"}
        return dict(state, model_state=rest) if rest else state

    return jax.jit(init, out_shardings=replicated)()


def _variables(state) -> dict:
    return {"params": state["params"], **state.get("model_state", {})}


def _loss(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _mesh_key(mesh: Mesh) -> tuple:
    return tuple(d.id for d in mesh.devices.flat), mesh.axis_names


def _mesh_from_key(key: tuple) -> Mesh:
    ids, names = key
    by_id = {d.id: d for d in jax.devices()}
    return Mesh(np.asarray([by_id[i] for i in ids]), names)


def make_train_step(model, tx, seed: int, mesh: Mesh, *, donate: bool = True):
    """``step(state, x, y) -> (state, loss)`` jitted: batch sharded, state replicated.

    Cached on (model, tx, seed, the mesh's devices, donate): runs in one process share it."""
    return _train_step(model, tx, seed, _mesh_key(mesh), donate)


@functools.lru_cache(maxsize=32)
def _train_step(model, tx, seed: int, mesh_key: tuple, donate: bool):
    mesh = _mesh_from_key(mesh_key)
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    dropout_key = jax.random.fold_in(jax.random.key(seed), 1)

    def step(state, x, y):
        key = jax.random.fold_in(dropout_key, state["step"])

        model_state = state.get("model_state", {})

        def loss_fn(params):
            variables = {"params": params, **model_state}
            logits, updated = model.apply(variables, x, rngs={"dropout": key}, mutable=list(model_state),
                                          **_mode(model, True))
            return jnp.mean(_loss(logits, y)), updated

        (loss, updated), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
        return (dict(new, model_state=dict(updated)) if model_state else new), loss

    return jax.jit(step, in_shardings=(replicated, batch, batch), out_shardings=(replicated, replicated),
                   donate_argnums=(0,) if donate else ())


def make_eval_step(model, mesh: Mesh):
    """``eval(variables, x, y, mask) -> (correct, loss_sum)`` over the real (mask=1) examples."""
    return _eval_step(model, _mesh_key(mesh))


@functools.lru_cache(maxsize=32)
def _eval_step(model, mesh_key: tuple):
    mesh = _mesh_from_key(mesh_key)
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def step(variables, x, y, mask):
        logits = model.apply(variables, x, **_mode(model, False))
        correct = jnp.sum(jnp.where(mask, jnp.argmax(logits, -1) == y, False))
        return correct, jnp.sum(jnp.where(mask, _loss(logits, y), 0.0))

    return jax.jit(step, in_shardings=(replicated, batch, batch, batch), out_shardings=replicated)


def _global_batch(sharding: NamedSharding, *arrays):
    """Each process contributes its slice of the global batch (all of it on one host)."""
    n, k = jax.process_count(), jax.process_index()
    out = []
    for a in arrays:
        per = a.shape[0] // n
        out.append(jax.make_array_from_process_local_data(sharding, a[k * per:(k + 1) * per], a.shape))
    return out


def evaluate(eval_step, variables, images, labels, batch_size: int, sharding) -> tuple[float, float]:
    """(accuracy, mean loss) over every example (the last batch padded and masked)."""
    n = len(images)
    correct = loss = 0.0
    for i in range(0, n, batch_size):
        x, y = images[i:i + batch_size], labels[i:i + batch_size]
        m = np.ones(len(x), bool)
        pad = batch_size - len(x)
        if pad:
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            y, m = np.concatenate([y, np.zeros(pad, y.dtype)]), np.concatenate([m, np.zeros(pad, bool)])
        c, l = eval_step(variables, *_global_batch(sharding, x, y, m))
        correct += float(c)
        loss += float(l)
    return correct / n, loss / n


# --------------------------------------------------------------------------------------------
# Speed comparison with flax.linen.Conv
# --------------------------------------------------------------------------------------------


def compare_step_speed(config, state, x, y, mesh: Mesh, rounds: int) -> dict:
    """Median time of one train step with jconv's conv modules vs flax.linen.Conv.

    Same parameters, optimiser state and batch; both compiled first, then timed together by
    :func:`jconv.timing.time_interleaved` (rounds of 3-call blocks, the first of each block
    untimed). The steps timed keep their input state (no donation), so every call gets the same.
    """
    tx = _optimizer(config)
    steps = {
        name: make_train_step(build_model(config, conv=name), tx, config.seed, mesh, donate=False)
        for name in ("jconv", "flax")
    }
    runners = {name: (lambda fn=fn: jax.block_until_ready(fn(state, x, y))) for name, fn in steps.items()}
    times = time_interleaved(runners, warmup=2, iters=rounds, min_iters=rounds, block=3)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "kind": "speed",
        "what": f"one train step (fwd+bwd+{_optimizer_key(config)[0]}), same params and batch",
        "batch_size": int(x.shape[0]),
        "rounds": rounds,
        "impl": config.impl,
        "jconv_step_ms": 1e3 * med["jconv"],
        "flax_step_ms": 1e3 * med["flax"],
        "ratio_jconv_over_flax": med["jconv"] / med["flax"],
        "device": jax.devices()[0].device_kind,
        "num_devices": mesh.size,
    }


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------


def plot_filters(params, path) -> None:
    """The 32 first-layer 3x3 filters, each on its own symmetric colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = np.asarray(params["conv1"]["kernel"])[:, :, 0, :]  # (3, 3, 32)
    n = k.shape[-1]
    cols = 8
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(cols * 1.1, math.ceil(n / cols) * 1.25))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            f = k[:, :, i]
            lim = float(np.abs(f).max()) or 1.0
            ax.imshow(f, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_title(str(i), fontsize=7)
    fig.suptitle("conv1: the 32 learned 3x3 filters (red +, blue -)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_feature_maps(model, params, image, label, path) -> None:
    """One digit, the 32 conv1 maps (26x26) and the 64 conv2 maps (11x11), after ReLU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, inter = model.apply({"params": params}, image[None], deterministic=True,
                           capture_intermediates=True, mutable=["intermediates"])
    maps = {name: np.maximum(np.asarray(inter["intermediates"][name]["__call__"][0][0]), 0)
            for name in ("conv1", "conv2")}
    fig = plt.figure(figsize=(17, 3.4))
    sub = fig.subfigures(1, 3, width_ratios=[1, 2, 4])
    ax = sub[0].subplots()
    ax.imshow(image[..., 0], cmap="gray")
    ax.set_title(f"input 28x28 (label {label})", fontsize=9)
    ax.axis("off")
    for sf, name, cols in ((sub[1], "conv1", 8), (sub[2], "conv2", 16)):
        m = maps[name]
        c = m.shape[-1]
        axes = sf.subplots(math.ceil(c / cols), cols, gridspec_kw={"wspace": 0.06, "hspace": 0.06})
        for i, a in enumerate(axes.flat):
            a.axis("off")
            if i < c:
                a.imshow(m[:, :, i], cmap="viridis", interpolation="nearest")
        sf.suptitle(f"{name} + ReLU: {c} maps {m.shape[0]}x{m.shape[1]}", fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _checkpoint_manager(workdir: Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False,
                                             cleanup_tmp_directories=True),
    )


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(path: Path, records: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))


def plan_note(model, variables, batch_size: int, input_shape: tuple = (28, 28, 1)) -> str:
    """Which backend and algorithm run each convolution of the model's forward, in order
    (``conv1: ...``): what the traced program binds, so it follows the model, not a list of shapes.
    ``variables``: the params, or ``{"params": ..., <other collections>}``."""
    if "params" not in variables:
        variables = {"params": variables}
    x = jax.ShapeDtypeStruct((batch_size,) + tuple(input_shape), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, **_mode(model, False)))(variables, x)
    return ", ".join(f"conv{i}: {e.params['impl']}:{e.params['algorithm']}"
                     for i, e in enumerate(primitive.conv_eqns(jaxpr), start=1))


def train_and_evaluate(config, workdir) -> dict[str, Any]:
    """Train the config's model (:func:`build_model`) as ``config`` says; write everything into
    ``workdir``. In every process of a multi-process run (``config.distributed``).

    Returns ``{"records": [...epoch records of this whole run...], "losses": [per-step train
    losses run in this call], "params": final params, "speed": speed record or None}``.
    """
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    try:
        return _train_and_evaluate(config, workdir)
    finally:
        absl_logging.set_verbosity(verbosity)


def _datasets(config):
    """``(xtr, ytr), (xte, yte)``: the config's dataset, cut to its subsets."""
    ds = data_lib.load_dataset(config.dataset, data_dir=config.get("data_dir") or None,
                               cache_dir=config.get("cache_dir") or None)
    (xtr, ytr), (xte, yte) = ds["train"], ds["test"]
    if config.get("train_subset", 0):
        xtr, ytr = xtr[:config.train_subset], ytr[:config.train_subset]
    if config.get("test_subset", 0):
        xte, yte = xte[:config.test_subset], yte[:config.test_subset]
    return (xtr, ytr), (xte, yte)


def _restore(config, workdir: Path, state):
    """``(manager or None, start epoch, state)``: the last checkpoint of ``workdir``, if any."""
    import orbax.checkpoint as ocp

    mngr = _checkpoint_manager(workdir) if config.get("checkpoint", True) else None
    if mngr is None or mngr.latest_step() is None:
        return mngr, 0, state
    start = int(mngr.latest_step())
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    return mngr, start, mngr.restore(start, args=ocp.args.StandardRestore(abstract))


def _train_epoch(train_step, state, xtr, ytr, epoch: int, config, sharding, show: bool):
    """One epoch: ``(state, per-step losses, seconds)``. The order is a function of (seed, epoch)."""
    from tqdm.auto import tqdm

    bs = config.batch_size
    perm = np.random.default_rng([config.seed, epoch]).permutation(len(xtr))
    t0 = time.perf_counter()
    losses = []
    for i in tqdm(range(len(xtr) // bs), desc=f"epoch {epoch}/{config.num_epochs}", unit="step",
                  disable=not show, leave=False):
        idx = np.sort(perm[i * bs:(i + 1) * bs])
        state, loss = train_step(state, *_global_batch(sharding, xtr[idx], ytr[idx]))
        losses.append(loss)
    losses = [float(v) for v in jax.device_get(losses)]
    return state, losses, time.perf_counter() - t0


def _check_batch(config, ndev: int, n_train: int) -> None:
    bs = config.batch_size
    if bs % ndev or bs % jax.process_count():
        raise ValueError(f"train_and_evaluate: batch_size (={bs}) must be divisible by the number of devices (={ndev})")
    if n_train < bs:
        raise ValueError(f"train_and_evaluate: batch_size (={bs}) exceeds the training set (={n_train})")


def _train_and_evaluate(config, workdir) -> dict[str, Any]:
    import orbax.checkpoint as ocp

    initialize_distributed(config)
    workdir = Path(workdir)
    main = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xte, yte) = _datasets(config)
    mesh = make_mesh(config.get("num_devices", 0))
    # The mesh in context lets ops that XLA cannot partition by itself (Pallas' Mosaic kernels
    # on TPU) split the batch with shard_map; for XLA's own ops it changes nothing.
    with jax.set_mesh(mesh):
        ndev, bs = mesh.size, config.batch_size
        _check_batch(config, ndev, len(xtr))
        eval_bs = -(-config.get("eval_batch_size", 256) // ndev) * ndev
        replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        model = build_model(config)
        tx = _optimizer(config)
        state = create_state(model, tx, config.seed, replicated, xtr.shape[1:])
        mngr, start_epoch, state = _restore(config, workdir, state)
        metrics_path = workdir / "metrics.jsonl"
        # records past the checkpoint belong to an epoch that is about to run again
        records = [r for r in _read_metrics(metrics_path) if r.get("kind") == "epoch" and r["epoch"] <= start_epoch]
        if main:
            _write_metrics(metrics_path, records)
            if start_epoch:
                print(f"train_mnist: resumed from the checkpoint of epoch {start_epoch} in {workdir}")
        train_step, eval_step = make_train_step(model, tx, config.seed, mesh), make_eval_step(model, mesh)
        losses: list[float] = []
        for epoch in range(start_epoch + 1, config.num_epochs + 1):
            state, epoch_losses, train_time = _train_epoch(train_step, state, xtr, ytr, epoch, config, batch_sharding,
                                                           main and config.get("progress", True))
            t1 = time.perf_counter()
            acc, test_loss = evaluate(eval_step, _variables(state), xte, yte, eval_bs, batch_sharding)
            record = {"kind": "epoch", "epoch": epoch, "step": int(state["step"]),
                      "train_loss": float(np.mean(epoch_losses)), "test_loss": test_loss, "test_accuracy": acc,
                      "epoch_time_s": train_time, "eval_time_s": time.perf_counter() - t1,
                      "examples_per_s": len(epoch_losses) * bs / train_time, "num_devices": ndev,
                      "num_processes": jax.process_count()}
            losses += epoch_losses
            records.append(record)
            if main:
                _write_metrics(metrics_path, records)  # metrics first: a kill before the checkpoint re-runs the epoch
                print(f"epoch {epoch}: train loss {record['train_loss']:.4f}, test accuracy {acc:.4f}, {train_time:.1f}s")
            if mngr is not None:
                mngr.save(epoch, args=ocp.args.StandardSave(state))
                mngr.wait_until_finished()
        if mngr is not None:
            mngr.close()
        return _finish(config, workdir, model, state, records, losses, mesh, (xtr, ytr), (xte, yte), main)


def _finish(config, workdir: Path, model, state, records, losses, mesh, train, test, main: bool) -> dict[str, Any]:
    """Pictures, the speed comparison and ``summary.json`` after training."""
    (xtr, ytr), (xte, yte) = train, test
    params, bs, speed = state["params"], config.batch_size, None
    if main and config.get("plots", True) and isinstance(model, MnistCNN):
        plot_filters(params, workdir / "filters.png")
        plot_feature_maps(model, params, xte[0], int(yte[0]), workdir / "feature_maps.png")
    if config.get("speed_rounds", 0):
        idx = np.arange(bs)
        sharding = NamedSharding(mesh, P("data"))
        speed = compare_step_speed(config, state, *_global_batch(sharding, xtr[idx], ytr[idx]), mesh, config.speed_rounds)
        if main:
            _write_metrics(workdir / "metrics.jsonl", records + [speed])
    if main:
        summary = {
            "dataset": config.dataset, "train_examples": len(xtr), "test_examples": len(xte),
            "epochs": config.num_epochs,
            "final_test_accuracy": records[-1]["test_accuracy"] if records else None,
            "train_time_s": sum(r["epoch_time_s"] for r in records), "impl": config.impl,
            "model": config.get("model", "mnist_cnn"),
            "plan": plan_note(model, _variables(state), bs, xtr.shape[1:]) if config.get("conv", "jconv") == "jconv"
            else "flax.linen.Conv",
            "speed": speed, "devices": f"{mesh.size} x {jax.devices()[0].device_kind}",
            "processes": jax.process_count(),
            "jax": jax.__version__, "cpu_count": os.cpu_count(),
        }
        atomic_write(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return {"records": records, "losses": losses, "params": params, "speed": speed}
