"""The comparison on a TPU: larger batches, float32 and bfloat16, Pallas compiled (Mosaic).

    python -m jconv_experiments --config=configs/tpu.py --workdir=runs/tpu

The ``full`` suite at batch 64, float32 and bfloat16, fwd and fwd+bwd, impls xla/lax/auto/
pallas (compiled, every layer)/gemm_peak (torch is not a TPU peer). float32 at the default
precision runs bfloat16 passes on the MXU, so its tolerance is bfloat16's
(jconv.testing.effective_dtype); set --config.precision=highest to hold float32 to float32's. The
float64 reference runs on the host CPU, so only up to 1 GFLOP per pass; larger layers are
checked against HIGHEST-precision float32 on the TPU (each row's ``reference`` says which).

Setup on a TPU VM: ``make run`` (it installs ``jconv[experiments,tpu]``) or
``pip install -e ".[experiments,tpu]"`` first. Not run on a TPU by this project (none here):
every program it runs compiles for TPU v4, v5e, v5p and v6e (the compile matrix,
docs/pallas.md); expect several minutes, mostly compilation.
"""

from configs.default import get_config as _default


def get_config():
    c = _default()
    c.platform = "tpu"
    c.suite = "full"
    c.batch = 64
    c.max_fwd_gflop = 0.0
    c.dtypes = ("float32", "bfloat16")
    c.impls = ("xla", "lax", "auto", "pallas", "gemm_peak")
    c.iters = 20
    c.warmup = 3
    c.max_time_s = 5.0
    c.x64_reference_max_gflop = 1.0
    return c
