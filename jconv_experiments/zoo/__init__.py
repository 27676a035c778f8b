"""Whole networks, each written once in Flax with the convolution module a parameter (as
Flax's examples write them), and their PyTorch twins (:mod:`.torch_models`, optional).

* ``resnet50``: Flax's ImageNet ResNet-50 (:mod:`.resnet`), 224x224, 1000 classes;
* ``mobilenet_v2``: MobileNetV2 (:mod:`.mobilenet`), depthwise convolutions, 224x224;
* ``convnext_t``: ConvNeXt-T (:mod:`.convnext`), 7x7 depthwise convolutions and LayerNorm, 224x224;
* ``unet``: a U-Net (:mod:`.unet`) with transposed convolutions, per-pixel logits.

:func:`build` makes the Flax module with jconv's convolutions (``conv="jconv"``:
``jconv.linen.Conv`` / ``jconv.linen.ConvTranspose`` with ``impl``) or flax's (``conv="xla"``:
``flax.linen.Conv`` / ``flax.linen.ConvTranspose``, XLA's convolution); both have the same
variables. Each :class:`ModelSpec` also says its input, its optimiser (the recipe's, with a
small learning rate so that repeated timed steps stay finite) and a small size for tests and
the multi-process training.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jconv_experiments.zoo import convnext, mobilenet, resnet, unet

__all__ = ["ModelSpec", "MODELS", "CONVS", "get", "build", "conv_modules"]

#: the convolution modules a zoo model can be built with
CONVS = ("jconv", "xla")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    make: Callable[..., nn.Module]          # (**fields) -> the Flax module
    image_size: int                          # input H = W
    num_classes: int
    task: str                                # "classify" (N, classes) | "segment" (N, H, W, classes)
    optimizer: tuple                         # ("sgd", lr, momentum) | ("adamw", lr, weight_decay)
    small: dict = dataclasses.field(default_factory=dict)  # fields of a small version (tests)
    small_image_size: int = 32
    channels: int = 3
    transposed: bool = False                 # takes a ``conv_transpose`` module too

    def input_shape(self, batch: int, image_size: int | None = None, channels: int | None = None) -> tuple:
        s = image_size or self.image_size
        return (batch, s, s, channels or self.channels)


MODELS: dict[str, ModelSpec] = {
    "resnet50": ModelSpec(
        "resnet50", "ResNet-50 (Flax's ImageNet example)", resnet.resnet50, 224, 1000, "classify",
        ("sgd", 0.01, 0.9), small=dict(stage_sizes=(1, 1), num_filters=8)),
    "mobilenet_v2": ModelSpec(
        "mobilenet_v2", "MobileNetV2", mobilenet.MobileNetV2, 224, 1000, "classify",
        ("sgd", 0.01, 0.9), small=dict(width=0.25, setting=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 2)))),
    "convnext_t": ModelSpec(
        "convnext_t", "ConvNeXt-T", convnext.convnext_tiny, 224, 1000, "classify",
        ("adamw", 1e-4, 0.05), small=dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))),
    "unet": ModelSpec(
        "unet", "U-Net (transposed convolutions)", unet.UNet, 128, 2, "segment",
        ("sgd", 0.01, 0.9), small=dict(features=4, depth=2), transposed=True),
}


def get(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"zoo.get: model (={name!r}) is not one of {sorted(MODELS)}")
    return MODELS[name]


def conv_modules(conv: str, impl: str = "auto") -> dict[str, Any]:
    """``{"conv": ..., "conv_transpose": ...}``: jconv's modules with ``impl`` or flax's."""
    if conv == "jconv":
        import jconv.linen as jl

        return {"conv": functools.partial(jl.Conv, impl=impl),
                "conv_transpose": functools.partial(jl.ConvTranspose, impl=impl)}
    if conv == "xla":
        return {"conv": nn.Conv, "conv_transpose": nn.ConvTranspose}
    raise ValueError(f"zoo.build: conv (={conv!r}) must be one of {CONVS}")


def build(name: str, conv: str = "jconv", *, impl: str = "auto", dtype: str = "float32", small: bool = False,
          **fields) -> nn.Module:
    """The Flax module of zoo model ``name`` with ``conv``'s convolutions, computing in ``dtype``
    (parameters float32), at full or ``small`` size; ``fields`` override the module's fields."""
    spec = get(name)
    mods = conv_modules(conv, impl)
    kw = dict(spec.small if small else {}, **fields)
    kw["conv"] = mods["conv"]
    if spec.transposed:
        kw["conv_transpose"] = mods["conv_transpose"]
    kw.setdefault("num_classes", spec.num_classes)
    return spec.make(dtype=jnp.dtype(dtype), **kw)
