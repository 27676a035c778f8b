"""Flax variables into a PyTorch twin (:mod:`.torch_models`), and the twin's inference and train
step, for the same-parameters-same-outputs check and the timing.

Layouts: a conv kernel HWIO ``(kh, kw, in/groups, out)`` -> OIHW; a transposed conv's kernel
``(kh, kw, in, out)`` (flax's input-dilated cross-correlation) -> ``(in, out, kh, kw)`` flipped
in H and W (PyTorch's ``ConvTranspose2d`` is the gradient of a convolution); a dense kernel
``(in, out)`` -> ``(out, in)``; BatchNorm ``scale``/``bias``/``mean``/``var`` -> ``weight``/
``bias``/``running_mean``/``running_var``; LayerNorm ``scale``/``bias`` -> ``weight``/``bias``.
:func:`to_torch_layout` does one leaf; loading and the gradient check both use it.
"""

from __future__ import annotations

import contextlib
import os

import jax
import numpy as np

os.environ.setdefault("KINETO_LOG_LEVEL", "4")  # torch.profiler's per-stage lines (read when torch loads)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812
from torch import nn  # noqa: E402

from jconv_experiments.zoo import ModelSpec  # noqa: E402

__all__ = ["load_flax_variables", "to_torch_layout", "torch_target", "torch_optimizer", "inference_runner",
           "train_step_runner", "torch_grads_vs", "set_threads"]

_NAMES = {("params", "scale"): "weight", ("params", "bias"): "bias", ("params", "kernel"): "weight",
          ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def torch_target(model: nn.Module, collection: str, path: tuple[str, ...]):
    """``(module, tensor)``: the twin's tensor for flax leaf ``collection/path`` (or KeyError)."""
    *mods, leaf = path
    module = model
    for name in mods:
        module = getattr(module, name)
    if isinstance(getattr(module, leaf, None), nn.Parameter):  # a bare parameter (layer scale)
        return module, getattr(module, leaf)
    attr = _NAMES.get((collection, leaf))
    if attr is None or getattr(module, attr, None) is None:
        raise KeyError(f"torch twin has no tensor for flax leaf {collection}/{'/'.join(path)}")
    return module, getattr(module, attr)


def to_torch_layout(module: nn.Module, leaf: str, a: np.ndarray, shape, dtype=np.float32) -> np.ndarray:
    """One flax leaf's value in the layout of the twin's tensor (of ``shape``), as ``dtype``."""
    if leaf == "kernel":
        if isinstance(module, nn.ConvTranspose2d):
            a = a[::-1, ::-1].transpose(2, 3, 0, 1)
        elif isinstance(module, nn.Conv2d):
            a = a.transpose(3, 2, 0, 1)
        elif isinstance(module, nn.Linear):
            a = a.T
    a = np.ascontiguousarray(a, dtype)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"to_torch_layout: flax leaf {leaf} of shape {a.shape} does not fit {tuple(shape)}")
    return a


def _leaves(tree: dict, collection: str):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        yield tuple(str(getattr(k, "key", k)) for k in path), np.asarray(leaf)


def load_flax_variables(model: nn.Module, variables: dict) -> nn.Module:
    """Copy every leaf of ``variables`` into ``model``; every parameter and running statistic of
    ``model`` must receive one (else ValueError)."""
    loaded = set()
    with torch.no_grad():
        for collection in ("params", "batch_stats"):
            for path, a in _leaves(variables.get(collection, {}), collection):
                module, t = torch_target(model, collection, path)
                t.copy_(torch.from_numpy(to_torch_layout(module, path[-1], a, t.shape)))
                loaded.add(id(t))
    missing = [n for n, t in model.state_dict(keep_vars=True).items()
               if id(t) not in loaded and not n.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"load_flax_variables: no flax leaf for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return model


def torch_grads_vs(model: nn.Module, flax_grads: dict, dtype=np.float32) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(torch .grad, flax gradient in torch layout as dtype), ...]`` for every parameter, in
    the order of ``jax.tree.leaves(flax_grads)``."""
    pairs = []
    for path, a in _leaves(flax_grads, "params"):
        module, t = torch_target(model, "params", path)
        pairs.append((t.grad.detach().float().numpy(), to_torch_layout(module, path[-1], a, t.shape, dtype)))
    return pairs


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


def torch_optimizer(spec: ModelSpec, model: nn.Module) -> torch.optim.Optimizer:
    kind, lr, arg = spec.optimizer
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=arg)
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=arg)


def _autocast(dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype={"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype])


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def inference_runner(model: nn.Module, x: np.ndarray, dtype: str):
    """``run() -> logits`` (NHWC / (N, classes) NumPy via :func:`logits_numpy`): eval mode, no
    autograd, ``torch.autocast`` for a 16-bit ``dtype`` (PyTorch's mixed precision)."""
    model.eval()
    xt = nchw(x)

    def run():
        with torch.inference_mode(), _autocast(dtype):
            return model(xt)

    return run


def train_step_runner(spec: ModelSpec, model: nn.Module, x: np.ndarray, y: np.ndarray, dtype: str):
    """``run() -> loss``: one training step (train mode, forward, cross-entropy, backward, the
    optimiser); the gradients stay in ``.grad`` until the next step."""
    model.train()
    opt = torch_optimizer(spec, model)
    xt, yt = nchw(x), torch.from_numpy(y.astype(np.int64))

    def run():
        opt.zero_grad(set_to_none=True)
        with _autocast(dtype):
            out = model(xt)
        loss = F.cross_entropy(out.float(), yt)
        loss.backward()
        opt.step()
        return loss.detach()

    return run


def logits_numpy(out: torch.Tensor) -> np.ndarray:
    """Logits back in flax's layout (NHWC for per-pixel outputs), float64."""
    a = out.detach().float().numpy().astype(np.float64)
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a
