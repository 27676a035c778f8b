"""The seed's arithmetic, and the spec the parser builds. No arrays here."""

import pytest

import jconv
from jconv.geometry import parse_conv2d


@pytest.mark.parametrize(
    "inp, k, pad, stride, expected",
    [(28, 3, 0, 1, 26), (28, 3, 1, 1, 28), (28, 5, 0, 1, 24), (28, 3, 0, 2, 13), (224, 7, 3, 2, 112)],
)
def test_seed_output_size_table(inp, k, pad, stride, expected):
    assert jconv.output_size(inp, k, padding=pad, stride=stride) == expected


def test_output_size_forms():
    assert jconv.output_size(28, 3, padding="SAME") == 28
    assert jconv.output_size(28, 3, padding="same", stride=2) == 14  # ceil(28 / 2)
    assert jconv.output_size(28, 3, padding="VALID") == 26
    assert jconv.output_size(28, 3, padding=(0, 1)) == 27
    assert jconv.output_size(5, 3, dilation=2) == 1  # dilated 3x3 covers 5
    assert jconv.output_size(5, 3, padding=2, dilation=2) == 5


def test_seed_parameter_counts():
    assert jconv.conv_params(1, 32, 3) == 320  # first conv: 288 + 32
    assert jconv.conv_params(1, 32, 3, bias=False) == 288
    assert jconv.conv_params(32, 64, 3) == 18_496
    assert jconv.dense_params(1600, 10) == 16_010
    # depthwise + pointwise vs normal (32 -> 64, 3x3), no bias
    normal = jconv.conv_params(32, 64, 3, bias=False)
    separable = jconv.conv_params(32, 32, 3, groups=32, bias=False) + jconv.conv_params(32, 64, 1, bias=False)
    assert (normal, separable) == (18_432, 2_336)
    # fully connected vs conv on a 224x224x3 image
    assert jconv.dense_params(224 * 224 * 3, 64, bias=False) == 9_633_792
    assert jconv.conv_params(3, 64, 3) == 1_792


def test_seed_receptive_fields():
    assert [jconv.receptive_field([(3, 1)] * n) for n in (1, 2, 3)] == [3, 5, 7]
    # VGG's point: two stacked 3x3 see as far as one 5x5
    assert jconv.receptive_field([(3, 1), (3, 1)]) == jconv.receptive_field([(5, 1)])
    # pooling in between grows it faster; dilation 2 makes a 3x3 cover 5
    assert jconv.receptive_field([(3, 1), (2, 2), (3, 1)]) == 8
    assert jconv.receptive_field([(3, 1, 2)]) == 5
    assert jconv.receptive_field([]) == 1


def test_conv_flops():
    # the seed's first MNIST layer: 26*26 outputs x 32 filters x 9 MACs x 2
    assert jconv.conv_flops((1, 28, 28, 1), (3, 3, 1, 32)) == 2 * 26 * 26 * 32 * 9
    # NCHW, grouped: each output sums over C_in/groups channels only
    assert jconv.conv_flops((2, 8, 10, 10), (4, 2, 3, 3), groups=4, padding=1, layout="NCHW") == 2 * 2 * 100 * 4 * 2 * 9


def test_spec_same_padding_extra_after():
    s = parse_conv2d((1, 10, 10, 1), "float32", (4, 4, 1, 1), "float32", padding="SAME")
    assert s.padding == ((1, 2), (1, 2))
    s = parse_conv2d((1, 7, 8, 1), "float32", (3, 3, 1, 1), "float32", padding="same", stride=2)
    # out = ceil(7/2)=4 -> total = 3*2+3-7 = 2; out = 4 -> total = 3*2+3-8 = 1
    assert s.padding == ((1, 1), (0, 1)) and s.out_size == (4, 4)


@pytest.mark.parametrize(
    "padding, expected",
    [
        (2, ((2, 2), (2, 2))),
        ((1, 3), ((1, 1), (3, 3))),
        (((0, 1), (2, 3)), ((0, 1), (2, 3))),
        ([[0, 1], [2, 3]], ((0, 1), (2, 3))),
        ("valid", ((0, 0), (0, 0))),
    ],
)
def test_padding_forms(padding, expected):
    s = parse_conv2d((1, 9, 9, 2), "float32", (3, 3, 2, 4), "float32", padding=padding)
    assert s.padding == expected


def test_spec_is_hashable_and_describes_shapes():
    s = parse_conv2d((2, 3, 16, 12), "float32", (6, 1, 3, 3), "float32", (6,), "float32",
                     layout="nchw", groups=3, stride=(2, 1), padding=1)
    assert hash(s) == hash(parse_conv2d((2, 3, 16, 12), "float32", (6, 1, 3, 3), "float32", (6,), "float32",
                                        layout="NCHW", groups=3, stride=(2, 1), padding=1))
    assert s.out_shape == (2, 6, 8, 12) and s.x_shape == (2, 3, 16, 12) and s.w_shape == (6, 1, 3, 3)
    assert s.params == jconv.conv_params(3, 6, 3, groups=3)
    d = parse_conv2d((8, 8, 4), "float32", (3, 3, 1, 8), "float32", groups=4)
    assert d.is_depthwise and d.depth_multiplier == 2 and not d.batched and d.out_shape == (6, 6, 8)


def test_preferred_element_type_sets_out_dtype():
    s = parse_conv2d((1, 4, 4, 1), "bfloat16", (1, 1, 1, 1), "bfloat16", preferred_element_type="float32")
    assert (s.dtype, s.out_dtype) == ("bfloat16", "float32")


@pytest.mark.parametrize("kw", [dict(stride=2, padding="SAME"), dict(stride=(3, 1), padding=((2, 0), (1, 1)), dilation=2),
                                dict(padding=0, lhs_dilation=2)])
def test_input_grad_padding_gives_back_the_input_size(kw):
    """The input gradient is a VALID conv of the padded, stride-dilated cotangent: its output
    (stride = lhs_dilation) must be exactly the input size."""
    s = parse_conv2d((1, 11, 9, 2), "float32", (3, 2, 2, 4), "float32", **kw).execute_spec()
    for axis in range(2):
        lo, hi = s.input_grad_padding[axis]
        dy = (s.out_size[axis] - 1) * s.stride[axis] + 1 + lo + hi
        k = s.effective_kernel_size[axis]
        assert (dy - k) // s.lhs_dilation[axis] + 1 == s.in_size[axis]
