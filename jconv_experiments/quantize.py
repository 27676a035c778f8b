"""Post-training int8 quantization of the seed's MNIST CNN: its convolutions run in int8.

    python -m jconv_experiments --config=configs/digits.py --config.quantize=True --workdir=runs/q
    python -m jconv_experiments.quantize --table docs/perf/quantized_digits.jsonl   # the docs table

After training, every :class:`jconv.linen.Conv2D` of the model is quantized (the dense layer
stays float32):

* weights: symmetric, per output channel, int8 in [-127, 127]: ``scale_w[o] = max|w[..., o]| / 127``;
* activations (the layer's input): symmetric, one scale per layer, from a calibration batch of
  training images: ``scale_x = max|x| / 127`` (max-abs; ``percentile < 100`` uses that
  percentile of ``|x|`` instead, clipping the rest);
* the convolution is the layer's own module cloned with ``param_dtype=int8``, a ``promote_dtype``
  that keeps integers and ``preferred_element_type=int32`` (as ``nn.Conv`` takes integer
  kernels): int8 x int8 -> int32, exact (oneDNN on the CPU where ``impl="auto"`` picks it);
* dequantized as ``acc * scale_x * scale_w[o]`` in float32, then the float32 bias.

The quantized forward is the float model run under :func:`flax.linen.intercept_methods`, with
each conv call replaced by the integer one (:func:`quantized_apply`), so pooling, ReLU and the
dense head are the model's own code. :func:`run_quantized` evaluates float32 and int8 on the
test set, times both forwards (and int8 with ``impl="xla"``) in one process, and writes
``quantized.jsonl`` and a ``report.md`` section into the workdir.
"""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype

import jconv.linen
from jconv import primitive
from jconv.files import atomic_write
from jconv.timing import time_interleaved

__all__ = ["quantize_kernel", "activation_scale", "quantize_activation", "conv_inputs", "quantize_model",
           "quantized_conv", "quantized_apply", "accuracy", "run_quantized", "markdown", "table"]

QMAX = 127  # symmetric int8: [-127, 127], zero exact


def _keep_ints(*args, dtype=None):
    """flax's promote_dtype without the cast to float: integer operands stay integers."""
    return promote_dtype(*args, dtype=dtype, inexact=False)


def quantize_kernel(kernel) -> tuple[jax.Array, jax.Array]:
    """``(int8 kernel, float32 scale per output channel)`` of an HWIO kernel:
    ``kernel ~= q * scale`` with ``scale[o] = max|kernel[..., o]| / 127`` (1 for an all-zero channel)."""
    k = jnp.asarray(kernel, jnp.float32)
    amax = jnp.max(jnp.abs(k), axis=tuple(range(k.ndim - 1)), keepdims=True)
    scale = jnp.where(amax > 0, amax / QMAX, 1.0)
    return jnp.clip(jnp.round(k / scale), -QMAX, QMAX).astype(jnp.int8), scale.reshape(-1)


