"""Execute: the implementations.

Every implementation is a pure function ``fn(x, w, b, spec) -> y`` of

* ``x``: (N, H, W, C_in), NHWC, with non-zero padding modes already applied but *not* the zero
  padding or input dilation still in ``spec.padding`` / ``spec.lhs_dilation`` (all >= 0);
  :func:`jconv.impls.common.pad_input` applies them for algorithms that want a VALID input;
* ``w``: (KH, KW, C_in/groups, C_out), HWIO, already flipped when ``flip_kernel`` was asked;
* ``b``: (C_out,) or None, added to every output position;
* ``spec``: the :class:`jconv.geometry.ConvSpec` from ``ConvSpec.for_execute``,

returning (N, H_out, W_out, C_out) of dtype ``spec.out_dtype``. Each is differentiable.
"""
