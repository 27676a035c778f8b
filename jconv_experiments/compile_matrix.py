"""The compile matrix: every program the accelerator configs run, compiled for real targets.

    python -m jconv_experiments --config=configs/compile.py --workdir=runs/compile

For each target (TPU v4, v5e, v5p, v6e through libtpu's compile-only topologies; A100, H100, L4
through the CUDA plugin's deviceless compiler and the target configs in ``jconv/gpu_targets``),
the work of the experiment configs for its platform (``configs/tpu.py`` and
``configs/colab_tpu.py`` for TPUs, ``configs/gpu.py`` for GPUs: their suite, batch, dtypes,
impls and passes) is lowered and compiled, and one row per (target, layer, impl, dtype, pass,
batch) goes to ``results.jsonl``. Whole networks are a second kind of work: for the targets in
``config.model_targets``, the train step of every model of the networks configs named in
``config.models`` (``configs/models.py``: its models, batch and dtypes), with jconv's modules
(the config's impl) and with flax's (``xla``); their rows have the model's name as ``case`` and
``pass`` ``"train"``. A row says: compiled or the error (jconv's trace-time refusal or the
compiler's), compile seconds, Pallas kernels and XLA convolutions in the compiled program, and
what the compiler reports (``cost_analysis()``, ``memory_analysis()``). Peers (torch, the GEMM
peak) are not jconv's work and are skipped. Where ``auto`` plans the same program as another
impl of the row's group (``xla`` on accelerators), it is compiled once and the row says
``same_program_as``.

Compiles run in worker processes (``config.workers``); a worker that dies (a compiler crash) or
runs past ``config.timeout_s`` is replaced and its row records that. Rows are appended as they
finish (crash-safe, resumable: a re-run compiles only what is missing; ``--config.retry_errors``
re-compiles failed rows). The report (``report.md``, ``compile.png``) is rebuilt at the end.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import multiprocessing as mp
import os
import sys
import time
import traceback

import ml_collections

from jconv import aot, targets
from jconv_experiments import bench, programs, report
from jconv_experiments.bench.peers import PEERS
from jconv_experiments.bench.store import ResultStore
from jconv.conv import plan_for
from jconv.files import atomic_write_json
from jconv.geometry import FLOAT_DTYPES
from jconv.impls import registry
from jconv_experiments.suite import CASES, SUITES

#: the platforms a config may be written for here (compile-only targets exist for them)
ACCELERATORS = ("gpu", "tpu")


def _err(field: str, value, rule: str) -> ValueError:
    return ValueError(f"compile_matrix: config.{field} (={value!r}) {rule}")


def _names(field: str, value) -> list[str]:
    if not isinstance(value, str):
        raise _err(field, value, "must be a comma-separated string")
    return [v.strip() for v in value.split(",") if v.strip()]


def validate(config) -> None:
    known = targets.all_targets()
    for t in _names("targets", config.targets):
        if t not in known:
            raise _err("targets", config.targets, f"names unknown target {t!r}; known: {sorted(known)}")
    for name in _names("configs", config.configs):
        try:
            sub = importlib.import_module(f"configs.{name}").get_config()
        except ModuleNotFoundError:
            raise _err("configs", config.configs, f"names no config configs/{name}.py") from None
        if sub.get("platform") not in ACCELERATORS:
            raise _err("configs", config.configs, f"includes {name!r}, whose platform (={sub.get('platform')!r}) "
                       f"is not an accelerator ({', '.join(ACCELERATORS)})")
    if config.suite and config.suite not in SUITES and config.suite != "all":
        unknown = [n for n in _names("suite", config.suite) if n not in CASES]
        if unknown or not _names("suite", config.suite):
            raise _err("suite", config.suite, f"must be '' (each config's), 'all', one of {sorted(SUITES)} "
                       f"or comma-separated layers (unknown: {unknown}; layers: {sorted(CASES)})")
    for d in _names("dtypes", config.dtypes):
        if d not in FLOAT_DTYPES or d == "float64":
            raise _err("dtypes", config.dtypes, f"names {d!r}; use one of {tuple(t for t in FLOAT_DTYPES if t != 'float64')}")
    for p in _names("passes", config.passes):
        if p not in bench.PASSES:
            raise _err("passes", config.passes, f"names {p!r}; use {bench.PASSES}")
    _validate_models(config, known)
    for field, lo in (("workers", 1), ("timeout_s", 1)):
        if int(config[field]) < lo:
            raise _err(field, config[field], f"must be >= {lo}")


def _validate_models(config, known) -> None:
    for t in _names("model_targets", config.get("model_targets", "")):
        if t not in known:
            raise _err("model_targets", config.model_targets, f"names unknown target {t!r}; known: {sorted(known)}")
    for name in _names("models", config.get("models", "")):
        try:
            sub = importlib.import_module(f"configs.{name}").get_config()
        except ModuleNotFoundError:
            raise _err("models", config.models, f"names no config configs/{name}.py") from None
        if sub.get("experiment") != "networks":
            raise _err("models", config.models, f"includes {name!r}, which is not a networks config "
                       f"(experiment {sub.get('experiment')!r})")


def _suite(name: str) -> list[str]:
    if name == "all":
        return list(CASES)
    if name in SUITES:
        return list(SUITES[name])
    return [n.strip() for n in name.split(",") if n.strip()]


def work_items(config) -> list[programs.Work]:
    """Every (target, layer, impl, dtype, pass, batch) the configs run, once, with the configs
    that run it."""
    chosen = _names("targets", config.targets)
    items: dict[tuple, programs.Work] = {}
    for name in _names("configs", config.configs):
        sub = importlib.import_module(f"configs.{name}").get_config()
        platform = targets.lowering_platform(sub.platform)
        # jconv impls, and the peers that are XLA programs (the baseline); not torch or yardsticks
        impls = [i for i in (_names("impls", config.impls) or list(sub.impls))
                 if i not in PEERS or (PEERS[i].layer is not None and PEERS[i].convolution)]
        impls = [i for i in impls if i.partition(":")[0] not in registry.unavailable()]
        precision = None if sub.precision == "default" else sub.precision
        cases = _suite(config.suite or sub.suite)
        own = _names(f"configs.{name}.compile_targets", sub.get("compile_targets", "")) or None
        for t in chosen:
            if targets.get(t).platform != platform or (own is not None and t not in own):
                continue
            for case in cases:
                batch = _batch_for(CASES[case], sub)
                for dtype in (_names("dtypes", config.dtypes) or sub.dtypes):
                    for pass_ in (_names("passes", config.passes) or sub.passes):
                        for impl in impls:
                            w = programs.Work(t, case, impl, dtype, pass_, batch, precision)
                            old = items.get(w.key)
                            configs = (old.configs if old else ()) + (name,)
                            items[w.key] = dataclasses.replace(w, configs=configs)
    for w in model_work_items(config):
        old = items.get(w.key)
        items[w.key] = dataclasses.replace(w, configs=(old.configs if old else ()) + w.configs)
    return list(items.values())


def model_work_items(config) -> list[programs.Work]:
    """The train step of every model of ``config.models``' networks configs, at their batch and
    dtypes (or ``config.dtypes``), with jconv's modules and with flax's, on ``model_targets``."""
    chosen = _names("targets", config.targets)
    works = []
    for name in _names("models", config.get("models", "")):
        sub = importlib.import_module(f"configs.{name}").get_config()
        for t in _names("model_targets", config.model_targets):
            if t not in chosen:
                continue
            for model in _names("models", sub.models):
                for dtype in (_names("dtypes", config.dtypes) or _names("dtypes", sub.dtypes)):
                    for impl in dict.fromkeys((sub.impl, programs.MODEL_BASELINE)):
                        works.append(programs.Work(t, model, impl, dtype, programs.MODEL_PASS, int(sub.batch),
                                                   configs=(name,)))
    return works


def _batch_for(case, sub) -> int:
    if not sub.max_fwd_gflop:
        return int(sub.batch)
    per_example = case.flops(1) / 1e9
    return max(1, min(int(sub.batch), int(sub.max_fwd_gflop // per_example)))


# --------------------------------------------------------------------------------------------
# worker processes: one compile at a time each; a crash or a timeout costs one row
# --------------------------------------------------------------------------------------------


def _worker(conn) -> None:
    os.environ["JAX_PLATFORMS"] = "cpu"
    while True:
        work = conn.recv()
        if work is None:
            return
        try:
            row = programs.compile_work(work)
        except Exception as e:  # noqa: BLE001 - anything jconv itself raised unexpectedly
            row = dict(_row_base(work), compiled=False, error=aot.first_line(e), error_kind="jconv-bug",
                       traceback=traceback.format_exc()[-3000:])
        conn.send(row)


def _row_base(work: programs.Work) -> dict:
    t = targets.get(work.target)
    return {"target": work.target, "device_kind": t.device_kind, "platform": t.platform, "case": work.case,
            "impl": work.impl, "dtype": work.dtype, "pass": work.pass_, "batch": work.batch,
            "precision": work.precision or "default", "configs": list(work.configs)}


class _Pool:
    def __init__(self, n: int, timeout_s: float):
        # several processes may load libtpu (compile-only: no chip to share); set before spawning
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        self.ctx = mp.get_context("spawn")
        self.timeout_s = timeout_s
        self.slots = [self._start() for _ in range(n)]

    def _start(self):
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child,), daemon=True)
        proc.start()
        return {"proc": proc, "conn": parent, "work": None, "t0": 0.0}

    def run(self, works, on_row):
        queue = list(works)
        while queue or any(s["work"] is not None for s in self.slots):
            for i, s in enumerate(self.slots):
                if s["work"] is None and queue:
                    s["work"], s["t0"] = queue.pop(0), time.monotonic()
                    s["conn"].send(s["work"])
            time.sleep(0.05)
            for i, s in enumerate(self.slots):
                if s["work"] is None:
                    continue
                if s["conn"].poll():
                    try:
                        row = s["conn"].recv()
                    except EOFError:
                        row = None
                    if row is not None:
                        on_row(row)
                        s["work"] = None
                        continue
                dead = not s["proc"].is_alive()
                late = time.monotonic() - s["t0"] > self.timeout_s
                if dead or late:
                    why = (f"the compiler process died (exit code {s['proc'].exitcode})" if dead
                           else f"compile took longer than {self.timeout_s:.0f} s; stopped")
                    on_row(dict(_row_base(s["work"]), compiled=False, error=why, error_kind="compiler",
                                compile_s=time.monotonic() - s["t0"]))
                    s["proc"].kill()
                    self.slots[i] = self._start()

    def close(self):
        for s in self.slots:
            try:
                s["conn"].send(None)
            except (BrokenPipeError, OSError):
                pass
            s["proc"].join(timeout=10)
            if s["proc"].is_alive():
                s["proc"].kill()


# --------------------------------------------------------------------------------------------


def _program_key(work: programs.Work) -> tuple:
    """Works with the same key compile the same program: ``auto`` planned as another impl."""
    impl = work.impl
    if programs.is_model(work):
        return work.key + (work.precision,)
    if impl not in PEERS:
        try:
            p = plan_for(CASES[work.case].spec(work.batch, work.dtype), impl=impl,
                         platform=targets.get(work.target).platform)
            impl = p.explicit
        except (ValueError, NotImplementedError):
            pass
    return (work.target, work.case, impl, work.dtype, work.pass_, work.batch, work.precision)


def _order(works: list[programs.Work], first: str = "") -> list[programs.Work]:
    """The order to compile in: the impls named in ``first`` (config.first), then the others as
    the configs name them, and within each the targets taken in turn, so a run stopped early has
    covered every target."""
    named = _names("first", first) if first else []
    impl_rank = {impl: i for i, impl in enumerate(dict.fromkeys(named + [w.impl for w in works]))}
    rank: dict[tuple, int] = {}
    keyed = []
    for w in works:
        slot = (w.impl, w.target)
        keyed.append((impl_rank[w.impl], w.impl, rank.get(slot, 0), w.target, w))
        rank[slot] = rank.get(slot, 0) + 1
    return [k[-1] for k in sorted(keyed, key=lambda k: k[:4])]


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    from tqdm import tqdm

    validate(config)
    for platform in sorted({targets.get(t).platform for t in _names("targets", config.targets)}):
        missing = aot.compiler_available(platform)
        if missing:
            raise RuntimeError(f"compile_matrix: cannot compile for {platform}: {missing}")
    os.makedirs(workdir, exist_ok=True)
    store = ResultStore(os.path.join(workdir, "results.jsonl"), programs.MATRIX_KEY)
    if store.dropped:
        print(f"compile_matrix: repaired results.jsonl: dropped {len(store.dropped)} torn or duplicate line(s)",
              file=sys.stderr)
    if config.retry_errors:
        n = store.drop_where(lambda r: not r.get("compiled"))
        if n:
            print(f"compile_matrix: retrying {n} failed row(s)", file=sys.stderr)
    works = work_items(config)
    todo = [w for w in works if w.key not in store]
    env_path = os.path.join(workdir, "env.json")
    if todo or not os.path.exists(env_path):
        env = bench.env_info()
        env["config"] = json.loads(config.to_json())
        atomic_write_json(env_path, env, indent=2)
    # one compile per distinct program; the others copy its row
    groups: dict[tuple, list[programs.Work]] = {}
    for w in todo:
        groups.setdefault(_program_key(w), []).append(w)
    # the work that names its program exactly compiles it (auto's rows copy it)
    by_impl_first = {k: sorted(v, key=lambda w: (w.impl != k[2], w.impl)) for k, v in groups.items()}
    leaders = {v[0].key: v for v in by_impl_first.values()}
    with tqdm(total=len(works), initial=len(works) - len(todo), unit="row", desc="compile",
              dynamic_ncols=True) as bar:
        def on_row(row):
            key = tuple(row[k] for k in programs.MATRIX_KEY)
            followers = leaders.get(key, [])
            row = dict(row, time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            for w in followers:
                if w.key == key:
                    store.append(row)
                else:
                    store.append(dict(row, impl=w.impl, configs=list(w.configs), same_program_as=row["impl"]))
                bar.update(1)
            bar.set_postfix_str(f"{row['target']} {row['case']} {row['impl']} {row['dtype']} {row['pass']}"
                                f" {'ok' if row.get('compiled') else 'FAILED'}")

        firsts = _order([v[0] for v in by_impl_first.values()], config.get("first", ""))
        if firsts:  # a finished run starts no compiler process
            pool = _Pool(min(int(config.workers), len(firsts)), float(config.timeout_s))
            try:
                pool.run(firsts, on_row)
            finally:
                pool.close()
    if config.report:
        path = report.build_report(workdir)
        failed = sum(1 for r in store.rows if not r.get("compiled"))
        print(f"compile_matrix: {len(store)} rows ({failed} not compiled) in {store.path}; report: {path}")
