"""Every wrong argument gets a clear error, naming the function, the argument and its value,
raised before any tracing happens."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv
from jconv import primitive

X = jnp.ones((2, 8, 8, 4))
W = jnp.ones((3, 3, 4, 6))


def _raises(exc, pattern, *args, **kwargs):
    with pytest.raises(exc, match=pattern) as info:
        jconv.conv2d(*args, **kwargs)
    assert str(info.value).startswith("conv2d: "), str(info.value)
    return info


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        # ranks
        (dict(x=jnp.ones((8, 8)), w=W), ValueError, r"x\.shape \(=\(8, 8\)\) must be rank 4"),
        (dict(x=X, w=jnp.ones((3, 3, 4))), ValueError, r"w\.shape \(=\(3, 3, 4\)\) must be rank 4"),
        # channels and groups
        (dict(x=X, w=jnp.ones((3, 3, 3, 6))), ValueError, r"w\.shape \(=\(3, 3, 3, 6\)\) has 3 input channels per group.*needs 4"),
        (dict(x=X, w=jnp.ones((3, 3, 1, 6)), groups=3), ValueError, r"groups \(=3\) must divide input channels \(=4\)"),
        (dict(x=X, w=jnp.ones((3, 3, 2, 5)), groups=2), ValueError, r"groups \(=2\) must divide output channels \(=5"),
        (dict(x=X, w=jnp.ones((3, 3, 4, 6)), groups=2), ValueError, r"has 4 input channels per group, but x has 4 channels and groups=2, so the kernel needs 2"),
        (dict(x=X, w=W, groups=0), ValueError, r"groups \(=0\) must be >= 1"),
        (dict(x=X, w=W, groups=1.0), TypeError, r"groups \(=1\.0\) must be an int"),
        # stride / dilation
        (dict(x=X, w=W, stride=0), ValueError, r"stride \(=0\) must be >= 1"),
        (dict(x=X, w=W, stride=(1, -2)), ValueError, r"stride \(=\(1, -2\)\) must be >= 1"),
        (dict(x=X, w=W, stride=(1, 2, 3)), ValueError, r"stride \(=\(1, 2, 3\)\) must be an int or a pair of ints, got 3"),
        (dict(x=X, w=W, stride="2"), TypeError, r"stride \(='2'\) must be an int or a pair"),
        (dict(x=X, w=W, dilation=(0, 1)), ValueError, r"dilation \(=\(0, 1\)\) must be >= 1"),
        (dict(x=X, w=W, dilation=1.5), TypeError, r"dilation \(=1\.5\) must be an int"),
        # padding
        (dict(x=X, w=W, padding=-1), ValueError, r"padding \(=-1\) must not be negative"),
        (dict(x=X, w=W, padding=((0, -1), (0, 0))), ValueError, r"padding \(=\(0, -1\)\) must not be negative"),
        (dict(x=X, w=W, padding=1.5), TypeError, r"padding \(=1\.5\) must be 'VALID', 'SAME'"),
        (dict(x=X, w=W, padding="FULL"), ValueError, r"padding \(='FULL'\) must be 'VALID', 'SAME' or 'SAME_LOWER'"),
        (dict(x=X, w=W, padding=(1, 2, 3)), ValueError, r"padding \(=\(1, 2, 3\)\) must have 2 entries"),
        (dict(x=X, w=W, padding=8, padding_mode="reflect"), ValueError, r"padding \(=8\) with padding_mode='reflect' must be smaller than the input height"),
        (dict(x=jnp.ones((1, 3, 3, 1)), w=jnp.ones((3, 3, 1, 1)), padding=3, padding_mode="circular"), ValueError, r"padding_mode='circular' must be smaller than the input height \(=3\)"),
        # modes, layout, impl
        (dict(x=X, w=W, padding_mode="mirror"), ValueError, r"padding_mode \(='mirror'\) must be one of"),
        (dict(x=X, w=W, padding_mode=0), TypeError, r"padding_mode \(=0\) must be a string"),
        (dict(x=X, w=W, layout="HWCN"), ValueError, r"layout \(='HWCN'\) must be 'NHWC'"),
        (dict(x=X, w=W, impl="cudnn"), ValueError, r"impl \(='cudnn'\) must be one of"),
        (dict(x=X, w=W, impl="lax:winograd9"), ValueError, r"impl \(='lax:winograd9'\) names an unknown lax algorithm"),
        (dict(x=X, w=W, impl=None), TypeError, r"impl \(=None\) must be a string"),
        (dict(x=X, w=W, flip_kernel="yes"), TypeError, r"flip_kernel \(='yes'\) must be a bool"),
        (dict(x=X, w=W, precision="ultra"), ValueError, r"precision \(='ultra'\) must be None"),
        # kernel larger than the (padded) input
        (dict(x=jnp.ones((1, 4, 4, 1)), w=jnp.ones((5, 5, 1, 1))), ValueError, r"kernel \(dilated height 5\) is larger than the padded input height \(=4"),
        (dict(x=jnp.ones((1, 6, 6, 1)), w=jnp.ones((3, 3, 1, 1)), dilation=3), ValueError, r"kernel \(dilated height 7\) is larger"),
        # bias
        (dict(x=X, w=W, b=jnp.ones((4,))), ValueError, r"b\.shape \(=\(4,\)\) must be \(C_out,\) = \(6,\)"),
        (dict(x=X, w=W, b=jnp.ones((6,), jnp.float16)), TypeError, r"b\.dtype \(=float16\) must match x\.dtype \(=float32\)"),
        # dtypes
        (dict(x=X, w=W.astype(jnp.bfloat16)), TypeError, r"x\.dtype \(=float32\) and w\.dtype \(=bfloat16\) must match"),
        (dict(x=X.astype(jnp.int8), w=W.astype(jnp.int16)), TypeError, r"x\.dtype \(=int8\) and w\.dtype \(=int16\) must match"),
        (dict(x=X, w=W, preferred_element_type=jnp.int8), TypeError, r"preferred_element_type \(=int8\) cannot hold a float32 convolution"),
        (dict(x=X, w=W, preferred_element_type=jnp.bfloat16), TypeError, r"preferred_element_type \(=bfloat16\) must not be narrower than the input dtype \(=float32\)"),
        (dict(x=X.astype(jnp.int8), w=W.astype(jnp.int8), preferred_element_type=jnp.uint32), TypeError, r"preferred_element_type \(=uint32\) must be a signed integer type for a signed input \(int8\)"),
        (dict(x=X.astype(jnp.int32), w=W.astype(jnp.int32), preferred_element_type=jnp.float16), TypeError, r"preferred_element_type \(=float16\) must not be narrower"),
        (dict(x=X.astype(jnp.complex64), w=W.astype(jnp.complex64), preferred_element_type=jnp.float32), TypeError, r"preferred_element_type \(=float32\) cannot hold a complex64"),
        (dict(x=X, w=W, preferred_element_type="string"), TypeError, r"preferred_element_type \(='string'\) is not a dtype"),
        (dict(x=X.astype(jnp.int8), w=W.astype(jnp.int8), b=jnp.ones((6,), jnp.float32), preferred_element_type=jnp.int32), TypeError, r"b\.dtype \(=float32\) must match x\.dtype \(=int8\) or the result's dtype \(=int32\)"),
        # zero-size kernels (zero sizes elsewhere give lax's result: tests/conformance_lax.py)
        (dict(x=X, w=jnp.ones((0, 3, 4, 6))), ValueError, r"w\.shape \(=\(0, 3, 4, 6\)\) must have a non-zero kernel height and width"),
        (dict(x=jnp.ones((1, 0, 5, 1)), w=jnp.ones((1, 1, 1, 1)), padding=1, padding_mode="replicate"), ValueError, r"padding_mode='replicate' needs a non-empty input height to repeat \(got 0\)"),
        # not arrays
        (dict(x=[[1.0]], w=W), TypeError, r"x must be an array .*not a list"),
        (dict(x=X, w="kernel"), TypeError, r"w \(='kernel'\) must be an array"),
    ],
)
def test_bad_arguments(kwargs, exc, pattern):
    x, w = kwargs.pop("x"), kwargs.pop("w")
    b = kwargs.pop("b", None)
    _raises(exc, pattern, x, w, b, **kwargs)


def test_errors_surface_before_tracing_under_jit():
    """Inside jit the same message comes out (shapes are static), not a tracer error."""
    @jax.jit
    def f(x, w):
        return jconv.conv2d(x, w, groups=3)

    with pytest.raises(ValueError, match=re.escape("conv2d: groups (=3) must divide input channels (=4)")):
        f(X, jnp.ones((3, 3, 1, 6)))


def test_nchw_messages_use_nchw_shapes():
    with pytest.raises(ValueError, match=r"OIHW"):
        jconv.conv2d(jnp.ones((2, 4, 8, 8)), jnp.ones((3, 3, 4)), layout="NCHW")


def test_pallas_is_never_silently_replaced():
    """impl='pallas' runs Pallas kernels (never XLA's conv), and says so when it cannot."""
    x, k = jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1))
    jaxpr = jax.make_jaxpr(lambda a, b: jconv.conv2d(a, b, impl="pallas"))(x, k)
    (eqn,) = primitive.conv_eqns(jaxpr)
    assert eqn.params["impl"] == "pallas"
    (kernel,) = map(str, primitive.kernel_jaxprs(jaxpr))  # what the primitive lowers to
    assert "pallas_call" in kernel and "conv_general_dilated" not in kernel
    np.testing.assert_allclose(np.asarray(jconv.conv2d(x, k, impl="pallas")), 9.0, rtol=1e-6)
    with jax.enable_x64(True), pytest.raises(NotImplementedError, match="pallas.*float64"):
        jconv.conv2d(x.astype(jnp.float64), k.astype(jnp.float64), impl="pallas")


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: jconv.output_size(28, 0), ValueError, r"output_size: kernel_size \(=0\) must be >= 1"),
        (lambda: jconv.output_size(2, 5), ValueError, r"output_size: the kernel \(dilated size 5\) is larger"),
        (lambda: jconv.output_size(28, 3, padding="full"), ValueError, r"output_size: padding \(='full'\)"),
        (lambda: jconv.output_size(28.0, 3), TypeError, r"output_size: input_size \(=28\.0\) must be an int"),
        (lambda: jconv.conv_params(3, 64, 3, groups=2), ValueError, r"conv_params: groups \(=2\) must divide"),
        (lambda: jconv.conv_params(3, 64, (3, 3, 3)), ValueError, r"conv_params: kernel_size"),
        (lambda: jconv.receptive_field([(3,)]), ValueError, r"receptive_field: layers\[0\] \(=\(3,\)\)"),
        (lambda: jconv.receptive_field(3), TypeError, r"receptive_field: layers \(=3\)"),
        (lambda: jconv.conv_general_dilated(X, W, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), foo=1), TypeError, r"conv_general_dilated: unexpected keyword"),
        (lambda: jconv.conv_general_dilated(X, W, (1, 1), "SAME", lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC")), ValueError, r"conv_general_dilated: padding \(='SAME'\) must be explicit"),
        (lambda: jconv.conv_general_dilated(X, W, (1, 0), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")), ValueError, r"conv_general_dilated: stride \(=\(1, 0\)\)"),
    ],
)
def test_other_public_functions(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


_NCHW_X, _NCHW_W = np.ones((2, 4, 6, 6), np.float32), np.ones((6, 4, 3, 3), np.float32)


@pytest.mark.parametrize("args, kwargs", [
    ((_NCHW_X, _NCHW_W, (1, 1), (3, 3)), {}),                                    # testConvInvalidPadding
    ((np.ones((1, 1, 1)), np.ones((1, 1, 1, 1)), (1,), ((0, 0),)),                # different ranks
     dict(dimension_numbers=jax.lax.ConvDimensionNumbers((0, 1, 2), (0, 1, 2), (0, 1, 2)))),
    ((_NCHW_X, _NCHW_W, [1], "SAME"), {}),                                        # window_strides of 1-D
    ((_NCHW_X, _NCHW_W.astype(np.float16), (1, 1), "VALID"), {}),                 # operand dtypes differ
    ((_NCHW_X, _NCHW_W, (1, 1), "VALID"), dict(preferred_element_type=jnp.bfloat16)),
    ((_NCHW_X, _NCHW_W, (1, 1), "VALID"), dict(preferred_element_type=jnp.int32)),
    ((_NCHW_X.astype(np.int8), _NCHW_W.astype(np.int8), (1, 1), "VALID"), dict(preferred_element_type=jnp.uint16)),
    ((_NCHW_X, _NCHW_W[:, :2], (1, 1), "VALID"), dict(feature_group_count=3)),
    ((_NCHW_X[:1], _NCHW_W, (1, 1), "VALID"), dict(batch_group_count=2)),
    ((_NCHW_X, _NCHW_W[:, :2], (1, 1), "VALID"), dict(batch_group_count=2, feature_group_count=2)),
    ((_NCHW_X, _NCHW_W, (1, 1), "SAME"), dict(lhs_dilation=(2, 2))),
    ((_NCHW_X, _NCHW_W, (1, 1), ((-7, 0), (0, 0))), {}),                        # crops more than the input
])
def test_conv_general_dilated_raises_what_lax_raises(args, kwargs):
    """A drop-in raises the exception class lax raises for the same bad call (code that catches
    it keeps working), with jconv's message naming the argument."""
    from jax import lax

    with pytest.raises((TypeError, ValueError)) as want:
        lax.conv_general_dilated(*args, **kwargs)
    with pytest.raises(type(want.value)) as got:
        jconv.conv_general_dilated(*args, **kwargs)
    assert str(got.value).startswith("conv_general_dilated: "), got.value
