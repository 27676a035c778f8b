"""Post-training int8 quantization (jconv_experiments/quantize.py): the scales, one quantized
conv layer against the integer computation done by XLA, the quantized MNIST CNN's accuracy
after a short training on the embedded digits, and the experiment's outputs.

(The Flax modules' integer inputs and kernels, as nn.Conv takes them, are tested in
tests/test_linen.py and tests/test_nnx.py: test_integer_inputs_and_kernels_as_flax.)
"""

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv.linen as jl
from jconv import primitive
from jconv.impls import onednn
from jconv_experiments import quantize as Q

REPO = Path(__file__).resolve().parents[1]


def test_quantize_kernel_per_output_channel():
    w = np.random.default_rng(0).normal(size=(3, 3, 4, 5)).astype(np.float32) * np.float32([0.01, 0.1, 1, 10, 0])
    q, s = Q.quantize_kernel(w)
    assert q.dtype == jnp.int8 and s.shape == (5,)
    amax = np.max(np.abs(np.asarray(w)), axis=(0, 1, 2))
    np.testing.assert_allclose(np.asarray(s)[:4], amax[:4] / 127, rtol=1e-6)
    assert float(s[4]) == 1.0 and not np.any(np.asarray(q)[..., 4])  # an all-zero channel
    assert np.all(np.max(np.abs(np.asarray(q)), axis=(0, 1, 2))[:4] == 127)  # each channel uses the range
    err = np.abs(np.asarray(q, np.float32) * np.asarray(s) - np.asarray(w))
    assert np.all(err <= np.asarray(s) / 2 + 1e-6)  # round to nearest


def test_activation_scale_max_abs_and_percentile():
    x = np.concatenate([np.linspace(-1, 1, 999), [50.0]]).astype(np.float32)
    assert Q.activation_scale(x) == pytest.approx(50.0 / 127)
    assert Q.activation_scale(x, 99.0) == pytest.approx(float(np.percentile(np.abs(x), 99.0)) / 127)
    assert Q.activation_scale(np.zeros(4)) == 1.0
    q = Q.quantize_activation(jnp.asarray(x), Q.activation_scale(x, 99.0))
    assert q.dtype == jnp.int8 and int(q.max()) == 127  # beyond the percentile: saturated
    with pytest.raises(ValueError, match=r"activation_scale: percentile \(=0.0\)"):
        Q.activation_scale(x, 0.0)


@pytest.mark.parametrize("kw", [dict(padding="VALID"), dict(padding="SAME", strides=2),
                                dict(padding=1, feature_group_count=2, use_bias=False)])
