r"""Forward mode: ``jax.jvp``, ``jax.jacfwd``, ``jax.hessian`` through jaxrules, with one switch.

A ``jax.custom_vjp`` function cannot be differentiated in forward mode. Every jaxrules rule has a
twin, a ``jax.custom_jvp`` built from the same backward (see :mod:`jaxrules._rule`): since the
pullback x̄ = Jᵀȳ is linear in ȳ, its transpose is the pushforward ẏ = Jẋ, so the JVP and the VJP
come from one derivative and cannot disagree. :func:`forward_mode` selects the twins::

    with jr.forward_mode():
        H = jax.hessian(loss)(params)            # forward over reverse
        y, y_dot = jax.jvp(model, (x,), (v,))    # pure forward mode
        g = jax.grad(loss)(params)               # reverse mode still works, with the same gradients

The choice is made when a rule is traced. The switch is a ``jax.make_user_context`` value, part of
``jax.jit``'s cache key, so a function jitted and called outside the context is traced again inside
it (and the other way round). Outside the context nothing changes: the rules are ``custom_vjp``
with exactly their residuals.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from jaxrules._rule import FORWARD

__all__ = ["forward_mode"]


@contextlib.contextmanager
def forward_mode(enabled: bool = True) -> Iterator[None]:
    """Inside this context every jaxrules rule is forward-differentiable (its custom_jvp twin).

    ``forward_mode(False)`` switches back to the custom_vjp rules inside an enclosing context. Usable
    as a decorator too (``@jr.forward_mode()``). The setting is per thread, as JAX's own contexts.
    """
    with FORWARD(bool(enabled)):
        yield
