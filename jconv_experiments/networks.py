"""Whole networks: jconv against XLA and PyTorch on the zoo's models (``configs/models.py``).

    python -m jconv_experiments --config=configs/models.py --workdir=runs/models
    python -m jconv_experiments.networks --table docs/perf/models_cpu.jsonl   # docs/models.md's tables

For each model (:mod:`jconv_experiments.zoo`), dtype and pass (``inference``: the forward in
evaluation mode; ``train``: one full train step, forward and backward in training mode with
BatchNorm's statistics updated, and the optimiser), the candidates are built from the same
variables and inputs and run in one process:

* ``jconv``: the Flax model with ``jconv.linen.Conv`` / ``ConvTranspose`` (``config.impl``);
* ``xla``: the same Flax model with ``flax.linen.Conv`` / ``ConvTranspose`` (XLA's convolution),
  the baseline every speedup is relative to;
* ``torch``: the PyTorch twin (:mod:`jconv_experiments.zoo.torch_models`), eager, NCHW,
  ``torch.autocast`` for bfloat16 (PyTorch's mixed precision; the Flax models compute in
  bfloat16 with float32 parameters);
* ``torch_compile``: the twin under ``torch.compile`` (default inductor backend), for the
  passes in ``config.torch_compile``.

Checked in the run: the logits (inference), or the loss and every gradient of a first step
(train; the gradient read from the optimiser's first moment, :mod:`jconv_experiments.zoo.steps`),
against ``xla``'s, as ``scaled_error`` with the config's tolerance. Float32 train steps with
``config.reference64`` are judged against the same step in float64 instead (one per model,
:func:`reference64`): each candidate's errors within ``max(tolerance, reference64_factor *
xla's own)``, since a deep BatchNorm network's float32 gradient is only that close to the exact
one whichever library computes it (docs/models.md). Timed together by
:func:`jconv.timing.time_interleaved` (rounds of ``block`` calls, the first of each block
untimed, rotating order; a candidate whose call takes longer than ``slow_call_s`` runs one timed
call per round); medians. The train steps keep training (the state donated, the twin's
parameters updated in place), as a training loop does. Then each candidate in
``config.profile`` is profiled apart (:mod:`jconv_experiments.bench.profile`): seconds per call
in convolutions, normalisation, dense layers, the other layers, loss and optimiser.

Rows (``results.jsonl``, key ``(model, dtype, pass, candidate)``) are appended as each group
finishes; a rerun measures only the missing groups. ``report.md`` and ``models.png`` come from
:mod:`jconv_experiments.report.networks`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

from jconv import primitive
from jconv.files import atomic_write_json
from jconv.testing import scaled_error
from jconv.timing import memory_stats, time_interleaved
from jconv_experiments import zoo
from jconv_experiments.bench import env_info, profile
from jconv_experiments.bench.store import ResultStore
from jconv_experiments.zoo import steps

KEY = ("model", "dtype", "pass", "candidate")
PASSES = ("inference", "train")
CANDIDATES = ("jconv", "xla", "torch", "torch_compile")
BASELINE = "xla"


def _names(value) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


def validate(config) -> None:
    def bad(field, rule):
        return ValueError(f"networks: config.{field} (={config[field]!r}) {rule}")

    for field, allowed in (("models", tuple(zoo.MODELS)), ("passes", PASSES), ("candidates", CANDIDATES),
                           ("dtypes", ("float32", "bfloat16")), ("profile", CANDIDATES),
                           ("torch_compile", PASSES), ("torch_compile_dtypes", ("float32", "bfloat16")),
                           ("profile_dtypes", ("float32", "bfloat16"))):
        names = _names(config[field])
        if not names and field in ("models", "passes", "candidates", "dtypes"):
            raise bad(field, "names nothing")
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise bad(field, f"names {unknown}; choose from {allowed}")
    if BASELINE not in _names(config.candidates):
        raise bad("candidates", f"must include the baseline {BASELINE!r} (every check and speedup is against it)")
    for field in ("batch", "rounds", "block", "profile_calls"):
        if int(config[field]) < 1:
            raise bad(field, "must be >= 1")
    if float(config.get("reference64_factor", 2.0)) < 1:
        raise bad("reference64_factor", "must be >= 1 (a candidate may be as far from float64 as the baseline)")


def _candidates(config, dtype: str, pass_: str) -> list[str]:
    """The config's candidates for one group (torch.compile only for its passes and dtypes)."""
    return [n for n in _names(config.candidates) if n != "torch_compile"
            or (pass_ in _names(config.torch_compile) and dtype in _names(config.torch_compile_dtypes))]


# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    """One model at one dtype: the spec, the shared variables (float32 NumPy) and inputs."""

    spec: zoo.ModelSpec
    dtype: str
    variables: dict
    x: np.ndarray
    y: np.ndarray
    classes: dict      # module path -> class name (for the profile)
    root: str          # the model's class name (the op_name segment the module paths follow)


def make_setup(config, name: str, dtype: str) -> Setup:
    spec = zoo.get(name)
    size = int(config.image_size) or (spec.small_image_size if config.small else spec.image_size)
    module = zoo.build(name, BASELINE, dtype=dtype, small=config.small)
    variables = steps.random_variables(module, spec.input_shape(1, size), config.seed)
    x, y = steps.make_inputs(spec, int(config.batch), config.seed, image_size=size)
    classes = profile.module_classes(module, variables, x, train=False)
    return Setup(spec, dtype, variables, x, y, classes, type(module).__name__)


@dataclasses.dataclass
class Candidate:
    run: object                        # () -> None, blocking
    fields: dict                       # row fields (plan, compile_s, memory, ...)
    logits: np.ndarray | None = None   # inference output (float64)
    loss: float | None = None          # train: the first step's loss
    grads: object = None               # train: flax grads tree, or for torch (flax grads) -> [(torch, ref)]
    compiled: object = None            # the XLA executable (for the profile)
    torch_run: object = None           # torch's runner (for the profile)
    first_s: float = 0.0               # seconds of the first call (the one whose outputs are checked)


def _plan_counts(module, variables, x) -> str:
    jaxpr = jax.make_jaxpr(lambda v, a: module.apply(v, a, train=False))(variables, x)
    counts = collections.Counter(f"{e.params['impl']}:{e.params['algorithm']}" for e in primitive.conv_eqns(jaxpr))
    return ", ".join(f"{k} x{n}" for k, n in counts.most_common()) or "no jconv convolution"


def jax_candidate(setup: Setup, conv: str, pass_: str, config) -> Candidate:
    module = zoo.build(setup.spec.name, conv, impl=config.impl, dtype=setup.dtype, small=config.small)
    plan = _plan_counts(module, setup.variables, setup.x) if conv == "jconv" else "flax.linen.Conv (XLA)"
    t0 = time.perf_counter()
    if pass_ == "inference":
        variables = jax.device_put(setup.variables)
        exe = jax.jit(steps.inference_fn(module)).lower(variables, setup.x).compile()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = np.asarray(jax.block_until_ready(exe(variables, setup.x)), np.float64)
        cand = Candidate(lambda: jax.block_until_ready(exe(variables, setup.x)), {}, logits=out)
    else:
        tx = steps.optimizer(setup.spec)
        state = steps.init_state(setup.variables, tx)
        exe = jax.jit(steps.train_step_fn(module, tx), donate_argnums=0).lower(state, setup.x, setup.y).compile()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        holder = list(jax.block_until_ready(exe(state, setup.x, setup.y)))  # the first step: checked
        grads = jax.device_get(steps.first_step_grads(setup.spec, holder[0]["opt_state"]))

        def run():
            holder[:] = exe(holder[0], setup.x, setup.y)
            jax.block_until_ready(holder[1])

        cand = Candidate(run, {}, loss=float(holder[1]), grads=grads)
    cand.first_s = time.perf_counter() - t0
    cand.compiled = exe
    cand.fields = dict(memory_stats(exe), plan=plan, compile_s=compile_s, flops=_flops(exe))
    return cand


