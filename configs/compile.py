"""The compile matrix: the accelerator configs' work, compiled for real GPU and TPU targets.

    python -m jconv_experiments --config=configs/compile.py --workdir=runs/compile
    python -m jconv_experiments --config=configs/compile.py --workdir=runs/compile_h100 --config.targets=h100

Compiles, without a GPU or TPU (``JAX_PLATFORMS=cpu`` is fine), every program that
``configs/tpu.py`` and ``configs/colab_tpu.py`` run on TPU v4, v5e, v5p and v6e (libtpu's
compile-only topologies; colab_tpu on Colab's v5e and v6e only) and that ``configs/gpu.py`` and
``configs/colab_gpu.py`` run on A100, H100, L4 and T4 (the CUDA plugin's deviceless compiler;
colab_gpu on Colab's T4, L4 and A100 only): their suite, batch, dtypes, impls and passes. The
notebook's quick configs (``colab_*_quick.py``) run a subset of the colab configs' programs, so
their rows are here too. And the train step of every model of ``configs/models.py`` (ResNet-50,
MobileNetV2, ConvNeXt-T, U-Net at its batch and dtypes, with jconv's and with flax's conv
modules) for a TPU v5e and an L4 (``models``, ``model_targets``; only those:
``--config.configs= --config.targets=v5e,l4``). One row per
(target, layer, impl, dtype, pass, batch): compiled or the error, compile seconds, Pallas
kernels and XLA convolutions in the program, the compiler's cost and memory analysis.
Needs ``pip install -e ".[tpu,cuda]"`` (``make install`` does it). Resumable.

Size: 3,680 rows on the first seven targets (2,760 distinct compiles; ``auto`` rows reuse the
program they share); T4 adds 448 (``gpu``'s and ``colab_gpu``'s work), not yet in the committed matrix. On the
2-core development VM: median 4-12 s per TPU program, 0.3-4 s per GPU program, up to 5 minutes for
the largest: about 7.5 hours of compile seconds in all, about 4 hours with 2 workers; it resumes where it
stopped, and takes the targets in turn so a partial run covers all of them (docs/pallas.md, "What
compiles where", has the rows' tables and the figures).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.experiment = "compile_matrix"
    c.targets = "v4,v5e,v5p,v6e,a100,h100,l4,t4,a100_40gb"   # jconv.targets names
    c.configs = "tpu,colab_tpu,gpu,colab_gpu"   # whose work is compiled (each on its platform's targets)
    c.suite = ""                                # "" = each config's suite; or a suite name / "all"
    c.impls = ""                                # "" = each config's impls (peers skipped)
    c.dtypes = ""                               # "" = each config's dtypes; or e.g. "float32"
    c.passes = ""                               # "" = each config's passes; or "fwd" / "fwd+bwd"
    c.models = "models"                         # networks configs whose models' train steps are compiled
    c.model_targets = "v5e,l4"                  # ... for these targets ("" = none)
    c.first = "pallas,xla,lax"                  # compile these impls first, in this order (the
                                                # kernels, where the failures were); then the rest
    c.workers = 2                               # compiler processes
    c.timeout_s = 1800                          # per compile
    c.retry_errors = False                      # True: compile the failed rows again
    c.report = True
    return c
