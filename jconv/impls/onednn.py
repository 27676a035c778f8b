"""The ``onednn`` backend: oneDNN's CPU convolutions through XLA's FFI, from the optional plugin
package ``jconv-onednn`` (``plugins/onednn``; ``make install`` builds it where it can).

Forward, input gradient and weight gradient are oneDNN primitives (the plugin's
``conv_forward``, ``conv_backward_data``, ``conv_backward_weights``) on NHWC / HWIO arrays, or on
an NCHW caller's NCHW / OIHW arrays as they are (``ExecSpec.layout``; no transposes in XLA); the convolution
primitive (:mod:`jconv.primitive`) makes every transformation out of them; input dilation
(transposed convolution) runs as the same three calls of another convolution (:func:`_transposed`).
Float32 and bfloat16 (bfloat16 kernels where the CPU has bfloat16 instructions; elsewhere the
algorithm ``f32`` computes bfloat16 in float32 and rounds the result once), and the forward
int8/uint8 x int8 -> int32 convolution of quantized inference (exact; on CPUs with VNNI or AMX);
what oneDNN does not run here (float16/float64, an output dtype other than the input's, or other
than int32 for integers, input dilation with a window stride or an integer dtype) is a clear
error naming the reason, never another implementation.

A native custom call: it lowers for the CPU only, and ``jax.export`` refuses it as not portable
(the primitive's lowering says so for other platforms). On a batch-sharded input, XLA's
partitioner splits the calls along the batch (:mod:`jconv.impls.partitioning`), or ``shard_map``
does when the mesh is known while tracing.

Threads: oneDNN opens an OpenMP team (``OMP_NUM_THREADS``, default all cores) from the XLA thread
that runs the call; XLA runs the custom calls of one program one after the other, so the two
pools do not oversubscribe the cores (plugins/onednn/README.md has the measurements). When the
plugin is not installed, or cannot load on this machine, the backend is registered as
unavailable with the reason, and ``impl="onednn"`` says how to install it.
"""

from __future__ import annotations

import dataclasses
import importlib

import jax.numpy as jnp

from jconv.spec import ExecSpec
from jconv.impls import partitioning, registry
from jconv.impls.common import add_bias, transpose_kernel

NAME = "onednn"
INSTALL_HINT = ("install the plugin: pip install ./plugins/onednn from a jconv checkout "
                "(`make install` builds it; needs a C++17 compiler and Linux x86-64)")

try:  # the optional plugin package (not a jconv module)
    jconv_onednn = importlib.import_module("jconv_onednn")
except ImportError as e:  # not installed
    jconv_onednn = None
    _MISSING = f"the jconv-onednn plugin is not installed ({e}); {INSTALL_HINT}"
else:
    _MISSING = None if jconv_onednn.available() else (
        f"the jconv-onednn plugin cannot load here: {jconv_onednn.unavailable_reason()}; {INSTALL_HINT}")


def _transposed(spec: ExecSpec) -> bool:
    """Input dilation (a transposed convolution), which oneDNN runs as the input gradient of a
    strided convolution G = ``spec.input_grad_spec()``: G takes ``y``'s shape to ``x``'s with
    stride = the input dilation, the kernel :func:`transpose_kernel` of ``w`` and padding
    ``dilation * (k - 1) - pad`` per side. So ``y`` is G's backward-data of ``x`` (the
    deconvolution, as PyTorch's ``conv_transpose2d`` runs it), ``dx`` is G's forward of ``dy``,
    and ``dw`` is G's backward-weights with the roles of ``x`` and ``dy`` swapped, its kernel
    transposed back. Exact, no zeros inserted; :func:`supports` says which geometries fit."""
    return spec.lhs_dilation != (1, 1)


def _geometry(spec: ExecSpec) -> dict:
    return dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=spec.groups,
                layout=spec.layout)


_INT_SOURCES = ("int8", "uint8")
#: the array layouts the plugin takes: float convolutions in either (oneDNN runs NCHW callers
#: directly, its reorders to blocked layouts inside the call), integer and transposed ones NHWC
LAYOUTS = ("NHWC", "NCHW")


def _forward(x, w, spec: ExecSpec, target=None):
    if _transposed(spec):  # y is the input gradient of the strided convolution G (see _transposed)
        g = spec.input_grad_spec()
        return _input_grad(x, transpose_kernel(w, spec.groups), g)
    if spec.dtype in _INT_SOURCES:
        # the operands as they are (x int8/uint8, w int8: the plugin checks), exact int32 sums
        return jconv_onednn.conv_forward(x, w, preferred_element_type=spec.out_dtype, **_geometry(spec))
    return jconv_onednn.conv_forward(x.astype(spec.dtype), w.astype(spec.dtype), **_geometry(spec))


def _input_grad(dy, w, spec: ExecSpec, target=None):
    if _transposed(spec):  # dx = G(dy)
        return _forward(dy, transpose_kernel(w, spec.groups), spec.input_grad_spec())
    return jconv_onednn.conv_backward_data(dy.astype(spec.dtype), w.astype(spec.dtype), x_shape=spec.x_shape,
                                           **_geometry(spec))


