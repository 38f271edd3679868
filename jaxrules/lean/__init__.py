r"""``jr.lean(fun)``: the model you have, with jaxrules' derivatives where it recognises their math.

``jr.lean(fun)`` returns a function with ``fun``'s signature, pytrees in and out, and values. It
traces ``fun`` into a jaxpr, finds the computations jaxrules has a rule for, and evaluates the
program again with those computations replaced by the rules, under whatever is tracing it
(``jax.jit``, ``grad``, ``value_and_grad``, ``vmap``, ``checkpoint``)::

    loss = jr.lean(loss)                       # or jr.lean(loss, verbose=True)
    loss.replacements(model, batch)            # {"dot_product_attention": 2, "gelu": 2, ...}
    step = nnx.jit(nnx.value_and_grad(loss))   # or jax.jit(jax.value_and_grad(...)), eqx.filter_jit(...)

What it recognises (by tracing the library function on the candidate's shapes and settings and
requiring the same program, equation for equation; so a new JAX, optax, flax or equinox release
replaces less, never something else):

* jax.nn's activations (``relu``, ``gelu`` in both forms, ``silu``, ``sigmoid``, ...), ``softmax``,
  ``log_softmax`` and ``logsumexp``; ``silu(a) * b`` and ``gelu(a) * b`` → ``jr.swiglu``, ``jr.geglu``;
* ``jax.nn.dot_product_attention`` (XLA implementation) with bias, mask and ``is_causal``, and the
  attention of ``nnx.MultiHeadAttention``, linen's ``MultiHeadDotProductAttention``,
  ``eqx.nn.MultiheadAttention`` and hand-written ``einsum``/``softmax``/``einsum`` attention, causal
  masks included → ``jr.dot_product_attention``;
* the layer and RMS norms of Flax NNX, flax linen and Equinox, ``jax.nn.standardize``, and
  ``jax.nn.standardize`` followed by a scale and a shift → ``jr.layer_norm``, ``jr.rms_norm``,
  ``jr.standardize``;
* optax's ``softmax_cross_entropy_with_integer_labels`` and ``softmax_cross_entropy``; and a matrix
  product (plus bias) whose only use is the integer-label cross-entropy →
  ``jr.linear_softmax_cross_entropy``, without the logits.

``jax.jvp``, ``jax.jacfwd`` and ``jax.hessian`` of a leaned function need ``with jr.forward_mode():``,
as for any jaxrules rule.

Exact or untouched: anything else is emitted as it was traced, and a function in which nothing is
replaced is simply called (bit-identical results, state updates as they were). Loop (``scan``,
``while``), branch (``cond``) and ``checkpoint`` bodies are rewritten too; ``custom_jvp`` and
``custom_vjp`` functions are left whole. See :mod:`jaxrules.lean.frameworks` for NNX state and
Equinox models.
"""

from __future__ import annotations

from typing import Any, Callable


def lean(fun: Callable | None = None, *, verbose: bool = False) -> Any:
    """``fun`` with jaxrules' rules wherever their math appears in it (see :mod:`jaxrules.lean`).

    verbose: print what was replaced, each time ``fun`` is traced. ``lean(fun).replacements(*args,
    **kwargs)`` returns ``{rule name: count}`` for those arguments without running ``fun``.
    """
    from jaxrules.lean._api import lean as _lean
    return _lean(fun, verbose=verbose)
