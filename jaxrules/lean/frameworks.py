"""Arguments and state: how lean passes a Flax NNX, Equinox, linen or plain-JAX model through a trace.

lean traces ``fun`` into a jaxpr, rewrites it and evaluates it. What crosses into the trace is the
arrays among the arguments; everything else stays a Python value, closed over.

* Plain JAX, flax linen (``model.apply(params, ...)``) and Equinox: the arguments are pytrees. Their
  ``jax.Array`` leaves (tracers included) are traced; every other leaf (Python numbers and bools,
  NumPy arrays, functions, Equinox's activation leaves and ``inference`` flags) is passed as it is,
  as ``eqx.filter_jit`` does. Under ``eqx.filter_jit(eqx.filter_value_and_grad(lean(loss)))`` the
  model's arrays are tracers and its functions stay functions.
* Flax NNX: modules are graphs with state that a call may update in place (dropout's RNG counter,
  batch statistics). lean splits the arguments with ``nnx.split``, traces a pure function of the
  state that merges it, calls ``fun`` and splits again, evaluates that, and writes the new state back
  with ``nnx.update``, eagerly as under ``nnx.jit(nnx.value_and_grad(...))``. A module that ``fun``
  closes over instead of taking as an argument cannot be updated this way: NNX refuses to update it
  inside the trace, and lean says how to pass it (the error names ``nnx.split``/``nnx.merge``).

lean never patches a module, a class or ``jax.nn``: a function traced before lean is still leaned
inside it, a stock call afterwards is not, and other threads never see lean.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable

import jax


def _nnx() -> Any:
    """flax.nnx if the program has imported it (lean never imports flax itself)."""
    mod = sys.modules.get("flax.nnx")
    return mod if mod is not None and hasattr(mod, "split") else None


def _is_graph(x: Any, nnx: Any) -> bool:
    try:
        return nnx.graph.is_graph_node(x) and not isinstance(x, (tuple, list, dict))
    except Exception:  # noqa: BLE001
        return False


@dataclasses.dataclass
class Traced:
    """The arrays that cross into the trace, and how to call fun on them and write state back."""

    leaves: list                              # jax arrays passed to the traced function
    pure: Callable[..., list]                 # pure(*leaves) -> flat array outputs (fun's, then state)
    finish: Callable[[list], Any]             # finish(flat outputs) -> fun's output, state written back


def prepare(fun: Callable, args: tuple, kwargs: dict) -> Traced:
    nnx = _nnx()
    if nnx is not None:
        nodes = jax.tree_util.tree_leaves((args, kwargs), is_leaf=lambda x: _is_graph(x, nnx))
        if any(_is_graph(x, nnx) for x in nodes):
            return _prepare_nnx(nnx, fun, args, kwargs)
    return _prepare_tree(fun, args, kwargs)


def _is_array(x: Any) -> bool:
    """Traced: JAX arrays (tracers included), and ShapeDtypeStructs (replacements() on shapes alone)."""
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct))


class _Outputs:
    """fun's output pytree: array leaves cross out of the trace, the others are kept as they are."""

    def __init__(self):
        self.treedef = None
        self.static: list = []
        self.dynamic: list[bool] = []

    def flatten(self, out: Any) -> list:
        leaves, self.treedef = jax.tree_util.tree_flatten(out)
        self.dynamic = [_is_array(x) for x in leaves]
        self.static = [None if d else x for x, d in zip(leaves, self.dynamic)]
        return [x for x, d in zip(leaves, self.dynamic) if d]

    def unflatten(self, arrays: list) -> Any:
        it = iter(arrays)
        leaves = [next(it) if d else s for d, s in zip(self.dynamic, self.static)]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _prepare_tree(fun: Callable, args: tuple, kwargs: dict) -> Traced:
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    dynamic = [_is_array(x) for x in leaves]
    outs = _Outputs()

    def pure(*arrays):
        it = iter(arrays)
        full = [next(it) if d else x for x, d in zip(leaves, dynamic)]
        a, kw = jax.tree_util.tree_unflatten(treedef, full)
        return outs.flatten(fun(*a, **kw))

    return Traced([x for x, d in zip(leaves, dynamic) if d], pure, outs.unflatten)


class StateError(RuntimeError):
    """fun updates NNX state that lean cannot write back (a module it closes over)."""


def trace(traced: Traced, fun: Callable) -> Any:
    """The ClosedJaxpr of traced.pure; NNX's refusal to update a closed-over module, explained."""
    try:
        return jax.make_jaxpr(traced.pure)(*traced.leaves)
    except Exception as e:
        if type(e).__name__ == "TraceContextError":
            raise StateError(f"jr.lean: {getattr(fun, '__name__', fun)} updates the state of an NNX module it "
                             f"does not take as an argument ({e}); {_HOW}") from e
        raise


_HOW = ("pass the NNX module to the function as an argument (lean(loss)(model, batch)), or use the "
        "functional form: graphdef, state = nnx.split(model); def loss(state, batch): model = "
        "nnx.merge(graphdef, state); ...; then lean(loss)(state, batch) and write the new state back "
        "with nnx.update(model, new_state)")


def _prepare_nnx(nnx: Any, fun: Callable, args: tuple, kwargs: dict) -> Traced:
    # Variables (the state a call may update) apart from the other arrays among the arguments
    graphdef, variables, rest = nnx.split((args, kwargs), nnx.Variable, ...)
    vleaves, vdef = jax.tree_util.tree_flatten(variables)
    rleaves, rdef = jax.tree_util.tree_flatten(rest)
    nv = len(vleaves)
    leaves = vleaves + rleaves
    dynamic = [_is_array(x) for x in leaves]
    outs = _Outputs()
    after: dict = {}

    def pure(*arrays):
        it = iter(arrays)
        full = [next(it) if d else x for x, d in zip(leaves, dynamic)]
        a, kw = nnx.merge(graphdef, jax.tree_util.tree_unflatten(vdef, full[:nv]),
                          jax.tree_util.tree_unflatten(rdef, full[nv:]))
        flat = outs.flatten(fun(*a, **kw))
        _, new_vars, _ = nnx.split((a, kw), nnx.Variable, ...)
        new_leaves, after["def"] = jax.tree_util.tree_flatten(new_vars)
        after["dynamic"] = [_is_array(x) for x in new_leaves]
        after["static"] = [None if _is_array(x) else x for x in new_leaves]
        return flat + [x for x in new_leaves if _is_array(x)]

    def finish(flat: list) -> Any:
        n = sum(outs.dynamic)
        result = outs.unflatten(flat[:n])
        it = iter(flat[n:])
        new = [next(it) if d else s for d, s in zip(after["dynamic"], after["static"])]
        nnx.update((args, kwargs), jax.tree_util.tree_unflatten(after["def"], new))
        return result

    return Traced([x for x, d in zip(leaves, dynamic) if d], pure, finish)
