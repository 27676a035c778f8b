"""The notebook's full run on a Colab GPU runtime (T4, L4, A100): the default suite, about half an hour.

    python -m jconv_experiments --config=configs/colab_gpu.py --workdir=runs/colab_gpu

The ``default`` suite (17 layers) at batch 32, float32 and bfloat16, fwd and fwd+bwd, impls
xla/lax/auto/pallas (compiled by Triton)/torch (CUDA, when installed: Colab has it)/gemm_peak:
364 rows. float32 at the default precision runs TF32 on recent GPUs, so its tolerance is
float16's (jconv.testing.effective_dtype). The notebook runs it with ``FULL = True``; by default
it runs ``configs/colab_gpu_quick.py``. On a T4 (compute capability 7.5) the bfloat16 rows and
Pallas are not applicable (no native bfloat16; Triton needs 8.0): the notebook skips them
(jconv_experiments/colab_plan.py).

Estimated time (``python -m jconv_experiments.colab plan``; jconv_experiments/colab_plan.py):
27 min on an L4 (22 min of compiling: the compile matrix's seconds for these programs on the
2-core development VM), 28 min on an A100, 9 min on a T4 (float32, no Pallas; the L4's compile
seconds). Not run on a GPU by this project.
"""

from configs.gpu import get_config as _gpu


def get_config():
    c = _gpu()
    c.suite = "default"
    c.batch = 32
    c.iters = 10
    c.max_time_s = 3.0
    # the GPUs a Colab runtime offers: the compile matrix compiles this config's work for these
    # targets only (configs/compile.py)
    c.compile_targets = "t4,l4,a100_40gb"
    return c
