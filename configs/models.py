"""Whole networks on the CPU: jconv against XLA and PyTorch on ResNet-50, MobileNetV2,
ConvNeXt-T and a U-Net, float32 and bfloat16, inference and a full train step.

    python -m jconv_experiments --config=configs/models.py --workdir=runs/models
    python -m jconv_experiments report --workdir=runs/models       # report.md + models.png again

What runs and how it is checked and timed: jconv_experiments/networks.py and docs/models.md.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.experiment = "networks"
    c.platform = "cpu"
    c.models = "resnet50,mobilenet_v2,convnext_t,unet"   # jconv_experiments.zoo names
    c.dtypes = "float32,bfloat16"
    c.passes = "inference,train"
    c.candidates = "jconv,xla,torch,torch_compile"      # xla (flax.linen.Conv) is the baseline
    c.torch_compile = "inference"                       # passes torch.compile runs (its compile is long here) ...
    c.torch_compile_dtypes = "float32"                  # ... at these dtypes
    c.profile = "jconv,xla,torch"                       # candidates whose time is broken down ...
    c.profile_dtypes = "float32"                        # ... at these dtypes
    c.impl = "auto"                                     # jconv's impl in every conv module
    c.batch = 8
    c.image_size = 0                                    # 0: each model's own (224; the U-Net 128)
    c.small = False                                     # True: the zoo's small versions (tests)
    c.seed = 0
    # timing (jconv.timing.time_interleaved): rounds of `block` calls per candidate, the first of
    # each block untimed, rotating order; medians
    c.rounds = 3
    c.min_rounds = 2
    c.block = 2                                         # 1 untimed + 1 timed call per round
    c.max_time_s = 30.0                                 # per group, once min_rounds are done
    c.slow_call_s = 5.0                                 # a slower call: one timed call per round, no block
    c.profile_calls = 1
    c.torch_threads = 0                                 # 0: every core, as XLA uses
    # (logits or loss, gradients): scaled error against flax.linen.Conv's outputs
    c.tol_float32 = (1e-4, 1e-3)
    c.tol_bfloat16 = (0.1, 0.5)
    # float32 train steps: judged against the same step in float64 (computed once per model,
    # flax.linen.Conv), each candidate within max(tol_float32, factor * xla's own error against
    # it): float32 rounding alone puts XLA's ResNet-50 gradient 2.4e-2 from float64
    # (docs/perf/models_reference64.jsonl, benchmarks/models_reference64.py)
    c.reference64 = True
    c.reference64_factor = 2.0
    c.report = True
    return c
