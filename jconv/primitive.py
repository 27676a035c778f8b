"""The convolution as one bilinear JAX primitive, for every backend.

``conv_p`` has three *kinds*, each bilinear in its two operands, parameterised by the execute
spec of the forward convolution (``spec``), the backend (``impl``) and its ``algorithm``:

======  ==============  ===============================  ======================
kind    operands        result                           transposes bind
======  ==============  ===============================  ======================
fwd     x, w            y  (N, Ho, Wo, C_out)            dx(ct, w), dw(x, ct)
dx      dy, w           dx (N, H, W, C_in)               fwd(ct, w), dw(ct, dy)
dw      x, dy           dw (KH, KW, C_in/groups, C_out)  dx(dy, ct), fwd(x, ct)
======  ==============  ===============================  ======================

Shapes as shown for ``spec.layout`` "NHWC" (kernels HWIO); NCHW / OIHW for a backend that takes
a channels-first caller's arrays (:attr:`jconv.spec.ExecSpec.layout`).

The transposes of each kind bind the primitive again with another kind (``ad.defbilinear``), so
the set is closed: ``grad`` of any order, ``jvp``, ``jacfwd``, ``hessian`` and ``linearize``
hold for every backend, and each derivative runs the backend's own kernels (never autodiff of
their insides). ``vmap`` folds a batched activation into the convolution's batch, and anything
else into its groups (as ``lax.conv_general_dilated``'s own batching rule does). Lowering is per
platform: the backend's function for the kind, traced with the :class:`~jconv.targets.Target`
the program is compiled for (so a kernel is sized for that GPU or TPU generation), or a clear
error for a platform the backend does not run on.

A backend with ``split_batch`` (custom calls XLA cannot partition) runs under ``shard_map`` over
the batch when a batch-sharded input's mesh is known while tracing (see :func:`convolve`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jconv import targets
from jconv.spec import ExecSpec
from jconv.impls import registry

KINDS = ("fwd", "dx", "dw")
LOWERING_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")

conv_p = Primitive("jconv_conv")


def result_shape_dtype(kind: str, spec: ExecSpec) -> tuple[tuple[int, ...], str]:
    if kind == "fwd":
        return spec.out_shape, spec.out_dtype
    if kind == "dx":
        return spec.x_shape, spec.dtype
    return spec.w_shape, spec.dtype


def _operand_shapes(kind: str, spec: ExecSpec):
    return {"fwd": (spec.x_shape, spec.w_shape), "dx": (spec.out_shape, spec.w_shape),
            "dw": (spec.x_shape, spec.out_shape)}[kind]


# --------------------------------------------------------------------------------------------
# abstract evaluation
# --------------------------------------------------------------------------------------------


def _out_sharding(kind, a):
    """The batch dim of an activation result keeps the activation operand's batch sharding;
    everything else (and the weight gradient, a sum over the batch) is replicated."""
    sharding = getattr(a, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or getattr(mesh, "empty", True):
        return None
    spec = tuple(getattr(sharding, "spec", ()))
    batch = spec[0] if (spec and kind != "dw") else None
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(batch, None, None, None))


def _abstract_eval(a, b, *, kind, spec, impl, algorithm):
    want = _operand_shapes(kind, spec)
    if (tuple(a.shape), tuple(b.shape)) != tuple(map(tuple, want)):
        raise ValueError(f"jconv_conv[{kind}]: operand shapes {a.shape}, {b.shape} do not match the spec "
                         f"({want[0]}, {want[1]})")
    shape, dtype = result_shape_dtype(kind, spec)
    kw = {}
    sharding = _out_sharding(kind, a)
    if sharding is not None:
        kw["sharding"] = sharding
        mat_a, mat_b = getattr(a, "manual_axis_type", None), getattr(b, "manual_axis_type", None)
        if mat_a is not None and mat_b is not None:
            kw["manual_axis_type"] = type(mat_a)(varying=mat_a.varying | mat_b.varying)
    return jax.core.ShapedArray(shape, jnp.dtype(dtype), **kw)


conv_p.def_abstract_eval(_abstract_eval)


@functools.lru_cache(maxsize=512)
def _jitted(kind, spec, impl, algorithm):
    return jax.jit(functools.partial(conv_p.bind, kind=kind, spec=spec, impl=impl, algorithm=algorithm))


def _impl(a, b, *, kind, spec, impl, algorithm):
    """Eager evaluation: the jitted primitive (the lowering below)."""
    return _jitted(kind, spec, impl, algorithm)(a, b)


conv_p.def_impl(_impl)


# --------------------------------------------------------------------------------------------
# transposes (and, through defbilinear, the JVP)
# --------------------------------------------------------------------------------------------


def _bind(kind, a, b, **params):
    return conv_p.bind(a, b, kind=kind, **params)


def _lhs_transpose(ct, a, b, *, kind, **params):
    """Cotangent of the first operand, given the result's cotangent ``ct`` and the second."""
    if kind == "fwd":    # y = fwd(x, w): x_bar = dx(ct, w)
        return _bind("dx", ct, b, **params)
    if kind == "dx":     # dx = dx(dy, w): dy_bar = fwd(ct, w)
        return _bind("fwd", ct, b, **params)
    return _bind("dx", b, ct, **params)  # dw = dw(x, dy): x_bar = dx(dy, ct)


