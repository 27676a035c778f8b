"""What the Colab run does on each runtime, and how long it should take, from committed numbers.

Two variants: ``quick`` (the notebook's default: the device tests and the comparison in about
15 minutes on a TPU v5e-1 or an L4) and ``full`` (the whole device selection of the tests and
the ``default`` suite: hours). On the CPU both are the smoke run the test suite executes.

The estimates (``python -m jconv_experiments.colab plan`` prints them for every runtime):

* **comparison**: per group (layer x dtype x pass), the compile seconds the compile matrix
  recorded for each of its programs on the target (``docs/perf/compile_matrix.jsonl``: the real
  TPU and GPU compilers, compile-only, on the 2-core development VM; ``auto`` compiles again on
  a device, so its copied row counts too), the reference's compile (``xla``'s), and the timing
  rounds from a roofline (:data:`PEAKS` at :data:`EFFICIENCY`), capped by ``max_time_s``;
* **tests**: the XLA compiles each device test makes, counted on the CPU
  (``docs/perf/devices/test_compiles.jsonl``, ``python -m jconv_experiments.colab
  count-compiles``), times the target's 10th-percentile compile seconds in the matrix (tests
  use tiny shapes: the matrix's quick programs are their stand-in);
* every step: :data:`STEP_OVERHEAD_S` for a new process (imports, backend start).

The compile seconds were taken on a shared 2-core machine: a Colab host compiles at least as
fast, so the estimates are upper bounds there, and each step prints the time it took beside its
estimate (``steps.jsonl`` in the archive) to correct them.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import os
import re
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATRIX = os.path.join(ROOT, "docs", "perf", "compile_matrix.jsonl")
TEST_COMPILES = os.path.join(ROOT, "docs", "perf", "devices", "test_compiles.jsonl")

VARIANTS = ("quick", "full")
#: the comparison config per (runtime, variant): configs/<name>.py
CONFIGS = {("tpu", "quick"): "colab_tpu_quick", ("tpu", "full"): "colab_tpu",
           ("gpu", "quick"): "colab_gpu_quick", ("gpu", "full"): "colab_gpu",
           ("cpu", "quick"): "smoke", ("cpu", "full"): "smoke"}
#: the Pallas kernels on the device (compiled by Mosaic or Triton: what no CPU run can check),
#: the argument parser and its errors, the seed's worked example and the edge cases: 152
#: compiles (docs/perf/devices/test_compiles.jsonl), ~4.5 min on a v5e by the estimate
_QUICK_TPU = (
    "tests/test_geometry.py", "tests/test_errors.py", "tests/test_backend_pallas.py",
    "tests/test_pallas.py::test_forward_and_vjp_match_xla", "tests/test_pallas.py::test_half_precision",
    "tests/test_pallas.py::test_transposed_conv_and_negative_padding", "tests/test_pallas.py::test_really_pallas_no_xla_conv",
    "tests/test_pallas.py::test_default_tiles_cover_every_layer", "tests/test_pallas.py::test_export_contains_pallas_kernels",
    "tests/test_pallas.py::test_kernels_that_cannot_fit_are_clear_errors_at_trace_time",
    "tests/test_conv.py::test_seed_worked_example_first_output_is_7", "tests/test_conv.py::TestEdgeCases",
)
#: a GPU compiles ~6x faster (the matrix's L4 vs v5e): also the argument grid, the XLA backend
#: and the Flax modules
_QUICK_GPU = _QUICK_TPU[:-2] + ("tests/test_conv.py", "tests/test_backend_xla.py", "tests/test_nnx.py",
                                "tests/test_linen.py")
#: the tests per (runtime, variant): pytest arguments, run from the checkout
TESTS = {
    ("tpu", "quick"): ("-m", "device") + _QUICK_TPU,
    ("gpu", "quick"): ("-m", "device") + _QUICK_GPU,
    ("tpu", "full"): ("-m", "device", "tests"),
    ("gpu", "full"): ("-m", "device", "tests"),
    ("cpu", "quick"): ("-m", "device", "tests/test_geometry.py"),
    ("cpu", "full"): ("-m", "device", "tests/test_geometry.py"),
}
#: the target whose numbers stand in for a device the matrix has no rows for
STAND_IN = {"tpu": "v5e", "gpu": "l4"}
#: published dense peaks per target: FLOP/s of the dtype each computes in at the default
#: precision (TPU float32: bfloat16 passes; A100/L4/H100 float32: TF32; T4: no bfloat16) and
#: memory bandwidth in bytes/s (vendors' datasheets)
PEAKS = {
    "v4": {"float32": 275e12, "bfloat16": 275e12, "bw": 1228e9},
    "v5e": {"float32": 197e12, "bfloat16": 197e12, "bw": 819e9},
    "v5p": {"float32": 459e12, "bfloat16": 459e12, "bw": 2765e9},
    "v6e": {"float32": 918e12, "bfloat16": 918e12, "bw": 1640e9},
    "t4": {"float32": 8.1e12, "bfloat16": None, "bw": 320e9},
    "l4": {"float32": 60e12, "bfloat16": 121e12, "bw": 300e9},
    "a100": {"float32": 156e12, "bfloat16": 312e12, "bw": 1555e9},
    "h100": {"float32": 495e12, "bfloat16": 989e12, "bw": 3350e9},
}
EFFICIENCY = 0.25        # assumed fraction of the roofline a convolution reaches (timing only)
MIN_CALL_S = 1e-4        # a call's floor: dispatch and launch
STEP_OVERHEAD_S = 20.0   # a step's process: imports and backend start (3.5 s of CPU time here)
CPU_SMOKE_S = 45.0       # configs/smoke.py on the 2-core dev VM when it is shared (its docstring)
RUN_PER_TEST_S = 0.05    # a device test's own run time besides compiling (tiny shapes)
#: below this compute capability a GPU has no bfloat16 arithmetic and no Pallas (Triton)
NATIVE_BF16_CC = (8, 0)


@functools.lru_cache(maxsize=1)
def matrix_rows() -> tuple[dict, ...]:
    if not os.path.exists(MATRIX):
        return ()
    with open(MATRIX) as f:
        return tuple(json.loads(line) for line in f if line.strip())


@functools.lru_cache(maxsize=None)
def _compile_table(target: str) -> tuple[dict, dict, float]:
    """(key -> compile_s, (impl, pass) -> median compile_s, 10th-percentile compile_s) for
    ``target``; key = (case, impl, dtype, pass, batch)."""
    rows = [r for r in matrix_rows() if r["target"] == target and r.get("compile_s") is not None]
    exact = {(r["case"], r["impl"], r["dtype"], r["pass"], r["batch"]): float(r["compile_s"]) for r in rows}
    by = {}
    for r in rows:
        by.setdefault((r["impl"], r["pass"]), []).append(float(r["compile_s"]))
    medians = {k: statistics.median(v) for k, v in by.items()}
    compiled = sorted(float(r["compile_s"]) for r in rows if r.get("compiled") and not r.get("same_program_as"))
    p10 = compiled[len(compiled) // 10] if compiled else 1.0
    return exact, medians, p10


def stand_in(platform: str, target: str | None) -> str:
    """The target whose measurements estimate ``target`` (itself when the matrix has it)."""
    if target and any(r["target"] == target for r in matrix_rows()):
        return target
    return STAND_IN.get(platform, "v5e")


def not_applicable(platform: str, compute_capability) -> dict:
    """What this device cannot run natively, skipped (and said) rather than counted as failed:
    on a GPU below compute capability 8.0 (Colab's T4: 7.5) bfloat16 rows (no bfloat16
    arithmetic: XLA would emulate it, so neither accuracy nor speed means anything) and Pallas
    (Triton needs 8.0)."""
    if platform != "gpu" or compute_capability is None or tuple(compute_capability) >= NATIVE_BF16_CC:
        return {}
    cc = "%d.%d" % tuple(compute_capability)
    return {"dtypes": ["bfloat16"], "impls": ["pallas"], "tests_k": "not pallas and not bfloat16",
            "reason": f"compute capability {cc} < 8.0: no native bfloat16, and Pallas' Triton path needs 8.0"}


def load_config(name: str, na: dict | None = None):
    """configs/<name>.py's config, without what :func:`not_applicable` lists."""
    config = importlib.import_module(f"configs.{name}").get_config()
    na = na or {}
    if na:
        config.dtypes = tuple(d for d in config.dtypes if d not in na.get("dtypes", ()))
        config.impls = tuple(i for i in config.impls if i.partition(":")[0] not in na.get("impls", ()))
    return config


