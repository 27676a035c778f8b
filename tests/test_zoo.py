"""The zoo (jconv_experiments/zoo): each model written once in Flax with the conv module a
parameter. jconv's modules and flax's take the same variables and give the same outputs and
gradients; the PyTorch twins take those variables and give them too (when torch is installed);
the profile attributes a program's time to the right layers.

Small versions of the models (the zoo's ``small`` fields) on inputs where BatchNorm has enough
values per channel to be well conditioned (at 1x1 spatial size and batch 2 the statistics of two
values amplify rounding differences into large gradient differences).
"""

from __future__ import annotations

import functools
import importlib.util

import jax
import numpy as np
import pytest

from jconv.testing import scaled_error
from jconv_experiments import zoo
from jconv_experiments.bench import profile
from jconv_experiments.zoo import steps

from grids import slow_unless

MODELS = list(zoo.MODELS)
BATCH = 4
HAS_TORCH = importlib.util.find_spec("torch") is not None


@functools.lru_cache(maxsize=None)
def _setup(name):
    spec = zoo.get(name)
    size = spec.small_image_size
    variables = steps.random_variables(zoo.build(name, "xla", small=True), spec.input_shape(BATCH, size))
    x, y = steps.make_inputs(spec, BATCH, image_size=size)
    return spec, variables, x, y


@functools.lru_cache(maxsize=None)
def _outputs(name, conv):
    """The small model's logits, and its first train step's loss, gradients and new state
    (shared by the tests: each program compiles once)."""
    spec, variables, x, y = _setup(name)
    module = zoo.build(name, conv, small=True)
    logits = np.asarray(jax.jit(steps.inference_fn(module))(variables, x))
    tx = steps.optimizer(spec)
    state, loss = jax.jit(steps.train_step_fn(module, tx))(steps.init_state(variables, tx), x, y)
    return logits, float(loss), jax.device_get(steps.first_step_grads(spec, state["opt_state"])), jax.device_get(state)


