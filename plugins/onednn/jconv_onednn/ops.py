"""The convolutions: each one ``jax.ffi.ffi_call`` into the native library.

Arguments are checked here, before anything is traced, with errors naming the function and the
argument. The geometry is explicit (the caller resolves it: jconv's backend passes its spec's):
stride and dilation an int or a pair, padding an int, a pair (ph, pw) or ((top, bottom),
(left, right)); the string paddings ('SAME', 'VALID') are jconv's to resolve
(``jconv.conv2d``), not this package's.
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from jconv_onednn import _loader, settings

#: Batched calls (jax.vmap) loop over the mapped axis, one oneDNN call per element (README.md).
VMAP_METHOD = "sequential"

FLOAT_DTYPES = ("float32", "bfloat16")
#: the layouts of x / y and of w, and their code in the handlers' ``layout`` attribute
LAYOUTS = {"NHWC": 0, "NCHW": 1}
#: conv_forward's epilogues (oneDNN post-ops), and their code in the ``activation`` attribute
ACTIVATIONS = {None: 0, "relu": 1}
INT_SOURCE_DTYPES = ("int8", "uint8")

IntPair = Union[int, Sequence[int]]
Padding = Union[str, int, Sequence[int], Sequence[Sequence[int]]]


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _pair(fn: str, name: str, value, minimum: int) -> Tuple[int, int]:
    """An int or a pair of ints, each >= ``minimum``."""
    items = (value, value) if _is_int(value) else value
    if isinstance(items, str) or not isinstance(items, Sequence) or len(items) != 2 or not all(map(_is_int, items)):
        raise TypeError(f"{fn}: {name} (={value!r}) must be an int or a pair of ints")
    if min(items) < minimum:
        raise ValueError(f"{fn}: {name} (={value!r}) must be >= {minimum}" + (" (not negative)" if minimum == 0 else ""))
    return int(items[0]), int(items[1])


def _pads(fn: str, padding) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """An int, a pair (ph, pw) or ((top, bottom), (left, right)) of ints >= 0."""
    if isinstance(padding, str):
        raise TypeError(f"{fn}: padding (={padding!r}) must be explicit: an int, a pair (ph, pw) or "
                        "((top, bottom), (left, right)); jconv.conv2d resolves 'SAME' and 'VALID'")
    if _is_int(padding) or (isinstance(padding, Sequence) and len(padding) == 2 and all(map(_is_int, padding))):
        ph, pw = _pair(fn, "padding", padding, 0)
        return (ph, ph), (pw, pw)
    if isinstance(padding, Sequence) and len(padding) == 2:
        return _pair(fn, "padding", padding[0], 0), _pair(fn, "padding", padding[1], 0)
    raise TypeError(f"{fn}: padding (={padding!r}) must be an int, a pair (ph, pw) or ((top, bottom), (left, right))")


class _Conv(NamedTuple):
    """One convolution's resolved geometry; shapes in the call's layout, and NHWC / HWIO."""

    stride: Tuple[int, int]
    padding: Tuple[Tuple[int, int], Tuple[int, int]]
    dilation: Tuple[int, int]
    out_shape: Tuple[int, int, int, int]
    layout: str
    x_nhwc: Tuple[int, int, int, int]
    w_hwio: Tuple[int, int, int, int]

    def attrs(self, groups: int) -> dict:
        (pt, pb), (pl, pr) = self.padding
        return dict(stride=np.asarray(self.stride, np.int64),
                    padding=np.asarray((pt, pb, pl, pr), np.int64),
                    dilation=np.asarray(self.dilation, np.int64), groups=np.int64(groups),
                    layout=np.int64(LAYOUTS[self.layout]))


def _out_size(n, k, s, d, p0, p1):
    """As XLA: 0 when the dilated kernel is larger than the padded input."""
    return max(0, (n + p0 + p1 - (k - 1) * d - 1) // s + 1)


def _check_layout(fn: str, layout) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"{fn}: layout (={layout!r}) must be 'NHWC' (x NHWC, w HWIO) or 'NCHW' "
                         "(x NCHW, w OIHW)")
    return layout


def _resolve(fn: str, x_shape, w_shape, stride, padding, dilation, layout="NHWC") -> _Conv:
    layout = _check_layout(fn, layout)
    if len(x_shape) != 4 or len(w_shape) != 4:
        want = "an NHWC input and an HWIO kernel" if layout == "NHWC" else "an NCHW input and an OIHW kernel"
        raise ValueError(f"{fn}: expected {want}, got shapes {tuple(x_shape)} and {tuple(w_shape)}")
    x_nhwc, w_hwio = tuple(int(v) for v in x_shape), tuple(int(v) for v in w_shape)
    if layout == "NCHW":
        x_nhwc = tuple(x_nhwc[i] for i in (0, 2, 3, 1))
        w_hwio = tuple(w_hwio[i] for i in (2, 3, 1, 0))
    s = _pair(fn, "stride", stride, 1)
    d = _pair(fn, "dilation", dilation, 1)
    n, h, w, _ = x_nhwc
    kh, kw, _, co = w_hwio
    pads = _pads(fn, padding)
    (pt, pb), (pl, pr) = pads
    ho, wo = _out_size(h, kh, s[0], d[0], pt, pb), _out_size(w, kw, s[1], d[1], pl, pr)
    out = (n, ho, wo, co) if layout == "NHWC" else (n, co, ho, wo)
    return _Conv(s, pads, d, out, layout, x_nhwc, w_hwio)


def _check_groups(fn: str, conv: _Conv, w_shape, groups) -> int:
    if not _is_int(groups) or int(groups) < 1:
        raise ValueError(f"{fn}: groups (={groups!r}) must be an int >= 1")
    groups = int(groups)
    ci, (_, _, cig, co) = conv.x_nhwc[3], conv.w_hwio
    if ci % groups or co % groups or cig * groups != ci:
        want = (f"(KH, KW, {ci}/groups, C_out)" if conv.layout == "NHWC"
                else f"(C_out, {ci}/groups, KH, KW)")
        raise ValueError(f"{fn}: groups (={groups}) does not fit input channels {ci} and kernel "
                         f"{tuple(w_shape)} (expected {want}, C_out divisible by groups)")
    return groups


def _float_dtype(fn: str, *arrays) -> np.dtype:
    names = [np.dtype(a.dtype).name for a in arrays]
    if len(set(names)) > 1:
        raise TypeError(f"{fn}: all operands must share one dtype, got {names}")
    dt = np.dtype(arrays[0].dtype)
    if dt.name not in FLOAT_DTYPES:
        note = (" (integer convolutions: conv_forward only, int8/uint8 x int8 with "
                "preferred_element_type=int32)" if dt.name in INT_SOURCE_DTYPES else "")
        raise TypeError(f"{fn}: unsupported dtype {dt.name}; supported: float32, bfloat16{note}")
    if dt.name == "bfloat16" and not settings.bf16_supported():
        raise TypeError(f"{fn}: this CPU has no native bfloat16 support (AVX512_BF16, AMX or "
                        "AVX2-VNNI-2); use float32")
    return dt


def _int8_out_dtype(fn: str, x, w, b, preferred) -> np.dtype:
    """int32 for an int8/uint8 x int8 forward convolution, or a TypeError."""
    xd, wd = np.dtype(x.dtype).name, np.dtype(w.dtype).name
    if wd != "int8":
        raise TypeError(f"{fn}: w dtype (={wd}) must be int8 with an {xd} x (oneDNN's integer "
                        "convolutions take int8 weights)")
    if preferred is None or np.dtype(preferred) != np.dtype(np.int32):
        raise TypeError(f"{fn}: preferred_element_type (={preferred!r}) must be int32 for {xd} "
                        "inputs: the plugin returns the exact int32 sums, as "
                        "lax.conv_general_dilated(..., preferred_element_type=jnp.int32); "
                        "narrower integer outputs are not offered")
    if b is not None:
        raise TypeError(f"{fn}: integer convolutions take no bias (b dtype "
                        f"{np.dtype(b.dtype).name}); add it to the int32 result")
    if not settings.int8_supported():
        raise TypeError(f"{fn}: exact int8 convolutions need a CPU with VNNI or AMX (AVX512_VNNI, "
                        "AVX-VNNI); this one has neither")
    return np.dtype(np.int32)


def conv_output_shape(x_shape, w_shape, *, stride: IntPair = 1, padding: Padding = 0,
                      dilation: IntPair = 1, layout: str = "NHWC") -> Tuple[int, int, int, int]:
    """Output shape of a convolution of x_shape (NHWC) with w_shape (HWIO), or NCHW / OIHW.

    As in XLA, a spatial size is 0 when the dilated kernel is larger than the padded input.
    """
    return _resolve("conv_output_shape", x_shape, w_shape, stride, padding, dilation, layout).out_shape


def conv_forward(x, w, b=None, *, stride: IntPair = 1, padding: Padding = 0,
                 dilation: IntPair = 1, groups: int = 1, preferred_element_type: Any = None,
                 layout: str = "NHWC", activation: Optional[str] = None):
    """y = conv(x, w) [+ b].

    layout "NHWC": x (N, H, W, C_in), w (KH, KW, C_in // groups, C_out), y (N, Ho, Wo, C_out);
    "NCHW": x (N, C_in, H, W), w (C_out, C_in // groups, KH, KW), y (N, C_out, Ho, Wo) (float
    only). Output channel g * (C_out // groups) + o belongs to group g; b: (C_out,) or None.
    stride, dilation: int or (h, w); dilation is the kernel (rhs) dilation, 1 = dense.
    padding: ((top, bottom), (left, right)), (ph, pw), an int, or "SAME"/"VALID".

    float32 / bfloat16: every operand has that dtype, and so has y (preferred_element_type
    None or that dtype). int8 / uint8 x: w int8, no bias, preferred_element_type=int32: y is
    the exact int32 sum (CPUs with VNNI or AMX, :func:`int8_supported`).
    Equals ``lax.conv_general_dilated(x, w, stride, padding, rhs_dilation=dilation,
    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
    preferred_element_type=preferred_element_type) + b`` (for uint8 x, which lax does not
    mix with int8 w: with both operands in int32).
    activation: None, or "relu" (float only): ``max(0, conv(x, w) + b)`` in the same pass over
    the output (a oneDNN post-op). Unlike ``jax.nn.relu``, a NaN output becomes 0 on oneDNN's
    jit kernels (their ReLU is the hardware max; its GEMM-based ones keep NaN).
    """
    import jax

    fn = "conv_forward"
    _loader.require()
    if activation not in ACTIVATIONS:
        raise ValueError(f"{fn}: activation (={activation!r}) must be None or 'relu'")
    conv = _resolve(fn, x.shape, w.shape, stride, padding, dilation, layout)
    groups = _check_groups(fn, conv, w.shape, groups)
    co = conv.w_hwio[3]
    if np.dtype(x.dtype).name in INT_SOURCE_DTYPES:
        if conv.layout != "NHWC":
            raise ValueError(f"{fn}: layout (={layout!r}) must be 'NHWC' for integer convolutions")
        if activation is not None:
            raise ValueError(f"{fn}: activation (={activation!r}) is for float convolutions; "
                             "integer ones return the exact int32 sums")
        dt = _int8_out_dtype(fn, x, w, b, preferred_element_type)
        operands = (x, w)
    else:
        operands = (x, w) if b is None else (x, w, b)
        dt = _float_dtype(fn, *operands)
        if preferred_element_type is not None and np.dtype(preferred_element_type) != dt:
            raise TypeError(f"{fn}: preferred_element_type (={preferred_element_type!r}) must be "
                            f"None or the input dtype {dt.name} (oneDNN writes its float "
                            "results in the input dtype)")
    if b is not None and tuple(b.shape) != (co,):
        raise ValueError(f"{fn}: bias shape {tuple(b.shape)} should be ({co},)")
    target = _loader.TARGETS["fwd"] if b is None else _loader.TARGETS["fwd_bias"]
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(conv.out_shape, dt),
                            vmap_method=VMAP_METHOD)
    return call(*operands, **conv.attrs(groups), activation=np.int64(ACTIVATIONS[activation]))


def conv_backward_data(dy, w, *, x_shape, stride: IntPair = 1, padding: Padding = 0,
                       dilation: IntPair = 1, groups: int = 1, layout: str = "NHWC"):
    """dx = the gradient of conv_forward with respect to x, given dy (float32 / bfloat16).

    dy: the forward output's shape; w and layout as in :func:`conv_forward`; x_shape: the
    forward input's shape (needed because several input sizes give the same output size when
    stride > 1). Returns dx of shape x_shape in dy's dtype.
    """
    import jax

    fn = "conv_backward_data"
    _loader.require()
    x_shape = tuple(int(d) for d in x_shape)
    conv = _resolve(fn, x_shape, w.shape, stride, padding, dilation, layout)
    groups = _check_groups(fn, conv, w.shape, groups)
    dt = _float_dtype(fn, dy, w)
    if tuple(dy.shape) != conv.out_shape:
        raise ValueError(f"{fn}: dy shape {tuple(dy.shape)} does not match the forward output "
                         f"shape {conv.out_shape}")
    call = jax.ffi.ffi_call(_loader.TARGETS["bwd_data"], jax.ShapeDtypeStruct(x_shape, dt),
                            vmap_method=VMAP_METHOD)
    return call(dy, w, **conv.attrs(groups))


def conv_backward_weights(x, dy, *, w_shape, stride: IntPair = 1, padding: Padding = 0,
                          dilation: IntPair = 1, groups: int = 1, with_bias: bool = False,
                          layout: str = "NHWC"):
    """dw (and db) = the gradients of conv_forward with respect to w (and b).

    x, dy: the forward input's and output's shapes; w_shape: the kernel's (HWIO for layout
    "NHWC", OIHW for "NCHW"); float32 / bfloat16. Returns dw (w_shape, x's dtype), or (dw, db)
    with db = dy summed over the batch and spatial axes when with_bias is True.
    """
    import jax

    fn = "conv_backward_weights"
    _loader.require()
    w_shape = tuple(int(d) for d in w_shape)
    conv = _resolve(fn, x.shape, w_shape, stride, padding, dilation, layout)
    groups = _check_groups(fn, conv, w_shape, groups)
    dt = _float_dtype(fn, x, dy)
    if tuple(dy.shape) != conv.out_shape:
        raise ValueError(f"{fn}: dy shape {tuple(dy.shape)} does not match the forward output "
                         f"shape {conv.out_shape}")
    attrs = conv.attrs(groups)
    if with_bias:
        call = jax.ffi.ffi_call(
            _loader.TARGETS["bwd_weights_bias"],
            (jax.ShapeDtypeStruct(w_shape, dt), jax.ShapeDtypeStruct((conv.w_hwio[3],), dt)),
            vmap_method=VMAP_METHOD)
        dw, db = call(x, dy, **attrs)
        return dw, db
    call = jax.ffi.ffi_call(_loader.TARGETS["bwd_weights"], jax.ShapeDtypeStruct(w_shape, dt),
                            vmap_method=VMAP_METHOD)
    return call(x, dy, **attrs)


_DESCRIBE_OPS = {"fwd": 0, "bwd_data": 1, "bwd_weights": 2}
_DESCRIBE_DTYPES = {"float32": 0, "bfloat16": 1, "int8": 2, "uint8": 3}


def describe(op: str, x_shape, w_shape, *, stride: IntPair = 1, padding: Padding = 0,
             dilation: IntPair = 1, groups: int = 1, dtype: Any = "float32",
             bias: bool = False, layout: str = "NHWC") -> str:
    """The oneDNN implementation chosen for one convolution (diagnostics).

    op: "fwd", "bwd_data" or "bwd_weights"; dtype: the x dtype (int8 and uint8: the forward
    int8 convolution). Builds (and caches) the plan. Example result:
    "brgconv:avx512_core +weight-reorder scratch=4096" (also "+src-reorder", "+dst-reorder" when
    the activations are reordered to oneDNN's layout and back).
    """
    fn = "describe"
    lib = _loader.require()
    if op not in _DESCRIBE_OPS:
        raise ValueError(f"{fn}: op (={op!r}) must be one of {sorted(_DESCRIBE_OPS)}")
    name = np.dtype(dtype).name
    if name not in _DESCRIBE_DTYPES:
        raise TypeError(f"{fn}: dtype (={name}) must be one of {sorted(_DESCRIBE_DTYPES)}")
    conv = _resolve(fn, x_shape, w_shape, stride, padding, dilation, layout)
    groups = _check_groups(fn, conv, w_shape, groups)
    n, h, w, ci = conv.x_nhwc
    kh, kw, _, co = conv.w_hwio
    (pt, pb), (pl, pr) = conv.padding
    geom = (ctypes.c_int64 * 18)(n, h, w, ci, kh, kw, co, *conv.stride, *conv.dilation,
                                 pt, pb, pl, pr, groups, int(bool(bias)), LAYOUTS[conv.layout])
    buf = ctypes.create_string_buffer(512)
    rc = lib.jconv_onednn_describe(_DESCRIBE_OPS[op], _DESCRIBE_DTYPES[name], geom, buf, len(buf))
    text = buf.value.decode()
    if rc != 0:
        raise RuntimeError(f"jconv_onednn.{fn}: {text}")
    return text
