"""The seed's MNIST CNN: per-layer shapes and parameter counts, dropout, the flax twin, nnx."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jconv
from jconv_experiments.models import MnistCNN, NnxMnistCNN, layer_table, summary
from jconv.testing import assert_close

# "Tracing Through Your MNIST Model"
SEED_TABLE = [
    ("input", (28, 28, 1), 0),
    ("conv1", (26, 26, 32), 320),
    ("pool1", (13, 13, 32), 0),
    ("conv2", (11, 11, 64), 18_496),
    ("pool2", (5, 5, 64), 0),
    ("flatten", (1600,), 0),
    ("dropout", (1600,), 0),
    ("dense", (10,), 16_010),
]


def test_layer_table_is_the_seeds():
    assert layer_table() == SEED_TABLE
    # and the seed's arithmetic agrees
    assert jconv.conv_params(1, 32, 3) == 320 and jconv.conv_params(32, 64, 3) == 18_496
    assert jconv.dense_params(1600, 10) == 16_010


def test_summary_prints_both_tables():
    text = summary()
    for needle in ("(batch, 26, 26, 32)", "18,496", "16,010", "34,826", "Conv2D", "MaxPool2D", "float32[1,5,5,64]"):
        assert needle in text, needle


def test_jconv_and_flax_twins_share_params_and_outputs():
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    ours, ref = MnistCNN(impl="lax"), MnistCNN(conv="flax")
    params = ref.init(jax.random.key(0), x, deterministic=True)
    jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(0), x, deterministic=True), params)
    assert_close(ours.apply(params, x, deterministic=True), ref.apply(params, x, deterministic=True), jnp.float32)
    with pytest.raises(ValueError, match="MnistCNN: conv"):
        MnistCNN(conv="torch").init(jax.random.key(0), x, deterministic=True)


def test_dropout_only_when_not_deterministic():
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    model = MnistCNN()
    params = model.init(jax.random.key(0), x, deterministic=True)
    a = model.apply(params, x, deterministic=True)
    np.testing.assert_array_equal(a, model.apply(params, x, deterministic=True))
    b = model.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)


def test_nnx_twin_has_the_seeds_parameters():
    model = NnxMnistCNN(rngs=nnx.Rngs(0))
    counts = {k: sum(int(np.size(p)) for p in jax.tree.leaves(nnx.state(getattr(model, k), nnx.Param)))
              for k in ("conv1", "conv2", "dense")}
    assert counts == {"conv1": 320, "conv2": 18_496, "dense": 16_010}
    model.eval()
    y = model(jnp.zeros((2, 28, 28, 1)))
    assert y.shape == (2, 10)


@pytest.mark.parametrize("shape, p", [((2, 26, 26, 3), 2), ((2, 11, 11, 4), 2), ((1, 9, 7, 2), 3)])
def test_max_pool_matches_flax_values_and_gradients_ties_included(shape, p):
    """jconv_experiments.models.max_pool == nn.max_pool, forward and VJP, also where windows tie (relu
    zeros, repeated small integers): the gradient goes to one element of the window, the same."""
    import flax.linen as nn

    from jconv_experiments.models import max_pool

    rng = np.random.default_rng(0)
    ref = lambda x: nn.max_pool(x, (p, p), strides=(p, p), padding="VALID")  # noqa: E731
    for x in (rng.normal(size=shape), np.maximum(rng.normal(size=shape), 0), rng.integers(0, 3, size=shape)):
        x = jnp.asarray(x, jnp.float32)
        y, vjp = jax.vjp(lambda v: max_pool(v, p), x)
        y_ref, vjp_ref = jax.vjp(ref, x)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
        g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
        np.testing.assert_array_equal(np.asarray(vjp(g)[0]), np.asarray(vjp_ref(g)[0]))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda v: max_pool(v, p).sum()))(x))
    assert "select_and_scatter" not in jaxpr and "reduce_window" not in jaxpr


def test_max_pool_rejects_bad_sizes():
    from jconv_experiments.models import max_pool

    with pytest.raises(ValueError, match="pool size"):
        max_pool(jnp.ones((1, 4, 4, 1)), 0)
    with pytest.raises(ValueError, match="smaller than"):
        max_pool(jnp.ones((1, 1, 4, 1)), 2)
