"""The programs the compile matrix compiles: one suite layer's pass through one impl, or one
zoo model's train step with jconv's or flax's conv modules, for one compile-only target
(:class:`Work`), compiled by :func:`jconv.aot.compile_for`.
"""

from __future__ import annotations

import dataclasses

import jax

from jconv import targets
from jconv.aot import compile_for, first_line, shape_struct
from jconv.conv import plan_for
from jconv.impls.pallas.tiling import KernelFitError
from jconv_experiments.bench.harness import pass_fn
from jconv_experiments.bench.peers import PEERS
from jconv_experiments.suite import CASES

# --------------------------------------------------------------------------------------------

MATRIX_KEY = ("target", "case", "impl", "dtype", "pass", "batch")
#: a model row's pass: one full train step (jconv_experiments.networks' "train")
MODEL_PASS = "train"
#: a model row's impl for flax's own conv modules (XLA's convolution), as in the networks experiment
MODEL_BASELINE = "xla"


@dataclasses.dataclass(frozen=True)
class Work:
    """One program an experiment config runs on a target: a layer's pass through an impl."""

    target: str
    case: str
    impl: str
    dtype: str
    pass_: str
    batch: int
    precision: str | None = None
    configs: tuple[str, ...] = ()

    @property
    def key(self) -> tuple:
        return (self.target, self.case, self.impl, self.dtype, self.pass_, self.batch)


def is_model(work: Work) -> bool:
    return work.pass_ == MODEL_PASS


def compile_work(work: Work) -> dict:
    """Compile ``work`` for its target: the row of the compile matrix (see :func:`compile_for`),
    plus what jconv planned for that platform and the target's device kind."""
    if is_model(work):
        return compile_model_work(work)
    target = targets.get(work.target)
    case = CASES[work.case]
    row = {"target": work.target, "device_kind": target.device_kind, "platform": target.platform,
           "case": work.case, "impl": work.impl, "dtype": work.dtype, "pass": work.pass_, "batch": work.batch,
           "precision": work.precision or "default", "configs": list(work.configs), "plan": None,
           "flops_model": case.spec(work.batch).flops * (1 if work.pass_ == "fwd" else 3)}
    spec = case.spec(work.batch, work.dtype)
    if work.impl not in PEERS:  # a jconv impl: what jconv plans for the target's platform
        try:
            p = plan_for(spec, impl=work.impl, platform=target.platform)
            row.update(plan=f"{p.impl}:{p.algorithm}", plan_reason=p.reason)
        except (ValueError, NotImplementedError) as e:
            row.update(compiled=False, error=first_line(e), error_kind="jconv", compile_s=0.0)
            return row
    row.update(compile_for(target, *_program(work)))
    return row


def _program(work: Work) -> tuple:
    """``(fn, *args)``: the work's pass as a function of ShapeDtypeStructs on its target."""
    target = targets.get(work.target)
    case = CASES[work.case]
    spec = case.spec(work.batch, work.dtype)
    args = [shape_struct(spec.x_shape, work.dtype, target), shape_struct(spec.w_shape, work.dtype, target)]
    args.append(shape_struct((spec.out_channels,), work.dtype, target) if case.bias else None)
    if work.pass_ != "fwd":
        args.append(shape_struct(spec.out_shape, work.dtype, target))
    fn = pass_fn(case, work.impl, work.pass_, None if work.precision in (None, "default") else work.precision)
    if args[2] is None:  # no bias: keep the positional layout pass_fn expects
        fn_ = fn
        fn = (lambda x, w, *rest: fn_(x, w, None, *rest))
        args = [a for a in args if a is not None]
    return (fn, *args)


def model_program(model: str, impl: str, dtype: str, batch: int, target, *, small: bool = False) -> tuple:
    """``(fn, state, x, y)``: zoo ``model``'s train step (:func:`jconv_experiments.zoo.steps.train_step_fn`:
    forward and backward in training mode, the optimiser) with jconv's conv modules (``impl``) or
    flax's (``impl == MODEL_BASELINE``), on ShapeDtypeStructs placed on ``target``."""
    from jconv_experiments import zoo
    from jconv_experiments.zoo import steps

    spec = zoo.get(model)
    conv = "xla" if impl == MODEL_BASELINE else "jconv"
    module = zoo.build(model, conv, impl=impl, dtype=dtype, small=small)
    tx = steps.optimizer(spec)
    shape = spec.input_shape(batch, spec.small_image_size if small else None)
    state = jax.eval_shape(lambda v: steps.init_state(v, tx), steps.abstract_variables(module, shape))
    state = jax.tree.map(lambda a: shape_struct(a.shape, a.dtype, target), state)
    x = shape_struct(shape, "float32", target)
    y = shape_struct(shape[:3] if spec.task == "segment" else shape[:1], "int32", target)
    return steps.train_step_fn(module, tx), state, x, y


def compile_model_work(work: Work) -> dict:
    """A model row: its train step compiled for the work's target (:func:`model_program`)."""
    target = targets.get(work.target)
    row = {"target": work.target, "device_kind": target.device_kind, "platform": target.platform,
           "case": work.case, "impl": work.impl, "dtype": work.dtype, "pass": work.pass_, "batch": work.batch,
           "precision": "default", "configs": list(work.configs), "flops_model": None,
           "plan": "flax.linen.Conv" if work.impl == MODEL_BASELINE else f"jconv.linen.Conv (impl {work.impl!r})"}
    row.update(compile_for(target, *model_program(work.case, work.impl, work.dtype, work.batch, target)))
    return row


def kernel_tiles(work: Work) -> list[dict]:
    """The tiles each Pallas kernel of ``work``'s program gets on its target (lowered, not
    compiled: :func:`jconv.impls.pallas.calls.recording_tiles`), or one dict with ``error`` when
    jconv refuses the program while tracing."""
    from jconv.impls.pallas import calls

    fn, *args = _program(work)
    with calls.recording_tiles() as log:
        try:
            jax.jit(fn).lower(*args)
        except (KernelFitError, NotImplementedError, ValueError) as e:
            return [{"error": first_line(e)}]
    return log


__all__ = ["Work", "MATRIX_KEY", "MODEL_PASS", "MODEL_BASELINE", "compile_work", "compile_model_work", "is_model", "model_program",
           "kernel_tiles"]
