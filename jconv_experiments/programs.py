"""The programs the compile matrix compiles: one suite layer's pass through one impl, for one
compile-only target (:class:`Work`), compiled by :func:`jconv.aot.compile_for`.
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


def compile_work(work: Work) -> dict:
    """Compile ``work`` for its target: the row of the compile matrix (see :func:`compile_for`),
    plus what jconv planned for that platform and the target's device kind."""
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


__all__ = ["Work", "MATRIX_KEY", "compile_work", "kernel_tiles"]
