"""The Flax side of a zoo model's measurement: variables, inputs, the loss, the optimiser, the
jitted inference forward and train step, and the gradient read back from a first step.

A train step is what a training loop runs: ``(state, x, y) -> (state, loss)`` with the state
``{"params", "batch_stats", "opt_state"}`` donated (updated in place), BatchNorm in training
mode (its running statistics updated), the optimiser applied. After the *first* step from a
state, the optimiser's first moment is the gradient (SGD with momentum: the trace equals the
gradient; Adam: ``mu = (1 - b1) * grad``): :func:`first_step_grads` reads it back, so the
gradients are checked without compiling a second program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jconv_experiments.zoo import ModelSpec

__all__ = ["abstract_variables", "random_variables", "make_inputs", "optimizer", "loss_fn", "inference_fn",
           "train_step_fn", "init_state", "first_step_grads", "grads_float64"]

ADAM_B1 = 0.9


def abstract_variables(module, input_shape: tuple) -> dict:
    """The variables tree of ``module`` (params float32; batch_stats for BatchNorm models) as
    ShapeDtypeStructs: ``module.init`` traced, nothing computed or compiled."""
    x = jax.ShapeDtypeStruct((1,) + tuple(input_shape[1:]), jnp.float32)
    return jax.eval_shape(lambda k, a: module.init(k, a, train=False), jax.random.key(0), x)


def random_variables(module, input_shape: tuple, seed: int = 0) -> dict:
    """Variables for measuring and checking, as float32 NumPy arrays in ``module``'s tree:
    kernels ``N(0, 1/fan_in)`` (fan-in: every axis but the last), norm scales and layer scales
    ``1 + 0.2 n``, biases and running means ``0.2 n``, running variances ``1 + 0.2 |n|``.

    Not flax's initialisation, on purpose: flax zeroes each ResNet block's last BatchNorm scale
    and ConvNeXt's layer scale starts at 1e-6, so at initialisation the residual branches would
    contribute nothing to an output check; these values exercise every path, as a trained
    network's do. (And no initialiser is compiled: the tree comes from an abstract trace.)"""
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        n = rng.standard_normal(leaf.shape).astype(np.float32)
        if name == "kernel":
            return n / np.float32(np.sqrt(np.prod(leaf.shape[:-1])))
        if name in ("scale", "gamma"):
            return 1 + 0.2 * n
        if name == "var":
            return 1 + 0.2 * np.abs(n)
        return 0.2 * n

    return jax.tree_util.tree_map_with_path(value, abstract_variables(module, input_shape))


def make_inputs(spec: ModelSpec, batch: int, seed: int = 0, image_size: int | None = None,
                channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, labels)``: x ~ N(0, 1) NHWC float32, integer labels (per pixel for segmentation)."""
    rng = np.random.default_rng(seed)
    shape = spec.input_shape(batch, image_size, channels)
    x = rng.standard_normal(shape, dtype=np.float32)
    label_shape = shape[:3] if spec.task == "segment" else shape[:1]
    return x, rng.integers(0, spec.num_classes, label_shape).astype(np.int32)


def optimizer(spec: ModelSpec) -> optax.GradientTransformation:
    kind, lr, arg = spec.optimizer
    if kind == "sgd":
        return optax.sgd(lr, momentum=arg)
    if kind == "adamw":
        return optax.adamw(lr, b1=ADAM_B1, b2=0.999, eps=1e-8, weight_decay=arg)
    raise ValueError(f"zoo.optimizer: optimizer (={kind!r}) must be 'sgd' or 'adamw'")


def loss_fn(logits, labels, dtype=jnp.float32):
    """Mean softmax cross-entropy (over examples, and pixels for segmentation), in float32
    (``dtype``: float64 for :func:`grads_float64`).

    Against one-hot targets: the integer-label form gathers, and its gradient scatters, which
    XLA constant-folds for a segmentation map at compile time (seconds per program)."""
    logits = logits.astype(dtype)
    return jnp.mean(optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1])))


def inference_fn(module):
    """``f(variables, x) -> logits``: evaluation mode (BatchNorm's running statistics)."""
    return lambda variables, x: module.apply(variables, x, train=False)


def train_step_fn(module, tx):
    """``step(state, x, y) -> (state, loss)``: forward in training mode, backward, optimiser."""

    def step(state, x, y):
        stats = state["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(_train_loss(module, stats, x, y), has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "batch_stats": new_stats, "opt_state": opt_state}, loss

    return step


def _train_loss(module, stats, x, y, dtype=jnp.float32):
    """``params -> (loss, new batch_stats)``: the forward in training mode and the loss."""

    def loss_of(params):
        variables = {"params": params, **({"batch_stats": stats} if stats else {})}
        if stats:
            logits, upd = module.apply(variables, x, train=True, mutable=["batch_stats"])
            return loss_fn(logits, y, dtype), upd["batch_stats"]
        return loss_fn(module.apply(variables, x, train=True), y, dtype), stats

    return loss_of


def grads_float64(module, variables: dict, x, y) -> tuple[float, dict]:
    """``(loss, grads)`` of a train step's loss in float64: ``module`` (built with
    ``dtype="float64"``, e.g. ``zoo.build(name, "xla", dtype="float64")``), the variables and
    ``x`` cast to float64, the forward, BatchNorm's statistics, the loss and the backward all in
    float64 (``jax.enable_x64``): the reference a float32 step's gradients are measured against
    (what :func:`train_step_fn` differentiates, without the optimiser). NumPy float64 leaves."""
    with jax.enable_x64(True):
        wide = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), variables)
        stats = wide.get("batch_stats", {})
        f = jax.jit(jax.value_and_grad(lambda p, a, b: _train_loss(module, stats, a, b, jnp.float64)(p),
                                       has_aux=True))
        (loss, _), grads = f(wide["params"], jnp.asarray(np.asarray(x, np.float64)), jnp.asarray(y))
        return float(loss), jax.tree.map(lambda g: np.asarray(g, np.float64), jax.device_get(grads))


def init_state(variables: dict, tx) -> dict:
    params = jax.tree.map(jnp.asarray, variables["params"])
    return {"params": params, "batch_stats": jax.tree.map(jnp.asarray, variables.get("batch_stats", {})),
            "opt_state": tx.init(params)}


def first_step_grads(spec: ModelSpec, opt_state) -> dict:
    """The gradient of the first step from a fresh optimiser state, read from its first moment."""
    kind = spec.optimizer[0]
    if kind == "sgd":
        return optax.tree_utils.tree_get(opt_state, "trace")
    return jax.tree.map(lambda m: m / (1 - ADAM_B1), optax.tree_utils.tree_get(opt_state, "mu"))
