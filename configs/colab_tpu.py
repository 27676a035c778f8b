"""The notebook's full run on a Colab TPU runtime (v5e-1, v6e-1): the default suite, about an hour.

    python -m jconv_experiments --config=configs/colab_tpu.py --workdir=runs/colab_tpu

The ``default`` suite (17 layers) at batch 32, float32 and bfloat16, fwd and fwd+bwd, impls
xla/lax/auto/pallas (compiled for the TPU)/gemm_peak: 296 rows. The notebook runs it with
``FULL = True``; by default it runs ``configs/colab_tpu_quick.py`` (five of these layers).

Estimated time (``python -m jconv_experiments.colab plan``; jconv_experiments/colab_plan.py):
64 min on a v5e-1 (54 min of compiling: the compile matrix's seconds for these programs on the
2-core development VM; 9 min for the float64 references on the host), 1.9 h on a v6e-1. Not run
on a TPU by this project.
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
