"""The one place where broadcasting is undone.

Every rule that broadcasts its arguments (``add``, ``multiply``, ``dense``'s bias, ``matmul``'s batch
dimensions, ...) sums the output cotangent back to each argument's shape here, so that
``x̄`` always has the shape of ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Shape = tuple[int, ...]


def broadcast_shapes(rule: str, **shapes: Shape) -> Shape:
    """NumPy's broadcast of named shapes, or a ValueError that names the rule and every shape.

    >>> broadcast_shapes("add", x=(3, 1), y=(4,))
    (3, 4)
    """
    try:
        return tuple(np.broadcast_shapes(*(tuple(s) for s in shapes.values())))
    except ValueError:
        described = ", ".join(f"{name} with shape {tuple(s)}" for name, s in shapes.items())
        raise ValueError(f"{rule}: cannot broadcast {described} together") from None


def unbroadcast(g: jax.Array, shape: Shape) -> jax.Array:
    """Sum a cotangent ``g`` of a broadcast result back to ``shape``.

    Broadcasting copies ``x`` along new leading axes and along its size-1 axes; the pullback of a
    copy is a sum, so ``x̄ = Σ_{broadcast axes} ḡ`` reshaped to ``x.shape``.
    """
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    return jnp.sum(g, axis=axes).reshape(shape)


@jax.tree_util.register_static
@dataclass(frozen=True)
class Static:
    """Static facts a backward pass needs (shapes, dtypes) carried as a residual of zero bytes.

    custom_vjp residuals must be pytrees of arrays; a static pytree node has no leaves, so shapes
    travel from fwd to bwd without costing a buffer.
    """

    value: Any
