"""The notebook's run on a Colab TPU (v5e) runtime: the default suite, quick.

    python -m jconv_experiments --config=configs/colab_tpu.py --workdir=runs/colab_tpu

The ``default`` suite (17 layers) at batch 32, float32 and bfloat16, fwd and fwd+bwd, impls
xla/lax/auto/pallas (compiled for the TPU)/gemm_peak. Used by notebooks/colab_tpu.ipynb. Not
run on a TPU by this project (none here); expect a few minutes on a v5e-1, mostly compiling.
"""

from configs.tpu import get_config as _tpu


def get_config():
    c = _tpu()
    c.suite = "default"
    c.batch = 32
    c.iters = 10
    c.max_time_s = 3.0
    # the TPUs a Colab runtime offers (v5e-1, v6e-1): the compile matrix compiles this
    # config's work for these targets only (configs/compile.py)
    c.compile_targets = "v5e,v6e"
    return c
