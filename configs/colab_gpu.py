"""The notebook's run on a Colab GPU runtime (L4, A100; a T4 has no Pallas): the default suite.

    python -m jconv_experiments --config=configs/colab_gpu.py --workdir=runs/colab_gpu

The ``default`` suite (17 layers) at batch 32, float32 and bfloat16, fwd and fwd+bwd, impls
xla/lax/auto/pallas (compiled by Triton)/gemm_peak; torch too when it is installed with CUDA.
float32 at the default precision runs TF32 on recent GPUs, so its tolerance is float16's
(jconv.testing.effective_dtype). Used by notebooks/colab_tpu.ipynb on a GPU runtime. Not run on a
GPU by this project (none here; its programs compile for L4 and A100 in the compile matrix,
docs/pallas.md); expect a few minutes, mostly compiling. On a T4 (compute capability 7.5) the
pallas rows record a clear error: Pallas' Triton path needs 8.0 or newer.
"""

from configs.gpu import get_config as _gpu


def get_config():
    c = _gpu()
    c.suite = "default"
    c.batch = 32
    c.iters = 10
    c.max_time_s = 3.0
    return c
