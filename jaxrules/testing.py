"""check_rule: prove a reverse-mode rule right against an independent reference.

The JAX counterpart of ChainRulesTestUtils' ``test_rrule``. For ``f`` (the rule under test) and
``reference`` (the same function written with ``jax.nn``/``jnp``/``optax`` and differentiated by JAX)
it checks, on the given arguments:

1. ``primal``: ``f(*args)`` equals ``reference(*args)`` in value, shape and dtype;
2. ``vjp``: the input cotangents for a random output cotangent equal ``jax.vjp(reference)``'s, and
   each has its primal's shape and dtype;
3. ``finite differences``: in float64, the VJP agrees with central differences
   (``jax.test_util.check_grads``, reverse mode);
4. ``jit`` and ``checkpoint``: 1 and 2 again under ``jax.jit`` and under ``jax.checkpoint``;
5. ``vmap`` and ``lax.scan``: 1 and 2 again under ``jax.vmap`` over a batch of three (elements
   permuted, so the batch members differ but stay in the sampler's domain), with all arguments
   batched and then each argument alone, and in the body of a ``lax.scan`` over the same batch;
6. ``grad of grad``: reverse over reverse, the gradient of ⟨w, vjp(ȳ)⟩ equals the reference's;
7. ``dtypes`` (optional): 1 and 2 again with the arguments cast to each dtype of a sweep;
8. ``forward mode``: inside :func:`jaxrules.forward_mode`, ``jax.jvp`` against the reference's and
   against finite differences in float64, forward over reverse (the JVP of the VJP) against the
   reference's, and the VJP once more.

A failure raises ``AssertionError`` naming the rule, the check, the argument and the largest error.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np

from jaxrules.accuracy import check_accuracy, check_rows

__all__ = ["VALUES_ONLY", "check_accuracy", "check_rows", "check_rule", "check_sharded", "default_tolerance",
           "residual_bytes"]

#: ``check_rule(..., **VALUES_ONLY)``: the primal and the VJP against the reference, in one compilation,
#: nothing else (for many cases of a rule whose transformations are checked elsewhere).
VALUES_ONLY = dict(fd=False, jit=False, vmap=False, grad_grad=False, eager=False, checkpoint=False, scan=False,
                   jvp=False, fwd_over_rev=False)

_TOLERANCE = {
    np.dtype(np.float64): (1e-7, 1e-10),
    np.dtype(np.float32): (2e-5, 2e-6),
    # half precision: an absolute term of a few ulps of 1, since slopes are sums of O(1) terms
    np.dtype(jnp.float16): (1e-2, 1e-2),
    np.dtype(jnp.bfloat16): (5e-2, 5e-2),
}


def default_tolerance(dtype: Any) -> tuple[float, float]:
    """(rtol, atol) used by :func:`check_rule` for a dtype."""
    return _TOLERANCE.get(np.dtype(dtype), (2e-5, 2e-6))


def _is_float(x: Any) -> bool:
    """A floating-point array or Python float: the arguments check_rule differentiates by default."""
    if x is None or isinstance(x, (bool, str)) or _is_key(x):
        return False
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _weak(x: Any) -> bool:
    """Whether x is weakly typed: a Python scalar, or an array made from one (``jnp.asarray(1.5)``)."""
    if isinstance(x, (bool, int, float, complex)):
        return True
    return bool(getattr(x, "weak_type", False))


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _name(f: Callable) -> str:
    inner = getattr(f, "func", f)  # functools.partial
    return getattr(inner, "__name__", type(inner).__name__)


class _Checker:
    def __init__(self, name: str, rtol: float, atol: float, weak_type: bool = True):
        self.name, self.rtol, self.atol, self.weak_type = name, rtol, atol, weak_type

    def fail(self, check: str, what: str, detail: str) -> None:
        raise AssertionError(f"{self.name}: {check}: {what}: {detail}")

    def close(self, check: str, what: str, ours: Any, ref: Any, *, dtype: bool = True, weak: bool = True,
              rtol: float | None = None, atol: float | None = None) -> None:
        rtol = self.rtol if rtol is None else rtol
        atol = self.atol if atol is None else atol
        lo, lr = jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)
        so, sr = jax.tree_util.tree_structure(ours), jax.tree_util.tree_structure(ref)
        if so != sr:
            self.fail(check, what, f"structure {so} differs from the reference's {sr}")
        for k, (a, b) in enumerate(zip(lo, lr)):
            where = what if len(lo) == 1 else f"{what}[{k}]"
            if jnp.shape(a) != jnp.shape(b):
                self.fail(check, where, f"shape {jnp.shape(a)} differs from the reference's {jnp.shape(b)}")
            if dtype and jnp.result_type(a) != jnp.result_type(b):
                self.fail(check, where, f"dtype {jnp.result_type(a)} differs from the reference's {jnp.result_type(b)}")
            if dtype and weak and self.weak_type and _weak(a) != _weak(b):
                self.fail(check, where, f"weak_type {_weak(a)} differs from the reference's {_weak(b)}")
            a64 = np.asarray(np.asarray(a).astype(np.float64))
            b64 = np.asarray(np.asarray(b).astype(np.float64))
            if a64.size == 0:
                continue
            # NaN matches only NaN, an infinity only the same infinity; the rest within atol + rtol·|ref|
            nan_mismatch = np.isnan(a64) != np.isnan(b64)
            inf_mismatch = (np.isinf(a64) | np.isinf(b64)) & (a64 != b64)
            with np.errstate(invalid="ignore"):
                err = np.where(np.isnan(a64) & np.isnan(b64), 0.0, np.abs(a64 - b64))
                err = np.where(a64 == b64, 0.0, err)  # equal infinities
                bound = atol + rtol * np.abs(np.where(np.isfinite(b64), b64, 0.0))
            bad = nan_mismatch | inf_mismatch | ~(err <= bound)
            if bad.any():
                i = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(err, nan=np.inf), -1)), a64.shape)
                rel = err[i] / max(abs(b64[i]), np.finfo(np.float64).tiny)
                self.fail(check, where,
                          f"largest error {err[i]:.3g} (relative {rel:.3g}) at index {tuple(int(j) for j in i)}: "
                          f"got {a64[i]!r}, reference {b64[i]!r}; rtol={rtol:g}, atol={atol:g}, "
                          f"{int(bad.sum())} of {bad.size} elements off")

    def cotangent_types(self, check: str, cts: Sequence[Any], args: Sequence[Any], argnums: Sequence[int]) -> None:
        for ct, i in zip(cts, argnums):
            want_shape, want_dtype = jnp.shape(args[i]), jnp.result_type(args[i])
            if jnp.shape(ct) != want_shape or jnp.result_type(ct) != want_dtype or _weak(ct) != _weak(args[i]):
                self.fail(check, f"cotangent of argument {i}",
                          f"has shape {jnp.shape(ct)}, dtype {jnp.result_type(ct)} and weak_type {_weak(ct)}, but "
                          f"the argument has shape {want_shape}, dtype {want_dtype} and weak_type {_weak(args[i])}")


def _random_like(rng: np.random.Generator, tree: Any) -> Any:
    """Standard normal arrays with the shapes and dtypes of tree's leaves (arrays or ShapeDtypeStructs).

    Drawn with NumPy: no compilation per shape, which dominates the cost of small checks.
    """
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.standard_normal(jnp.shape(x)).astype(np.float64), dtype=jnp.result_type(x)), tree)


def _vjp_fn(fn: Callable, argnums: Sequence[int]) -> Callable:
    """(ȳ, *args) -> cotangents of the arguments in argnums, as a tuple."""
    def run(ybar, *args):
        def sub(*diff):
            full = list(args)
            for i, v in zip(argnums, diff):
                full[i] = v
            return fn(*full)
        _, back = jax.vjp(sub, *(args[i] for i in argnums))
        return tuple(back(ybar))
    return run


def _batch(rng: np.random.Generator, args: Sequence[Any], size: int) -> tuple[list[Any], list[int | None]]:
    """A batch of `size` argument sets: float arrays with their elements permuted, the rest repeated."""
    out, axes = [], []
    for a in args:
        if a is None or isinstance(a, (bool, int, float)):
            out.append(a)
            axes.append(None)
            continue
        a = a if _is_key(a) else jnp.asarray(a)
        if _is_float(a) and a.size > 1:
            flat = a.reshape(-1)
            members = [a] + [flat[rng.permutation(a.size)].reshape(a.shape) for _ in range(size - 1)]
            out.append(jnp.stack(members))
        else:
            out.append(jnp.stack([a] * size))
        axes.append(0)
    return out, axes


def _cast(args: Sequence[Any], dtype: Any) -> list[Any]:
    """The floating-point arguments cast to dtype (the others unchanged)."""
    return [jnp.asarray(a, dtype) if _is_float(a) and not isinstance(a, (int, float)) else a for a in args]


def check_rule(f: Callable, reference: Callable, *args: Any, argnums: Sequence[int] | None = None,
               rtol: float | None = None, atol: float | None = None, name: str | None = None,
               fd: bool = True, fd_eps: float | None = None, fd_tol: float | None = None,
               jit: bool = True, vmap: bool = True, grad_grad: bool = True, eager: bool = True,
               checkpoint: bool = True, scan: bool = True, jvp: bool = True, fwd_over_rev: bool = True,
               weak_type: bool = True,
               dtypes: Sequence[Any] | Mapping[Any, tuple[float, float]] = (), seed: int = 0) -> None:
    """Check the rule ``f`` against ``reference`` on ``args``; raise AssertionError on any mismatch.

    Args:
      f: the function with the rule under test (any JAX-differentiable callable).
      reference: an independent implementation, differentiated by JAX.
      *args: arrays (or None / numbers) passed positionally to both. Bind static settings with
        ``functools.partial`` rather than passing them here.
      argnums: which arguments to differentiate; by default every floating-point array.
      rtol, atol: tolerances for values and cotangents; by default from the dtype of the first
        differentiated argument (see :func:`default_tolerance`).
      name: the rule's name in failure messages (default: ``f.__name__``).
      fd, jit, vmap, grad_grad, checkpoint, scan: switch the individual checks off (all on by
        default). ``vmap`` batches all arguments together and then each argument alone; ``scan``
        runs the rule in the body of ``lax.scan`` over the same batch; ``checkpoint`` runs it under
        ``jax.checkpoint``. jit, checkpoint and grad of grad share one compilation, vmap and scan another.
      jvp, fwd_over_rev: forward mode, inside :func:`jaxrules.forward_mode` (one compilation): ``jax.jvp``
        of f against the reference's (and, with ``fd``, against finite differences in float64), the JVP
        of the VJP (forward over reverse, PyTorch's ``check_fwd_over_rev``), and the VJP again there.
      eager: run checks 1 and 2 op by op (the default) or, if False, in one ``jax.jit`` compilation
        (much faster for many small cases; check 4 still compares with jit when ``jit`` is on).
      fd_eps, fd_tol: step and tolerance of the float64 finite differences (``check_grads``'s defaults).
      dtypes: a dtype sweep: the primal and the VJP again with the floating-point arguments cast to
        each of these dtypes, against the reference at that dtype, with :func:`default_tolerance`
        (or a mapping ``{dtype: (rtol, atol)}``); outputs and cotangents must keep the dtype.
      weak_type: compare the output's weak type with the reference's (a drop-in for a jax.nn function
        keeps its weak types; a reference written as a formula may not). Cotangents always have their
        primal's weak type.
      seed: seeds the random cotangents and permutations.

    Returns None; raises AssertionError naming the rule, the check, the argument and the largest error.
    """
    name = name or _name(f)
    if argnums is None:
        argnums = tuple(i for i, a in enumerate(args) if _is_float(a))
    argnums = tuple(argnums)
    ref_dtype = jnp.result_type(args[argnums[0]]) if argnums else jnp.float32
    d_rtol, d_atol = default_tolerance(ref_dtype)
    c = _Checker(name, d_rtol if rtol is None else rtol, d_atol if atol is None else atol, weak_type)
    rng = np.random.default_rng(seed)

    ours_vjp, ref_vjp = _vjp_fn(f, argnums), _vjp_fn(reference, argnums)
    out = jax.eval_shape(reference, *args)
    ybar = _random_like(rng, out) if argnums else None

    def both(ybar, *args):
        """1 and 2 for ours and the reference: (y, y_ref, cotangents, reference cotangents)."""
        y, y_ref = f(*args), reference(*args)
        if not argnums:
            return y, y_ref, (), ()
        return y, y_ref, ours_vjp(ybar, *args), ref_vjp(ybar, *args)

    def compare(check: str, y: Any, cts: Any, y_ref: Any, cts_ref: Any) -> None:
        c.close(check, "output", y, y_ref)
        c.cotangent_types(check, cts, args, argnums)
        for ct, ct_ref, i in zip(cts, cts_ref, argnums):
            c.close(check, f"cotangent of argument {i}", ct, ct_ref, weak=False)

    # 1. primal and 2. vjp against the reference: ours op by op or compiled, the reference compiled
    if eager:
        y, cts = f(*args), (ours_vjp(ybar, *args) if argnums else ())
        y_ref, cts_ref = jax.jit(lambda ybar, *a: both(ybar, *a)[1::2])(ybar, *args)
    else:
        y, y_ref, cts, cts_ref = jax.jit(both)(ybar, *args)
    c.close("primal", "output", y, y_ref)
    if not argnums:
        return
    compare("vjp", y, cts, y_ref, cts_ref)

    # the dtype sweep: 1 and 2 again at each dtype, compiled once per dtype
    sweep = dtypes.items() if isinstance(dtypes, Mapping) else ((d, default_tolerance(d)) for d in dtypes)
    for dt, (r, a) in sweep:
        cast = _cast(args, dt)
        ybar_dt = jax.tree_util.tree_map(lambda t, dt=dt: t.astype(dt) if jnp.issubdtype(t.dtype, jnp.floating)
                                          else t, ybar)
        yd, yd_ref, cd, cd_ref = jax.jit(both)(ybar_dt, *cast)
        check = f"dtype sweep ({jnp.dtype(dt).name})"
        c.close(check, "output", yd, yd_ref, rtol=r, atol=a)
        c.cotangent_types(check, cd, cast, argnums)
        for ct, ct_ref, i in zip(cd, cd_ref, argnums):
            c.close(check, f"cotangent of argument {i}", ct, ct_ref, rtol=r, atol=a, weak=False)

    # 3. finite differences in float64: all arguments in one compilation; on failure, one by one
    if fd:
        _finite_differences(c, f, args, argnums, "rev", fd_eps, fd_tol)

    # 4. jit, jax.checkpoint and 6. grad of grad, in one compilation
    w = _random_like(rng, cts_ref)

    def second(run):
        """The gradient of ⟨w, run(ȳ, args)⟩ with respect to the differentiated arguments."""
        def h(*diff):
            full = list(args)
            for i, v in zip(argnums, diff):
                full[i] = v
            return sum(jnp.vdot(wi, ci).real for wi, ci in zip(w, run(ybar, *full)))
        return jax.grad(h, argnums=tuple(range(len(argnums))))(*(args[i] for i in argnums))

    remat = jax.checkpoint(f)

    @jax.jit
    def transformed(ybar, *a):
        res = {}
        if jit:
            res["jit"] = (f(*a), ours_vjp(ybar, *a))
        if checkpoint:
            res["checkpoint"] = (remat(*a), _vjp_fn(remat, argnums)(ybar, *a))
        if grad_grad:
            res["grad of grad"] = (second(ours_vjp), second(ref_vjp))
        return res
    if jit or checkpoint or grad_grad:
        for check, (o, p) in transformed(ybar, *args).items():
            if check == "grad of grad":
                for g1, g2, i in zip(o, p, argnums):
                    c.close(check, f"argument {i}", g1, g2, weak=False)
            else:
                compare(check, o, p, y_ref, cts_ref)

    # 5. vmap over a batch of three: all arguments together, then each alone; and lax.scan
    if vmap or scan:
        _batched_checks(c, f, reference, ours_vjp, ref_vjp, args, argnums, out, rng, vmap, scan)

    # 8. forward mode, inside jaxrules.forward_mode(): the JVP, forward over reverse, and reverse mode
    if jvp or fwd_over_rev:
        _forward_checks(c, f, reference, ours_vjp, ref_vjp, args, argnums, ybar, y_ref, cts_ref, rng, jvp,
                        fwd_over_rev)
        if jvp and fd:
            from jaxrules.forward import forward_mode
            with forward_mode():
                _finite_differences(c, f, args, argnums, "fwd", fd_eps, fd_tol)


def _finite_differences(c: _Checker, f: Callable, args: Sequence[Any], argnums: Sequence[int], mode: str,
                        eps: float | None, tol: float | None) -> None:
    """``jax.test_util.check_grads`` in float64 in one mode ("rev": the VJP, "fwd": the JVP): all
    arguments in one compilation; on failure, one by one to name the argument."""
    with jax.enable_x64(True):
        args64 = [jnp.asarray(a, jnp.float64) if _is_float(a) else a for a in args]
        live = [i for i in argnums if jnp.size(args64[i])]

        def at(*diff, which=tuple(live)):
            full = list(args64)
            for i, v in zip(which, diff):
                full[i] = v
            return f(*full)

        def fd_check(which):
            jax.test_util.check_grads(jax.jit(partial(at, which=which)), tuple(args64[i] for i in which),
                                      order=1, modes=(mode,), eps=eps, atol=tol, rtol=tol)
        try:  # under jit: one compilation rather than one per operation and shape
            if live:
                fd_check(tuple(live))
        except AssertionError as whole:
            err, where = whole, f"arguments {live} together"
            for i in live:  # name the argument
                try:
                    fd_check((i,))
                except AssertionError as one:
                    err, where = one, f"argument {i}"
                    break
            what = "the VJP" if mode == "rev" else "the JVP"
            c.fail(f"finite differences of {what} (float64)", where, str(err).strip().replace("\n", " "))


def _forward_checks(c: _Checker, f: Callable, reference: Callable, ours_vjp: Callable, ref_vjp: Callable,
                    args: Sequence[Any], argnums: Sequence[int], ybar: Any, y_ref: Any, cts_ref: Any,
                    rng: np.random.Generator, jvp: bool, fwd_over_rev: bool) -> None:
    """Inside :func:`jaxrules.forward_mode`, in one compilation: ``jax.jvp`` of f against the
    reference's; the JVP of the VJP (forward over reverse: a Hessian-vector product for a scalar
    loss) against the reference's; and the VJP again (reverse mode through the twins)."""
    from jaxrules.forward import forward_mode
    tangents = _random_like(rng, tuple(args[i] for i in argnums))

    def pushforward(fn, *a):
        def sub(*diff):
            full = list(a)
            for i, v in zip(argnums, diff):
                full[i] = v
            return fn(*full)
        return jax.jvp(sub, tuple(a[i] for i in argnums), tangents)

    def hvp(vjp_fn, ybar, *a):
        """d/dε vjp(ȳ, args + ε·tangents) at ε = 0."""
        def sub(*diff):
            full = list(a)
            for i, v in zip(argnums, diff):
                full[i] = v
            return vjp_fn(ybar, *full)
        return jax.jvp(sub, tuple(a[i] for i in argnums), tangents)[1]

    @jax.jit
    def run(ybar, *a):
        res = {"vjp inside forward_mode": (f(*a), ours_vjp(ybar, *a), None)}
        if jvp:
            res["jvp"] = (pushforward(f, *a), pushforward(reference, *a))
        if fwd_over_rev:
            res["forward over reverse"] = (hvp(ours_vjp, ybar, *a), hvp(ref_vjp, ybar, *a))
        return res
    with forward_mode():
        results = run(ybar, *args)
    y, cts, _ = results.pop("vjp inside forward_mode")
    c.close("vjp inside forward_mode", "output", y, y_ref)
    for ct, ct_ref, i in zip(cts, cts_ref, argnums):
        c.close("vjp inside forward_mode", f"cotangent of argument {i}", ct, ct_ref, weak=False)
    if jvp:
        (yo, to), (yr, tr) = results["jvp"]
        c.close("jvp", "output", yo, yr)
        c.close("jvp", "tangent of the output", to, tr, weak=False)
    if fwd_over_rev:
        ho, hr = results["forward over reverse"]
        for h1, h2, i in zip(ho, hr, argnums):
            c.close("forward over reverse", f"argument {i}", h1, h2, weak=False)


def _batched_checks(c: _Checker, f: Callable, reference: Callable, ours_vjp: Callable, ref_vjp: Callable,
                    args: Sequence[Any], argnums: Sequence[int], out: Any, rng: np.random.Generator, vmap: bool,
                    scan: bool) -> None:
    """vmap over all arguments and over each alone, and lax.scan over the batch: one compilation.

    The reference runs once, vmapped over every batch these checks use, laid end to end.
    """
    size = 3
    bargs, axes = _batch(rng, args, size)
    bbar = _random_like(rng, jax.tree_util.tree_map(lambda t: jax.ShapeDtypeStruct((size,) + t.shape, t.dtype), out))
    alone = [i for i, ax in enumerate(axes) if ax == 0] if vmap else []
    alone = alone if len(alone) > 1 else []  # with one batched argument, 'alone' is 'all'

    def tiled(j: int, i: int) -> Any:
        """Argument j's batch when argument i alone is batched: its own value repeated."""
        return bargs[j] if axes[j] is None or j == i else jnp.stack([jnp.asarray(args[j])] * size)
    # batches laid end to end: all arguments batched, then each alone
    ends = [[bargs[j] for j in range(len(args))]] + [[tiled(j, i) for j in range(len(args))] for i in alone]
    cat = [bargs[j] if axes[j] is None else jnp.concatenate([e[j] for e in ends]) for j in range(len(args))]
    cat_bar = jax.tree_util.tree_map(lambda t: jnp.concatenate([t] * len(ends)), bbar)

    @jax.jit
    def run(bbar, bargs, cat_bar, cat):
        ref = (jax.vmap(reference, in_axes=axes)(*cat), jax.vmap(ref_vjp, in_axes=(0, *axes))(cat_bar, *cat))
        ours = {}
        if vmap:
            ours["vmap"] = (jax.vmap(f, in_axes=axes)(*bargs), jax.vmap(ours_vjp, in_axes=(0, *axes))(bbar, *bargs))
            for i in alone:
                a = [bargs[j] if j == i else args[j] for j in range(len(args))]
                ax = [0 if j == i else None for j in range(len(args))]
                ours[f"vmap over argument {i} alone"] = (jax.vmap(f, in_axes=ax)(*a),
                                                         jax.vmap(ours_vjp, in_axes=(0, *ax))(bbar, *a))
        if scan:
            def step(carry, xs):
                yb, ab = xs
                full = [ab[k] if axes[k] == 0 else bargs[k] for k in range(len(bargs))]
                return carry, (f(*full), ours_vjp(yb, *full))
            ours["lax.scan"] = jax.lax.scan(step, None, (bbar, [a if ax == 0 else None
                                                                for a, ax in zip(bargs, axes)]))[1]
        return ours, ref
    ours, ref = run(bbar, bargs, cat_bar, cat)
    for check, (y, cts) in ours.items():
        k = 1 + alone.index(int(check.split()[3])) if check.startswith("vmap over") else 0
        part = jax.tree_util.tree_map(lambda t: t[k * size:(k + 1) * size], ref)
        c.close(check, "output", y, part[0])
        for ct, ct_ref, i in zip(cts, part[1], argnums):
            c.close(check, f"cotangent of argument {i}", ct, ct_ref, weak=False)


def check_sharded(f: Callable, *args: Any, argnums: Sequence[int] | None = None, rtol: float | None = None,
                  atol: float | None = None, name: str | None = None, devices: Sequence[Any] | None = None,
                  seed: int = 0) -> None:
    """``f`` on a batch sharded over devices equals the plain call on each batch member.

    A batch of one member per device (elements permuted as in :func:`check_rule`'s vmap check) is
    laid out along a mesh axis ``"batch"``. The values and cotangents of ``vmap(f)`` are checked

    * under ``jax.jit`` with the batch in a ``NamedSharding`` (and the outputs sharded the same way),
    * inside ``jax.shard_map`` over the mesh (each device runs its own member),

    against ``f`` and its VJP called on each member alone. Needs at least two devices (on a CPU:
    ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before JAX starts).
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    name = name or _name(f)
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < 2:
        raise ValueError(f"check_sharded needs at least 2 devices, got {len(devices)}; on a CPU set "
                         "XLA_FLAGS=--xla_force_host_platform_device_count=4 before importing jax")
    if argnums is None:
        argnums = tuple(i for i, a in enumerate(args) if _is_float(a))
    d_rtol, d_atol = default_tolerance(jnp.result_type(args[argnums[0]]) if argnums else jnp.float32)
    c = _Checker(name, d_rtol if rtol is None else rtol, d_atol if atol is None else atol)
    rng = np.random.default_rng(seed)
    n = len(devices)
    bargs, axes = _batch(rng, args, n)
    out = jax.eval_shape(f, *args)
    bbar = _random_like(rng, jax.tree_util.tree_map(lambda t: jax.ShapeDtypeStruct((n,) + t.shape, t.dtype), out))
    vjp = _vjp_fn(f, argnums)

    plain = jax.jit(lambda ybar, *a: (f(*a), vjp(ybar, *a)))
    members = [plain(jax.tree_util.tree_map(lambda t: t[k], bbar),
                     *[a[k] if ax == 0 else a for a, ax in zip(bargs, axes)]) for k in range(n)]
    expected = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *members)

    mesh = Mesh(np.array(devices), ("batch",))
    shard = NamedSharding(mesh, P("batch"))
    on_mesh = [jax.device_put(a, shard) if ax == 0 else a for a, ax in zip(bargs, axes)]
    ybar = jax.device_put(bbar, shard)
    batched = [k for k, ax in enumerate(axes) if ax == 0]

    def vmapped(ybar, *a):
        return jax.vmap(f, in_axes=axes)(*a), jax.vmap(vjp, in_axes=(0, *axes))(ybar, *a)

    def per_device(ybar, *sharded):
        full = list(bargs)
        for k, v in zip(batched, sharded):
            full[k] = v
        return vmapped(ybar, *full)
    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=P("batch"), out_specs=P("batch"))
    results = {
        "jit with NamedSharding": jax.jit(vmapped)(ybar, *on_mesh),
        "shard_map": jax.jit(mapped)(ybar, *(on_mesh[k] for k in batched)),
    }
    for check, (y, cts) in results.items():
        for leaf in jax.tree_util.tree_leaves((y, cts)):
            if leaf.ndim and leaf.shape[0] == n and len(leaf.sharding.device_set) != n:
                c.fail(check, "layout", f"an output of shape {leaf.shape} lives on {len(leaf.sharding.device_set)} "
                       f"device(s), not spread over the {n} of the mesh")
        c.close(check, "output", y, expected[0])
        for ct, ct_ref, i in zip(cts, expected[1], argnums):
            c.close(check, f"cotangent of argument {i}", ct, ct_ref, weak=False)


def residual_bytes(f: Callable, *args: Any) -> int:
    """Bytes the backward of ``f`` keeps alive: every distinct buffer held by ``jax.vjp``'s pullback.

    Inputs count when they are kept. Buffers are told apart by address, so a residual that is the
    input itself (or the output) is counted once.
    """
    _, back = jax.vjp(f, *args)
    seen: dict[int, int] = {}
    for leaf in jax.tree_util.tree_leaves(back):
        if isinstance(leaf, jax.Array):
            seen[leaf.unsafe_buffer_pointer()] = leaf.nbytes
    return sum(seen.values())
