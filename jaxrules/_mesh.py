"""Cotangents of arguments replicated across devices inside ``jax.shard_map``.

Inside ``shard_map``, an argument that is the same on every device (a replicated scale, an
embedding table, a default ε) meets data that differs per device; JAX's own autodiff inserts an
implicit ``pvary`` there, whose transpose sums the cotangent over the devices. A ``custom_vjp``
must do that sum itself: its bwd sees only per-device data, and JAX refuses a cotangent that varies
over mesh axes its argument does not. fwd records the axes each argument varies over
(:func:`mesh_axes`, a residual of no bytes); bwd sums each cotangent over the others
(:func:`replicated_sum`). Outside ``shard_map`` both do nothing.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax

from jaxrules._broadcast import Static


def _varying(a: Any) -> frozenset:
    """The manual mesh axes an array varies over (empty outside shard_map, for None, or on a JAX without them)."""
    typeof = getattr(jax, "typeof", None)
    if a is None or typeof is None:
        return frozenset()
    mat = getattr(typeof(a), "mat", None)
    return frozenset(getattr(mat, "varying", ()) or ())


def mesh_axes(*arrays: Any) -> Static:
    """The mesh axes each argument varies over, as a static residual."""
    return Static(tuple(_varying(a) for a in arrays))


def replicated_sum(cts: Sequence[Any], axes: Static) -> tuple:
    """Each cotangent summed (``lax.psum``) over the mesh axes it varies over and its argument did not."""
    out = []
    for ct, own in zip(cts, axes.value):
        extra = tuple(sorted(_varying(ct) - own)) if ct is not None else ()
        out.append(jax.lax.psum(ct, extra) if extra else ct)
    return tuple(out)