def _weight_grad(x, dy, spec: ExecSpec, target=None):
    """float32 (summed over batch shards in float32 by the partitioner); cast by the caller."""
    if _transposed(spec):  # G's weight gradient with G's input dy and G's output gradient x
        return transpose_kernel(_weight_grad(dy, x, spec.input_grad_spec()), spec.groups)
    dw = jconv_onednn.conv_backward_weights(x.astype(spec.dtype), dy.astype(spec.dtype), w_shape=spec.w_shape,
                                            with_bias=False, **_geometry(spec))
    return dw.astype(jnp.float32)


def _forward_relu(x, w, b, spec: ExecSpec, target=None):
    """``max(0, conv(x, w) + b)``: the bias and the ReLU as oneDNN's epilogue of the forward
    (one pass over the output); a transposed or integer convolution adds them afterwards."""
    if _transposed(spec) or spec.dtype in _INT_SOURCES:
        return jnp.maximum(add_bias(_forward(x, w, spec, target), b, axis=spec.channel_axis), 0)
    return jconv_onednn.conv_forward(x.astype(spec.dtype), w.astype(spec.dtype), b.astype(spec.dtype),
                                     activation="relu", **_geometry(spec))


_forward_op = partitioning.batch_op(_forward)
_forward_relu_op = partitioning.batch_op(_forward_relu, bias=True)
_input_grad_op = partitioning.batch_op(_input_grad)
_weight_grad_op = partitioning.batch_sum_op(_weight_grad)


def _as_f32(spec: ExecSpec) -> ExecSpec:
    return dataclasses.replace(spec, dtype="float32", out_dtype="float32")


def _entry_points(compute) -> dict:
    """An algorithm's forward, input gradient, weight gradient and fused forward: oneDNN's
    primitives on the operands in the dtype of ``compute(spec)``, each result cast to the caller's
    dtype. ``onednn``: the spec as it is (the casts are no-ops); ``f32``: bfloat16 run as float32
    copies (exact) by the float32 primitives and rounded once, what a bfloat16 kernel computes
    (float32 sums) done by float32 kernels, for CPUs without bfloat16 instructions."""
    def forward(x, w, spec: ExecSpec, target=None):
        return _forward_op(x, w, compute(spec), target).astype(spec.out_dtype)

    def forward_relu(x, w, b, spec: ExecSpec, target=None):
        return _forward_relu_op(x, w, b, compute(spec), target).astype(spec.out_dtype)

    def input_grad(dy, w, spec: ExecSpec, target=None):
        return _input_grad_op(dy, w, compute(spec), target).astype(spec.dtype)

    def weight_grad(x, dy, spec: ExecSpec, target=None):
        return _weight_grad_op(x, dy, compute(spec), target).astype(spec.dtype)

    return dict(forward=forward, input_grad=input_grad, weight_grad=weight_grad, forward_relu=forward_relu)


def supports_f32(spec: ExecSpec) -> str | None:
    """bfloat16 (and float32, which it runs as the ``onednn`` algorithm does) in and out."""
    if spec.dtype not in ("float32", "bfloat16") or spec.out_dtype != spec.dtype:
        return (f"impl='onednn:f32' computes float32 or bfloat16 convolutions in float32, returning their "
                f"dtype, not {spec.dtype} -> {spec.out_dtype}; use impl='lax' or impl='xla'")
    return supports(_as_f32(spec))


def supports(spec: ExecSpec) -> str | None:
    if spec.dtype in _INT_SOURCES:
        return _supports_int8(spec)
    if spec.dtype not in ("float32", "bfloat16"):
        return (f"impl='onednn' computes float32 and bfloat16 (and int8/uint8 -> int32 forward), not "
                f"{spec.dtype}; use impl='lax' or impl='xla'")
    if spec.out_dtype != spec.dtype:
        return (f"impl='onednn' returns its input dtype ({spec.dtype}), not preferred_element_type "
                f"{spec.out_dtype}; use impl='lax' or impl='xla'")
    if spec.dtype == "bfloat16" and not jconv_onednn.bf16_supported():
        return ("impl='onednn:onednn' bfloat16 needs a CPU with bfloat16 instructions (AVX512_BF16 or AMX); this "
                "one has none (impl='onednn' or 'onednn:f32' computes it in float32)")
    if spec.layout not in LAYOUTS:
        return f"impl='onednn' takes arrays in {' or '.join(LAYOUTS)}, not {spec.layout}"
    return _supports_transposed(spec) if _transposed(spec) else None