def groups(config, platform: str) -> list[tuple]:
    """The groups a config runs on an accelerator of ``platform``: (case, batch, dtype, pass,
    impls), every jconv impl compiled (nothing interpreted), a peer where it applies (torch: on
    a GPU, where Colab has it)."""
    from jconv_experiments import bench, compare
    from jconv_experiments.suite import get_suite

    out = []
    for case in get_suite(compare._case_names("suite", config.suite)):
        batch = compare.batch_for(case, config)
        for dtype in config.dtypes:
            for pass_ in config.passes:
                impls = [i for i in config.impls if i not in bench.PEERS or (
                    bench.PEERS[i].applies(case, pass_) and (i != "torch" or platform == "gpu"))]
                out.append((case, batch, dtype, pass_, impls))
    return out


@dataclasses.dataclass(frozen=True)
class Estimate:
    seconds: float
    parts: dict                 # seconds per part (compile, reference, timing, overhead)
    rows: int
    basis: str                  # what the numbers come from

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _call_s(case, batch, dtype, pass_, target) -> float:
    peak = PEAKS.get(target, {})
    flops = case.flops(batch) * (1 if pass_ == "fwd" else 3)
    item = 2 if dtype == "bfloat16" else 4
    spec = case.spec(batch)
    nbytes = item * sum(math.prod(s) for s in (spec.x_shape, spec.w_shape, spec.out_shape)) * (1 if pass_ == "fwd" else 2)
    rate = peak.get(dtype) or peak.get("float32") or 1e12
    return max(MIN_CALL_S, max(flops / rate, nbytes / peak.get("bw", 1e11)) / EFFICIENCY)


