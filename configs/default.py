"""The main job: jconv vs ``lax.conv_general_dilated`` on this machine's device.

    python -m jconv_experiments --config=configs/default.py --workdir=runs/default
    make run                                   # the same

Measures the ``default`` suite (17 real layers: the seed's MNIST convs, ResNet-50 stem/3x3/1x1,
VGG-16, MobileNetV2 depthwise s1/s2, ConvNeXt depthwise 7x7, ResNeXt 32 groups, DeepLab
dilated, U-Net 3x3 at 256x256 and its transposed conv, NCHW variants) in float32, forward and
forward+backward, for impls xla (baseline), lax, auto, pallas (interpreted on CPU: accuracy on
the small layers only, time not a speed figure), the PyTorch peer when torch is installed, and
a same-size GEMM (gemm_peak) for dense layers. Batch 8, lowered per layer so one forward is at
most 1 GFLOP. Accuracy vs float64.

Measured on the 2-core Intel Xeon VM this project was developed on, 152 rows with torch 2.13
installed: 2 min 3 s wall with the machine otherwise idle (commit 87518d6, 3-call blocks; 1 min
53 s at 54b4a0a, one call per round); 4 min 40 s and
5 min 22 s while it was shared with other work (load average 8-9). Without torch: 118 rows,
1 min 43 s (plus the one-time set-up of `make run` on a fresh machine, about a minute).
Every other config starts from this one.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.experiment = "compare"
    c.platform = "cpu"            # the device this config is written for (compile matrix: accelerators)
    # what to run
    c.suite = "default"           # suite name (smoke/default/full), "all", or "case1,case2"
    c.batch = 8
    c.max_fwd_gflop = 1.0         # lower the batch per layer so one forward is <= this (0: off)
    c.dtypes = ("float32",)
    c.passes = ("fwd", "fwd+bwd")
    c.impls = ("xla", "lax", "auto", "pallas", "torch", "gemm_peak")
    # impls that run interpreted here (Pallas on CPU: a correctness check, slow) run on these only
    c.interpreted_cases = "mnist_conv1,mnist_conv2,tiny_dense,tiny_depthwise,tiny_grouped_s2_nchw"
    c.precision = "default"       # default | high | highest (for every impl alike)
    # timing
    c.warmup = 1
    c.iters = 10
    c.min_iters = 2
    c.max_time_s = 3.0            # per layer x dtype x pass: stop the rounds after this
    c.block = 3                   # calls per impl per round, back to back; the first is not timed
    c.interpreted_iters = 1       # Pallas on CPU (interpreted): calls timed
    c.torch_threads = 0           # 0: all cores, as XLA uses
    # tuning (jconv.tune): measure auto's candidates per layer first; auto then runs the winner
    c.tune = False
    c.tune_objective = "fwd+bwd"  # fwd+bwd (training) | fwd (inference): one choice per layer
    c.tune_iters = 5
    # accuracy
    c.x64_reference_max_gflop = 20.0  # float64 reference up to this; above: HIGHEST float32
    c.grad_tol_factor = 4.0           # fwd+bwd tolerance = tolerance(dtype) x this
    c.seed = 0
    # bookkeeping
    c.retry_errors = False        # True: re-measure rows that recorded an error
    c.report = True               # rebuild report.md + plots at the end
    return c
