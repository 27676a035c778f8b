"""The zoo's architectures in PyTorch (NCHW, eager), twins of the Flax modules: the same
layers under the same names as flax's variables tree (``BottleneckResNetBlock_3.Conv_1``,
``block4.depthwise.conv``, ...), so :mod:`.torch_transfer` copies a Flax variables tree into
them leaf by leaf, and the same padding: :class:`FlaxConv2d` pads as flax's ``SAME`` does (on
even inputs a strided 3x3 conv pads (0, 1), where PyTorch's own ResNet pads (1, 1)).

torch is an optional dependency: importing this module imports it; nothing in the zoo's Flax
side imports this module.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("KINETO_LOG_LEVEL", "4")  # torch.profiler's per-stage lines (read when torch loads)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812
from torch import nn  # noqa: E402

from jconv_experiments.zoo import get, mobilenet  # noqa: E402

__all__ = ["FlaxConv2d", "build_torch", "TWINS", "TorchResNet", "TorchMobileNetV2", "TorchConvNeXt", "TorchUNet"]


def same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """lax's ``SAME`` padding of one spatial dimension: (low, high)."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


class FlaxConv2d(nn.Conv2d):
    """``nn.Conv2d`` with flax's padding: ``"SAME"`` (per input size, possibly asymmetric),
    ``"VALID"`` or explicit ``((top, bottom), (left, right))``; asymmetric pads go through
    ``F.pad`` first."""

    def __init__(self, cin, cout, k, stride=1, padding="SAME", groups=1, bias=True):
        super().__init__(cin, cout, k, stride=stride, padding=0, groups=groups, bias=bias)
        self.flax_padding = padding

    def _pads(self, h: int, w: int):
        if self.flax_padding == "SAME":
            return [same_pads(n, k, s) for n, k, s in zip((h, w), self.kernel_size, self.stride)]
        if self.flax_padding == "VALID":
            return [(0, 0), (0, 0)]
        return [tuple(p) for p in self.flax_padding]

    def forward(self, x):
        (pt, pb), (pl, pr) = self._pads(x.shape[2], x.shape[3])
        if pt == pb and pl == pr:
            return F.conv2d(x, self.weight, self.bias, self.stride, (pt, pl), 1, self.groups)
        return F.conv2d(F.pad(x, (pl, pr, pt, pb)), self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)  # flax momentum 0.9 == torch momentum 0.1


# --------------------------------------------------------------------------------------------
# ResNet (flax's ImageNet example)
# --------------------------------------------------------------------------------------------


class _Bottleneck(nn.Module):
    def __init__(self, cin, filters, stride):
        super().__init__()
        self.Conv_0, self.BatchNorm_0 = FlaxConv2d(cin, filters, 1, bias=False), _bn(filters)
        self.Conv_1, self.BatchNorm_1 = FlaxConv2d(filters, filters, 3, stride, bias=False), _bn(filters)
        self.Conv_2, self.BatchNorm_2 = FlaxConv2d(filters, 4 * filters, 1, bias=False), _bn(4 * filters)
        self.proj = cin != 4 * filters or stride != 1
        if self.proj:
            self.conv_proj, self.norm_proj = FlaxConv2d(cin, 4 * filters, 1, stride, bias=False), _bn(4 * filters)

    def forward(self, x):
        y = F.relu(self.BatchNorm_0(self.Conv_0(x)))
        y = F.relu(self.BatchNorm_1(self.Conv_1(y)))
        y = self.BatchNorm_2(self.Conv_2(y))
        r = self.norm_proj(self.conv_proj(x)) if self.proj else x
        return F.relu(r + y)


class _Basic(nn.Module):
    def __init__(self, cin, filters, stride):
        super().__init__()
        self.Conv_0, self.BatchNorm_0 = FlaxConv2d(cin, filters, 3, stride, bias=False), _bn(filters)
        self.Conv_1, self.BatchNorm_1 = FlaxConv2d(filters, filters, 3, bias=False), _bn(filters)
        self.proj = cin != filters or stride != 1
        if self.proj:
            self.conv_proj, self.norm_proj = FlaxConv2d(cin, filters, 1, stride, bias=False), _bn(filters)

    def forward(self, x):
        y = F.relu(self.BatchNorm_0(self.Conv_0(x)))
        y = self.BatchNorm_1(self.Conv_1(y))
        r = self.norm_proj(self.conv_proj(x)) if self.proj else x
        return F.relu(r + y)