def estimate_compare(config, platform: str, target: str) -> Estimate:
    """Seconds the comparison of ``config`` should take on ``target`` (see the module doc)."""
    from jconv_experiments import bench

    src = stand_in(platform, target)
    exact, medians, p10 = _compile_table(src)
    compile_s = reference_s = timing_s = 0.0
    rows = missing = 0
    for case, batch, dtype, pass_, impls in groups(config, platform):
        rows += len(impls)
        for impl in impls:
            if impl in bench.PEERS and impl != bench.BASELINE:  # the baseline compiles like a backend
                compile_s += p10 if impl == "gemm_peak" else 0.0
                continue
            c = exact.get((case.name, impl, dtype, pass_, batch))
            if c is None:
                missing += 1
                c = medians.get((impl.partition(":")[0], pass_), p10)
            compile_s += c
        flops = case.flops(batch) * (1 if pass_ == "fwd" else 3)
        if flops / 1e9 <= float(config.x64_reference_max_gflop):  # float64 on the host CPU
            reference_s += 1.0 + flops / 0.2e9   # ~0.2 GFLOP/s: float64 convs, 2-core dev VM
        else:  # HIGHEST float32 on the device: one more XLA program
            reference_s += exact.get((case.name, "xla", "float32", pass_, batch), medians.get(("xla", pass_), p10))
        t = _call_s(case, batch, dtype, pass_, src) * len(impls)
        rounds = int(config.iters) * int(config.block) * t
        timing_s += int(config.warmup) * t + min(rounds, max(float(config.max_time_s), int(config.min_iters) * int(config.block) * t))
    parts = {"compile": compile_s, "reference": reference_s, "timing": timing_s, "overhead": STEP_OVERHEAD_S}
    basis = (f"compile matrix rows for {src}" + (f" (standing in for {target})" if src != target else "")
             + (f"; {missing} program(s) without a row, at their impl's median" if missing else ""))
    return Estimate(sum(parts.values()), parts, rows, basis)


