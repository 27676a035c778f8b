"""The measuring harness under the experiments: timing, the result store, the environment,
peers, and one layer measured across implementations.

* :mod:`jconv.timing` (the library's, shared with the tuner): compile apart from running;
  interleaved rounds of candidates, medians;
* :mod:`.store`: the crash-safe, resumable ``results.jsonl``;
* :mod:`.env`: what a measurement ran on (device, versions, CPU model and ISA, commit);
* :mod:`.peers`: PyTorch and the same-size GEMM, candidates like any impl;
* :mod:`.harness`: :func:`measure_group`, accuracy and speed of several impls timed together.
"""

from jconv_experiments.bench.env import env_info
from jconv_experiments.bench.harness import (
    PASSES, Settings, compare_outputs, effective_tolerance, geomean, layer_pass, make_inputs,
    measure_group, pass_fn, reference_outputs,
)
from jconv_experiments.bench.peers import BASELINE, PEERS, gemm_shape, torch_module
from jconv_experiments.bench.store import KEY_FIELDS, ResultStore, as_float, load_rows, row_key
from jconv.timing import compile_timed, memory_stats, time_interleaved

__all__ = [
    "PASSES", "PEERS", "BASELINE", "KEY_FIELDS", "Settings", "ResultStore", "as_float", "compare_outputs",
    "compile_timed", "effective_tolerance", "env_info", "gemm_shape", "geomean", "layer_pass", "load_rows",
    "make_inputs", "measure_group", "memory_stats", "pass_fn", "reference_outputs", "row_key",
    "time_interleaved", "torch_module",
]