def _rhs_transpose(ct, a, b, *, kind, **params):
    """Cotangent of the second operand, given ``ct`` and the first."""
    if kind == "fwd":    # w_bar = dw(x, ct)
        return _bind("dw", a, ct, **params)
    if kind == "dx":     # w_bar = dw(ct, dy)
        return _bind("dw", ct, a, **params)
    return _bind("fwd", a, ct, **params)  # dy_bar = fwd(x, ct)


ad.defbilinear(conv_p, _lhs_transpose, _rhs_transpose)


# --------------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------------


def _check_supported(spec: ExecSpec, impl: str, algorithm: str, what: str) -> None:
    why = registry.get(impl).why_not(algorithm, spec)
    if why is not None:
        raise NotImplementedError(f"conv2d: impl={impl}:{algorithm} cannot run {what}: {why}")


def _fold_batch(x, bdim):
    """(..B.., N, ...) with B at ``bdim`` -> (B*N, ...)."""
    x = jnp.moveaxis(x, bdim, 0)
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), x.shape[0]


def _to_groups_act(x, bdim):
    """Activation (B at bdim) (N, H, W, C) -> (N, H, W, B*C)."""
    x = jnp.moveaxis(x, bdim, 3)  # (N, H, W, B, C)
    n, h, w, bb, c = x.shape
    return x.reshape(n, h, w, bb * c)


def _to_groups_kernel(w, bdim):
    """Kernel (B at bdim) (KH, KW, Cg, Co) -> (KH, KW, Cg, B*Co): group b*G + g."""
    w = jnp.moveaxis(w, bdim, 3)  # (KH, KW, Cg, B, Co)
    kh, kw, cg, bb, co = w.shape
    return w.reshape(kh, kw, cg, bb * co)


def _grouped_spec(spec: ExecSpec, size: int) -> ExecSpec:
    return dataclasses.replace(spec, in_channels=size * spec.in_channels, out_channels=size * spec.out_channels,
                               groups=size * spec.groups)


#: NCHW / OIHW -> NHWC / HWIO, per role of an operand or result
_TO_NHWC = {"act": (0, 2, 3, 1), "kernel": (2, 3, 1, 0)}
#: the roles of (first operand, second operand, result) of each kind
_ROLES = {"fwd": ("act", "kernel", "act"), "dx": ("act", "kernel", "act"), "dw": ("act", "act", "kernel")}


def _batch_via_nhwc(args, dims, *, kind, spec, **params):
    """The batching rule of an NCHW spec, where it regroups channels: the operands to NHWC /
    HWIO (each batch dim moved to the front), the NHWC rule, the result back."""
    def to_nhwc(a, d, role):
        perm = _TO_NHWC[role]
        if d is None:
            return jnp.transpose(a, perm), None
        return jnp.transpose(jnp.moveaxis(a, d, 0), (0,) + tuple(p + 1 for p in perm)), 0

    role_a, role_b, role_out = _ROLES[kind]
    (a, da), (b, db) = to_nhwc(args[0], dims[0], role_a), to_nhwc(args[1], dims[1], role_b)
    out, d = _batch_rule((a, b), (da, db), kind=kind, spec=dataclasses.replace(spec, layout="NHWC"), **params)
    back = tuple(int(p) + 1 for p in np.argsort(_TO_NHWC[role_out]))
    return jnp.transpose(jnp.moveaxis(out, d, 0), (0,) + back), 0


