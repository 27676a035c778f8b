"""The two specs of a convolution: the user's call and what a backend executes.

* :class:`ConvSpec`: one ``conv2d`` / ``conv_general_dilated`` call as the user made it, every
  argument checked (:func:`jconv.geometry.parse_conv2d` builds it): the caller's layout,
  batched or not, the padding mode, the kernel flip, the bias.
* :class:`ExecSpec`: what a backend runs (:meth:`ConvSpec.execute_spec`): NHWC activations,
  an HWIO kernel already flipped, a padding mode already applied, non-negative zero padding and
  input dilation left to do. It also carries the caller's layout (``caller_layout``), because a
  backend may choose differently for a channels-first caller whose transposes it can cancel;
  and the arrays' layout (``layout``): NHWC / HWIO, or NCHW / OIHW where the planned backend
  takes a channels-first caller's arrays as they are (:func:`jconv.select.operand_layout`).

Both share the geometry (:class:`Geometry`): sizes, strides, padding, dilations, groups,
dtypes and precision, and what follows from them (output size, FLOPs, the input gradient's
padding...). Frozen and hashable: they are static arguments of jitted functions and parameters
of the convolution primitive. No jax array is touched here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

Pair = tuple[int, int]
Pads = tuple[tuple[int, int], tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The shape of a convolution. Spatial fields are (height, width) pairs; ``padding`` is per
    side, already resolved (``SAME`` turned into numbers); ``lhs_dilation`` is input dilation
    (transposed convolution), ``dilation`` kernel dilation."""

    batch: int
    in_size: Pair
    in_channels: int
    out_channels: int
    kernel_size: Pair
    stride: Pair = (1, 1)
    padding: Pads = ((0, 0), (0, 0))
    dilation: Pair = (1, 1)
    lhs_dilation: Pair = (1, 1)
    groups: int = 1
    dtype: str = "float32"
    out_dtype: str = "float32"
    precision: Any = None

    @property
    def dilated_in_size(self) -> Pair:
        return tuple((s - 1) * d + 1 if s > 0 else 0 for s, d in zip(self.in_size, self.lhs_dilation))  # type: ignore[return-value]

    @property
    def padded_size(self) -> Pair:
        """The input-dilated, padded size (negative padding crops; never below 0)."""
        return tuple(max(0, s + lo + hi) for s, (lo, hi) in zip(self.dilated_in_size, self.padding))  # type: ignore[return-value]

    @property
    def effective_kernel_size(self) -> Pair:
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel_size, self.dilation))  # type: ignore[return-value]

    @property
    def out_size(self) -> Pair:
        """``lax.conv_general_dilated``'s rule: 0 where the kernel does not fit the padded input."""
        return tuple(  # type: ignore[return-value]
            max(0, (p - k) // s + 1) for p, k, s in zip(self.padded_size, self.effective_kernel_size, self.stride)
        )

    @property
    def is_empty(self) -> bool:
        """Nothing to compute: the output is empty, or every product meets an absent input (zero
        input height, width or channels); the result is zeros of the output shape (lax's)."""
        sizes = (self.batch, self.out_channels, self.in_channels) + tuple(self.out_size) + tuple(self.in_size)
        return min(sizes) == 0

    @property
    def group_in_channels(self) -> int:
        return self.in_channels // self.groups

    @property
    def group_out_channels(self) -> int:
        return self.out_channels // self.groups

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    @property
    def depth_multiplier(self) -> int:
        return self.out_channels // self.groups if self.is_depthwise else 1

    @property
    def is_pointwise(self) -> bool:
        return self.kernel_size == (1, 1) and self.dilation == (1, 1)

    @property
    def taps(self) -> int:
        """Kernel positions, KH * KW."""
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """HWIO kernel shape, (KH, KW, C_in/groups, C_out)."""
        return self.kernel_size + (self.group_in_channels, self.out_channels)

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 (bias not counted)."""
        ho, wo = self.out_size
        kh, kw = self.kernel_size
        return 2 * self.batch * ho * wo * self.out_channels * self.group_in_channels * kh * kw


@dataclasses.dataclass(frozen=True)
class ConvSpec(Geometry):
    """One Conv2D call as the user made it (see the module docstring)."""

    layout: str = "NHWC"
    batched: bool = True
    padding_mode: str = "zeros"
    flip_kernel: bool = False
    has_bias: bool = False

    @property
    def x_shape(self) -> tuple[int, ...]:
        h, w = self.in_size
        shape = (h, w, self.in_channels) if self.layout == "NHWC" else (self.in_channels, h, w)
        return ((self.batch,) + shape) if self.batched else shape

    @property
    def w_shape(self) -> tuple[int, ...]:
        kh, kw = self.kernel_size
        if self.layout == "NHWC":
            return (kh, kw, self.group_in_channels, self.out_channels)
        return (self.out_channels, self.group_in_channels, kh, kw)

    @property
    def out_shape(self) -> tuple[int, ...]:
        h, w = self.out_size
        shape = (h, w, self.out_channels) if self.layout == "NHWC" else (self.out_channels, h, w)
        return ((self.batch,) + shape) if self.batched else shape

    @property
    def params(self) -> int:
        kh, kw = self.kernel_size
        return kh * kw * self.group_in_channels * self.out_channels + (self.out_channels if self.has_bias else 0)

    def execute_spec(self) -> ExecSpec:
        """The spec a backend runs for this call: a non-zero padding mode already applied to
        ``x`` (its pads folded into ``in_size``), negative (cropping) padding already applied
        together with the input dilation; what is left is non-negative zero padding and,
        possibly, input dilation. (:func:`jconv.conv2d` does these array steps; this mirrors
        them on shapes.)"""
        pads, in_size, lhs_dil = self.padding, self.in_size, self.lhs_dilation
        if self.padding_mode != "zeros":
            in_size = tuple(s + lo + hi for s, (lo, hi) in zip(in_size, pads))
            pads = ((0, 0), (0, 0))
        elif any(p < 0 for side in pads for p in side):
            in_size = self.padded_size
            pads, lhs_dil = ((0, 0), (0, 0)), (1, 1)
        geometry = {f.name: getattr(self, f.name) for f in dataclasses.fields(Geometry)}
        geometry.update(in_size=in_size, padding=pads, lhs_dilation=lhs_dil)
        return ExecSpec(**geometry, caller_layout=self.layout)


#: bumped whenever :meth:`ExecSpec.key` changes what it writes (the tune cache's key)
KEY_VERSION = 3


@dataclasses.dataclass(frozen=True)
class ExecSpec(Geometry):
    """What a backend executes (see the module docstring): batched arrays in ``layout``, NHWC /
    HWIO unless the backend takes the caller's NCHW / OIHW; the backend's three functions take
    ``(a, b, spec, target)``."""

    caller_layout: str = "NHWC"
    #: the arrays' layout: "NHWC" (x, y NHWC; w HWIO) or "NCHW" (x, y NCHW; w OIHW)
    layout: str = "NHWC"

    def _act(self, size, channels) -> tuple[int, int, int, int]:
        if self.layout == "NCHW":
            return (self.batch, channels) + tuple(size)  # type: ignore[return-value]
        return (self.batch,) + tuple(size) + (channels,)  # type: ignore[return-value]

    @property
    def channel_axis(self) -> int:
        """The channel axis of ``x`` and the output in :attr:`layout` (1 for NCHW, else -1)."""
        return 1 if self.layout == "NCHW" else -1

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return self._act(self.in_size, self.in_channels)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        kh, kw, cg, co = self.kernel_shape
        return (co, cg, kh, kw) if self.layout == "NCHW" else (kh, kw, cg, co)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return self._act(self.out_size, self.out_channels)

    @property
    def input_grad_padding(self) -> Pads:
        """Per-side padding of the stride-dilated cotangent whose VALID convolution with the
        flipped kernel (stride = ``lhs_dilation``) is the input gradient. May be negative (a crop)."""
        pads = []
        for size, k, s, (lo, _), ld, o in zip(self.in_size, self.effective_kernel_size, self.stride,
                                             self.padding, self.lhs_dilation, self.out_size):
            before = k - 1 - lo
            after = ((size - 1) * ld + 1) + k - 1 - ((o - 1) * s + 1) - before
            pads.append((before, after))
        return tuple(pads)  # type: ignore[return-value]

    def input_grad_spec(self) -> ExecSpec:
        """The convolution that computes this one's input gradient from the cotangent ``dy``:
        input ``dy`` (N, Ho, Wo, C_out), kernel :func:`jconv.impls.common.transpose_kernel` of
        ``w`` (flipped, in/out channels swapped per group), stride = this input dilation, input
        dilation = this stride, padding :attr:`input_grad_padding` (may be negative: a crop).
        Its output is ``x``'s shape; it runs in ``w``'s dtype and returns ``x``'s."""
        out = dataclasses.replace(
            self, in_size=self.out_size, in_channels=self.out_channels, out_channels=self.in_channels,
            stride=self.lhs_dilation, lhs_dilation=self.stride, padding=self.input_grad_padding,
            out_dtype=self.dtype,
        )
        if out.out_size != tuple(self.in_size):  # holds by construction; a broken invariant is a bug
            raise AssertionError(f"input_grad_spec: size {out.out_size} != input {self.in_size}")
        return out

    def valid_spec(self) -> ExecSpec:
        """This convolution on the zero-padded, input-dilated ``x``: no padding left (VALID)."""
        return dataclasses.replace(self, in_size=self.padded_size, padding=((0, 0), (0, 0)), lhs_dilation=(1, 1))

    def key(self) -> str:
        """An explicit, versioned text key of every field (the tune cache's key; not ``repr``,
        which changes with the class)."""
        fields = [f"{f.name}={getattr(self, f.name)!s}" for f in dataclasses.fields(self)]
        return f"v{KEY_VERSION}:" + ",".join(fields)


__all__ = ["Geometry", "ConvSpec", "ExecSpec", "KEY_VERSION", "Pair", "Pads"]