def test_quantized_conv_is_the_exact_integer_computation(kw):
    """int8 x int8 -> int32 through the layer's module (impl auto: oneDNN on this CPU) equals
    XLA's own int8 convolution exactly, dequantized by the same scales; and stays close to
    the float32 layer."""
    mod = jl.Conv2D(8, 3, **kw)
    x = jax.nn.relu(jax.random.normal(jax.random.key(1), (4, 12, 12, 6)))
    variables = mod.init(jax.random.key(0), x)
    qstate = Q.quantize_model(mod, variables, x)
    q = qstate[""]  # the top-level module's path
    y = Q.quantized_conv(mod, x, q)
    assert y.dtype == jnp.float32
    xq = Q.quantize_activation(x, q["x_scale"])
    s, pad = kw.get("strides", 1), {"VALID": "VALID", "SAME": "SAME"}.get(kw["padding"], [(1, 1), (1, 1)])
    acc = jax.lax.conv_general_dilated(xq, q["kernel"], (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       feature_group_count=kw.get("feature_group_count", 1),
                                       preferred_element_type=jnp.int32)  # XLA's int8 conv
    ref = acc.astype(jnp.float32) * (q["x_scale"] * q["w_scale"])[None, None, None]
    if q["bias"] is not None:
        ref = ref + q["bias"][None, None, None]
    np.testing.assert_array_equal(np.asarray(y), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(Q.quantized_conv(mod, x, q, impl="xla")), np.asarray(ref))
    jaxpr = jax.make_jaxpr(lambda x: Q.quantized_conv(mod, x, q))(x)
    (eqn,) = primitive.conv_eqns(jaxpr)
    assert [v.aval.dtype for v in eqn.invars[:2]] == [jnp.int8, jnp.int8]
    if onednn.jconv_onednn is not None and onednn._MISSING is None:
        assert eqn.params["impl"] == "onednn"
    y32 = mod.apply(variables, x)
    assert float(jnp.max(jnp.abs(y - y32))) < 0.02 * float(jnp.max(jnp.abs(y32)))


def test_masked_or_conv_free_models_are_refused():
    x = jnp.ones((1, 6, 6, 2))
    mod = jl.Conv2D(3, 3, mask=jnp.ones((3, 3, 2, 3)))
    variables = mod.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="quantized_conv: .* has a mask"):
        Q.quantized_apply(mod, variables, Q.quantize_model(mod, variables, x), x)
    import flax.linen as nn

    dense = nn.Dense(3)
    with pytest.raises(ValueError, match="quantize_model: model Dense calls no jconv.linen.Conv2D"):
        Q.quantize_model(dense, dense.init(jax.random.key(0), x), x)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The seed's CNN, 2 epochs on the embedded digits (1,347 train / 450 test), then quantized
    by the experiment (config.quantize) as the CLI runs it."""
    from configs.digits import get_config
    from jconv_experiments import train_mnist

    c = get_config()
    c.update(num_epochs=2, progress=False, plots=False, speed_rounds=0, checkpoint=False,
             quantize=True, quantize_rounds=2, quantize_calibration=128)
    wd = tmp_path_factory.mktemp("quantized")
    return wd, train_mnist.run(c, wd)


def test_quantized_cnn_accuracy_within_half_a_point(trained):
    """Within 0.5 percentage points of float32 on the 450 test digits (at most 2 examples)."""
    wd, out = trained
    rec = out["quantized"]
    assert rec["float32_accuracy"] == out["records"][-1]["test_accuracy"]  # the same model, evaluated again
    assert rec["float32_accuracy"] > 0.85  # trained: the comparison means something
    assert abs(rec["difference_pp"]) <= 0.5
    assert rec["difference_pp"] == pytest.approx(100 * (rec["int8_accuracy"] - rec["float32_accuracy"]))
    assert rec["int8_xla_accuracy"] == rec["int8_accuracy"]  # exact integer convs either way
    assert rec["layers"] == ["conv1", "conv2"] and rec["calibration_examples"] == 128
    assert rec["plan_int8_xla"] == "xla:xla, xla:xla"
    if onednn.jconv_onednn is not None and onednn._MISSING is None:
        assert rec["plan_int8"] == "onednn:onednn, onednn:onednn"


def test_experiment_writes_record_report_and_summary(trained, capsys):
    wd, out = trained
    rec = out["quantized"]
    (line,) = (wd / "quantized.jsonl").read_text().splitlines()
    assert json.loads(line) == rec
    assert json.loads((wd / "summary.json").read_text())["quantized"] == rec
    for k in ("float32_ms", "int8_ms", "int8_xla_ms"):
        assert rec[k] > 0
    assert rec["ratio_float32_over_int8"] == pytest.approx(rec["float32_ms"] / rec["int8_ms"])
    assert [c["layer"] for c in rec["conv_layers"]] == ["conv1", "conv2"]
    assert [c["input_shape"] for c in rec["conv_layers"]] == [[256, 28, 28, 1], [256, 13, 13, 32]]
    assert all(c[k] > 0 for c in rec["conv_layers"] for k in ("float32_ms", "int8_ms", "int8_xla_ms"))
    report = (wd / "report.md").read_text()
    assert report.startswith("## Post-training int8 quantization") and Q.table([rec]) in report
    assert f"{100 * rec['int8_accuracy']:.2f}%" in Q.table([rec])
    Q._main(["--table", str(wd / "quantized.jsonl")])
    assert capsys.readouterr().out.strip() == Q.table([rec])


def test_bad_calibration_size(trained):
    from configs.digits import get_config
    from jconv_experiments.data import load_digits
    from jconv_experiments.train import build_model

    c = get_config()
    c.quantize_calibration = 0
    d = load_digits()
    with pytest.raises(ValueError, match=r"run_quantized: quantize_calibration \(=0\) must be in 1..1347"):
        Q.run_quantized(c, trained[0], build_model(c), trained[1]["params"], d["train"], d["test"])


def test_docs_table_is_generated_from_the_committed_record():
    path = REPO / "docs" / "perf" / "quantized_digits.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert records and all(abs(r["difference_pp"]) <= 0.5 for r in records)
    doc = (REPO / "docs" / "conformance.md").read_text()
    assert Q.table(records) in doc
    assert re.search(r"python -m jconv_experiments\.quantize --table docs/perf/quantized_digits\.jsonl", doc)