def _batch_rule(args, dims, *, kind, spec, impl, algorithm):
    a, b = args
    da, db = dims
    params = dict(impl=impl, algorithm=algorithm)
    if spec.layout != "NHWC" and not (kind in ("fwd", "dx") and db is None):
        return _batch_via_nhwc(args, dims, kind=kind, spec=spec, **params)
    size = a.shape[da] if da is not None else b.shape[db]
    # 1. only the activation operand of fwd / dx is batched: fold into the convolution's batch
    if kind in ("fwd", "dx") and db is None:
        a2, _ = _fold_batch(a, da)
        s2 = dataclasses.replace(spec, batch=size * spec.batch)
        out = _bind(kind, a2, b, spec=s2, **params)
        return out.reshape((size, spec.batch) + out.shape[1:]), 0
    # 2. only the kernel of fwd is batched: stack the kernels along the output channels
    if kind == "fwd" and da is None:
        w = jnp.moveaxis(b, db, 0)  # (B, KH, KW, Cg, Co)
        bb, kh, kw, cg, co = w.shape
        g, cog = spec.groups, co // spec.groups
        w2 = w.reshape(bb, kh, kw, cg, g, cog).transpose(1, 2, 3, 4, 0, 5).reshape(kh, kw, cg, g * bb * cog)
        s2 = dataclasses.replace(spec, out_channels=bb * co)
        _check_supported(s2, impl, algorithm, "this vmap (a batched kernel)")
        y = _bind("fwd", a, w2, spec=s2, **params)  # (N, Ho, Wo, G*B*Cog)
        n, ho, wo, _ = y.shape
        y = y.reshape(n, ho, wo, g, bb, cog).transpose(4, 0, 1, 2, 3, 5).reshape(bb, n, ho, wo, co)
        return y, 0
    # 3. otherwise: both operands batched (broadcast the other), the batch as extra groups
    if da is None:
        a, da = jnp.broadcast_to(a[None], (size,) + a.shape), 0
    if db is None:
        b, db = jnp.broadcast_to(b[None], (size,) + b.shape), 0
    s2 = _grouped_spec(spec, size)
    _check_supported(s2, impl, algorithm, "this vmap (batched as groups)")
    if kind == "fwd":
        y = _bind("fwd", _to_groups_act(a, da), _to_groups_kernel(b, db), spec=s2, **params)
        n, ho, wo, _ = y.shape
        return jnp.moveaxis(y.reshape(n, ho, wo, size, spec.out_channels), 3, 0), 0
    if kind == "dx":
        dx = _bind("dx", _to_groups_act(a, da), _to_groups_kernel(b, db), spec=s2, **params)
        n, h, w_, _ = dx.shape
        return jnp.moveaxis(dx.reshape(n, h, w_, size, spec.in_channels), 3, 0), 0
    dw = _bind("dw", _to_groups_act(a, da), _to_groups_act(b, db), spec=s2, **params)
    kh, kw, cg, _ = dw.shape
    return jnp.moveaxis(dw.reshape(kh, kw, cg, size, spec.out_channels), 3, 0), 0


batching.primitive_batchers[conv_p] = _batch_rule


# --------------------------------------------------------------------------------------------
# lowering, per platform
# --------------------------------------------------------------------------------------------


def _lowering(platform: str):
    def rule(ctx, a, b, *, kind, spec, impl, algorithm):
        backend = registry.get(impl)
        if platform not in backend.platforms:
            raise NotImplementedError(
                f"conv2d: impl={impl!r} cannot be compiled for {platform}: it runs on "
                f"{', '.join(backend.platforms)}" + ("; it is a native CPU library call, not portable "
                                                     "(jax.export, other platforms): use impl='xla' there"
                                                     if backend.native else ""))
        alg = backend.algorithm(algorithm)
        target, _ = targets.resolve(platform, getattr(ctx.avals_in[0], "sharding", None))
        fn = {"fwd": alg.forward, "dx": alg.input_grad, "dw": alg.weight_grad}[kind]
        _, dtype = result_shape_dtype(kind, spec)

        def lowered(a_, b_):
            return fn(a_, b_, spec, target).astype(dtype)

        return mlir.lower_fun(lowered, multiple_results=False)(ctx, a, b)

    return rule


for _platform in LOWERING_PLATFORMS:
    mlir.register_lowering(conv_p, _lowering(_platform), platform=_platform)


