"""The comparison on one GPU: larger batches, float32 and bfloat16, Pallas compiled (Triton).

    python -m jconv_experiments --config=configs/gpu.py --workdir=runs/gpu

The ``full`` suite at batch 32, float32 and bfloat16, fwd and fwd+bwd, impls xla/lax/auto/
pallas (compiled by Triton, every layer)/torch (CUDA, if installed)/gemm_peak. float32 at the
default precision uses TF32 on recent GPUs, so its tolerance is float16's
(jconv.testing.effective_dtype). The float64 reference runs on the host CPU, up to 5 GFLOP per
pass; larger layers are checked against HIGHEST-precision float32 on the GPU (each row's
``reference`` says which).

Setup on a GPU machine: ``make run`` (it installs ``jconv[experiments,cuda]``: jax[cuda12]) or
``pip install -e ".[experiments,cuda]"`` first. Not run on a GPU by this project (none here):
every program it runs compiles for A100, H100 and L4 (the compile matrix, docs/pallas.md);
expect several minutes, mostly compilation.
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
    c.x64_reference_max_gflop = 5.0  # the float64 reference runs on the host CPU: larger layers use HIGHEST float32 on the GPU
    # the compile matrix compiles this work for these targets only (configs/compile.py): the
    # datacenter GPUs; Colab's (T4, L4, A100 40 GB) compile configs/colab_gpu.py's work
    c.compile_targets = "a100,h100,l4"
    return c