class TorchResNet(nn.Module):
    def __init__(self, stage_sizes, bottleneck=True, num_classes=1000, num_filters=64, channels=3):
        super().__init__()
        block, prefix, expand = (_Bottleneck, "BottleneckResNetBlock", 4) if bottleneck else (_Basic, "ResNetBlock", 1)
        self.conv_init = FlaxConv2d(channels, num_filters, 7, 2, padding=((3, 3), (3, 3)), bias=False)
        self.bn_init = _bn(num_filters)
        cin, k = num_filters, 0
        self.blocks = []
        for i, n in enumerate(stage_sizes):
            for j in range(n):
                f = num_filters * 2**i
                m = block(cin, f, 2 if i > 0 and j == 0 else 1)
                self.add_module(f"{prefix}_{k}", m)
                self.blocks.append(m)
                cin, k = f * expand, k + 1
        self.Dense_0 = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn_init(self.conv_init(x)))
        (pt, pb), (pl, pr) = same_pads(x.shape[2], 3, 2), same_pads(x.shape[3], 3, 2)
        x = F.max_pool2d(F.pad(x, (pl, pr, pt, pb), value=-math.inf), 3, 2)
        for m in self.blocks:
            x = m(x)
        return self.Dense_0(x.mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------
# MobileNetV2
# --------------------------------------------------------------------------------------------


class _ConvBNAct(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1, act=True):
        super().__init__()
        p = (k - 1) // 2
        self.conv = FlaxConv2d(cin, cout, k, stride, padding=((p, p), (p, p)), groups=groups, bias=False)
        self.bn = _bn(cout)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.act else x


class _InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        self.expand = _ConvBNAct(cin, hidden, 1) if t != 1 else None
        self.depthwise = _ConvBNAct(hidden, hidden, 3, stride, groups=hidden)
        self.project = _ConvBNAct(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class TorchMobileNetV2(nn.Module):
    def __init__(self, num_classes=1000, width=1.0, setting=mobilenet.INVERTED_RESIDUAL_SETTING, channels=3):
        super().__init__()
        md = mobilenet.make_divisible
        cin = md(32 * width)
        self.stem = _ConvBNAct(channels, cin, 3, 2)
        self.blocks = []
        i = 0
        for t, c, n, s in setting:
            for j in range(n):
                m = _InvertedResidual(cin, md(c * width), s if j == 0 else 1, t)
                self.add_module(f"block{i}", m)
                self.blocks.append(m)
                cin, i = md(c * width), i + 1
        last = md(1280 * max(1.0, width))
        self.last = _ConvBNAct(cin, last, 1)
        self.head = nn.Linear(last, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for m in self.blocks:
            x = m(x)
        return self.head(self.last(x).mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------
# ConvNeXt
# --------------------------------------------------------------------------------------------


class _LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _CNBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = FlaxConv2d(dim, dim, 7, padding=((3, 3), (3, 3)), groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class TorchConvNeXt(nn.Module):
    def __init__(self, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), num_classes=1000, channels=3):
        super().__init__()
        self.stem = FlaxConv2d(channels, dims[0], 4, 4, padding="VALID")
        self.stem_norm = _LayerNorm2d(dims[0], eps=1e-6)
        self.layers = []
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i > 0:
                self._add(f"down{i}_norm", _LayerNorm2d(dims[i - 1], eps=1e-6))
                self._add(f"down{i}", FlaxConv2d(dims[i - 1], dim, 2, 2, padding="VALID"))
            for j in range(depth):
                self._add(f"stage{i}_block{j}", _CNBlock(dim))
        self.head_norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def _add(self, name, m):
        self.add_module(name, m)
        self.layers.append(m)

    def forward(self, x):
        x = self.stem_norm(self.stem(x))
        for m in self.layers:
            x = m(x)
        return self.head(self.head_norm(x.mean(dim=(2, 3))))


# --------------------------------------------------------------------------------------------
# U-Net
# --------------------------------------------------------------------------------------------


class _DoubleConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.bn1 = FlaxConv2d(cin, cout, 3, padding=((1, 1), (1, 1)), bias=False), _bn(cout)
        self.conv2, self.bn2 = FlaxConv2d(cout, cout, 3, padding=((1, 1), (1, 1)), bias=False), _bn(cout)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TorchUNet(nn.Module):
    """Up-sampling: ``ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1)``, the flax
    module's input-dilated convolution with pads ((1, 2), (1, 2)) (kernel flipped, in/out swapped)."""

    def __init__(self, num_classes=2, features=32, depth=4, channels=3):
        super().__init__()
        self.depth = depth
        cin = channels
        for i in range(depth):
            self.add_module(f"down{i}", _DoubleConv(cin, features * 2**i))
            cin = features * 2**i
        self.bottom = _DoubleConv(cin, features * 2**depth)
        for i in reversed(range(depth)):
            f = features * 2**i
            self.add_module(f"up{i}", nn.ConvTranspose2d(2 * f, f, 3, stride=2, padding=1, output_padding=1))
            self.add_module(f"dec{i}", _DoubleConv(2 * f, f))
        self.out = FlaxConv2d(features, num_classes, 1)

    def forward(self, x):
        skips = []
        for i in range(self.depth):
            x = getattr(self, f"down{i}")(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for i in reversed(range(self.depth)):
            x = getattr(self, f"dec{i}")(torch.cat([skips[i], getattr(self, f"up{i}")(x)], dim=1))
        return self.out(x)


#: the twin of each zoo model: (fields of the Flax module) -> the PyTorch module
TWINS = {
    "resnet50": lambda stage_sizes=(3, 4, 6, 3), **kw: TorchResNet(stage_sizes, bottleneck=True, **kw),
    "mobilenet_v2": TorchMobileNetV2,
    "convnext_t": TorchConvNeXt,
    "unet": TorchUNet,
}


def build_torch(name: str, *, small: bool = False, channels: int = 3, **fields) -> nn.Module:
    """The PyTorch twin of zoo model ``name`` (full or ``small`` size, as :func:`zoo.build`)."""
    spec = get(name)
    if name not in TWINS:
        raise ValueError(f"build_torch: model (={name!r}) has no PyTorch twin")
    kw = dict(spec.small if small else {}, **fields)
    kw.setdefault("num_classes", spec.num_classes)
    return TWINS[name](channels=channels, **kw)
