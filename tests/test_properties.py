"""Property tests: random valid specs drawn by hypothesis."""

import os

import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jconv
from jconv.geometry import parse_conv2d
from jconv.testing import assert_close
from oracle import conv2d_ref

#: examples per property (make test: 10, JCONV_PROPERTY_EXAMPLES; make test-all: 20)
SETTINGS = settings(max_examples=int(os.environ.get("JCONV_PROPERTY_EXAMPLES", "20")), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    layout = draw(st.sampled_from(["NHWC", "NCHW"]))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    keff = ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1)
    h = draw(st.integers(keff[0], keff[0] + 6))
    w = draw(st.integers(keff[1], keff[1] + 6))
    maxpad = (min(3, h - 1), min(3, w - 1))  # reflect/circular need pad < size
    kind = draw(st.sampled_from(["VALID", "SAME", "int", "pair", "sides"]))
    if kind == "int":
        padding = draw(st.integers(0, min(maxpad)))
    elif kind == "pair":
        padding = (draw(st.integers(0, maxpad[0])), draw(st.integers(0, maxpad[1])))
    elif kind == "sides":
        padding = tuple((draw(st.integers(0, m)), draw(st.integers(0, m))) for m in maxpad)
    else:
        padding = kind
    if kind == "SAME" and mode in ("reflect", "circular"):
        mode = "replicate"  # SAME pads can reach the kernel size; keep the case valid
    batch = draw(st.integers(1, 2))
    impl = draw(st.sampled_from(["lax", "lax:im2col", "lax:taps"]))
    return dict(groups=groups, cin=cin, cout=cout, k=(kh, kw), dilation=dil, stride=stride, layout=layout,
                padding_mode=mode, padding=padding, hw=(h, w), batch=batch, impl=impl,
                flip=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


def _arrays(c):
    rng = np.random.default_rng(c["seed"])
    h, w = c["hw"]
    kh, kw = c["k"]
    if c["layout"] == "NHWC":
        xs, ws = (c["batch"], h, w, c["cin"]), (kh, kw, c["cin"] // c["groups"], c["cout"])
    else:
        xs, ws = (c["batch"], c["cin"], h, w), (c["cout"], c["cin"] // c["groups"], kh, kw)
    return rng.normal(size=xs).astype(np.float32), rng.normal(size=ws).astype(np.float32)


def _kw(c):
    return dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"],
                layout=c["layout"], padding_mode=c["padding_mode"], flip_kernel=c["flip"])


@SETTINGS
@given(conv_cases())
def test_random_specs_shape_and_values(c):
    x, k = _arrays(c)
    y = jconv.conv2d(jnp.asarray(x), jnp.asarray(k), impl=c["impl"], **_kw(c))
    spec = parse_conv2d(x.shape, x.dtype, k.shape, k.dtype, **_kw(c))
    # the shape is the seed's formula, per axis (padding as resolved, SAME included)
    for axis, (size, ksz, s, d, pads) in enumerate(zip(c["hw"], c["k"], c["stride"], c["dilation"], spec.padding)):
        assert spec.out_size[axis] == jconv.output_size(size, ksz, padding=pads, stride=s, dilation=d)
    assert y.shape == spec.out_shape
    ref = conv2d_ref(x, k, stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=spec.groups,
                     layout=spec.layout, padding_mode=spec.padding_mode, flip_kernel=spec.flip_kernel)
    assert_close(y, ref, np.float32)


@st.composite
def circular_cases(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    hw = (draw(st.integers(k[0], 8)), draw(st.integers(k[1], 8)))
    lo = [draw(st.integers(0, kk - 1)) for kk in k]
    padding = tuple((lo[i], k[i] - 1 - lo[i]) for i in range(2))  # output size == input size
    shift = (draw(st.integers(-hw[0], hw[0])), draw(st.integers(-hw[1], hw[1])))
    return k, hw, padding, shift, draw(st.sampled_from(["lax", "xla"])), draw(st.integers(0, 999))


@SETTINGS
@given(circular_cases())
def test_circular_padding_commutes_with_roll(case):
    (kh, kw), (h, w), padding, shift, impl, seed = case
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(1, h, w, 2)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kh, kw, 2, 3)), jnp.float32)
    f = lambda a: jconv.conv2d(a, k, padding=padding, padding_mode="circular", impl=impl)  # noqa: E731
    y = f(x)
    assert y.shape == (1, h, w, 3)
    assert_close(f(jnp.roll(x, shift, axis=(1, 2))), jnp.roll(y, shift, axis=(1, 2)), np.float32)


@SETTINGS
@given(conv_cases())
def test_flip_kernel_is_the_kernel_flipped_by_hand(c):
    x, k = _arrays(c)
    kw = _kw(c)
    kw["flip_kernel"] = False
    x, k = jnp.asarray(x), jnp.asarray(k)
    flipped = k[::-1, ::-1] if c["layout"] == "NHWC" else k[:, :, ::-1, ::-1]
    impl = c["impl"]
    assert_close(jconv.conv2d(x, k, flip_kernel=True, impl=impl, **{a: v for a, v in kw.items() if a != "flip_kernel"}),
                 jconv.conv2d(x, flipped, impl=impl, **kw), np.float32)
    # flipping twice is the identity
    assert_close(jconv.conv2d(x, flipped, flip_kernel=True, impl=impl, **{a: v for a, v in kw.items() if a != "flip_kernel"}),
                 jconv.conv2d(x, k, impl=impl, **kw), np.float32)