def _require_devices_during_lowering(prim) -> None:
    """Backends lower through ``custom_partitioning`` (the Pallas ops on CPU/CUDA), which needs
    the device assignment while lowering. JAX keeps that list in ``jax._src.dispatch`` (its own
    cuDNN attention primitives register there the same way); no public API exists in 0.10."""
    from jax._src import dispatch  # private: see the docstring

    getattr(dispatch, "prim_requires_devices_during_lowering", set()).add(prim)


_require_devices_during_lowering(conv_p)


# --------------------------------------------------------------------------------------------
# the entry: y = conv(x, w), split over a known batch mesh where the backend needs it
# --------------------------------------------------------------------------------------------


def _batch_split(x, batch: int):
    """(mesh, axes) to split the batch over with ``shard_map``, or None.

    Explicit sharding: the axes the batch dim of ``x`` is sharded over. Auto sharding inside
    ``jax.set_mesh(mesh)``: all axes of that mesh when the batch divides evenly (data
    parallelism over the input's mesh). Without a mesh in context the mesh is unknown while
    tracing (``shard_map`` over an abstract mesh miscompiles inputs closed over as jit
    constants in this JAX), so None: the backend's own partitioning (if any) applies.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or mesh.size == 1:
        return None
    types = set(getattr(mesh, "axis_types", ()))
    if types and types <= {jax.sharding.AxisType.Auto}:
        context = jax.sharding.get_abstract_mesh()
        if context.empty or dict(context.shape) != dict(mesh.shape) or batch % mesh.size:
            return None
        names = tuple(mesh.axis_names)
        return mesh, (names[0] if len(names) == 1 else names)
    if not len(sharding.spec) or sharding.spec[0] is None:
        return None
    return mesh, sharding.spec[0]


def over_batch_shards(body, spec: ExecSpec, impl: str, x, *rest):
    """``body(spec, x, *rest)``, under ``shard_map`` over the batch of ``x`` (``rest``
    replicated, ``spec`` the local one) when ``impl``'s backend needs its batch split and the
    mesh is known while tracing; else called as it is."""
    backend = registry.get(impl)
    split = _batch_split(x, spec.batch) if backend.split_batch else None
    if split is None:
        return body(spec, x, *rest)
    mesh, axes = split
    names = axes if isinstance(axes, tuple) else (axes,)
    shards = int(np.prod([mesh.shape[a] for a in names]))
    local = dataclasses.replace(spec, batch=spec.batch // shards)
    P = jax.sharding.PartitionSpec
    # check_vma=False: custom-call outputs carry no varying-axes annotation
    return jax.shard_map(lambda *a: body(local, *a), mesh=mesh, in_specs=(P(axes),) + (P(),) * len(rest),
                         out_specs=P(axes), check_vma=False)(x, *rest)


def convolve(x, w, *, spec: ExecSpec, impl: str, algorithm: str):
    """``y = conv(x, w)`` of execute spec ``spec`` by ``impl``'s ``algorithm`` (no bias)."""
    return over_batch_shards(lambda s, x_, w_: _bind("fwd", x_, w_, spec=s, impl=impl, algorithm=algorithm),
                             spec, impl, x, w)


# --------------------------------------------------------------------------------------------
# introspection: what the primitive lowers to (tests and debugging)
# --------------------------------------------------------------------------------------------


def _sub_jaxprs(value):
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def conv_eqns(jaxpr):
    """Every ``jconv_conv`` equation in a (closed) jaxpr, nested jaxprs included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        if eqn.primitive is conv_p:
            yield eqn
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                yield from conv_eqns(sub)


def kernel_jaxprs(jaxpr, platform: str = "cpu") -> list:
    """For each ``jconv_conv`` in ``jaxpr``: the jaxpr of the backend function it lowers to on
    ``platform`` (``kind``, ``impl`` and ``algorithm`` are in each equation's params)."""
    out = []
    for eqn in conv_eqns(jaxpr):
        p = eqn.params
        alg = registry.get(p["impl"]).algorithm(p["algorithm"])
        fn = {"fwd": alg.forward, "dx": alg.input_grad, "dw": alg.weight_grad}[p["kind"]]
        target, _ = targets.resolve(platform)
        avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars]
        out.append(jax.make_jaxpr(lambda a, b, fn=fn, spec=p["spec"]: fn(a, b, spec, target))(*avals))
    return out


__all__ = ["conv_p", "convolve", "over_batch_shards", "KINDS", "result_shape_dtype", "conv_eqns", "kernel_jaxprs"]
