"""jr.lean: trace, plan, evaluate (see jaxrules.lean for the user's view)."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from jaxrules.lean import _ir, frameworks, rewrite
from jaxrules.lean.rewrite import Plan


def _load_patterns() -> None:
    # importing them registers them (and the jit names kept whole) before the first program is built
    from jaxrules.lean import activations, attention, losses, norms  # noqa: F401


def _analyse(fun: Callable, args: tuple, kwargs: dict) -> tuple[frameworks.Traced, Any, _ir.Program, Plan]:
    _load_patterns()
    traced = frameworks.prepare(fun, args, kwargs)
    closed = frameworks.trace(traced, fun)
    prog = _ir.build(closed)
    return traced, closed, prog, rewrite.plan(prog)


def _name(fun: Callable) -> str:
    return getattr(fun, "__qualname__", None) or getattr(fun, "__name__", None) or type(fun).__name__


def _report(fun: Callable, counts: dict) -> None:
    what = ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items())) or "nothing"
    print(f"jr.lean({_name(fun)}): {what}", file=sys.stderr)


def lean(fun: Callable | None = None, *, verbose: bool = False) -> Callable:
    """See :mod:`jaxrules.lean`."""
    if fun is None:
        return functools.partial(lean, verbose=verbose)
    if not callable(fun):
        raise TypeError(f"lean: fun must be callable, got {type(fun).__name__}")

    @functools.wraps(fun, updated=())  # no __dict__ copy: flax's wrappers keep their function in .f
    def leaned(*args: Any, **kwargs: Any) -> Any:
        traced, _, prog, p = _analyse(fun, args, kwargs)
        if verbose:
            _report(fun, dict(p.counts))
        if not p:  # nothing to replace: the original call, bit for bit and state for state
            return fun(*args, **kwargs)
        return traced.finish(rewrite.run(prog, p, list(traced.leaves)))

    def replacements(*args: Any, **kwargs: Any) -> dict[str, int]:
        """{jaxrules rule name: number of places it replaces} for these arguments, without running fun.

        A rule inside a loop or branch body counts once per body, however many times it runs."""
        _, _, _, p = _analyse(fun, args, kwargs)
        return dict(sorted(p.counts.items()))

    leaned.replacements = replacements
    leaned.__jaxrules_lean__ = fun
    return leaned
