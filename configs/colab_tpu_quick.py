"""The notebook's comparison on a Colab TPU runtime (v5e-1, v6e-1): five layers, about 9 minutes.

    python -m jconv_experiments --config=configs/colab_tpu_quick.py --workdir=runs/colab_tpu_quick

One layer of each kind the compile matrix compiles quickly on a v5e: the seed's second MNIST
conv (dense 3x3), a ResNet-50 1x1, a MobileNetV2 depthwise 3x3 stride 2, a ResNeXt 32-group 3x3
and the U-Net transposed conv; batch 32, float32 and bfloat16, fwd and fwd+bwd, impls
xla/lax/auto/pallas (Mosaic)/gemm_peak: 86 rows, every program a row of the compile matrix
(``configs/colab_tpu.py`` runs the same at batch 32 over the whole ``default`` suite).
The reference is XLA at HIGHEST float32 on the TPU (a float64 one on the host CPU costs more
than the layer: minutes for the grouped layers).

Estimated time (``python -m jconv_experiments.colab plan``; jconv_experiments/colab_plan.py): 8.8 min on a
v5e-1 (6.8 min of compiling: the compile matrix's seconds for these programs on the 2-core
development VM; 1.7 min for the references; the timing rounds are seconds), 12.2 min on a v6e-1.
With the notebook's quick tests, about 13 minutes on a v5e-1. Not run on a TPU by this project.
"""

from configs.colab_tpu import get_config as _colab_tpu


def get_config():
    c = _colab_tpu()
    c.suite = "mnist_conv2,resnet50_s2_1x1_expand,mobilenetv2_dw3x3_s2,resnext_g32_3x3,unet_up_transposed"
    c.x64_reference_max_gflop = 0.0
    return c
