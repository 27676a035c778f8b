"""The comparison on one GPU: larger batches, float32 and bfloat16, Pallas compiled (Triton).

    python -m experiments --config=configs/gpu.py --workdir=runs/gpu

The ``full`` suite at batch 32, float32 and bfloat16, fwd and fwd+bwd, impls xla/lax/auto/
pallas (compiled for the GPU, every layer)/torch (CUDA, if installed)/gemm_peak. float32 at the
default precision uses TF32 on recent GPUs, so its tolerance is float16's (see
bench.effective_tolerance). Not run end to end by this project (no GPU here); expect a few
minutes, mostly compilation.
"""

from configs.default import get_config as _default


def get_config():
    c = _default()
    c.platform = "gpu"
    c.suite = "full"
    c.batch = 32
    c.max_fwd_gflop = 0.0
    c.dtypes = ("float32", "bfloat16")
    c.iters = 20
    c.warmup = 3
    c.max_time_s = 5.0
    c.x64_reference_max_gflop = 5.0  # the float64 reference runs on the GPU too: slow
    return c