def activation_scale(x, percentile: float = 100.0) -> float:
    """The int8 scale of a calibration activation: ``max|x| / 127`` (``percentile`` 100), else the
    ``percentile`` of ``|x|`` over 127 (values beyond it saturate)."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"activation_scale: percentile (={percentile}) must be in (0, 100]")
    a = np.abs(np.asarray(x, np.float32))
    amax = float(a.max()) if percentile == 100.0 else float(np.percentile(a, percentile))
    return amax / QMAX if amax > 0 else 1.0


def quantize_activation(x, scale) -> jax.Array:
    """``round(x / scale)`` clipped to [-127, 127], as int8."""
    return jnp.clip(jnp.round(x / scale), -QMAX, QMAX).astype(jnp.int8)


def _key(module: nn.Module) -> str:
    return "/".join(module.path)


def _is_conv_call(context) -> bool:
    return context.method_name == "__call__" and isinstance(context.module, jconv.linen.Conv2D)


def _conv_calls(model: nn.Module, variables, x, **mode) -> dict[str, tuple]:
    """``{path: (unbound copy of the layer, its input)}`` for every :class:`jconv.linen.Conv2D`
    call of ``model.apply(variables, x, **mode)``, in call order."""
    seen = {}

    def record(next_fun, args, kwargs, context):
        if _is_conv_call(context):
            seen[_key(context.module)] = (context.module.clone(parent=None, name=None), args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(variables, x, **mode)
    return seen


def conv_inputs(model: nn.Module, variables, x, **mode) -> dict[str, jax.Array]:
    """The input of every :class:`jconv.linen.Conv2D` call of ``model.apply(variables, x, **mode)``,
    by module path (``"conv1"``), in call order."""
    return {k: x for k, (_, x) in _conv_calls(model, variables, x, **mode).items()}


def _params_at(variables, path: str) -> dict:
    p = variables["params"]
    for part in filter(None, path.split("/")):  # "" is the top-level module
        p = p[part]
    return p


def quantize_model(model: nn.Module, variables, x_calib, *, percentile: float = 100.0, **mode) -> dict:
    """``{path: {"kernel": int8, "w_scale": (O,), "x_scale": (), "bias": float32 or None}}`` for
    every conv layer of ``model``: weights per output channel, activations from ``x_calib``."""
    inputs = conv_inputs(model, variables, x_calib, **mode)
    if not inputs:
        raise ValueError(f"quantize_model: model {type(model).__name__} calls no jconv.linen.Conv2D")
    out = {}
    for path, x in inputs.items():
        p = _params_at(variables, path)
        q, w_scale = quantize_kernel(p["kernel"])
        bias = jnp.asarray(p["bias"], jnp.float32) if "bias" in p else None
        out[path] = {"kernel": q, "w_scale": w_scale, "bias": bias,
                     "x_scale": jnp.float32(activation_scale(x, percentile))}
    return out


def int_conv(module: jconv.linen.Conv2D, impl: str | None = None) -> jconv.linen.Conv2D:
    """The conv layer ``module`` as an integer convolution, as ``nn.Conv`` takes integers: int8
    kernel (``param_dtype``), a ``promote_dtype`` that keeps integers, int32 accumulation
    (``preferred_element_type``), no bias; ``impl``: the module's unless given."""
    if module.mask is not None:
        raise ValueError(f"quantized_conv: {_key(module)} has a mask; quantize the masked kernel instead")
    return module.clone(parent=None, name=None, use_bias=False, dtype=None, param_dtype=jnp.int8,
                        kernel_init=nn.initializers.zeros_init(),  # flax checks shapes with it
                        promote_dtype=_keep_ints, preferred_element_type=jnp.int32, impl=impl or module.impl)


def quantized_conv(module: jconv.linen.Conv2D, x, q: dict, impl: str | None = None) -> jax.Array:
    """The conv layer ``module`` on float ``x`` in int8: quantize ``x``, int8 x int8 -> int32 by
    :func:`int_conv`, dequantize with ``x_scale * w_scale``, add the float bias."""
    acc = int_conv(module, impl).apply({"params": {"kernel": q["kernel"]}}, quantize_activation(x, q["x_scale"]))
    per_channel = (1,) * (acc.ndim - 1) + (-1,)  # (O,) against NHWO, explicitly
    y = acc.astype(jnp.float32) * (q["x_scale"] * q["w_scale"]).reshape(per_channel)
    return y if q["bias"] is None else y + q["bias"].reshape(per_channel)


def quantized_apply(model: nn.Module, variables, qstate: dict, x, *, impl: str | None = None, **mode):
    """``model.apply(variables, x, **mode)`` with each quantized conv layer (a path in ``qstate``)
    run by :func:`quantized_conv`; everything else as the model computes it."""

    def swap(next_fun, args, kwargs, context):
        if _is_conv_call(context) and _key(context.module) in qstate:
            return quantized_conv(context.module, args[0], qstate[_key(context.module)], impl)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(swap):
        return model.apply(variables, x, **mode)


def accuracy(fn, images, labels, batch_size: int) -> float:
    """Fraction of ``argmax(fn(x)) == label`` over all examples (last batch zero-padded)."""
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        n = len(x)
        if n < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])
        pred = np.asarray(jnp.argmax(fn(x), -1))[:n]
        correct += int(np.sum(pred == labels[i:i + n]))
    return correct / len(images)


