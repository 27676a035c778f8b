"""Where a network's time goes: a per-category breakdown from a profile of the program itself.

* JAX (:func:`jax_breakdown`): ``jax.profiler`` traces a few calls of the compiled program; on
  the CPU every HLO instruction the runtime executes (a thunk: a convolution, a fusion, a custom
  call such as jconv's oneDNN kernels) is one event named after the instruction. Each
  instruction is attributed through the compiled HLO's ``metadata.op_name``, which carries the
  Flax module path (``jvp(ResNet)/BottleneckResNetBlock_3/Conv_1/...``, the backward under
  ``transpose(...)``): the module's class decides the category (:data:`CATEGORIES`); ops of the
  step outside the model are the loss and the optimiser. Instructions XLA created without
  metadata count as ``conv`` when they are a convolution or use or feed one (layout copies of
  a convolution's operands), else as ``unattributed``.
* PyTorch (:func:`torch_breakdown`): ``torch.profiler`` self CPU time of every op, attributed
  by the op's name or its nearest ancestor's (``aten::mkldnn_convolution``,
  ``ConvolutionBackward0``, ``NativeBatchNormBackward0``, ``Optimizer.step#SGD.step``, ...).

Both give seconds per call of each category. XLA may run independent thunks on several threads
at once, so the JAX categories can sum to more than the wall time; PyTorch's are on the calling
thread. The profile runs apart from the timed rounds (a profiler slows what it watches); the
report gives shares, next to the timed wall time.
"""

from __future__ import annotations

import glob
import gzip
import json
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable

CATEGORIES = ("conv", "norm", "dense", "other layers", "loss+optimizer", "unattributed")

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+(?:\{[^}]*\})?\s+([\w\-]+)\((.*)$")
_OPNAME = re.compile(r'op_name="([^"]*)"')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_OPERAND = re.compile(r"%([\w.\-]+)")


def class_category(cls: str) -> str:
    if "Conv" in cls:
        return "conv"
    if "Norm" in cls:
        return "norm"
    if cls == "Dense" or cls.startswith("Dense"):
        return "dense"
    return "other layers"


def module_classes(module, *args, **kwargs) -> dict[tuple, str]:
    """``{module path: class name}`` of every module ``module.apply(*args, **kwargs)`` calls
    (abstractly, no compute)."""
    import flax.linen as nn
    import jax

    classes: dict[tuple, str] = {}

    def record(next_fun, a, kw, context):
        classes[tuple(context.module.path)] = type(context.module).__name__
        return next_fun(*a, **kw)

    def call(*a):
        with nn.intercept_methods(record):
            return module.apply(*a, **kwargs)

    jax.eval_shape(call, *args)
    return classes


def hlo_instructions(hlo_text: str) -> dict[str, dict]:
    """``{name: {"opcode", "op_name", "target", "operands"}}`` of the entry computation."""
    entry = hlo_text.split("\nENTRY", 1)[-1]
    out = {}
    for line in entry.splitlines()[1:]:
        if line.startswith("}"):
            break
        m = _INSTR.match(line)
        if not m:
            continue
        name, opcode, rest = m.groups()
        meta = _OPNAME.search(rest)
        target = _TARGET.search(rest)
        args = rest.split("),", 1)[0]
        out[name] = {"opcode": opcode, "op_name": meta.group(1) if meta else None,
                     "target": target.group(1) if target else None, "operands": _OPERAND.findall(args)}
    return out


def _strip(segment: str) -> str:
    """``transpose(jvp(ResNet))`` -> ``ResNet``."""
    while "(" in segment and segment.endswith(")"):
        segment = segment[segment.index("(") + 1:-1]
    return segment


def op_category(op_name: str | None, root: str, classes: dict[tuple, str]) -> str | None:
    """The category of an op from its ``op_name`` (None without one)."""
    if not op_name:
        return None
    segs = [_strip(s) for s in op_name.split("/")]
    if root not in segs:
        return "loss+optimizer"
    rest = segs[segs.index(root) + 1:]
    path: tuple = ()
    for s in rest:
        if path + (s,) in classes:
            path += (s,)
        else:
            break
    return class_category(classes[path]) if path else "other layers"


def categorize(instrs: dict[str, dict], root: str, classes: dict[tuple, str]) -> dict[str, str]:
    cat = {n: op_category(i["op_name"], root, classes) for n, i in instrs.items()}
    for n, i in instrs.items():
        if cat[n] is None and (i["opcode"] == "convolution" or "conv" in (i["target"] or "")):
            cat[n] = "conv"
    users = defaultdict(list)
    for n, i in instrs.items():
        for o in i["operands"]:
            users[o].append(n)
    for n, i in instrs.items():
        if cat[n] is None:
            near = i["operands"] + users[n]
            cat[n] = "conv" if any(cat.get(m) == "conv" for m in near) else "unattributed"
    return cat


def _trace_events(run: Callable[[], object], calls: int) -> list[dict]:
    import logging

    import jax

    d = tempfile.mkdtemp(prefix="jconv_profile_")
    log = logging.getLogger("jax._src.profiler")
    level = log.level
    log.setLevel(logging.WARNING)  # it logs each trace file it writes
    try:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(calls):
                run()
        (path,) = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True) or glob.glob(f"{d}/**/*.json.gz", recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    finally:
        log.setLevel(level)
        shutil.rmtree(d, ignore_errors=True)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def jax_breakdown(compiled, run: Callable[[], object], calls: int, root: str, classes: dict[tuple, str]) -> dict:
    """Seconds per call of each category for a compiled program's ``calls`` calls of ``run``."""
    instrs = hlo_instructions(compiled.as_text())
    cat = categorize(instrs, root, classes)
    out = dict.fromkeys(CATEGORIES, 0.0)
    seen = 0
    for e in _trace_events(run, calls):
        if e.get("ph") == "X" and e.get("name") in cat:
            out[cat[e["name"]]] += float(e.get("dur", 0.0)) * 1e-6 / calls
            seen += 1
    if not seen:
        raise RuntimeError("jax_breakdown: the trace has no event named after an HLO instruction")
    return out


_TORCH_RULES = (("loss+optimizer", ("optimizer.", "cross_entropy", "nll_loss", "log_softmax", "nlllossbackward",
                                    "logsoftmaxbackward")),
                ("conv", ("conv",)), ("norm", ("batch_norm", "layer_norm", "batchnorm", "layernorm")),
                ("dense", ("aten::linear", "addmm", "aten::mm", "mmbackward", "linear")))


def torch_category(names: list[str]) -> str:
    """The category of a PyTorch op from its name and its ancestors' (nearest first)."""
    for n in (s.lower() for s in names):
        for cat, keys in _TORCH_RULES:
            if any(k in n for k in keys):
                return cat
    return "other layers"


def torch_breakdown(run: Callable[[], object], calls: int) -> dict:
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            run()
    out = dict.fromkeys(CATEGORIES, 0.0)
    for e in prof.events():
        if e.self_cpu_time_total <= 0:
            continue
        names, p = [], e
        while p is not None:
            names.append(p.name)
            p = p.cpu_parent
        out[torch_category(names)] += e.self_cpu_time_total * 1e-6 / calls
    return out


__all__ = ["CATEGORIES", "jax_breakdown", "torch_breakdown", "module_classes", "hlo_instructions", "categorize",
           "op_category", "torch_category", "class_category"]