def _flops(exe) -> float | None:
    try:
        cost = exe.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost["flops"]) if cost and "flops" in cost else None
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def torch_candidate(setup: Setup, compiled: bool, pass_: str, config) -> Candidate:
    import torch

    from jconv_experiments.zoo import torch_models, torch_transfer as tt

    tt.set_threads(int(config.torch_threads) or os.cpu_count() or 1)
    twin = torch_models.build_torch(setup.spec.name, small=config.small, channels=setup.x.shape[-1])
    model = tt.load_flax_variables(twin, setup.variables)
    net = torch.compile(model) if compiled else model
    plan = f"torch {torch.__version__} " + ("torch.compile (inductor)" if compiled else "eager") + \
        f", {torch.get_num_threads()} threads" + (", autocast bfloat16" if setup.dtype == "bfloat16" else "")
    t0 = time.perf_counter()
    if pass_ == "inference":
        run = tt.inference_runner(net, setup.x, setup.dtype)
        cand = Candidate(run, {}, logits=tt.logits_numpy(run()))
    else:
        run = tt.train_step_runner(setup.spec, net, setup.x, setup.y, setup.dtype)
        cand = Candidate(run, {}, loss=float(run()), grads=lambda ref, dt: tt.torch_grads_vs(model, ref, dt))
    first = time.perf_counter() - t0
    cand.torch_run, cand.first_s = run, first
    cand.fields = {"plan": plan, "compile_s": first if compiled else None, "first_call_s": first}
    return cand


def build_candidate(setup: Setup, name: str, pass_: str, config) -> Candidate:
    if name in ("jconv", "xla"):
        return jax_candidate(setup, name, pass_, config)
    return torch_candidate(setup, name == "torch_compile", pass_, config)


# --------------------------------------------------------------------------------------------
# check, time, profile
# --------------------------------------------------------------------------------------------


def tolerances(config, dtype: str) -> dict:
    """``{"logits": tol, "grads": tol}`` for ``dtype`` (config fields ``tol_<dtype>``)."""
    fwd, grad = config[f"tol_{dtype}"]
    return {"logits": float(fwd), "grads": float(grad)}


def grad_pairs(c: Candidate, ref_grads, dtype=np.float32) -> list[tuple]:
    """``[(candidate's gradient, reference's), ...]`` per parameter, in the order of
    ``jax.tree.leaves(ref_grads)`` (torch: in its layout, the reference as ``dtype``)."""
    if callable(c.grads):  # torch: its .grad against flax's gradients in torch's layout
        return c.grads(ref_grads, dtype)
    return list(zip(jax.tree.leaves(c.grads), jax.tree.leaves(ref_grads)))


def reference64(setup: Setup, pass_: str, config) -> tuple[float, dict] | None:
    """The float64 train step's ``(loss, grads)`` (:func:`steps.grads_float64`, the baseline's
    model) where ``config.reference64`` asks for it: float32 train passes only."""
    if pass_ != "train" or setup.dtype != "float32" or not config.get("reference64", False):
        return None
    module = zoo.build(setup.spec.name, BASELINE, dtype="float64", small=config.small)
    return steps.grads_float64(module, setup.variables, setup.x, setup.y)