@functools.lru_cache(maxsize=1)
def test_compiles() -> tuple[dict, ...]:
    if not os.path.exists(TEST_COMPILES):
        return ()
    with open(TEST_COMPILES) as f:
        return tuple(json.loads(line) for line in f if line.strip())


def _selected(nodeid: str, args) -> bool:
    """Whether pytest ``args`` (paths or node ids, and ``-k "not a and not b"``) select ``nodeid``."""
    args = list(args)
    excluded = []
    if "-k" in args:
        excluded = re.findall(r"not (\w+)", args[args.index("-k") + 1])
    if any(word.lower() in nodeid.lower() for word in excluded):
        return False
    paths = [a for a in args if a.startswith("tests")]
    return any(nodeid == p or nodeid.startswith(p + "/") or nodeid.startswith(p + "::") or nodeid.startswith(p + "[")
               for p in paths)


def estimate_tests(args, platform: str, target: str | None) -> Estimate:
    """Seconds the tests ``args`` should take: on an accelerator their compile count times the
    target's typical small-program compile; on the CPU the wall time measured here."""
    rows = [r for r in test_compiles() if _selected(r["test"], args)]
    if platform == "cpu":
        secs = sum(r["wall_s"] for r in rows)
        parts = {"tests": secs, "overhead": STEP_OVERHEAD_S}
        return Estimate(sum(parts.values()), parts, len(rows), "wall seconds measured on the 2-core dev VM")
    src = stand_in(platform, target)
    per = _compile_table(src)[2]
    compiles = sum(r["compiles"] for r in rows)
    parts = {"compile": compiles * per, "run": RUN_PER_TEST_S * len(rows), "overhead": STEP_OVERHEAD_S}
    return Estimate(sum(parts.values()), parts, len(rows),
                    f"{compiles} compiles counted on the CPU x {per:.2f} s ({src}'s 10th-percentile compile)")


def plan(platform: str, target: str | None, variant: str = "quick", compute_capability=None) -> dict:
    """What each step runs on this device and its estimate (written to device.json)."""
    if variant not in VARIANTS:
        raise ValueError(f"colab_plan.plan: variant (={variant!r}) must be one of {VARIANTS}")
    na = not_applicable(platform, compute_capability)
    test_args = list(TESTS[(platform, variant)])
    if na.get("tests_k"):
        test_args += ["-k", na["tests_k"]]
    config_name = CONFIGS[(platform, variant)]
    out = {"variant": variant, "not_applicable": na,
           "tests": {"args": test_args, "estimate": estimate_tests(test_args, platform, target).as_dict()},
           "compare": {"config": config_name}}
    if platform != "cpu":
        est = estimate_compare(load_config(config_name, na), platform, target)
        out["compare"]["estimate"] = est.as_dict()
    else:  # the smoke run: measured, not modelled (its docstring); its rows as compare plans them here
        from jconv_experiments import compare

        rows = len(compare.planned_keys(load_config(config_name)))
        out["compare"]["estimate"] = Estimate(CPU_SMOKE_S + STEP_OVERHEAD_S, {"run": CPU_SMOKE_S, "overhead": STEP_OVERHEAD_S},
                                              rows, "configs/smoke.py: 20-45 s on the 2-core dev VM").as_dict()
    out["total_s"] = out["tests"]["estimate"]["seconds"] + out["compare"]["estimate"]["seconds"]
    return out


def fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s:.0f} s" if s < 90 else (f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h")


__all__ = ["CONFIGS", "TESTS", "VARIANTS", "plan", "estimate_compare", "estimate_tests", "not_applicable",
           "load_config", "groups", "stand_in", "fmt_s", "Estimate"]
