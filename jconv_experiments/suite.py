"""Named, real Conv2D layers: the experiments' cases and the Pallas compile checks' shapes.

A :class:`Case` is one layer, without its batch size (experiments pick batch and dtype).
``SUITES`` groups them: ``smoke`` (tiny, seconds), ``default`` (representative: each kind of
layer once, CPU-sized), ``full`` (every layer). ``Case.apply`` calls the public API, so every
experiment runs exactly what a user runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jax import lax

from jconv.conv import conv2d, conv_general_dilated
from jconv.geometry import parse_conv2d
from jconv.spec import ConvSpec


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    in_size: tuple[int, int]
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: Any = "VALID"
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    layout: str = "NHWC"
    lhs_dilation: tuple[int, int] = (1, 1)  # > 1: transposed conv via conv_general_dilated
    bias: bool = True
    note: str = ""

    def x_shape(self, batch: int) -> tuple[int, ...]:
        return self.spec(batch).x_shape

    def w_shape(self) -> tuple[int, ...]:
        return self.spec(1).w_shape

    def b_shape(self) -> tuple[int, ...] | None:
        return (self.out_channels,) if self.bias else None

    def spec(self, batch: int, dtype: str = "float32") -> ConvSpec:
        """The layer's :class:`ConvSpec` at ``batch``: every shape and FLOP count derives from it."""
        h, w = self.in_size
        kh, kw = self.kernel_size
        ci, co, cg = self.in_channels, self.out_channels, self.in_channels // self.groups
        nhwc = self.layout == "NHWC"
        return parse_conv2d(
            (batch, h, w, ci) if nhwc else (batch, ci, h, w), dtype,
            (kh, kw, cg, co) if nhwc else (co, cg, kh, kw), dtype,
            self.b_shape(), dtype if self.bias else None,
            stride=self.stride, padding=self.padding, dilation=self.dilation,
            lhs_dilation=self.lhs_dilation, groups=self.groups, layout=self.layout,
        )

    def apply(self, x, w, b=None, *, impl: str = "auto", precision=None):
        """Run this layer through jconv's public API."""
        if self.lhs_dilation == (1, 1):
            return conv2d(x, w, b, stride=self.stride, padding=self.padding, dilation=self.dilation,
                          groups=self.groups, layout=self.layout, impl=impl, precision=precision)
        spec = self.spec(x.shape[0], str(x.dtype))
        dn = ("NHWC", "HWIO", "NHWC") if self.layout == "NHWC" else ("NCHW", "OIHW", "NCHW")
        y = conv_general_dilated(x, w, self.stride, spec.padding, lhs_dilation=self.lhs_dilation,
                                 rhs_dilation=self.dilation, dimension_numbers=dn,
                                 feature_group_count=self.groups, precision=precision, impl=impl)
        if b is not None:
            y = y + self._bias_shaped(b)
        return y

    def reference(self, x, w, b=None, *, precision="highest"):
        """The same layer through ``lax.conv_general_dilated`` (XLA), at ``precision``."""
        spec = self.spec(x.shape[0], str(x.dtype))
        dn = ("NHWC", "HWIO", "NHWC") if self.layout == "NHWC" else ("NCHW", "OIHW", "NCHW")
        y = lax.conv_general_dilated(x, w, self.stride, spec.padding, lhs_dilation=self.lhs_dilation,
                                     rhs_dilation=self.dilation, dimension_numbers=dn,
                                     feature_group_count=self.groups, precision=precision)
        if b is not None:
            y = y + self._bias_shaped(b)
        return y

    def _bias_shaped(self, b):
        return b.reshape((1, 1, 1, -1) if self.layout == "NHWC" else (1, -1, 1, 1))

    def flops(self, batch: int) -> int:
        return self.spec(batch).flops


def _c(name, hw, ci, co, k, **kw) -> Case:
    return Case(name, (hw, hw), ci, co, (k, k), **kw)


_S2, _D2, _D4 = (2, 2), (2, 2), (4, 4)