def _supports_transposed(spec: ExecSpec) -> str | None:
    """Input dilation runs as a backward-data (see :func:`_transposed`): with a window stride of 1
    and per-side padding at most ``dilation * (k - 1)`` (G's padding is not negative)."""
    if spec.layout != "NHWC":
        return "impl='onednn' runs input dilation (transposed convolution) on NHWC arrays"
    if spec.stride != (1, 1):
        return (f"impl='onednn' runs input dilation (transposed convolution) with window stride 1, not "
                f"{spec.stride}; use impl='lax' or impl='xla'")
    if any(p < 0 for side in spec.input_grad_padding for p in side):
        return (f"impl='onednn' runs input dilation with padding up to dilation * (kernel - 1) per side, not "
                f"{spec.padding}; use impl='lax' or impl='xla'")
    return None


def _supports_int8(spec: ExecSpec) -> str | None:
    """The forward convolution of int8 or uint8 ``x`` with int8 ``w`` into exact int32 sums (the
    kernel dtype is the plugin's to check: a spec carries one dtype)."""
    if spec.layout != "NHWC":
        return "impl='onednn' runs integer convolutions on NHWC arrays"
    if spec.out_dtype != "int32":
        return (f"impl='onednn' computes {spec.dtype} convolutions into int32 (preferred_element_type=int32), "
                f"not {spec.out_dtype}; use impl='lax' or impl='xla'")
    if not hasattr(jconv_onednn, "int8_supported"):
        return "impl='onednn' int8 needs a newer jconv-onednn plugin (this one has no int8); reinstall it"
    if not jconv_onednn.int8_supported():
        return ("impl='onednn' int8 needs a CPU with VNNI or AMX (AVX512_VNNI, AVX-VNNI), where oneDNN's int8 "
                "kernels are exact; this one has neither")
    if spec.lhs_dilation != (1, 1):
        return "impl='onednn' does not run input dilation (transposed convolution); use impl='lax' or impl='xla'"
    return None


def choose(spec: ExecSpec, platform: str) -> tuple[str, str]:
    """``impl="onednn"``: its primitives in the operands' dtype; bfloat16 on a CPU without
    bfloat16 instructions in float32 (``f32``)."""
    if spec.dtype == "bfloat16" and not jconv_onednn.bf16_supported():
        return "f32", "bfloat16 in float32: this CPU has no bfloat16 instructions"
    return "onednn", "requested"


def auto_rule(spec: ExecSpec, platform: str) -> tuple[str, str] | None:
    """``impl="auto"`` on the CPU (asked first there: :data:`jconv.select.AUTO_ORDER`): what
    ``impl="onednn"`` picks (:func:`choose`) for every convolution it runs (float32 and bfloat16,
    transposed ones included; the int8/uint8 -> int32 forward on a CPU with VNNI or AMX), except
    strided depthwise with the bfloat16 kernels, which it declines. On a CPU without bfloat16
    instructions that pick is ``f32``, faster there than the lax engine's bfloat16 algorithms in a
    train step's forward and backward on every suite layer but the smallest.
    Measured on the whole suite against the lax/XLA plans, XLA and PyTorch: docs/performance.md
    (the oneDNN section, table 2b)."""
    if platform != "cpu":
        return None
    algorithm = choose(spec, platform)[0]
    if ALGORITHMS[algorithm].supports(spec) is not None:
        return None
    if algorithm == "onednn" and spec.is_depthwise and spec.dtype == "bfloat16" and spec.stride != (1, 1):
        return None  # oneDNN 3.2's strided bfloat16 depthwise backward is slower than the lax engine's
    kind = ("transposed" if _transposed(spec) else "depthwise" if spec.is_depthwise
            else "grouped" if spec.groups > 1 else "1x1" if spec.is_pointwise else "dense")
    if algorithm == "f32":
        return algorithm, (f"{kind}, bfloat16 in float32: oneDNN's float32 primitives (plugin installed; this "
                           f"CPU has no bfloat16 instructions)")
    return algorithm, f"{kind}, {spec.dtype}: oneDNN's CPU primitives (plugin installed)"


ONEDNN = registry.Algorithm("onednn", supports=supports,
                            summary="oneDNN's CPU convolution primitives through XLA's FFI",
                            **_entry_points(lambda spec: spec))
F32 = registry.Algorithm("f32", supports=supports_f32,
                         summary="bfloat16 as float32 copies through oneDNN's float32 primitives, rounded "
                                 "back (CPUs without bfloat16 instructions)",
                         **_entry_points(_as_f32))
ALGORITHMS = {a.name: a for a in (ONEDNN, F32)}


def tune_candidates(spec: ExecSpec, platform: str) -> list[str]:
    """What the tuner measures: the algorithm ``impl="onednn"`` picks (:func:`choose`), on the CPU."""
    return [f"{NAME}:{choose(spec, platform)[0]}"] if platform == "cpu" else []


if _MISSING is not None:
    registry.register_unavailable(NAME, _MISSING)
else:
    BACKEND = registry.register(registry.Backend(
        name=NAME, algorithms=ALGORITHMS, choose=choose,
        auto=auto_rule, tune_candidates=tune_candidates,
        platforms=("cpu",), split_batch=True, native=True, layouts=LAYOUTS,
        summary="oneDNN's CPU convolutions through XLA's FFI (plugin jconv-onednn)",
    ))