def _plan(fn, x) -> str:
    jaxpr = jax.make_jaxpr(fn)(x)
    return ", ".join(f"{e.params['impl']}:{e.params['algorithm']}" for e in primitive.conv_eqns(jaxpr))


def _local(tree):
    """A host copy of (possibly replicated, multi-device) arrays: one device's data."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)


def _forwards(model, variables, qstate, mode) -> dict:
    """The three jitted forwards: float32 (the model's impl), int8 (the model's impl), int8 (xla)."""
    f32 = jax.jit(lambda x: model.apply(variables, x, **mode))
    q = {impl: jax.jit(lambda x, impl=impl: quantized_apply(model, variables, qstate, x, impl=impl, **mode))
         for impl in (None, "xla")}
    return {"float32": f32, "int8": q[None], "int8_xla": q["xla"]}


def _timed(calls: dict, rounds: int) -> dict:
    """Median ms of each ``(fn, arg)`` call, interleaved rounds of 3-call blocks (first untimed)."""
    runners = {k: functools.partial(lambda f, a: jax.block_until_ready(f(a)), f, a) for k, (f, a) in calls.items()}
    times = time_interleaved(runners, warmup=2, iters=rounds, min_iters=rounds, block=3)
    ms = {f"{k}_ms": 1e3 * statistics.median(t) for k, t in times.items()}
    return dict(ms, ratio_float32_over_int8=ms["float32_ms"] / ms["int8_ms"],
                ratio_float32_over_int8_xla=ms["float32_ms"] / ms["int8_xla_ms"])


def _layer_speed(model, variables, qstate, x, rounds: int, mode) -> list[dict]:
    """Each conv layer alone on its input at this batch: float32 (the layer, with bias) against
    the int8 x int8 -> int32 convolution of the quantized input (auto, and xla)."""
    rows = []
    for path, (mod, xin) in _conv_calls(model, variables, x, **mode).items():
        params, q = {"params": _params_at(variables, path)}, qstate[path]
        xq = quantize_activation(xin, q["x_scale"])
        calls = {"float32": (jax.jit(lambda a, m=mod, p=params: m.apply(p, a)), xin)}
        for name, impl in (("int8", None), ("int8_xla", "xla")):
            m = int_conv(mod, impl)
            calls[name] = (jax.jit(lambda a, m=m, k=q["kernel"]: m.apply({"params": {"kernel": k}}, a)), xq)
        rows.append(dict(layer=path, input_shape=list(xin.shape), **_timed(calls, rounds)))
    return rows


def run_quantized(config, workdir, model, params, train, test) -> dict:
    """Quantize the trained ``model`` (``params``) with a calibration batch of ``train`` images,
    evaluate float32 and int8 on ``test``, time the forwards; write ``quantized.jsonl`` and
    ``report.md`` into ``workdir``; return the record."""
    from jconv_experiments.bench.env import cpu_model
    from jconv_experiments.train import _mode

    (xtr, _), (xte, yte) = train, test
    mode = _mode(model, False)
    n_cal, pct = int(config.get("quantize_calibration", 256)), float(config.get("quantize_percentile", 100.0))
    if not 1 <= n_cal <= len(xtr):
        raise ValueError(f"run_quantized: quantize_calibration (={n_cal}) must be in 1..{len(xtr)} (training examples)")
    variables = {"params": _local(params)}
    qstate = quantize_model(model, variables, xtr[:n_cal], percentile=pct, **mode)
    fns = _forwards(model, variables, qstate, mode)
    bs = min(int(config.get("eval_batch_size", 256)), len(xte))
    acc = {k: accuracy(f, xte, yte, bs) for k, f in fns.items()}
    rec = {
        "kind": "quantized", "dataset": config.dataset, "model": config.get("model", "mnist_cnn"),
        "epochs": config.num_epochs, "test_examples": len(xte), "calibration_examples": n_cal,
        "activation_range": "max-abs" if pct == 100.0 else f"percentile {pct:g}",
        "weights": "int8 symmetric per output channel", "activations": "int8 symmetric per layer",
        "float_layers": "dense (float32)", "layers": list(qstate),
        "float32_accuracy": acc["float32"], "int8_accuracy": acc["int8"], "int8_xla_accuracy": acc["int8_xla"],
        "difference_pp": 100.0 * (acc["int8"] - acc["float32"]),
        "impl": config.impl, "plan_float32": _plan(fns["float32"], xte[:bs]),
        "plan_int8": _plan(fns["int8"], xte[:bs]), "plan_int8_xla": _plan(fns["int8_xla"], xte[:bs]),
        "batch": bs, "rounds": int(config.get("quantize_rounds", 0)),
    }
    if rec["rounds"]:
        xb = jnp.asarray(xte[:bs])
        rec.update(_timed({k: (f, xb) for k, f in fns.items()}, rec["rounds"]))
        rec["conv_layers"] = _layer_speed(model, variables, qstate, xb, rec["rounds"], mode)
    rec.update(device=jax.devices()[0].device_kind, cpu_model=cpu_model(), jax=jax.__version__)
    workdir = Path(workdir)
    atomic_write(workdir / "quantized.jsonl", json.dumps(rec) + "\n")
    atomic_write(workdir / "report.md", markdown([rec]))
    return rec


def table(records: list[dict]) -> str:
    """The markdown table of quantization records: accuracy and forward time, float32 vs int8."""
    out = ["| data | test examples | float32 acc. | int8 acc. | int8 - float32 | batch | float32 ms | "
           "int8 ms (auto) | int8 ms (xla) | float32 / int8 auto | float32 / int8 xla |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        t = (f"{r['float32_ms']:.2f} | {r['int8_ms']:.2f} | {r['int8_xla_ms']:.2f} | "
             f"{r['ratio_float32_over_int8']:.2f}x | {r['ratio_float32_over_int8_xla']:.2f}x"
             if "float32_ms" in r else "- | - | - | - | -")
        out.append(f"| {r['dataset']} ({r['epochs']} epochs) | {r['test_examples']} | "
                   f"{100 * r['float32_accuracy']:.2f}% | {100 * r['int8_accuracy']:.2f}% | "
                   f"{r['difference_pp']:+.2f} pp | {r['batch']} | {t} |")
    layers = [(r, c) for r in records for c in r.get("conv_layers", [])]
    if layers:
        out += ["", "| data | conv alone | input | float32 ms | int8 ms (auto) | int8 ms (xla) | "
                "float32 / int8 auto | float32 / int8 xla |", "|---|---|---|---:|---:|---:|---:|---:|"]
        out += [f"| {r['dataset']} | {c['layer']} | {'x'.join(map(str, c['input_shape']))} | {c['float32_ms']:.2f} | "
                f"{c['int8_ms']:.2f} | {c['int8_xla_ms']:.2f} | {c['ratio_float32_over_int8']:.2f}x | "
                f"{c['ratio_float32_over_int8_xla']:.2f}x |" for r, c in layers]
    return "\n".join(out)


def markdown(records: list[dict]) -> str:
    """The report section: what was quantized, how, the table, the plans and the CPU."""
    r = records[-1]
    return "\n".join([
        "## Post-training int8 quantization", "",
        f"Layers {', '.join(r['layers'])}: {r['weights']} weights, {r['activations']} activations "
        f"({r['activation_range']} of a calibration batch of {r['calibration_examples']} training images), "
        f"int8 x int8 -> int32 convolution, dequantized in float32 with the float32 bias; {r['float_layers']}. "
        "Times: median of interleaved rounds (blocks of 3 calls, the first untimed) of the whole "
        "forward at the batch shown, then of each convolution alone (float32: the layer with its bias; "
        "int8: the int8 x int8 -> int32 convolution of the quantized input); a ratio above 1 means int8 "
        "is faster.", "",
        table(records), "",
        f"Convolutions run by: float32 `{r['plan_float32']}`; int8 (auto) `{r['plan_int8']}`; "
        f"int8 (xla) `{r['plan_int8_xla']}`. int8 accuracy with impl xla: {100 * r['int8_xla_accuracy']:.2f}%. "
        f"{r['device']}, {r['cpu_model']}, jax {r['jax']}.", ""])


def _main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Print the markdown table of quantized.jsonl records.")
    p.add_argument("--table", required=True, help="a jsonl of records written by run_quantized")
    a = p.parse_args(argv)
    with open(a.table) as f:
        print(table([json.loads(line) for line in f if line.strip()]))


if __name__ == "__main__":
    _main()