def _worst(a, b) -> float:
    return max(scaled_error(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


#: make test: ConvNeXt-T and the U-Net; ResNet-50 and MobileNetV2 in make test-all (make test runs
#: them through jconv's modules against XLA in tests/test_networks.py and tests/test_flax_resnet.py)
QUICK_MODELS = ("convnext_t", "unet")


@pytest.mark.parametrize("name", slow_unless(MODELS, lambda m: m in QUICK_MODELS))
def test_jconv_modules_take_flax_variables_and_agree(name):
    spec, variables, x, y = _setup(name)
    jmod, fmod = zoo.build(name, "jconv", small=True), zoo.build(name, "xla", small=True)
    # the same variables tree (names, shapes, dtypes): flax's variables drive jconv's modules
    shape = spec.input_shape(1, spec.small_image_size)
    assert steps.abstract_variables(jmod, shape) == steps.abstract_variables(fmod, shape)
    (lj, loss_j, gj, sj), (lf, loss_f, gf, sf) = _outputs(name, "jconv"), _outputs(name, "xla")
    assert lj.shape == ((BATCH, spec.num_classes) if spec.task == "classify"
                        else (BATCH, spec.small_image_size, spec.small_image_size, spec.num_classes))
    assert scaled_error(lj, lf) < 1e-5
    assert abs(loss_j - loss_f) < 1e-5 * max(1.0, abs(loss_f))
    assert _worst(gj, gf) < 1e-4
    if spec.name != "convnext_t":  # LayerNorm only: no running statistics
        assert _worst(sj["batch_stats"], sf["batch_stats"]) < 1e-5  # updated alike


def test_jconv_modules_run_jconv_and_flax_modules_do_not():
    from jconv import primitive

    _, variables, x, _ = _setup("unet")
    for conv, expected in (("jconv", True), ("xla", False)):
        module = zoo.build("unet", conv, small=True)
        jaxpr = jax.make_jaxpr(steps.inference_fn(module))(variables, x)
        assert bool(list(primitive.conv_eqns(jaxpr))) is expected


def test_random_variables_reach_every_branch():
    """Flax zeroes each ResNet block's last BatchNorm scale: the check's variables do not."""
    _, variables, _, _ = _setup("resnet50")
    block = variables["params"]["BottleneckResNetBlock_0"]
    assert np.ptp(block["BatchNorm_2"]["scale"]) > 0 and abs(block["BatchNorm_2"]["scale"].mean() - 1) < 0.5
    kernel = block["Conv_1"]["kernel"]  # 3x3, 8 -> 8: fan-in 72
    assert kernel.dtype == np.float32 and 0.5 / np.sqrt(72) < kernel.std() < 2 / np.sqrt(72)


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match=r"zoo.get: model \(='vgg'\)"):
        zoo.build("vgg")
    with pytest.raises(ValueError, match=r"zoo.build: conv \(='cudnn'\)"):
        zoo.build("resnet50", "cudnn")


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (an optional peer)")
@pytest.mark.parametrize("name", MODELS)
def test_torch_twin_takes_flax_variables_and_agrees(name):
    from jconv_experiments.zoo import torch_models, torch_transfer as tt

    spec, variables, x, y = _setup(name)
    twin = tt.load_flax_variables(torch_models.build_torch(name, small=True), variables)
    ref, loss, grads, _ = _outputs(name, "xla")
    assert scaled_error(tt.logits_numpy(tt.inference_runner(twin, x, "float32")()), ref) < 1e-5
    tloss = float(tt.train_step_runner(spec, twin, x, y, "float32")())
    assert abs(tloss - loss) < 1e-5 * max(1.0, abs(loss))
    pairs = tt.torch_grads_vs(twin, grads)
    assert len(pairs) == len(jax.tree.leaves(grads))
    assert max(scaled_error(a, b) for a, b in pairs) < 1e-4


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (an optional peer)")
def test_torch_loader_names_a_missing_leaf():
    from jconv_experiments.zoo import torch_models, torch_transfer as tt

    _, variables, _, _ = _setup("resnet50")
    params = dict(variables["params"])
    del params["Dense_0"]
    with pytest.raises(ValueError, match=r"no flax leaf for \['Dense_0\.weight'"):
        tt.load_flax_variables(torch_models.build_torch("resnet50", small=True), dict(variables, params=params))


# --------------------------------------------------------------------------------------------
# the profile's attribution
# --------------------------------------------------------------------------------------------


def test_op_names_map_to_module_categories():
    classes = {(): "ResNet", ("Block_0",): "Block", ("Block_0", "Conv_1"): "Conv", ("Block_0", "BatchNorm_0"): "BatchNorm",
               ("Dense_0",): "Dense", ("up0",): "ConvTranspose"}
    cat = lambda n: profile.op_category(n, "ResNet", classes)  # noqa: E731
    assert cat("jit(step)/jvp(ResNet)/Block_0/Conv_1/jit(_execute)/ffi_call") == "conv"
    assert cat("jit(step)/transpose(jvp(ResNet))/Block_0/Conv_1/conv_general_dilated") == "conv"
    assert cat("jit(step)/transpose(jvp(ResNet))/up0/conv_general_dilated") == "conv"
    assert cat("jit(step)/jvp(ResNet)/Block_0/BatchNorm_0/rsqrt") == "norm"
    assert cat("jit(step)/jvp(ResNet)/Dense_0/dot_general") == "dense"
    assert cat("jit(step)/jvp(ResNet)/Block_0/add") == "other layers"
    assert cat("jit(step)/jvp(ResNet)/reduce_window_max") == "other layers"
    assert cat("jit(step)/add") == "loss+optimizer"
    assert cat(None) is None


def test_unnamed_layout_copies_of_a_convolution_count_as_conv():
    hlo = """HloModule m
ENTRY %main (p: f32[2]) -> f32[2] {
  %p = f32[4,8,8,3]{3,2,1,0} parameter(0), metadata={op_name="x"}
  %copy.1 = f32[8,8,4,3]{3,2,1,0} fusion(%p), kind=kLoop, calls=%fc
  %convolution.2 = f32[3,3,3,3]{3,2,1,0} convolution(%copy.1, %copy.1), window={size=3x3}
  %mul.3 = f32[3,3,3,3]{3,2,1,0} multiply(%convolution.2, %convolution.2), metadata={op_name="jit(step)/mul"}
  %tanh.4 = f32[4,8,8,3]{3,2,1,0} tanh(%p)
  ROOT %t = (f32[3,3,3,3]{3,2,1,0}) tuple(%mul.3)
}
"""
    instrs = profile.hlo_instructions(hlo)
    assert instrs["convolution.2"]["operands"] == ["copy.1", "copy.1"]
    cat = profile.categorize(instrs, "ResNet", {(): "ResNet"})
    assert cat["convolution.2"] == "conv" and cat["copy.1"] == "conv"
    assert cat["mul.3"] == "loss+optimizer" and cat["tanh.4"] == "unattributed"


def test_jax_profile_of_a_train_step():
    spec, variables, x, y = _setup("resnet50")
    module = zoo.build("resnet50", "jconv", small=True)
    tx = steps.optimizer(spec)
    state = steps.init_state(variables, tx)
    exe = jax.jit(steps.train_step_fn(module, tx)).lower(state, x, y).compile()
    classes = profile.module_classes(module, variables, x, train=False)
    assert classes[("BottleneckResNetBlock_0", "Conv_1")] == "Conv"
    out = profile.jax_breakdown(exe, lambda: jax.block_until_ready(exe(state, x, y)), 2, "ResNet", classes)
    assert set(out) == set(profile.CATEGORIES)
    assert out["conv"] > 0 and out["norm"] > 0 and out["dense"] > 0 and out["loss+optimizer"] > 0
    assert out["conv"] > 0.3 * sum(out.values())


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (an optional peer)")
def test_torch_profile_of_a_train_step():
    from jconv_experiments.zoo import torch_models, torch_transfer as tt

    spec, variables, x, y = _setup("resnet50")
    twin = tt.load_flax_variables(torch_models.build_torch("resnet50", small=True), variables)
    run = tt.train_step_runner(spec, twin, x, y, "float32")
    run()
    out = profile.torch_breakdown(run, 2)
    assert out["conv"] > 0 and out["norm"] > 0 and out["dense"] > 0 and out["loss+optimizer"] > 0
    assert profile.torch_category(["aten::copy_", "aten::mkldnn_convolution", "aten::conv2d"]) == "conv"
    assert profile.torch_category(["aten::mul_", "Optimizer.step#SGD.step"]) == "loss+optimizer"
