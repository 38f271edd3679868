r"""The pullback notation of the seeds, for any JAX function (ours or not).

.. math:: \mathcal B(f, (x_1, …, x_n), (\bar y_1, …, \bar y_m)) = ((y_1, …, y_m), (\bar x_1, …, \bar x_n))

``pullback(f, *primals)`` returns the outputs and the function ``B`` that maps output cotangents to
input cotangents; ``B(f, primals, cotangents)`` does both at once. Both always use tuples, so a
function of one argument with one output reads ``((y,), (x̄,))`` as in seed 000.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

__all__ = ["pullback", "B"]


def _name(f: Callable) -> str:
    return getattr(f, "__name__", type(f).__name__)


def pullback(f: Callable, *primals: Any) -> tuple[tuple[Any, ...], Callable[..., tuple[Any, ...]]]:
    """Evaluate ``f(*primals)`` and return ``(outputs, back)`` with ``back(*cotangents) -> input cotangents``.

    ``outputs`` is a tuple: ``f``'s output if it returns a tuple, else ``(output,)``. ``back`` takes
    one cotangent per output, each of that output's shape and dtype, and returns one cotangent per
    primal (a tuple), each of that primal's shape and dtype.
    """
    if not callable(f):
        raise TypeError(f"pullback: f must be a callable (a function of the primals), got {type(f).__name__}")
    if not primals:
        raise TypeError(f"pullback: {_name(f)} needs at least one primal argument")
    out, vjp = jax.vjp(f, *primals)
    multiple = isinstance(out, tuple)
    outputs = out if multiple else (out,)

    def back(*cotangents: Any) -> tuple[Any, ...]:
        if len(cotangents) != len(outputs):
            raise TypeError(
                f"pullback of {_name(f)}: expected {len(outputs)} cotangent(s), one per output, "
                f"got {len(cotangents)}"
            )
        for i, (c, o) in enumerate(zip(cotangents, outputs)):
            cs, os_ = jax.tree_util.tree_map(jax.numpy.shape, c), jax.tree_util.tree_map(jax.numpy.shape, o)
            if cs != os_:
                raise ValueError(
                    f"pullback of {_name(f)}: cotangent {i} has shape {cs}, but output {i} has shape {os_}"
                )
        return tuple(vjp(cotangents if multiple else cotangents[0]))

    back.__name__ = f"B_{_name(f)}"
    return outputs, back


def B(f: Callable, primals: tuple[Any, ...], cotangents: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    r"""The seeds' :math:`\mathcal B(f, (x,), (\bar y,)) = ((f(x),), (\bar x,))`.

    >>> import jax.numpy as jnp, jaxrules as jr
    >>> (y,), (x_bar,) = jr.B(jr.sigmoid, (jnp.zeros(2),), (jnp.ones(2),))
    >>> x_bar.tolist()
    [0.25, 0.25]
    """
    if not isinstance(primals, tuple) or not isinstance(cotangents, tuple):
        raise TypeError(
            f"B: primals and cotangents must be tuples, got {type(primals).__name__} and "
            f"{type(cotangents).__name__}; write B(f, (x,), (y_bar,))"
        )
    outputs, back = pullback(f, *primals)
    return outputs, back(*cotangents)