def check(cands: dict[str, Candidate], pass_: str, tols: dict, ref64=None, factor: float = 2.0) -> dict[str, dict]:
    """Per candidate, its errors against the baseline's outputs and whether they are within
    ``tols``: ``err_logits`` (inference), or ``err_loss`` and ``err_grads`` (the worst leaf).

    With ``ref64`` (a float64 train step's ``(loss, grads)``, :func:`reference64`) a train
    step is judged against it instead: ``within_tol`` (and ``within_tol_vs64``) says whether
    ``err_loss_vs64`` and ``err_grads_vs64`` are within ``max(tol, factor * the baseline's own
    error against float64)``; ``within_tol_vs_xla`` keeps the comparison with the baseline."""
    ref = cands[BASELINE]
    out = {}
    for name, c in cands.items():
        if pass_ == "inference":
            e = scaled_error(c.logits, ref.logits)
            out[name] = {"err_logits": e, "tol_logits": tols["logits"], "within_tol": bool(e <= tols["logits"])}
            continue
        e_loss = abs(c.loss - ref.loss) / max(1.0, abs(ref.loss))
        e_grads = max(scaled_error(a, b) for a, b in grad_pairs(c, ref.grads))
        out[name] = {"err_loss": e_loss, "err_grads": e_grads, "tol_logits": tols["logits"],
                     "tol_grads": tols["grads"],
                     "within_tol": bool(e_loss <= tols["logits"] and e_grads <= tols["grads"])}
    if ref64 is not None and pass_ == "train":
        errs = {n: errors_vs64(c, ref64) for n, c in cands.items()}
        base_loss, base_grads = errs[BASELINE]
        tol_loss, tol_grads = max(tols["logits"], factor * base_loss), max(tols["grads"], factor * base_grads)
        for name, (e_loss, e_grads) in errs.items():
            out[name].update(err_loss_vs64=e_loss, err_grads_vs64=e_grads, xla_err_loss_vs64=base_loss,
                             xla_err_grads_vs64=base_grads, tol_loss_vs64=tol_loss, tol_grads_vs64=tol_grads,
                             reference64_factor=factor, within_tol_vs_xla=out[name]["within_tol"],
                             within_tol_vs64=bool(e_loss <= tol_loss and e_grads <= tol_grads))
            out[name]["within_tol"] = out[name]["within_tol_vs64"]
    return out


def errors_vs64(c: Candidate, ref64) -> tuple[float, float]:
    """(loss, worst gradient leaf): ``c``'s scaled errors against a float64 ``(loss, grads)``."""
    loss, grads = ref64
    return (abs(c.loss - loss) / max(1.0, abs(loss)),
            max(scaled_error(a, b) for a, b in grad_pairs(c, grads, np.float64)))


def time_candidates(cands: dict[str, Candidate], config) -> tuple[dict[str, list[float]], set[str]]:
    """Interleaved rounds; a candidate whose call takes longer than ``slow_call_s`` (its first
    call, or a second one where the first was slower: torch.compile compiles in its first) skips
    the warm-up and runs one timed call per round: blocks are for calls short enough that the
    previous candidate's freed memory and spinning threads would weigh on them."""
    slow = set()
    for n, c in cands.items():
        t = c.first_s
        if t > float(config.slow_call_s):
            t0 = time.perf_counter()
            c.run()
            t = time.perf_counter() - t0
        if t > float(config.slow_call_s):
            slow.add(n)
    times = time_interleaved({n: c.run for n, c in cands.items()}, warmup=1, iters=int(config.rounds),
                             min_iters=int(config.min_rounds), max_time_s=float(config.max_time_s),
                             no_warmup=slow, block=int(config.block))
    return times, slow


def profile_candidate(setup: Setup, c: Candidate, config) -> dict:
    calls = int(config.profile_calls)
    if c.compiled is not None:
        return profile.jax_breakdown(c.compiled, c.run, calls, setup.root, setup.classes)
    return profile.torch_breakdown(c.torch_run, calls)


# --------------------------------------------------------------------------------------------


