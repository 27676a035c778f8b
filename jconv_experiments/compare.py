"""The comparison experiment: jconv's implementations vs ``lax.conv_general_dilated``.

For every case (a named real layer from :mod:`jconv_experiments.suite`) x dtype x pass x impl of the
config, one row in ``<workdir>/results.jsonl``: errors against a float64 reference and against
XLA, median time, compile time, GFLOP/s, memory. Rows are appended as they finish, so a killed
run resumes where it stopped; at the end ``report.md`` and the plots are rebuilt from the file.
The measuring itself is :func:`jconv_experiments.bench.measure_group`; the report is :mod:`jconv_experiments.report`.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import ml_collections

import jconv
from jconv import tune_cache, tuning
from jconv.files import atomic_write_json
from jconv_experiments import bench, report
from jconv.geometry import FLOAT_DTYPES
from jconv.impls import registry
from jconv_experiments.suite import CASES, SUITES, Case, get_suite

PRECISIONS = ("default", "high", "highest")


def _err(field: str, value, rule: str) -> ValueError:
    return ValueError(f"compare: config.{field} (={value!r}) {rule}")


def _case_names(field: str, value: str) -> list[str]:
    """A suite name, ``"all"``, ``"none"``/``""``, or comma-separated case names."""
    if not isinstance(value, str):
        raise _err(field, value, "must be a string: a suite name, 'all', 'none' or comma-separated case names")
    v = value.strip()
    if v in ("", "none"):
        return []
    if v == "all":
        return list(CASES)
    if v in SUITES:
        return list(SUITES[v])
    names = [n.strip() for n in v.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise _err(field, value, f"names unknown cases {unknown}; suites: {sorted(SUITES)}; cases: {sorted(CASES)}")
    return names


def validate(config: ml_collections.ConfigDict) -> None:
    """Every value checked before anything runs; a ValueError names the field and its value."""
    _case_names("suite", config.suite)
    _case_names("interpreted_cases", config.interpreted_cases)
    for field in ("dtypes", "impls", "passes"):
        v = config[field]
        if isinstance(v, str) or not isinstance(v, (tuple, list)) or not v:
            raise _err(field, v, "must be a non-empty tuple of strings")
    for d in config.dtypes:
        if d not in FLOAT_DTYPES:
            raise _err("dtypes", tuple(config.dtypes), f"must contain only {FLOAT_DTYPES}")
    for p in config.passes:
        if p not in bench.PASSES:
            raise _err("passes", tuple(config.passes), f"must contain only {bench.PASSES}")
    for impl in config.impls:
        if impl in bench.PEERS:
            continue
        try:
            registry.check_impl("compare", impl)
        except (TypeError, ValueError) as e:
            raise _err("impls", tuple(config.impls), f"contains {impl!r}, which is neither one of "
                       f"{tuple(bench.PEERS)} nor a jconv impl ({e})") from None
    if config.precision not in PRECISIONS:
        raise _err("precision", config.precision, f"must be one of {PRECISIONS}")
    if config.tune_objective not in tuning.OBJECTIVES:
        raise _err("tune_objective", config.tune_objective, f"must be one of {tuning.OBJECTIVES}")
    for field, lo in (("batch", 1), ("tune_iters", 1), ("iters", 1), ("min_iters", 1), ("warmup", 0), ("block", 1), ("interpreted_iters", 1),
                      ("torch_threads", 0)):
        if int(config[field]) < lo:
            raise _err(field, config[field], f"must be >= {lo}")
    for field in ("max_time_s", "max_fwd_gflop", "x64_reference_max_gflop", "grad_tol_factor"):
        if float(config[field]) < 0:
            raise _err(field, config[field], "must be >= 0")


def _precision(config) -> str | None:
    return None if config.precision == "default" else config.precision


def settings(config: ml_collections.ConfigDict) -> bench.Settings:
    return bench.Settings(
        warmup=config.warmup, iters=config.iters, min_iters=config.min_iters,
        max_time_s=config.max_time_s, block=config.block, interpreted_iters=config.interpreted_iters,
        precision=_precision(config),
        x64_reference_max_gflop=config.x64_reference_max_gflop,
        grad_tol_factor=config.grad_tol_factor, torch_threads=config.torch_threads, seed=config.seed,
    )


def batch_for(case: Case, config) -> int:
    """``config.batch``, lowered (to >= 1) so one forward is at most ``max_fwd_gflop``."""
    if not config.max_fwd_gflop:
        return int(config.batch)
    per_example = case.flops(1) / 1e9
    return max(1, min(int(config.batch), int(config.max_fwd_gflop // per_example)))


def _interpreted_here(impl: str) -> bool:
    """Whether ``impl`` names a backend that runs interpreted on this platform (slow)."""
    base = impl.partition(":")[0]
    return base in registry.names() and jax.default_backend() in registry.get(base).interpreted


def impls_for(case: Case, pass_: str, config, *, peers_ok: dict[str, bool]) -> list[str]:
    """The impls that give a row for this case and pass: a peer only when it is available here
    and applies (gemm_peak: the forward of dense layers); an impl that runs interpreted on this
    platform (Pallas on CPU) only for ``interpreted_cases``; an unavailable optional backend
    (a plugin that is not installed) not at all, said once by :func:`run`."""
    interpreted = set(_case_names("interpreted_cases", config.interpreted_cases))
    out = []
    for impl in config.impls:
        if impl in bench.PEERS:
            if not peers_ok[impl] or not bench.PEERS[impl].applies(case, pass_):
                continue
        elif impl.partition(":")[0] in registry.unavailable():
            continue
        elif _interpreted_here(impl) and case.name not in interpreted:
            continue
        out.append(impl)
    return out


def plan(config) -> list[tuple[Case, int, str, str, list[str]]]:
    """The groups to measure, in order: (case, batch, dtype, pass, impls)."""
    peers_ok = {name: peer.available() for name, peer in bench.PEERS.items()}
    groups = []
    for case in get_suite(_case_names("suite", config.suite)):
        batch = batch_for(case, config)
        for dtype in config.dtypes:
            for pass_ in config.passes:
                groups.append((case, batch, dtype, pass_, impls_for(case, pass_, config, peers_ok=peers_ok)))
    return groups


def planned_keys(config) -> list[tuple]:
    """Every row key a complete run of ``config`` has (the resume/crash tests check these)."""
    return [(c.name, impl, p, d, b) for c, b, d, p, impls in plan(config) for impl in impls]


def tune_case(case: Case, batch: int, dtype: str, config) -> None:
    """Tune ``case`` at ``batch``/``dtype`` into the active cache unless it is there already."""
    spec = case.spec(batch, dtype)
    if tune_cache.lookup(spec.execute_spec()) is not None:
        return
    precision = _precision(config)
    tuning.tune_spec(spec, lambda x, w, b, impl: case.apply(x, w, b, impl=impl, precision=precision),
                     objective=config.tune_objective, iters=config.tune_iters, seed=config.seed)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    from tqdm import tqdm

    validate(config)
    os.makedirs(workdir, exist_ok=True)
    store = bench.ResultStore(os.path.join(workdir, "results.jsonl"))
    if store.dropped:
        print(f"compare: repaired results.jsonl: dropped {len(store.dropped)} torn or duplicate line(s)",
              file=sys.stderr)
    if config.retry_errors:
        n = store.drop_where(lambda r: r.get("error") is not None)
        if n:
            print(f"compare: retrying {n} failed row(s)", file=sys.stderr)
    groups = plan(config)
    total = sum(len(g[4]) for g in groups)
    done = sum(1 for c, b, d, p, impls in groups for i in impls if (c.name, i, p, d, b) in store)
    env_path = os.path.join(workdir, "env.json")
    if done < total or not os.path.exists(env_path):  # env.json describes the run that measured
        env = bench.env_info()
        env["config"] = json.loads(config.to_json())
        for name, peer in bench.PEERS.items():
            if name in config.impls and not peer.available():
                print(f"compare: the {name} peer is not available here: skipped", file=sys.stderr)
        for impl in config.impls:
            if impl.partition(":")[0] in registry.unavailable():
                why = registry.unavailable()[impl.partition(":")[0]]
                print(f"compare: impl {impl!r} is skipped: {why}", file=sys.stderr)
        atomic_write_json(env_path, env, indent=2)
    st = settings(config)
    if config.tune:  # auto reads (and a resumed run reuses) the workdir's tune cache
        jconv.use_tune_cache(os.path.join(workdir, "tune.json"))
    with tqdm(total=total, initial=done, unit="row", desc="compare", dynamic_ncols=True) as bar:
        for case, batch, dtype, pass_, impls in groups:
            todo = [i for i in impls if (case.name, i, pass_, dtype, batch) not in store]
            if not todo:
                continue
            if config.tune and "auto" in todo:
                bar.set_postfix_str(f"tuning {case.name} {dtype} b={batch}")
                tune_case(case, batch, dtype, config)
            bar.set_postfix_str(f"{case.name} {dtype} {pass_} b={batch}")
            for row in bench.measure_group(case, batch, dtype, pass_, todo, st):
                store.append(row)
                bar.update(1)
    if config.report:
        path = report.build_report(workdir)
        print(f"compare: {len(store)} rows in {os.path.join(workdir, 'results.jsonl')}; report: {path}")
