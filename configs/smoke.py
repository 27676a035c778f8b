"""A few tiny layers, every impl and pass: checks the whole pipeline in seconds.

    python -m jconv_experiments --config=configs/smoke.py --workdir=runs/smoke

The ``smoke`` suite (tiny dense, depthwise, grouped NCHW stride 2, the seed's first MNIST
conv) at batch 2, float32, fwd and fwd+bwd, impls xla/lax/auto/pallas (interpreted on CPU,
on the two smallest layers only)/torch (if installed)/gemm_peak, 3 timing rounds (38 rows with torch).
About 20 s on the 2-core development CPU when quiet, up to ~45 s when shared with other work
(most of it compiling). Used by tests/test_experiments.py and the notebook on CPU.
"""

from configs.default import get_config as _default


def get_config():
    c = _default()
    c.suite = "smoke"
    c.batch = 2
    c.max_fwd_gflop = 0.0
    c.interpreted_cases = "tiny_dense,tiny_depthwise"  # interpreted Pallas compiles slowly on CPU
    c.warmup = 1
    c.iters = 3
    c.min_iters = 1
    c.max_time_s = 1.0
    return c