def measure_group(config, setup: Setup, pass_: str) -> list[dict]:
    """The rows of one (model, dtype, pass): every candidate built, checked, timed, profiled."""
    names = _candidates(config, setup.dtype, pass_)
    base = {"model": setup.spec.name, "dtype": setup.dtype, "pass": pass_, "batch": int(config.batch),
            "image_size": setup.x.shape[1], "title": setup.spec.title,
            "params": int(sum(np.size(a) for a in jax.tree.leaves(setup.variables["params"])))}
    cands, rows = {}, {}
    for name in names:
        rows[name] = dict(base, candidate=name)
        try:
            cands[name] = build_candidate(setup, name, pass_, config)
            rows[name].update(cands[name].fields)
        except Exception as e:  # noqa: BLE001 - a candidate that cannot run is a row with its error
            if name == BASELINE:
                raise
            rows[name]["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:500] if str(e).strip() else ''}"
            print(f"networks: {setup.spec.name} {setup.dtype} {pass_} {name}: {rows[name]['error']}", file=sys.stderr)
    ref64 = reference64(setup, pass_, config)
    factor = float(config.get("reference64_factor", 2.0))
    for name, fields in check(cands, pass_, tolerances(config, setup.dtype), ref64, factor).items():
        rows[name].update(fields)
    times, slow = time_candidates(cands, config)
    for name, ts in times.items():
        rows[name].update(time_median_s=statistics.median(ts), time_min_s=min(ts), iters=len(ts),
                          block=1 if name in slow else int(config.block))
    for name in times:
        rows[name]["speedup_vs_xla"] = rows[BASELINE]["time_median_s"] / rows[name]["time_median_s"]
    for name in _names(config.profile) if setup.dtype in _names(config.profile_dtypes) else ():
        if name in cands:
            try:
                rows[name]["breakdown_s"] = profile_candidate(setup, cands[name], config)
            except Exception as e:  # noqa: BLE001 - the timing stands without its profile
                rows[name]["profile_error"] = f"{type(e).__name__}: {e}"[:500]
    return [rows[n] for n in names]


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run(config, workdir: str) -> None:
    validate(config)
    os.makedirs(workdir, exist_ok=True)
    store = ResultStore(os.path.join(workdir, "results.jsonl"), KEY)
    groups = [(m, d, p) for m in _names(config.models) for d in _names(config.dtypes) for p in _names(config.passes)]
    todo = [g for g in groups if any((*g, c) not in store for c in _candidates(config, g[1], g[2]))]
    env_path = os.path.join(workdir, "env.json")
    if todo or not os.path.exists(env_path):
        env = env_info()
        env.update(load_average_start=load_average(), config=json.loads(config.to_json()))
        atomic_write_json(env_path, env, indent=2)
    t_start = time.perf_counter()
    for model, dtype in dict.fromkeys((m, d) for m, d, _ in todo):
        setup = make_setup(config, model, dtype)
        for pass_ in [p for m, d, p in todo if (m, d) == (model, dtype)]:
            t0 = time.perf_counter()
            for row in measure_group(config, setup, pass_):
                if (model, dtype, pass_, row["candidate"]) not in store:
                    store.append(dict(row, load_average=load_average(),
                                      time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
            print(f"networks: {model} {dtype} {pass_}: {time.perf_counter() - t0:.0f} s", flush=True)
    if todo:
        with open(env_path) as f:
            env = json.load(f)
        env.update(load_average_end=load_average(), wall_s=time.perf_counter() - t_start)
        atomic_write_json(env_path, env, indent=2)
    if config.report:
        from jconv_experiments import report

        print(f"networks: {len(store)} rows in {store.path}; report: {report.build_report(workdir)}")


def _main(argv=None) -> None:
    import argparse

    from jconv_experiments.bench.store import load_rows
    from jconv_experiments.report.networks import docs_table, targets_table

    p = argparse.ArgumentParser(description="Print docs/models.md's tables from a results.jsonl of this experiment.")
    p.add_argument("--table", required=True, help="a results.jsonl written by run (e.g. docs/perf/models_cpu.jsonl)")
    a = p.parse_args(argv)
    rows = load_rows(a.table, KEY)
    print(docs_table(rows))
    print()
    print(targets_table(rows))


if __name__ == "__main__":
    _main()