CASES: dict[str, Case] = {c.name: c for c in [
    # the seed's MNIST model
    _c("mnist_conv1", 28, 1, 32, 3, note="seed: Conv2D(32, 3) on 28x28x1"),
    _c("mnist_conv2", 13, 32, 64, 3, note="seed: Conv2D(64, 3) on 13x13x32"),
    # ResNet-50
    _c("resnet50_stem_7x7s2", 224, 3, 64, 7, stride=_S2, padding=3, note="stem"),
    _c("resnet50_s2_3x3", 56, 64, 64, 3, padding=1),
    _c("resnet50_s2_1x1_expand", 56, 64, 256, 1),
    _c("resnet50_s3_3x3s2", 56, 128, 128, 3, stride=_S2, padding=1),
    _c("resnet50_s3_3x3", 28, 128, 128, 3, padding=1),
    _c("resnet50_s3_1x1_reduce", 28, 512, 128, 1),
    _c("resnet50_s4_3x3", 14, 256, 256, 3, padding=1),
    _c("resnet50_s4_1x1_expand", 14, 256, 1024, 1),
    _c("resnet50_s5_3x3", 7, 512, 512, 3, padding=1),
    _c("resnet50_s5_1x1_reduce", 7, 2048, 512, 1),
    # VGG-16
    _c("vgg16_conv1_2", 224, 64, 64, 3, padding=1),
    _c("vgg16_conv3_2", 56, 256, 256, 3, padding=1),
    _c("vgg16_conv4_2", 28, 512, 512, 3, padding=1),
    _c("vgg16_conv5_2", 14, 512, 512, 3, padding=1),
    # MobileNetV2 depthwise 3x3
    _c("mobilenetv2_dw3x3_s1", 56, 144, 144, 3, padding=1, groups=144),
    _c("mobilenetv2_dw3x3_s2", 56, 144, 144, 3, stride=_S2, padding=1, groups=144),
    _c("mobilenetv2_pw_1x1", 56, 144, 24, 1),
    # ConvNeXt depthwise 7x7
    _c("convnext_dw7x7", 56, 96, 96, 7, padding=3, groups=96),
    # ResNeXt grouped 3x3, 32 groups
    _c("resnext_g32_3x3", 28, 256, 256, 3, padding=1, groups=32),
    # DeepLab dilated 3x3
    _c("deeplab_3x3_d2", 33, 256, 256, 3, padding=2, dilation=_D2),
    _c("deeplab_3x3_d4", 33, 256, 256, 3, padding=4, dilation=_D4),
    # U-Net 3x3 at high resolution, and its 2x up-sampling (transposed) conv
    _c("unet_3x3_256", 256, 32, 32, 3, padding=1),
    _c("unet_up_transposed", 64, 64, 32, 3, padding=((1, 2), (1, 2)), lhs_dilation=(2, 2),
       note="transposed conv: input dilation 2"),
    # NCHW variants (PyTorch layout)
    _c("resnet50_s2_3x3_nchw", 56, 64, 64, 3, padding=1, layout="NCHW"),
    _c("mobilenetv2_dw3x3_s1_nchw", 56, 144, 144, 3, padding=1, groups=144, layout="NCHW"),
    _c("resnext_g32_3x3_nchw", 28, 256, 256, 3, padding=1, groups=32, layout="NCHW"),
    # tiny cases for smoke runs
    _c("tiny_dense", 8, 4, 8, 3, padding="SAME"),
    _c("tiny_depthwise", 8, 8, 16, 3, padding=1, groups=8, note="depth multiplier 2"),
    _c("tiny_grouped_s2_nchw", 9, 6, 6, 3, stride=_S2, padding=1, groups=3, layout="NCHW"),
]}

SUITES: dict[str, tuple[str, ...]] = {
    "smoke": ("tiny_dense", "tiny_depthwise", "tiny_grouped_s2_nchw", "mnist_conv1"),
    "default": (
        "mnist_conv1", "mnist_conv2", "resnet50_stem_7x7s2", "resnet50_s2_3x3",
        "resnet50_s2_1x1_expand", "resnet50_s3_3x3s2", "resnet50_s4_3x3", "vgg16_conv4_2",
        "mobilenetv2_dw3x3_s1", "mobilenetv2_dw3x3_s2", "convnext_dw7x7", "resnext_g32_3x3",
        "deeplab_3x3_d2", "unet_3x3_256", "unet_up_transposed", "resnet50_s2_3x3_nchw",
        "mobilenetv2_dw3x3_s1_nchw",
    ),
    "full": tuple(n for n in CASES if not n.startswith("tiny_")),
}


def get_suite(name_or_names) -> list[Case]:
    """A suite by name (``"smoke"``, ``"default"``, ``"full"``) or a list of case names."""
    if isinstance(name_or_names, str):
        if name_or_names not in SUITES:
            raise ValueError(f"get_suite: suite (={name_or_names!r}) must be one of {sorted(SUITES)}")
        names = SUITES[name_or_names]
    else:
        names = tuple(name_or_names)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"get_suite: unknown case names {unknown}; known: {sorted(CASES)}")
    return [CASES[n] for n in names]
