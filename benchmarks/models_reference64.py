"""How far each float32 train step's gradients are from the same step in float64.

    JAX_PLATFORMS=cpu python benchmarks/models_reference64.py            # ResNet-50, MobileNetV2
    python benchmarks/models_reference64.py --small --out /tmp/r64.jsonl  # the zoo's small models
    python benchmarks/models_reference64.py --table docs/perf/models_reference64.jsonl  # docs/models.md's table

The models experiment (configs/models.py) found the ResNet-50 and MobileNetV2 float32 train
steps' gradients of jconv and PyTorch equally far (~1e-2) from XLA's. This measures which is
nearest the exact gradient: the reference is the baseline Flax model (flax.linen.Conv) with
variables, inputs, forward, BatchNorm statistics, loss and backward all in float64
(:func:`jconv_experiments.zoo.steps.grads_float64`), at the experiment's batch and image size.
Each candidate's first train step is built as the experiment builds it
(:mod:`jconv_experiments.networks`): ``xla`` (flax.linen.Conv), ``jconv`` (jconv.linen.Conv,
impl auto), ``jconv_xla`` (jconv.linen.Conv with impl="xla": the same XLA convolution through
jconv's module) and ``torch`` (the PyTorch twin, eager). One row per (model, candidate):
the scaled errors of its loss and its worst gradient leaf against float64 and against XLA's
float32 step, and its five worst leaves against float64. The env (lscpu) beside the rows.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import time

import jax
import numpy as np

from configs import models as models_config
from jconv.files import atomic_write_json
from jconv.testing import scaled_error
from jconv_experiments import networks, zoo
from jconv_experiments.bench import env_info
from jconv_experiments.zoo import steps

CANDIDATES = ("xla", "jconv", "jconv_xla", "torch")
TITLES = {"xla": "XLA (flax.linen.Conv)", "jconv": "jconv (impl auto)", "jconv_xla": "jconv, impl `xla`",
          "torch": "PyTorch eager"}


def build(setup, name: str, config):
    if name == "torch":
        return networks.torch_candidate(setup, False, "train", config)
    cfg = copy.deepcopy(config)
    if name == "jconv_xla":
        cfg.impl = "xla"
    return networks.jax_candidate(setup, "jconv" if name.startswith("jconv") else "xla", "train", cfg)


def leaf_names(grads) -> list[str]:
    return ["/".join(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(grads)]


def measure_model(config, model: str, names) -> list[dict]:
    setup = networks.make_setup(config, model, "float32")
    t0 = time.perf_counter()
    ref64 = steps.grads_float64(zoo.build(model, "xla", dtype="float64", small=config.small),
                                setup.variables, setup.x, setup.y)
    ref64_s = time.perf_counter() - t0
    print(f"{model}: float64 step {ref64_s:.0f} s, loss {ref64[0]:.9g}", flush=True)
    paths = leaf_names(ref64[1])
    base = {"model": model, "dtype": "float32", "pass": "train", "batch": int(config.batch),
            "image_size": int(setup.x.shape[1]), "small": bool(config.small), "loss64": ref64[0],
            "reference64_s": ref64_s}
    cands, rows = {}, []
    for name in names:
        c = cands[name] = build(setup, name, config)
        pairs = networks.grad_pairs(c, ref64[1], np.float64)
        errs = sorted(((scaled_error(a, b), p) for (a, b), p in zip(pairs, paths)), reverse=True)
        e_loss, e_grads = networks.errors_vs64(c, ref64)
        row = dict(base, candidate=name, plan=c.fields.get("plan"), loss=c.loss, err_loss_vs64=e_loss,
                   err_grads_vs64=e_grads, worst_leaves_vs64=[[p, e] for e, p in errs[:5]],
                   median_leaf_err_vs64=float(np.median([e for e, _ in errs])))
        if name != "xla":
            xla = cands["xla"]
            row["err_loss_vs_xla"] = abs(c.loss - xla.loss) / max(1.0, abs(xla.loss))
            row["err_grads_vs_xla"] = max(scaled_error(a, b) for a, b in networks.grad_pairs(c, xla.grads))
        print(f"{model} {name}: grads vs float64 {e_grads:.3g} (worst {errs[0][1]}), loss {e_loss:.3g}"
              + (f"; grads vs xla {row['err_grads_vs_xla']:.3g}" if "err_grads_vs_xla" in row else ""), flush=True)
        rows.append(row)
        c.run = c.compiled = c.torch_run = None  # free the executables before the next candidate
    return rows


def table(rows: list[dict]) -> str:
    """docs/models.md's table: per model, each candidate's worst gradient leaf against float64
    (scaled error) and that over XLA's."""
    from jconv_experiments.report.common import table as md_table

    by = {(r["model"], r["candidate"]): r for r in rows}
    cands = list(dict.fromkeys(r["candidate"] for r in rows))
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        errs = [by[(model, c)]["err_grads_vs64"] if (model, c) in by else None for c in cands]
        xla = by[(model, "xla")]["err_grads_vs64"]
        lines.append([model] + [f"{e:.2e} ({e / xla:.2f}x)" if e is not None else "-" for e in errs])
    return md_table(["model"] + [TITLES[c] for c in cands], lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,mobilenet_v2")
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--batch", type=int, default=0, help="0: configs/models.py's (8)")
    p.add_argument("--small", action="store_true", help="the zoo's small models (a quick check)")
    p.add_argument("--out", default="docs/perf/models_reference64.jsonl")
    p.add_argument("--table", help="print docs/models.md's table from this jsonl (measures nothing)")
    a = p.parse_args(argv)
    if a.table:
        with open(a.table) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return
    config = models_config.get_config()
    config.small = a.small
    if a.batch:
        config.batch = a.batch
    names = [n for n in a.candidates.split(",") if n]
    if "torch" in names and importlib.util.find_spec("torch") is None:
        print("models_reference64: torch is not installed; leaving it out", file=sys.stderr)
        names.remove("torch")
    if names[0] != "xla" or any(n not in CANDIDATES for n in names):
        raise ValueError(f"models_reference64: --candidates (={a.candidates!r}) must start with 'xla' "
                         f"and name only {CANDIDATES}")
    env = dict(env_info(), config=json.loads(config.to_json()), argv=sys.argv[1:])
    rows = []
    for model in a.models.split(","):
        rows += measure_model(config, model, names)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    atomic_write_json(a.out.removesuffix(".jsonl") + ".env.json", env, indent=2)
    print(f"models_reference64: {len(rows)} rows in {a.out}")


if __name__ == "__main__":
    main()
