"""The tuner: it measures, its cache steers ``auto``, and bad input or a bad file says so."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv
from jconv import primitive, tune_cache, tuning
from jconv.conv import _execute

X = jax.ShapeDtypeStruct((2, 12, 12, 16), jnp.float32)
W = jax.ShapeDtypeStruct((3, 3, 4, 16), jnp.float32)  # 4 groups of 4 channels
KW = dict(padding=1, groups=4)


# these tests read the lax rules as auto's untuned choice (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("lax_rules")


@pytest.fixture(autouse=True)
def no_cache(monkeypatch):
    monkeypatch.delenv(tune_cache.ENV_VAR, raising=False)
    jconv.use_tune_cache(None)
    yield
    jconv.use_tune_cache(None)


def _spec():
    return jconv.parse_conv2d(X.shape, X.dtype, W.shape, W.dtype, **KW)


def _arrays():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.standard_normal(X.shape), jnp.float32),
            jnp.asarray(rng.standard_normal(W.shape), jnp.float32))


def _uses_dot(fn, *args):
    # a fresh function each time: make_jaxpr, like jit, reuses a trace of the same function
    # object (so a function jitted before a tune keeps its old choice: tune before you jit).
    # The convolution is a primitive: look at what it lowers to.
    jaxpr = jax.make_jaxpr(lambda *a: fn(*a))(*args)
    return any("dot_general" in str(k) for k in primitive.kernel_jaxprs(jaxpr))


def test_tune_measures_every_candidate_and_auto_runs_the_winner(tmp_path):
    assert jconv.plan_for(_spec()).algorithm == "mac"  # the rules' choice
    path = tmp_path / "tune.json"
    res = jconv.tune(X, W, **KW, iters=2, cache=path, margin=0.0)
    assert res.best in res.times_ms and res.cache == str(path)
    assert set(res.times_ms) | set(res.dropped) == set(tuning.candidates_for(_spec().execute_spec(), "cpu"))
    assert res.times_ms[res.best] == min(res.times_ms.values())
    p = jconv.plan_for(_spec())
    assert p.reason.startswith("auto: tuned") and p.explicit == res.best
    entry = json.loads(path.read_text())["entries"][res.key]
    assert entry["impl"] == res.best and entry["objective"] == "fwd+bwd"
    assert tuning.summary(res).startswith(f"{res.best} (fwd+bwd: {res.best} ")


def test_the_rules_choice_is_kept_within_the_margin():
    res = jconv.tune(X, W, **KW, candidates=["lax:taps", "lax:mac", "lax:im2col"], iters=1, margin=1e9, prune=1e9)
    assert res.best == "lax:mac" and len(res.times_ms) == 3


def test_the_cache_steers_auto_and_a_new_tune_retraces(tmp_path):
    x, w = _arrays()
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       feature_group_count=4, precision="highest")
    f = lambda x, w: jconv.conv2d(x, w, **KW)  # noqa: E731
    jconv.tune(X, W, **KW, candidates=["lax:taps"], iters=1, cache=tmp_path / "t.json")
    assert _uses_dot(f, x, w)  # taps: one GEMM per tap (the rules' mac has no dot)
    np.testing.assert_allclose(f(x, w), ref, rtol=1e-4, atol=1e-4)
    jconv.tune(X, W, **KW, candidates=["lax:mac"], iters=1, objective="fwd")
    assert not _uses_dot(f, x, w)
    n1 = _execute._cache_size()
    np.testing.assert_allclose(f(x, w), ref, rtol=1e-4, atol=1e-4)
    assert _execute._cache_size() == n1 + 1  # the eager call compiled the new choice
    # both tunes went to the same (active) file
    entries = json.loads((tmp_path / "t.json").read_text())["entries"]
    assert [e["impl"] for e in entries.values()] == ["lax:mac"]


def test_cache_file_is_read_from_the_environment_and_by_use_tune_cache(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    jconv.tune(X, W, **KW, candidates=["lax:im2col"], iters=1, cache=path)
    jconv.use_tune_cache(None)
    assert jconv.plan_for(_spec()).algorithm == "mac"  # no cache: the rules
    jconv.use_tune_cache(path)
    assert jconv.plan_for(_spec()).algorithm == "im2col"
    monkeypatch.setattr(tune_cache, "_state", {"path": None, "entries": None, "env_read": False})
    monkeypatch.setenv(tune_cache.ENV_VAR, str(path))
    assert jconv.plan_for(_spec()).algorithm == "im2col"
    # a different shape is not in the cache
    other = jconv.parse_conv2d((3,) + X.shape[1:], X.dtype, W.shape, W.dtype, **KW)
    assert jconv.plan_for(other).algorithm == "mac"


def test_a_tune_without_cache_argument_writes_to_the_environments_file(tmp_path, monkeypatch):
    path = tmp_path / "env.json"
    monkeypatch.setattr(tune_cache, "_state", {"path": None, "entries": None, "env_read": False})
    monkeypatch.setenv(tune_cache.ENV_VAR, str(path))
    res = jconv.tune(X, W, **KW, candidates=["lax:im2col"], iters=1)  # the first cache use
    assert res.cache == str(path)
    assert json.loads(path.read_text())["entries"][res.key]["impl"] == "lax:im2col"


@pytest.mark.parametrize("stale", ["lax:depthwise", "lax:winograd", "auto", "nonsense", None])
def test_a_stale_entry_is_ignored_with_a_warning(tmp_path, caplog, stale):
    path = tmp_path / "c.json"
    res = jconv.tune(X, W, **KW, candidates=["lax:taps"], iters=1, cache=path)
    data = json.loads(path.read_text())
    data["entries"][res.key]["impl"] = stale  # e.g. depthwise cannot run a grouped conv
    path.write_text(json.dumps(data))
    jconv.use_tune_cache(path)
    with caplog.at_level(logging.WARNING, logger="jconv.select"):
        p = jconv.plan_for(_spec())
    assert p.algorithm == "mac" and not p.reason.startswith("auto: tuned")
    assert f"ignoring the tune cache entry {stale!r}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jconv.select"):
        jconv.plan_for(_spec())
    assert "ignoring" not in caplog.text  # once per entry, not on every call


def test_explicit_impls_ignore_the_cache(tmp_path):
    jconv.tune(X, W, **KW, candidates=["lax:taps"], iters=1, cache=tmp_path / "c.json")
    assert jconv.plan_for(_spec(), "lax").algorithm == "mac"
    assert jconv.plan_for(_spec(), "xla").impl == "xla"


@pytest.mark.parametrize("kwargs, match", [
    (dict(objective="bwd"), r"objective \(='bwd'\)"),
    (dict(iters=0), r"iters \(=0\)"),
    (dict(candidates=["auto"]), "candidates must name implementations"),
    (dict(candidates="xla"), r"candidates \(="),
    (dict(candidates=["lax:winograd"]), r"impl \(='lax:winograd'\)"),
    (dict(prune=0.5), r"prune \(=0.5\)"),
    (dict(margin=-1), r"margin \(=-1\)"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jconv.tune(X, W, **KW, **kwargs)


def test_an_integer_convolution_has_no_training_objective():
    x, w = (jax.ShapeDtypeStruct(a.shape, jnp.int8) for a in (X, W))
    with pytest.raises(ValueError, match=r"tune: objective \(='fwd\+bwd'\) needs a gradient; a convolution of int8"):
        jconv.tune(x, w, **KW)


def test_bad_convolution_arguments_are_the_parsers_errors():
    with pytest.raises(ValueError, match=r"tune: groups \(=3\) must divide"):
        jconv.tune(X, W, padding=1, groups=3)
    with pytest.raises(TypeError, match="tune: x"):
        jconv.tune([1, 2], W)


def test_a_file_that_is_not_a_cache_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        jconv.use_tune_cache(bad)
    bad.write_text(json.dumps({"something": 1}))
    with pytest.raises(ValueError, match="is not a jconv tune cache"):
        jconv.use_tune_cache(bad)


def test_compare_with_tune_tunes_each_layer_once_and_rows_say_so(tmp_path):
    from configs import smoke
    from jconv_experiments import compare

    cfg = smoke.get_config()
    cfg.suite = "tiny_grouped_s2_nchw"
    cfg.impls = ("xla", "auto")
    cfg.passes = ("fwd", "fwd+bwd")
    cfg.tune, cfg.tune_iters, cfg.iters, cfg.report = True, 1, 1, False
    compare.run(cfg, str(tmp_path))
    entries = json.loads((tmp_path / "tune.json").read_text())["entries"]
    assert len(entries) == 1  # one layer x batch x dtype, tuned once for both passes
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    auto = [r for r in rows if r["impl"] == "auto"]
    assert len(auto) == 2 and all(r["plan_reason"].startswith("auto: tuned") and r["agrees_with_xla"] for r in auto)
    (impl,) = {e["impl"] for e in entries.values()}
    assert {r["plan"] for r in auto} == {impl if ":" in impl else f"{impl}:{impl}"}


def test_compare_rejects_bad_tune_fields():
    from configs import smoke
    from jconv_experiments import compare

    for field, value, match in (("tune_objective", "bwd", r"config.tune_objective \(='bwd'\)"),
                                ("tune_iters", 0, r"config.tune_iters \(=0\)")):
        cfg = smoke.get_config()
        cfg[field] = value
        with pytest.raises(ValueError, match=match):
            compare.validate(cfg)
