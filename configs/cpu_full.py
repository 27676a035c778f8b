"""Every layer of the suite on the CPU, float32 and bfloat16 (long).

    python -m jconv_experiments --config=configs/cpu_full.py --workdir=runs/cpu_full

The ``full`` suite (28 layers: all of ResNet-50's, VGG-16's, ... plus NCHW variants) at batch
8 lowered to <= 4 GFLOP per forward, float32 and bfloat16, fwd and fwd+bwd, impls as in
default.py; Pallas (interpreted) on the small layers only. Expect 30-40 minutes on a 2-core CPU
(not measured end to end here); the run resumes if interrupted. float32 alone with impls
xla/auto/torch/gemm_peak (docs/performance.md): 4 min 44 s idle, commit 87518d6; with
``--config.tune=True`` about 7 min 30 s.
"""

from configs.default import get_config as _default


def get_config():
    c = _default()
    c.suite = "full"
    c.max_fwd_gflop = 4.0
    c.dtypes = ("float32", "bfloat16")
    return c
