"""The notebook's comparison on a Colab GPU runtime (T4, L4, A100): seven layers, about 7 minutes.

    python -m jconv_experiments --config=configs/colab_gpu_quick.py --workdir=runs/colab_gpu_quick

One layer of each kind the compile matrix compiles quickly on an L4: the seed's second MNIST
conv (dense 3x3), the ResNet-50 stem (7x7 stride 2) and a 1x1, DeepLab's dilated 3x3, a
MobileNetV2 depthwise 3x3 stride 2 and its NCHW stride-1 twin, a ResNeXt 32-group 3x3; batch
32, float32 and bfloat16, fwd and fwd+bwd, impls xla/lax/auto/pallas (Triton)/torch (Colab has
it)/gemm_peak: 148 rows, every jconv program a row of the compile matrix (``configs/colab_gpu.py``
runs the whole ``default`` suite). The reference is XLA at HIGHEST float32 on the GPU. On a T4
(compute capability 7.5) the bfloat16 rows and Pallas are not applicable (no native bfloat16;
Triton needs 8.0): the notebook skips them and says so (jconv_experiments/colab_plan.py).

Estimated time (``python -m jconv_experiments.colab plan``; jconv_experiments/colab_plan.py): 6.6 min on an
L4 (5.4 min of compiling: the compile matrix's seconds for these programs on the 2-core
development VM), 6.8 min on an A100, 1.2 min on a T4 (float32 only; its own compile seconds).
With the notebook's quick tests, about 11 minutes on an L4. Not run on a GPU by this project.
"""

from configs.colab_gpu import get_config as _colab_gpu


def get_config():
    c = _colab_gpu()
    c.suite = ("mnist_conv2,resnet50_stem_7x7s2,resnet50_s2_1x1_expand,deeplab_3x3_d2,mobilenetv2_dw3x3_s2,"
               "mobilenetv2_dw3x3_s1_nchw,resnext_g32_3x3")
    c.x64_reference_max_gflop = 0.0
    return c
