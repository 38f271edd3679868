r"""Accuracy to the last ulp: every rule against a 50-digit reference, beside jax.nn and optax.

The unit is the mixed forward-backward error of a result :math:`y` computed for the input
:math:`x` (an exact float) where the exact value is :math:`f(x)`:

.. math:: \mathrm{err}(y) = \frac{|y - f(x)|}{\mathrm{ulp}(f(x)) + |f'(x)|\,\mathrm{ulp}(x)},

an ulp of the result plus what an ulp of the input moves it, so that the zeros of f′ are not blown
up and rounding the input is forgiven. The gradient (ȳ = 1) is measured the same way, with f′ in
place of f and f″ in place of f′. ulp is the spacing of the dtype (float32 by default) at that
magnitude, floored at the smallest normal number (XLA's CPU flushes subnormals to zero).

:func:`check_accuracy` sweeps an elementwise rule over :func:`sweep_points` (a grid of step 0.025
over [−30, 30], 0.5 out to ±200 where exp overflows and underflows, log-spaced magnitudes of both
signs out to the largest finite value and in to the smallest normal, and ±0), then checks ±inf (the
mathematical limits, of the value and of the slope) and NaN (it propagates), and reports the largest
error and the 99.9th percentile beside a baseline's (jax.nn's, say) on the same points::

    import mpmath
    from jaxrules.testing import check_accuracy

    report = check_accuracy(my_softplus, lambda x: mpmath.log1p(mpmath.exp(x)),
                            slope=lambda x: 1 / (1 + mpmath.exp(-x)), baseline=jax.nn.softplus)
    print(report)          # value and gradient: max and 99.9th percentile, ours | baseline

It raises AssertionError when a value is more than 4 units off, or a gradient more than 4 units
and more than twice the baseline's worst nearby (see ``window``), or a limit or NaN is wrong.

:func:`check_rows` does the same for row functions (softmax, losses) on rows you give, with the
value measured in ulps of each exact element and the gradient in ulps of its row's largest exact
element; :func:`check_row_case` runs jaxrules' own on :func:`hard_rows`.

The reference is mpmath (``pip install jaxrules[test]``), at 50 digits. For jaxrules' own rules the
exact values on the default sweep are computed once and kept in ``jaxrules/data/accuracy.npz.xz``
(``python -m jaxrules.accuracy --regenerate`` recomputes them with mpmath, in under a minute), so
the elementwise tests and ``python -m jaxrules.accuracy`` (the README's accuracy tables;
``--write README.md`` updates them) do not recompute them; ``--dense`` sweeps ten times as many
points, computing their exact values as it goes (several minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import lzma
import math
import os
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Reference", "Exact", "Accuracy", "RowAccuracy", "check_accuracy", "check_rows", "check_row_case",
           "hard_rows", "sweep_points", "dense_points", "ulp", "mixed_error"]

DPS = 50  # digits of the mpmath reference


def _mpmath():
    try:
        import mpmath
    except ImportError:  # pragma: no cover - a test extra
        raise ImportError("jaxrules.accuracy needs mpmath for its reference values: pip install mpmath "
                          "(or jaxrules[test])") from None
    return mpmath


# --- units -----------------------------------------------------------------------------------

def ulp(v: Any, dtype: Any = np.float32) -> np.ndarray:
    """The spacing of ``dtype`` at |v| (float64), floored at the smallest normal number; inf at ±inf.

    For v in [2^e, 2^(e+1)) it is 2^(e − mantissa bits), whatever v's own precision (v may be an
    exact value that ``dtype`` cannot hold)."""
    fi = np.finfo(dtype)
    a = np.abs(np.asarray(v, np.float64))
    with np.errstate(invalid="ignore", over="ignore"):
        m, e = np.frexp(np.where(np.isfinite(a), a, 0.0))
        u = np.ldexp(1.0, (e - 1 - fi.nmant).astype(np.int64).clip(-2000, 2000))
        u = np.where(np.isinf(a), np.inf, np.where(a == 0, float(fi.tiny), np.maximum(u, float(fi.tiny))))
    return np.where(np.isnan(a), np.nan, u)


def mixed_error(got: Any, lo: Any, hi: Any, unit: Any) -> np.ndarray:
    """|got − exact| / unit, where any value in [lo, hi] is exact (lo = hi but at a kink's slopes).

    NaN where ``got`` is NaN and the exact value is not (an infinite error): returned as inf. An
    infinite ``got`` is exact only if the exact value is that infinity."""
    got = np.asarray(got, np.float64)
    lo, hi, unit = (np.asarray(a, np.float64) for a in (lo, hi, unit))
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.where(got < lo, lo - got, np.where(got > hi, got - hi, 0.0))
        exact_inf = np.isinf(lo) & (lo == hi) & (got == lo)
        e = np.where(exact_inf, 0.0, d / unit)
        e = np.where(np.isnan(got) & ~(np.isnan(lo) & np.isnan(hi)), np.inf, e)
        e = np.where(np.isnan(lo) & np.isnan(hi) & np.isnan(got), 0.0, e)
    return np.where(np.isnan(e), np.inf, e)


# --- the sweep -------------------------------------------------------------------------------

CORE = (-30.0, 30.0)
CORE_POINTS = 2401   # a step of 0.025
EDGE = (30.0, 200.0)  # where float32's exp overflows (88.7), turns subnormal (−87.3) and underflows (−103.3)
EDGE_POINTS = 341    # per sign, a step of 0.5
TAIL_POINTS = 500    # per sign, log-spaced from the smallest normal to the largest finite value


def sweep_points(dtype: Any = np.float32, core: tuple[float, float] = CORE, core_points: int = CORE_POINTS,
                 edge: tuple[float, float] = EDGE, edge_points: int = EDGE_POINTS,
                 tail_points: int = TAIL_POINTS) -> np.ndarray:
    """The finite points of the sweep, sorted, as a NumPy array of ``dtype``.

    ``core_points`` evenly spaced over ``core`` (rounded to ``dtype``), ``edge_points`` evenly spaced
    magnitudes in ``edge`` of each sign (the edges of exp's range), ``tail_points`` log-spaced
    magnitudes of each sign from the smallest normal to the largest finite number, ±0, ± the
    smallest normal and ± the largest finite number. ±inf and NaN are checked apart."""
    fi = np.finfo(dtype)
    c = np.linspace(core[0], core[1], core_points).astype(dtype)
    t = np.geomspace(float(fi.tiny), float(fi.max), tail_points).astype(dtype)
    e = np.linspace(edge[0], edge[1], edge_points).astype(dtype) if edge_points else np.zeros(0, dtype)
    t = np.concatenate([t, e, np.array([fi.tiny, fi.max], dtype)])
    pts = np.unique(np.concatenate([c, t, -t]))
    pts = pts[pts != 0]
    neg = pts[pts < 0]
    return np.concatenate([neg, np.array([-0.0, 0.0], dtype), pts[pts > 0]]).astype(dtype)


SPECIALS = (-np.inf, np.inf, np.nan)


# --- references ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Exact:
    """Exact values on a set of points: f(x) = y, f′(x) ∈ [g_lo, g_hi] (equal but at a kink), |f″(x)| = d2.

    All float64 arrays (exact to 2⁻⁵³, far below a float32 ulp). ``limits`` holds, for −∞ and +∞,
    (f's limit, f′'s limit) as floats (±inf where f grows without bound)."""

    x: np.ndarray
    y: np.ndarray
    g_lo: np.ndarray
    g_hi: np.ndarray
    d2: np.ndarray
    limits: tuple[tuple[float, float], tuple[float, float]]

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays to store, compactly: values and slopes to 32 bits (2⁻⁹ of a float32 ulp), |f″|
        (which only scales a unit) as log₂ in steps of 1/64, the slopes at kinks apart."""
        kink = np.flatnonzero(self.g_lo != self.g_hi)
        return {f"{prefix}/y": _planes(_round_mantissa(self.y)), f"{prefix}/g": _planes(_round_mantissa(self.g_lo)),
                f"{prefix}/kink": kink.astype(np.int32), f"{prefix}/kink_hi": self.g_hi[kink],
                f"{prefix}/log2_d2": _planes(_log2_code(self.d2)), f"{prefix}/limits": np.array(self.limits, np.float64)}

    @classmethod
    def from_arrays(cls, x: np.ndarray, data: Any, prefix: str) -> "Exact":
        g = _unplanes(data[f"{prefix}/g"], np.float64)
        hi = g.copy()
        hi[data[f"{prefix}/kink"]] = data[f"{prefix}/kink_hi"]
        lim = np.asarray(data[f"{prefix}/limits"])
        return cls(x, _unplanes(data[f"{prefix}/y"], np.float64), np.minimum(g, hi), np.maximum(g, hi),
                   _log2_decode(_unplanes(data[f"{prefix}/log2_d2"], np.int16)),
                   ((lim[0, 0], lim[0, 1]), (lim[1, 0], lim[1, 1])))


def _planes(a: np.ndarray) -> np.ndarray:
    """The bytes of a, one plane per byte position (the zero low bytes of rounded values in a run)."""
    a = np.ascontiguousarray(a)
    return np.ascontiguousarray(a.view(np.uint8).reshape(a.size, a.itemsize).T)


def _unplanes(p: np.ndarray, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(p).T).view(dtype).reshape(-1)


def _round_mantissa(a: np.ndarray, bits: int = 32) -> np.ndarray:
    """float64 values rounded to ``bits`` fraction bits (the rest zero: they compress)."""
    a = np.asarray(a, np.float64)
    drop = 52 - bits
    r = ((a.view(np.uint64) + np.uint64(1 << (drop - 1))) & np.uint64((0xFFFFFFFFFFFFFFFF >> drop) << drop))
    return np.where(np.isfinite(a), r.view(np.float64), a)


def _log2_code(d: np.ndarray) -> np.ndarray:
    """log₂ d in steps of 1/64 as int16; below 2⁻⁵¹¹ (where d·ulp(x) < 2⁻⁴⁰⁷ cannot matter) as 0."""
    with np.errstate(divide="ignore"):
        q = np.round(np.log2(np.asarray(d, np.float64)) * 64)
    return np.where(np.asarray(d) > 0, np.where(q < -32767, -32768, np.minimum(q, 32767)), -32768).astype(np.int16)


def _log2_decode(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q)
    return np.where(q == -32768, 0.0, np.exp2(q.astype(np.float64) / 64))


def _central(f: Callable, x: Any, mp: Any) -> Any:
    """f′(x) by a central difference at a relative step of 2⁻⁶⁴ (the caller adds working digits)."""
    h = abs(x) * mp.mpf(2) ** -64 if x else mp.mpf(2) ** -200
    return (_one(f(x + h)) - _one(f(x - h))) / (2 * h)


def _one(v: Any) -> Any:
    """A slope that a reference gave as (left, right) at a kink, taken as its midpoint."""
    return (v[0] + v[1]) / 2 if isinstance(v, tuple) else v


@dataclasses.dataclass(frozen=True)
class Reference:
    """An elementwise function in mpmath: its value, its slope and (optionally) its curvature.

    value: mpf -> mpf, f(x). slope: mpf -> mpf, f′(x), or a pair (left, right) at a kink, where any
    subgradient between them is exact; by default a central difference of ``value`` at 40 extra
    digits (give it analytically where f′ underflows against f, e.g. tanh far out). curvature:
    mpf -> mpf, f″(x), used only for the gradient's unit; by default a central difference of
    ``slope``. dps: the digits of the evaluation (50).

    Write ``value`` and ``slope`` without cancellation at 50 digits (expm1, log1p, sech, the
    stable branch of a square root): they are taken as exact."""

    value: Callable[[Any], Any]
    slope: Callable[[Any], Any] | None = None
    curvature: Callable[[Any], Any] | None = None
    dps: int = DPS

    def exact(self, x: Any) -> Exact:
        """The exact values on the points ``x`` (any float array), and the limits at ±∞."""
        mp = _mpmath()
        x = np.asarray(x)
        n = x.size
        y, lo, hi, d2 = (np.empty(n) for _ in range(4))
        for i, xi in enumerate(x.reshape(-1).astype(np.float64)):
            y[i], lo[i], hi[i], d2[i] = self._at(mp, xi)
        top = float(np.finfo(x.dtype).max) if np.issubdtype(x.dtype, np.floating) else 3.4028234663852886e38
        limits = []
        for edge in (-top, top):
            v, g_lo, g_hi, _ = self._at(mp, edge)
            limits.append((math.copysign(math.inf, v) if abs(v) > 1e30 else v, (g_lo + g_hi) / 2))
        return Exact(x.reshape(-1), y, lo, hi, d2, (limits[0], limits[1]))

    def _at(self, mp: Any, xf: float) -> tuple[float, float, float, float]:
        with mp.workdps(self.dps):
            xm = mp.mpf(xf)
            v = self.value(xm)
        with mp.workdps(self.dps + 40):
            xm = mp.mpf(xf)
            s = self.slope(xm) if self.slope is not None else _central(self.value, xm, mp)
            if isinstance(s, tuple):
                c = mp.mpf(0)  # at a kink: any slope between the two sides is exact
            elif self.curvature is not None:
                c = self.curvature(xm)
            else:
                c = _central(self.slope if self.slope is not None else functools.partial(_central, self.value, mp=mp),
                             xm, mp)
        lo, hi = (s if isinstance(s, tuple) else (s, s))
        lo, hi = float(min(lo, hi)), float(max(lo, hi))
        return float(v), lo, hi, abs(float(c))


# --- results ---------------------------------------------------------------------------------

def _p999(e: np.ndarray) -> float:
    if not e.size:
        return 0.0
    with np.errstate(invalid="ignore"):  # inf errors: the percentile between two infinities
        return float(np.percentile(e, 99.9, method="higher"))


@dataclasses.dataclass
class Errors:
    """Errors of one implementation on the sweep, in units: ``value`` and ``gradient`` per point."""

    value: np.ndarray
    gradient: np.ndarray
    specials: dict[str, tuple[float, float]]  # "-inf" / "inf" / "nan" -> (value, gradient) computed
    special_ok: dict[str, bool]

    @property
    def value_max(self) -> float:
        return float(self.value.max())

    @property
    def gradient_max(self) -> float:
        return float(self.gradient.max())

    @property
    def value_p999(self) -> float:
        return _p999(self.value)

    @property
    def gradient_p999(self) -> float:
        return _p999(self.gradient)


@dataclasses.dataclass
class Accuracy:
    """What :func:`check_accuracy` measured: ours and the baseline's errors on the same points.

    ``failures`` lists what broke the bounds (empty when the rule passed); ``str(report)`` gives a
    short table and the worst points."""

    name: str
    baseline_name: str | None
    x: np.ndarray
    exact: Exact
    ours: Errors
    baseline: Errors | None
    ours_y: np.ndarray
    ours_g: np.ndarray
    failures: list[str]

    def worst(self, which: str = "gradient", k: int = 3) -> list[tuple[float, float, float, float]]:
        """The k worst points of ours: (x, computed, exact, units)."""
        e = getattr(self.ours, which)
        got = self.ours_y if which == "value" else self.ours_g
        want = self.exact.y if which == "value" else self.exact.g_lo
        idx = np.argsort(-e, kind="stable")[:k]
        return [(float(self.x[i]), float(got[i]), float(want[i]), float(e[i])) for i in idx]

    def __str__(self) -> str:
        b = self.baseline
        def pair(a, c):
            return f"{_fmt(a)} | {_fmt(c)}" if b is not None else _fmt(a)
        lines = [f"{self.name}" + (f" (beside {self.baseline_name})" if b is not None else "") +
                 f", {self.x.size} points, units of |y − exact| / (ulp(exact) + |f′|·ulp(x)):",
                 f"  value     max {pair(self.ours.value_max, b and b.value_max)}, "
                 f"99.9% {pair(self.ours.value_p999, b and b.value_p999)}",
                 f"  gradient  max {pair(self.ours.gradient_max, b and b.gradient_max)}, "
                 f"99.9% {pair(self.ours.gradient_p999, b and b.gradient_p999)}"]
        for which in ("value", "gradient"):
            for x, got, want, e in self.worst(which, 2):
                lines.append(f"  worst {which}: x = {x!r}: {got!r}, exact {want!r} ({_fmt(e)} units)")
        for s, (v, g) in self.ours.specials.items():
            ok = "" if self.ours.special_ok[s] else "  <- not the limit"
            lines.append(f"  at {s}: value {v!r}, gradient {g!r}{ok}")
        lines += [f"  FAILED: {f}" for f in self.failures]
        return "\n".join(lines)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if not np.isfinite(v):
        return "inf" if v > 0 else "nan"
    if v < 10:
        return f"{v:.1f}"
    if v < 1000:
        return f"{v:.0f}"
    return f"{v:.1e}".replace("e+0", "e").replace("e+", "e")


# --- running a rule --------------------------------------------------------------------------

def _value_and_slope(f: Callable) -> Callable:
    """x -> (f(x), f′(x)) for an elementwise f: the VJP with ȳ = 1, compiled once."""
    return jax.jit(_vjp_ones(f))


def _vjp_ones(f: Callable) -> Callable:
    def run(x):
        y, back = jax.vjp(f, x)
        return y, back(jnp.ones_like(y))[0]
    return run


def _overflows(got: np.ndarray, exact: np.ndarray, dtype: Any) -> np.ndarray:
    """Where the exact value rounds to ±inf in ``dtype`` and ``got`` is that infinity: no error."""
    with np.errstate(over="ignore"):
        rounded = np.asarray(exact, np.float64).astype(dtype).astype(np.float64)
    return np.isinf(rounded) & (got == rounded)


def _inputs(exact: Exact, dtype: Any) -> jax.Array:
    """The sweep's points followed by −inf, inf and NaN, as one array of ``dtype``."""
    return jnp.asarray(np.concatenate([exact.x.astype(dtype), np.array([*SPECIALS], dtype)]))


def _errors(yg: tuple[Any, Any], exact: Exact, dtype: Any) -> tuple[Errors, np.ndarray, np.ndarray]:
    """The errors of (y, g) computed on _inputs(exact): ours or a baseline's."""
    x = exact.x.astype(dtype)
    y, g = (np.asarray(a, np.float64) for a in yg)
    (y, ys), (g, gs) = (y[:x.size], y[x.size:]), (g[:x.size], g[x.size:])
    ux = ulp(x, dtype)
    g_mag = np.maximum(np.abs(exact.g_lo), np.abs(exact.g_hi))
    value = mixed_error(y, exact.y, exact.y, ulp(exact.y, dtype) + g_mag * ux)
    value = np.where(_overflows(y, exact.y, dtype), 0.0, value)
    gradient = mixed_error(g, exact.g_lo, exact.g_hi, ulp(g_mag, dtype) + exact.d2 * ux)
    gradient = np.where((exact.g_lo == exact.g_hi) & _overflows(g, exact.g_lo, dtype), 0.0, gradient)
    out, ok = {}, {}
    for k, name in enumerate(("-inf", "inf")):
        lim_y, lim_g = exact.limits[k]
        out[name] = (float(ys[k]), float(gs[k]))
        ev = mixed_error(ys[k], lim_y, lim_y, ulp(lim_y, dtype))
        eg = mixed_error(gs[k], lim_g, lim_g, ulp(lim_g, dtype))
        ok[name] = bool(ev <= 4 and eg <= 4)
    out["nan"] = (float(ys[2]), float(gs[2]))
    ok["nan"] = bool(np.isnan(ys[2]) and np.isnan(gs[2]))
    return Errors(value, gradient, out, ok), y, g


def check_accuracy(rule: Callable, reference: Reference | Callable | Exact, *, slope: Callable | None = None,
                   curvature: Callable | None = None, baseline: Callable | None = None,
                   points: np.ndarray | None = None, dtype: Any = np.float32, value_units: float | None = 4.0,
                   gradient_units: float | None = 4.0, gradient_factor: float = 2.0, window: int = 16,
                   limits: bool = True,
                   name: str | None = None, baseline_name: str | None = None, raise_on_failure: bool = True
                   ) -> Accuracy:
    """Sweep the elementwise ``rule`` against an mpmath reference, beside ``baseline``; see the module doc.

    Args:
      rule: x -> y elementwise (bind settings with functools.partial); differentiated with ``jax.vjp``.
      reference: an mpmath function of one mpf (the value), a :class:`Reference`, or precomputed
        :class:`Exact` values (whose ``x`` are then the points).
      slope, curvature: mpmath f′ and f″, when ``reference`` is a function (see :class:`Reference`).
      baseline: the function ``rule`` replaces (jax.nn's, say), measured on the same points.
      points: the finite points (default :func:`sweep_points` of ``dtype``).
      value_units: the largest value error allowed anywhere (None: not checked).
      gradient_units, gradient_factor, window: at every point the gradient's error must be at most
        ``gradient_units``, or at most ``gradient_factor`` times the baseline's largest error in the
        point's neighbourhood: the ``window`` points on either side and every point within 0.5 of
        it; without a baseline, at most ``gradient_units`` (None: not checked). The neighbourhood
        is there for slopes that both compute from a rounded number (a saturated sigmoid's
        y(1 − y), say): their errors are rounding noise of about equal size, whose ratio point by
        point means nothing (one of them is 0 by luck). ``window=0`` compares point by point.
      limits: at ±inf the value must be f's limit and the gradient f′'s limit (to 4 units; the
        limits are the exact values at ± the largest finite number, ±inf where f grows past 1e30),
        and NaN must give NaN for both.

    Returns an :class:`Accuracy` report; raises AssertionError listing the failures when
    ``raise_on_failure`` (the default) and a bound is broken.
    """
    name = name or getattr(rule, "__name__", type(rule).__name__)
    if isinstance(reference, Exact):
        exact = reference
    else:
        ref = reference if isinstance(reference, Reference) else Reference(reference, slope, curvature)
        exact = ref.exact(sweep_points(dtype) if points is None else np.asarray(points, dtype))
    x = _inputs(exact, dtype)
    ours_yg = _value_and_slope(rule)(x)
    base_yg = _value_and_slope(baseline)(x) if baseline is not None else None
    return _assess(name, exact, ours_yg, base_yg, dtype=dtype, value_units=value_units,
                   gradient_units=gradient_units, gradient_factor=gradient_factor, window=window, limits=limits,
                   baseline_name=baseline_name or (getattr(baseline, "__name__", None) if baseline else None),
                   raise_on_failure=raise_on_failure)


def _assess(name: str, exact: Exact, ours_yg: tuple, base_yg: tuple | None, *, dtype: Any = np.float32,
            value_units: float | None = 4.0, gradient_units: float | None = 4.0, gradient_factor: float = 2.0,
            window: int = 16, limits: bool = True, baseline_name: str | None = None,
            raise_on_failure: bool = True) -> Accuracy:
    """check_accuracy on values and slopes already computed on _inputs(exact)."""
    ours, y, g = _errors(ours_yg, exact, dtype)
    base = _errors(base_yg, exact, dtype)[0] if base_yg is not None else None
    failures = []
    if value_units is not None and ours.value_max > value_units:
        x, got, want, e = Accuracy.worst(_partial_report(name, exact, ours, y, g), "value", 1)[0]
        failures.append(f"value error {_fmt(e)} units > {value_units} at x = {x!r}: got {got!r}, exact {want!r}")
    if gradient_units is not None:
        allowed = np.full_like(ours.gradient, gradient_units)
        if base is not None:
            allowed = np.maximum(allowed, gradient_factor * _neighbourhood_max(base.gradient, exact.x, window))
        bad = np.flatnonzero(~(ours.gradient <= allowed))
        if bad.size:
            i = bad[np.argmax(ours.gradient[bad] - allowed[bad])]
            theirs = f", baseline {_fmt(base.gradient[i])}" if base is not None else ""
            failures.append(f"gradient error {_fmt(ours.gradient[i])} units{theirs} at x = {float(exact.x[i])!r}: "
                            f"got {float(g[i])!r}, exact {float(exact.g_lo[i])!r} ({bad.size} points over the bound)")
    if limits:
        for s, ok in ours.special_ok.items():
            if not ok:
                v, gr = ours.specials[s]
                want = "NaN" if s == "nan" else f"limits {exact.limits[0 if s == '-inf' else 1]}"
                failures.append(f"at {s}: value {v!r}, gradient {gr!r}; want {want}")
    report = Accuracy(name, baseline_name, exact.x, exact, ours, base, y, g, failures)
    if failures and raise_on_failure:
        raise AssertionError(f"{name}: accuracy: " + "; ".join(failures) + "\n" + str(report))
    return report


def _neighbourhood_max(e: np.ndarray, x: np.ndarray, w: int, width: float = 0.5) -> np.ndarray:
    """The largest of e over each point's neighbourhood: the w points on either side in the order of
    x, and every point within ``width`` of it (so that a denser sweep does not shrink it)."""
    if w <= 0 or e.size == 0:
        return e
    order = np.argsort(x, kind="stable")
    xs, es = np.asarray(x, np.float64)[order], e[order]
    i = np.arange(xs.size)
    lo = np.minimum(np.searchsorted(xs, xs - width, "left"), np.maximum(i - w, 0))
    hi = np.maximum(np.searchsorted(xs, xs + width, "right"), np.minimum(i + w + 1, xs.size))
    levels = [es]  # a sparse table: levels[k][j] = max(es[j : j + 2^k])
    while 2 ** len(levels) <= xs.size:
        prev, half = levels[-1], 2 ** (len(levels) - 1)
        levels.append(np.maximum(prev[:-half], prev[half:]))
    k = np.floor(np.log2(hi - lo)).astype(int)
    table = np.full((len(levels), xs.size), -np.inf)
    for j, lv in enumerate(levels):
        table[j, :lv.size] = lv
    out = np.maximum(table[k, lo], table[k, hi - 2 ** k])
    result = np.empty_like(out)
    result[order] = out
    return result


def _partial_report(name, exact, ours, y, g) -> Accuracy:
    return Accuracy(name, None, exact.x, exact, ours, None, y, g, [])



# --- rows: softmax, losses -------------------------------------------------------------------

def _mp_row(a: np.ndarray) -> Any:
    """One row as mpmath: floats as mpf (exactly), integers as int, booleans as bool; lists by axis."""
    mp = _mpmath()
    a = np.asarray(a)
    if a.ndim:
        return [_mp_row(v) for v in a]
    if a.dtype == np.bool_:
        return bool(a)
    if np.issubdtype(a.dtype, np.integer):
        return int(a)
    return mp.mpf(float(a))


def _flat(v: Any) -> np.ndarray:
    """An mpmath scalar or (nested) list as a float64 array."""
    if isinstance(v, (list, tuple)):
        return np.array([_flat(u) for u in v], np.float64)
    return np.float64(float(v))


@dataclasses.dataclass
class RowErrors:
    """Errors of one implementation per row, in units: ``value`` (the row's worst element, in ulps of
    each exact element) and ``gradient`` (the row's worst element, in ulps of the row's largest)."""

    value: np.ndarray
    gradient: np.ndarray


@dataclasses.dataclass
class RowAccuracy:
    """What :func:`check_rows` measured, per group of rows: ours and the baseline's largest errors."""

    name: str
    baseline_name: str | None
    groups: dict[str, np.ndarray]  # group -> row indices
    ours: RowErrors
    baseline: RowErrors | None
    failures: list[str]

    def group_max(self, which: str, group: str, baseline: bool = False) -> float:
        e = getattr(self.baseline if baseline else self.ours, which)
        idx = self.groups[group]
        return float(e[idx].max()) if idx.size else 0.0

    def __str__(self) -> str:
        b = self.baseline is not None
        lines = [f"{self.name}" + (f" (beside {self.baseline_name})" if b else "") +
                 ": value in ulps of each element, gradient in ulps of its row's largest"]
        for g in self.groups:
            v = _fmt(self.group_max("value", g)) + (f" | {_fmt(self.group_max('value', g, True))}" if b else "")
            d = _fmt(self.group_max("gradient", g)) + (f" | {_fmt(self.group_max('gradient', g, True))}" if b else "")
            lines.append(f"  {g:40s} value {v:>16}   gradient {d:>16}")
        lines += [f"  FAILED: {f}" for f in self.failures]
        return "\n".join(lines)


def _row_vjp(f: Callable, argnums: Sequence[int]) -> Callable:
    """(ȳ, *args) -> (f(*args), cotangents of the argnums)."""
    def run(ybar, *args):
        def sub(*diff):
            full = list(args)
            for i, v in zip(argnums, diff):
                full[i] = v
            return f(*full)
        y, back = jax.vjp(sub, *(args[i] for i in argnums))
        return y, back(ybar)
    return run


def _row_errors(y, gs, y_exact, g_exact, dtype) -> RowErrors:
    n = y.shape[0]
    v = mixed_error(y, y_exact, y_exact, ulp(y_exact, dtype))
    v = np.where(_overflows(y, y_exact, dtype), 0.0, v).reshape(n, -1).max(axis=1)
    worst = np.zeros(n)
    for g, ge in zip(gs, g_exact):
        ge2 = ge.reshape(n, -1)
        with np.errstate(invalid="ignore"):
            scale = np.nanmax(np.where(np.isfinite(ge2), np.abs(ge2), np.nan), axis=1, keepdims=True)
        scale = ulp(np.nan_to_num(scale, nan=0.0), dtype)
        e = mixed_error(g.reshape(n, -1), ge2, ge2, scale)
        worst = np.maximum(worst, e.max(axis=1))
    return RowErrors(v, worst)


def check_rows(rule: Callable, reference: Callable, args: Sequence[Any], *, baseline: Callable | None = None,
               groups: dict[str, Any] | None = None, cotangent: Any = None, argnums: Sequence[int] = (0,),
               dtype: Any = np.float32, units: float = 4.0, factor: float = 2.0, name: str | None = None,
               baseline_name: str | None = None, dps: int = DPS, raise_on_failure: bool = True) -> RowAccuracy:
    """Check a row function (softmax, a loss) on given rows against an mpmath reference, beside a baseline.

    Args:
      rule: called as ``rule(*args)`` on the whole batch; its output has the rows on axis 0.
      reference: ``reference(*row_args, ybar_row) -> (y_row, (grad_row, ...))`` in mpmath for one
        row: each argument's row as a list of mpf (ints and booleans as such), the cotangent's row
        (an mpf, or a list), and the exact output and the exact cotangents of the ``argnums``.
      args: the arguments, each with the rows on axis 0 (floats in ``dtype``, labels, masks).
      baseline: the function ``rule`` replaces, on the same rows and cotangent.
      groups: names for sets of rows (name -> row indices or a boolean array); the errors are
        compared group by group (default: one group of all rows).
      cotangent: ȳ (default: ones of the output's shape, as float32 numbers like -0.5 would be).
      units, factor: in every group, ours' largest value error and gradient error must each be at
        most ``units``, or at most ``factor`` times the baseline's largest in that group.

    The value's error is |y − exact| in ulps of the exact element; the gradient's, |ḡ − exact| in ulps
    of the largest exact element of its row (the softmax's weights far below the largest do not
    count against it). Returns a :class:`RowAccuracy`; raises AssertionError on a failure unless
    ``raise_on_failure`` is False.
    """
    name = name or getattr(rule, "__name__", type(rule).__name__)
    args = [np.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a) for a in args]
    out = jax.eval_shape(lambda *a: rule(*a), *[jnp.asarray(a) for a in args])
    ybar = np.ones(out.shape, dtype) if cotangent is None else np.asarray(cotangent, dtype)
    jargs = [jnp.asarray(a) for a in args]
    ours_run = jax.jit(_row_vjp(rule, argnums))(jnp.asarray(ybar), *jargs)
    base_run = jax.jit(_row_vjp(baseline, argnums))(jnp.asarray(ybar), *jargs) if baseline is not None else None
    return _assess_rows(name, reference, args, ybar, ours_run, base_run, groups=groups, argnums=argnums,
                        dtype=dtype, units=units, factor=factor, dps=dps, raise_on_failure=raise_on_failure,
                        baseline_name=baseline_name or (getattr(baseline, "__name__", None) if baseline else None))


def _assess_rows(name: str, reference: Callable, args: Sequence[np.ndarray], ybar: np.ndarray, ours_run: Any,
                 base_run: Any, *, groups: dict[str, Any] | None, argnums: Sequence[int], dtype: Any, units: float,
                 factor: float, dps: int, raise_on_failure: bool, baseline_name: str | None) -> RowAccuracy:
    """check_rows on outputs and cotangents already computed."""
    mp = _mpmath()
    y, gs = np.asarray(ours_run[0], np.float64), [np.asarray(g, np.float64) for g in ours_run[1]]
    n = y.shape[0]
    y_exact = np.empty(y.shape)
    g_exact = [np.empty(args[i].shape) for i in argnums]
    with mp.workdps(dps):
        for r in range(n):
            yr, grs = reference(*[_mp_row(a[r]) for a in args], _mp_row(ybar[r]))
            y_exact[r] = _flat(yr)
            for k, gr in enumerate(grs):
                g_exact[k][r] = _flat(gr)
    ours = _row_errors(y, gs, y_exact, g_exact, dtype)
    base = None
    if base_run is not None:
        yb, gb = np.asarray(base_run[0], np.float64), [np.asarray(g, np.float64) for g in base_run[1]]
        base = _row_errors(yb, gb, y_exact, g_exact, dtype)
    groups = {"all rows": np.arange(n)} if groups is None else {
        k: (np.flatnonzero(v) if np.asarray(v).dtype == np.bool_ else np.asarray(v)) for k, v in groups.items()}
    failures = []
    for g, idx in groups.items():
        for which in ("value", "gradient"):
            o = float(getattr(ours, which)[idx].max()) if idx.size else 0.0
            t = float(getattr(base, which)[idx].max()) if base is not None and idx.size else 0.0
            if not o <= max(units, factor * t):
                failures.append(f"{g}: {which} error {_fmt(o)}" + (f" > {factor:g} × the baseline's {_fmt(t)}"
                                                                   if base is not None else f" > {units}"))
    report = RowAccuracy(name, baseline_name, groups, ours, base, failures)
    if failures and raise_on_failure:
        raise AssertionError(f"{name}: accuracy: " + "; ".join(failures) + "\n" + str(report))
    return report

# --- jaxrules' elementwise rules and their references ----------------------------------------
# Each reference is written without cancellation at 50 digits: expm1, log1p, sech, σ(x)σ(−x) for
# σ′, the stable branch of squareplus' square root. Slopes are given analytically (a central
# difference would lose them far out, where f′ underflows against f); curvatures by a difference.

def _sig(x):
    mp = _mpmath()
    return 1 / (1 + mp.exp(-x))


def _softplus(x):
    mp = _mpmath()
    return mp.log1p(mp.exp(x))


def _piecewise_linear(x, knots: dict, slopes: Callable):
    """A slope that is (left, right) at the given knots (where they differ) and slopes(x) elsewhere."""
    return knots[float(x)] if float(x) in knots else slopes(x)


def _elu_ref(alpha: float, scale: float = 1.0) -> Reference:
    mp = _mpmath
    a = alpha

    def value(x):
        return scale * (x if x > 0 else a * mp().expm1(x))

    def slope(x):
        if x == 0:
            return (scale * a, scale * 1)
        return scale * (1 if x > 0 else a * mp().exp(x))
    return Reference(value, slope)


def _celu_ref(alpha: float) -> Reference:
    mp = _mpmath

    def value(x):
        return x if x > 0 else alpha * mp().expm1(x / alpha)

    def slope(x):
        return 1 if x > 0 else mp().exp(x / alpha)
    return Reference(value, slope)


def _gelu_exact_ref() -> Reference:
    mp = _mpmath

    def cdf(x):
        return mp().erfc(-x / mp().sqrt(2)) / 2

    def slope(x):
        return cdf(x) + x * mp().exp(-x * x / 2) / mp().sqrt(2 * mp().pi)
    return Reference(lambda x: x * cdf(x), slope)


def _gelu_tanh_ref() -> Reference:
    mp = _mpmath

    def u(x):
        return mp().sqrt(2 / mp().pi) * (x + mp().mpf("0.044715") * x ** 3)

    def slope(x):
        uu = u(x)
        du = mp().sqrt(2 / mp().pi) * (1 + 3 * mp().mpf("0.044715") * x * x)
        return _sig(2 * uu) + 2 * x * _sig(2 * uu) * _sig(-2 * uu) * du
    return Reference(lambda x: x * _sig(2 * u(x)), slope)


def _mish_ref() -> Reference:
    mp = _mpmath

    def slope(x):
        s = _softplus(x)
        return mp().tanh(s) + x * mp().sech(s) ** 2 * _sig(x)
    return Reference(lambda x: x * mp().tanh(_softplus(x)), slope)


def _squareplus_ref(b: float) -> Reference:
    mp = _mpmath

    def value(x):
        r = mp().sqrt(x * x + b)
        return (x + r) / 2 if x >= 0 else b / (2 * (r - x))

    return Reference(value, lambda x: value(x) / mp().sqrt(x * x + b))


def _bce_ref(label: float) -> Reference:
    mp = _mpmath
    d = mp().mpf(float(np.float32(label)))

    def value(z):
        return ((1 - d) * z if z >= 0 else -d * z) + mp().log1p(mp().exp(-abs(z)))

    return Reference(value, lambda z: _sig(z) - d if z < 0 else (1 - d) - _sig(-z))


def _hard_silu_slope(x):
    if x == -3:
        return (-0.5, 0.0)
    if x == 3:
        return (1.0, 1.5)
    h = min(max(x + 3, 0), 6) / 6
    return h + (x / 6 if -3 < x < 3 else 0)


def _references() -> dict[str, Reference]:
    mp = _mpmath
    return {
        "sigmoid": Reference(_sig, lambda x: _sig(x) * _sig(-x)),
        "tanh": Reference(lambda x: mp().tanh(x), lambda x: mp().sech(x) ** 2),
        "relu": Reference(lambda x: max(x, 0), lambda x: (0.0, 1.0) if x == 0 else (1 if x > 0 else 0), lambda x: 0),
        "leaky_relu": Reference(lambda x: x if x >= 0 else mp().mpf(0.01) * x,
                                lambda x: (0.01, 1.0) if x == 0 else (1 if x > 0 else mp().mpf(0.01)), lambda x: 0),
        "elu": _elu_ref(1.0),
        "elu(alpha=1.5)": _elu_ref(1.5),
        "celu": _celu_ref(1.0),
        "celu(alpha=1.5)": _celu_ref(1.5),
        "selu": _elu_ref(mp().mpf("1.6732632423543772848170429916717"), mp().mpf("1.0507009873554804934193349852946")),
        "gelu": _gelu_tanh_ref(),
        "gelu(approximate=False)": _gelu_exact_ref(),
        "silu": Reference(lambda x: x * _sig(x), lambda x: _sig(x) + x * _sig(x) * _sig(-x)),
        "softplus": Reference(_softplus, _sig),
        "log_sigmoid": Reference(lambda x: -_softplus(-x), lambda x: _sig(-x)),
        "mish": _mish_ref(),
        "relu6": Reference(lambda x: min(max(x, 0), 6),
                           lambda x: (0.0, 1.0) if x in (0, 6) else (1 if 0 < x < 6 else 0), lambda x: 0),
        "hard_sigmoid": Reference(lambda x: min(max(x + 3, 0), 6) / 6,
                                  lambda x: (0.0, 1 / 6) if x in (-3, 3) else (mp().mpf(1) / 6 if -3 < x < 3 else 0),
                                  lambda x: 0),
        "hard_silu": Reference(lambda x: x * min(max(x + 3, 0), 6) / 6, _hard_silu_slope),
        "hard_tanh": Reference(lambda x: min(max(x, -1), 1),
                               lambda x: (0.0, 1.0) if x in (-1, 1) else (1 if -1 < x < 1 else 0), lambda x: 0),
        "soft_sign": Reference(lambda x: x / (1 + abs(x)), lambda x: 1 / (1 + abs(x)) ** 2),
        "squareplus": _squareplus_ref(4.0),
        "squareplus(b=1)": _squareplus_ref(1.0),
        "sparse_plus": Reference(lambda x: 0 if x <= -1 else (x if x >= 1 else (x + 1) ** 2 / 4),
                                 lambda x: 0 if x <= -1 else (1 if x >= 1 else (x + 1) / 2)),
        "sparse_sigmoid": Reference(lambda x: min(max(x + 1, 0), 2) / 2,
                                    lambda x: (0.0, 0.5) if x in (-1, 1) else (0.5 if -1 < x < 1 else 0), lambda x: 0),
        "sigmoid_binary_cross_entropy(labels=0)": _bce_ref(0.0),
        "sigmoid_binary_cross_entropy(labels=1)": _bce_ref(1.0),
    }


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the accuracy table: a rule with its settings bound, its baseline, and the id of its
    reference (by default its own id)."""

    id: str
    rule: Callable
    baseline: Callable
    baseline_name: str
    note: str = ""
    reference: str = ""

    @property
    def reference_id(self) -> str:
        return self.reference or self.id


def _cases() -> tuple[Case, ...]:
    import optax

    import jaxrules as jr
    P = functools.partial

    def nn(name, **kw):
        return (P(getattr(jr, name), **kw), P(getattr(jax.nn, name), **kw), f"jax.nn.{name}")

    def bce(label):
        return (lambda z: jr.sigmoid_binary_cross_entropy(z, jnp.full_like(z, label)),
                lambda z: optax.sigmoid_binary_cross_entropy(z, jnp.full_like(z, label)),
                "optax.sigmoid_binary_cross_entropy")
    table = {
        "sigmoid": nn("sigmoid"), "tanh": (jr.tanh, jnp.tanh, "jax.nn.tanh"), "relu": nn("relu"),
        "leaky_relu": nn("leaky_relu"), "elu": nn("elu"), "elu(alpha=1.5)": nn("elu", alpha=1.5),
        "celu": nn("celu"), "celu(alpha=1.5)": nn("celu", alpha=1.5), "selu": nn("selu"),
        "gelu": nn("gelu"), "gelu(approximate=False)": nn("gelu", approximate=False), "silu": nn("silu"),
        "softplus": nn("softplus"), "log_sigmoid": nn("log_sigmoid"), "mish": nn("mish"), "relu6": nn("relu6"),
        "hard_sigmoid": nn("hard_sigmoid"), "hard_silu": nn("hard_silu"), "hard_tanh": nn("hard_tanh"),
        "soft_sign": nn("soft_sign"), "squareplus": nn("squareplus"), "squareplus(b=1)": nn("squareplus", b=1),
        "sparse_plus": nn("sparse_plus"), "sparse_sigmoid": nn("sparse_sigmoid"),
        "sigmoid_binary_cross_entropy(labels=0)": bce(0.0), "sigmoid_binary_cross_entropy(labels=1)": bce(1.0),
    }
    cases = [Case(k, *v, note=NOTES.get(k, "")) for k, v in table.items()]

    # the gated activations of the transformer blocks, along a with b = 1 (their a-path is silu's or gelu's)
    def gated(name, act, **kw):
        return (lambda a: getattr(jr, name)(a, jnp.ones_like(a), **kw),
                lambda a: getattr(jax.nn, act)(a, **kw) * jnp.ones_like(a), f"jax.nn.{act}(a)·b")
    cases += [Case("swiglu(a, b=1)", *gated("swiglu", "silu"), reference="silu"),
              Case("geglu(a, b=1)", *gated("geglu", "gelu"), reference="gelu"),
              Case("geglu(a, b=1, approximate=False)", *gated("geglu", "gelu", approximate=False),
                   note=NOTES.get("geglu(a, b=1, approximate=False)", ""), reference="gelu(approximate=False)")]
    return tuple(cases)


#: Where a rule keeps its rounded output y and computes the slope from it, a slope below ulp(1)
#: saturates exactly as jax.nn's does (it computes the same from y): said in the README's table.
NOTES = {
    "sigmoid": "slope y(1 − y) from the kept output: 0 once y rounds to 1 (x > 17), as jax.nn",
    "tanh": "slope 1 − y² from the kept output: 0 once y rounds to ±1 (|x| > 9), as jax.nn",
    "elu": "slope y + α from the kept output: saturates for x < −17, as jax.nn",
    "elu(alpha=1.5)": "slope y + α from the kept output: saturates for x < −17, as jax.nn",
    "celu": "slope (y + α)/α from the kept output: saturates for x < −17α, as jax.nn",
    "celu(alpha=1.5)": "slope (y + α)/α from the kept output: saturates for x < −17α, as jax.nn",
    "selu": "slope y + λα from the kept output: saturates for x < −17, as jax.nn",
    "gelu": "slope below 1e-37 for x < −10 (jax.nn's is inf there)",
    "geglu(a, b=1)": "slope below 1e-37 for a < −10 (jax.nn's is inf there)",
}

DATA = os.path.join(os.path.dirname(__file__), "data", "accuracy.npz.xz")


def regenerate(path: str = DATA, ids: Sequence[str] | None = None, progress: bool = True) -> None:
    """Compute the exact values of every built-in reference on the default sweep and save them."""
    x = sweep_points()
    refs = _references()
    out: dict[str, np.ndarray] = {"x": x}
    for k, ref in refs.items():
        if ids is not None and k not in ids:
            continue
        if progress:
            print(f"  {k}", file=sys.stderr, flush=True)
        out.update(ref.exact(x).arrays(k))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **out)
    with open(path, "wb") as f:
        f.write(lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))


@functools.lru_cache(maxsize=4)
def reference_data(path: str = DATA) -> dict[str, Exact]:
    """The committed exact values of the built-in references, by case id (see :func:`regenerate`)."""
    with open(path, "rb") as f, np.load(io.BytesIO(lzma.decompress(f.read()))) as data:
        x = data["x"]
        if not np.array_equal(x, sweep_points(), equal_nan=True):
            raise ValueError(f"{path} holds another sweep than sweep_points(): regenerate it "
                             "(python -m jaxrules.accuracy --regenerate)")
        ids = sorted({k.split("/")[0] for k in data.files if "/" in k})
        return {k: Exact.from_arrays(x, data, k) for k in ids}


# --- jaxrules' row rules: hard rows and references -------------------------------------------

ROW = 8  # entries per row


def hard_rows(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """float32 logits, ``ROW`` to a row, and the groups of rows: normal, near ±1e4 with a spread of
    1e-3 (about an ulp there) to 1e-2, ±1e30, one-hot-like, all equal. Masked rows are added by
    :func:`row_cases` for the rules that take ``where``."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list] = {
        "normal": [3 * rng.standard_normal(ROW) for _ in range(6)],
        "near 1e4, spread 1e-3 to 1e-2": [1e4 + rng.uniform(0, sp, ROW) for sp in (1e-3, 3e-3, 1e-2, 1e-2)]
        + [-1e4 + rng.uniform(0, sp, ROW) for sp in (1e-3, 1e-2)],
        "±1e30": [np.array([1e30, -1e30, 0, 1, 5e29, -5e29, 1e30 * (1 + 2 ** -20), 2]),
                  1e30 * (1 + rng.uniform(0, 1e-6, ROW)), -1e30 * (1 + rng.uniform(0, 1e-6, ROW)),
                  rng.choice([1e30, -1e30], ROW)],
        "one-hot-like": [np.array([30.0] + [0.0] * (ROW - 1)), np.array([100.0, -3, 1, 0, 2, -1, 0.5, 0]),
                         np.array([15.0, 14.5, -20, -20, 0, 1, -1, 3]), np.array([0.0] * (ROW - 1) + [-40.0]),
                         np.array([90.0, -90, 0, 0, 0, 0, 0, 1])],
        "all equal": [np.full(ROW, v) for v in (3.3, 1e4, -1e30, 0.0, -87.0)],
    }
    rows, index, k = [], {}, 0
    for g, rs in groups.items():
        index[g] = np.arange(k, k + len(rs))
        rows += rs
        k += len(rs)
    return np.asarray(rows, np.float64).astype(np.float32), index


def _cotangent_row(n: int) -> np.ndarray:
    """A fixed cotangent row of varied signs and sizes (exact in float32)."""
    return np.resize(np.array([1.0, -0.5, 0.25, 2.0, -1.0, 0.75, -0.125, 1.5], np.float32), n)


def _mp_lse(x, live=None):
    mp = _mpmath()
    xs = [v for v, ok in zip(x, live or [True] * len(x)) if ok]
    if not xs:
        return -mp.inf
    m = max(xs)
    return m + mp.log(mp.fsum(mp.exp(v - m) for v in xs))


def _mp_softmax(x, live=None):
    mp = _mpmath()
    live = live or [True] * len(x)
    lse = _mp_lse(x, live)
    return [mp.exp(v - lse) if ok else mp.mpf(0) for v, ok in zip(x, live)]


def _ref_softmax(x, *rest):
    *mask, ybar = rest
    live = mask[0] if mask else None
    y = _mp_softmax(x, live)
    dot = sum(a * b for a, b in zip(ybar, y))
    return y, ([yi * (gi - dot) for yi, gi in zip(y, ybar)],)


def _ref_log_softmax(x, *rest):
    mp = _mpmath()
    *mask, ybar = rest
    live = mask[0] if mask else [True] * len(x)
    lse = _mp_lse(x, live)
    p = _mp_softmax(x, live)
    total = sum(g for g, ok in zip(ybar, live) if ok)
    y = [v - lse if ok else -mp.inf for v, ok in zip(x, live)]
    return y, ([(g - pi * total) if ok else mp.mpf(0) for g, pi, ok in zip(ybar, p, live)],)


def _ref_logsumexp(x, *rest):
    *mask, ybar = rest
    live = mask[0] if mask else None
    return _mp_lse(x, live), ([ybar * p for p in _mp_softmax(x, live)],)


def _ref_logsumexp_b(x, b, ybar):
    mp = _mpmath()
    m = max(x)
    terms = [bi * mp.exp(v - m) for v, bi in zip(x, b)]
    s = mp.fsum(terms)
    return m + mp.log(s), ([ybar * t / s for t in terms], [ybar * mp.exp(v - m) / s for v in x])


def _ref_glu(x, ybar):
    h = len(x) // 2
    a, b = x[:h], x[h:]
    y = [ai * _sig(bi) for ai, bi in zip(a, b)]
    return y, ([g * _sig(bi) for g, bi in zip(ybar, b)]
               + [g * ai * _sig(bi) * _sig(-bi) for g, ai, bi in zip(ybar, a, b)],)


def _ref_softmax_ce(z, d, *rest):
    mp = _mpmath()
    *mask, ybar = rest
    live = mask[0] if mask else [True] * len(z)
    lse = _mp_lse(z, live)
    p = _mp_softmax(z, live)
    if not any(live):
        return mp.mpf(0), ([mp.mpf(0)] * len(z), [mp.mpf(0)] * len(z))
    loss = -mp.fsum(di * (zi - lse) for zi, di, ok in zip(z, d, live) if ok and di != 0)
    total = mp.fsum(di for di, ok in zip(d, live) if ok)
    z_bar = [ybar * (pi * total - di) if ok else mp.mpf(0) for pi, di, ok in zip(p, d, live)]
    d_bar = [-ybar * (zi - lse) if ok else mp.mpf(0) for zi, ok in zip(z, live)]
    return loss, (z_bar, d_bar)


def _ref_int_ce(z, c, *rest):
    mp = _mpmath()
    *mask, ybar = rest
    live = mask[0] if mask else [True] * len(z)
    if not any(live):
        return mp.mpf(0), ([mp.mpf(0)] * len(z),)
    lse = _mp_lse(z, live)
    p = _mp_softmax(z, live)
    return lse - z[c], ([ybar * (pi - (1 if j == c else 0)) for j, pi in enumerate(p)],)


def _ref_kl(lp, t, ybar):
    mp = _mpmath()
    loss = mp.fsum(ti * (mp.log(ti) - li) for li, ti in zip(lp, t) if ti != 0)
    return loss, ([-ybar * ti for ti in t], [ybar * (mp.log(ti) - li + 1) if ti != 0 else mp.mpf(0)
                                            for li, ti in zip(lp, t)])


def _ref_squared(p, t, ybar, half=False):
    k = 1 if half else 2
    y = [(pi - ti) ** 2 / (2 if half else 1) for pi, ti in zip(p, t)]
    f = [k * (pi - ti) * g for pi, ti, g in zip(p, t, ybar)]
    return y, (f, [-v for v in f])


def _ref_bce(z, d, ybar):
    mp = _mpmath()
    y = [((1 - di) * zi if zi >= 0 else -di * zi) + mp.log1p(mp.exp(-abs(zi))) for zi, di in zip(z, d)]
    return y, ([g * (_sig(zi) - di) for zi, di, g in zip(z, d, ybar)], [-g * zi for zi, g in zip(z, ybar)])


@dataclasses.dataclass(frozen=True)
class RowCase:
    """One row function of the accuracy table, on the hard rows: its arguments are made from them."""

    id: str
    rule: Callable
    baseline: Callable
    baseline_name: str
    reference: Callable
    args: Callable[[np.ndarray, np.random.Generator], tuple]
    argnums: tuple[int, ...] = (0,)
    masked: bool = False
    vector: bool = False  # one output per entry (a cotangent row), not one per row


def _mask_rows(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x with masked copies of its rows appended (about a third masked out, one row fully), the mask,
    and the indices of the masked rows."""
    pick = np.array([0, 1, 6, 7, 8, 10, 11, 16, 21])
    pick = pick[pick < len(x)]
    m = rng.uniform(size=(len(pick), x.shape[1])) < 2 / 3
    m[:, 0] = True
    m[-1] = False  # a fully masked row
    xs = np.concatenate([x, x[pick]])
    mask = np.concatenate([np.ones(x.shape, bool), m])
    return xs, mask, np.arange(len(x), len(xs))


def _distribution(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    e = np.exp(rng.standard_normal(x.shape))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def row_cases() -> tuple[RowCase, ...]:
    import optax

    import jaxrules as jr

    def labels(x, rng):
        return (np.arange(len(x)) * 3 % ROW).astype(np.int32)

    def one_hot_or_soft(x, rng):  # one-hot labels in even rows, soft ones in odd rows
        d = _distribution(x, rng)
        hot = np.eye(ROW, dtype=np.float32)[labels(x, rng)]
        return np.where((np.arange(len(x)) % 2 == 0)[:, None], hot, d)

    def bits(x, rng):
        return np.resize(np.array([0.0, 1.0, 1.0, 0.0, 0.3, 0.7, 1.0, 0.0], np.float32), x.shape)

    def nearby(x, rng):  # targets a few ulps to a unit away from the predictions
        return (x + (np.abs(x) * 2 ** -20 + 1e-3) * rng.standard_normal(x.shape)).astype(np.float32)

    P = functools.partial
    return (
        RowCase("softmax", jr.softmax, jax.nn.softmax, "jax.nn.softmax", _ref_softmax, lambda x, r: (x,),
                vector=True),
        RowCase("softmax (where=mask)", lambda x, w: jr.softmax(x, where=w), lambda x, w: jax.nn.softmax(x, where=w),
                "jax.nn.softmax", _ref_softmax, lambda x, r: (x,), masked=True, vector=True),
        RowCase("log_softmax", jr.log_softmax, jax.nn.log_softmax, "jax.nn.log_softmax", _ref_log_softmax,
                lambda x, r: (x,), vector=True),
        RowCase("log_softmax (where=mask)", lambda x, w: jr.log_softmax(x, where=w),
                lambda x, w: jax.nn.log_softmax(x, where=w), "jax.nn.log_softmax", _ref_log_softmax,
                lambda x, r: (x,), masked=True, vector=True),
        RowCase("logsumexp (axis=-1)", P(jr.logsumexp, axis=-1), P(jax.nn.logsumexp, axis=-1), "jax.nn.logsumexp",
                _ref_logsumexp, lambda x, r: (x,)),
        RowCase("logsumexp (axis=-1, where=mask)", lambda x, w: jr.logsumexp(x, axis=-1, where=w),
                lambda x, w: jax.nn.logsumexp(x, axis=-1, where=w), "jax.nn.logsumexp", _ref_logsumexp,
                lambda x, r: (x,), masked=True),
        RowCase("logsumexp (axis=-1, b=weights)", lambda x, b: jr.logsumexp(x, axis=-1, b=b),
                lambda x, b: jax.nn.logsumexp(x, axis=-1, b=b), "jax.nn.logsumexp", _ref_logsumexp_b,
                lambda x, r: (x, r.uniform(0.5, 2.0, x.shape).astype(np.float32)), argnums=(0, 1)),
        RowCase("glu", jr.glu, jax.nn.glu, "jax.nn.glu", _ref_glu, lambda x, r: (x,), vector=True),
        RowCase("softmax_cross_entropy", jr.softmax_cross_entropy, optax.softmax_cross_entropy,
                "optax.softmax_cross_entropy", _ref_softmax_ce, lambda x, r: (x, one_hot_or_soft(x, r)),
                argnums=(0, 1)),
        RowCase("softmax_cross_entropy (where=mask)", lambda z, d, w: jr.softmax_cross_entropy(z, d, where=w),
                lambda z, d, w: optax.softmax_cross_entropy(z, d, where=w), "optax.softmax_cross_entropy",
                _ref_softmax_ce, lambda x, r: (x, one_hot_or_soft(x, r)), argnums=(0, 1), masked=True),
        RowCase("softmax_cross_entropy_with_integer_labels", jr.softmax_cross_entropy_with_integer_labels,
                optax.softmax_cross_entropy_with_integer_labels, "optax.softmax_cross_entropy_with_integer_labels",
                _ref_int_ce, lambda x, r: (x, labels(x, r))),
        RowCase("softmax_cross_entropy_with_integer_labels (where=mask)",
                lambda z, c, w: jr.softmax_cross_entropy_with_integer_labels(z, c, where=w),
                lambda z, c, w: optax.softmax_cross_entropy_with_integer_labels(z, c, where=w),
                "optax.softmax_cross_entropy_with_integer_labels", _ref_int_ce, lambda x, r: (x, labels(x, r)),
                masked=True),
        RowCase("kl_divergence", jr.kl_divergence, optax.kl_divergence, "optax.kl_divergence", _ref_kl,
                lambda x, r: (x, _distribution(x, r)), argnums=(0, 1)),
        RowCase("squared_error", jr.squared_error, optax.squared_error, "optax.squared_error",
                _ref_squared, lambda x, r: (x, nearby(x, r)), argnums=(0, 1), vector=True),
        RowCase("l2_loss", jr.l2_loss, optax.l2_loss, "optax.l2_loss", P(_ref_squared, half=True),
                lambda x, r: (x, nearby(x, r)), argnums=(0, 1), vector=True),
        RowCase("sigmoid_binary_cross_entropy", jr.sigmoid_binary_cross_entropy, optax.sigmoid_binary_cross_entropy,
                "optax.sigmoid_binary_cross_entropy", _ref_bce, lambda x, r: (x, bits(x, r)), argnums=(0, 1),
                vector=True),
    )


def _row_case_inputs(case: RowCase, seed: int = 0) -> tuple[tuple, dict, np.ndarray]:
    """(args, groups, ȳ) of a row case on :func:`hard_rows`, with masked rows if it takes a mask."""
    x, groups = hard_rows(seed)
    rng = np.random.default_rng(seed + 1)
    extra: tuple = ()
    if case.masked:
        x, mask, masked = _mask_rows(x, rng)
        groups = {**groups, "masked (one row fully)": masked}
        extra = (mask,)
    args = tuple(np.asarray(a, np.float32) if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a)
                 for a in (*case.args(x, rng), *extra))
    out = jax.eval_shape(case.baseline, *[jnp.asarray(a) for a in args])
    ybar = np.broadcast_to(_cotangent_row(out.shape[-1]), out.shape) if case.vector else np.ones(out.shape, np.float32)
    return args, groups, np.ascontiguousarray(ybar)


def check_row_case(case: RowCase, seed: int = 0, raise_on_failure: bool = True, **kw: Any) -> RowAccuracy:
    """A :class:`RowCase` on :func:`hard_rows` (with masked rows if it takes a mask), via :func:`check_rows`."""
    args, groups, ybar = _row_case_inputs(case, seed)
    return check_rows(case.rule, case.reference, args, baseline=case.baseline, groups=groups, cotangent=ybar,
                      argnums=case.argnums, name=case.id, baseline_name=case.baseline_name,
                      raise_on_failure=raise_on_failure, **kw)


# --- the README table ------------------------------------------------------------------------

BEGIN = "<!-- accuracy:begin (generated by python -m jaxrules.accuracy --write README.md) -->"
END = "<!-- accuracy:end -->"


def elementwise_reports(dense: bool = False, progress: bool = False) -> list[tuple[Case, Accuracy]]:
    """Every elementwise case against its reference: the committed one, or (``dense``) a denser sweep
    computed now with mpmath (a few minutes)."""
    refs = _references() if dense else None
    data = None if dense else reference_data()
    pts = dense_points() if dense else None
    cases = _cases()
    exacts = {}
    for case in cases:
        if case.reference_id not in exacts:
            if progress:
                print(f"  {case.reference_id}", file=sys.stderr, flush=True)
            exacts[case.reference_id] = refs[case.reference_id].exact(pts) if dense else data[case.reference_id]
    x = _inputs(next(iter(exacts.values())), np.float32)  # every case has the same points

    @jax.jit
    def run(x):  # every rule and baseline in one compilation
        return [(_vjp_ones(c.rule)(x), _vjp_ones(c.baseline)(x)) for c in cases]
    return [(c, _assess(c.id, exacts[c.reference_id], o, b, baseline_name=c.baseline_name, raise_on_failure=False))
            for c, (o, b) in zip(cases, run(x))]


def dense_points(dtype: Any = np.float32) -> np.ndarray:
    """A sweep ten times denser than the default (for ``--dense`` and the slow test profile)."""
    return sweep_points(dtype, core_points=24001, edge_points=3401, tail_points=2000)


def row_reports() -> list[tuple[RowCase, RowAccuracy]]:
    """Every row case on the hard rows, all rules and baselines in one compilation."""
    cases = row_cases()
    inputs = [_row_case_inputs(c) for c in cases]

    @jax.jit
    def run(all_inputs):
        return [(_row_vjp(c.rule, c.argnums)(ybar, *args), _row_vjp(c.baseline, c.argnums)(ybar, *args))
                for c, (args, ybar) in zip(cases, all_inputs)]
    results = run([([jnp.asarray(a) for a in args], jnp.asarray(ybar)) for args, _, ybar in inputs])
    return [(c, _assess_rows(c.id, c.reference, args, ybar, o, b, groups=groups, argnums=c.argnums, dtype=np.float32,
                             units=4.0, factor=2.0, dps=DPS, raise_on_failure=False, baseline_name=c.baseline_name))
            for c, (args, groups, ybar), (o, b) in zip(cases, inputs, results)]


def _pair(a: float, b: float | None) -> str:
    return f"{_fmt(a)} \\| {_fmt(b)}"


def _specials(e: Errors) -> str:
    bad = [f"{s}: {_fmt_value(e.specials[s][0])}, {_fmt_value(e.specials[s][1])}" for s in ("-inf", "inf", "nan")
           if not e.special_ok[s]]
    return "✓" if not bad else "✗ (" + "; ".join(bad) + ")"


def _fmt_value(v: float) -> str:
    return "nan" if np.isnan(v) else f"{v:g}"


def elementwise_table(reports: list[tuple[Case, Accuracy]]) -> str:
    lines = ["| rule | beside | value: max | value: 99.9% | gradient: max | gradient: 99.9% | ±inf, NaN | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for case, r in reports:
        o, b = r.ours, r.baseline
        lines.append(f"| `{case.id}` | `{case.baseline_name}` | {_pair(o.value_max, b.value_max)} | "
                     f"{_pair(o.value_p999, b.value_p999)} | {_pair(o.gradient_max, b.gradient_max)} | "
                     f"{_pair(o.gradient_p999, b.gradient_p999)} | {_specials(o)} \\| {_specials(b)} | {case.note} |")
    return "\n".join(lines)


def row_table(reports: list[tuple[RowCase, RowAccuracy]], which: str = "value") -> str:
    """One table per measure (value or gradient): a column per group of hard rows, ours \\| theirs."""
    groups: list[str] = []
    for _, r in reports:
        groups += [g for g in r.groups if g not in groups]
    lines = ["| rule | beside | " + " | ".join(groups) + " |", "| --- | --- | " + " | ".join("---:" for _ in groups) + " |"]
    for case, r in reports:
        cells = [_pair(r.group_max(which, g), r.group_max(which, g, True)) if g in r.groups else "" for g in groups]
        lines.append(f"| `{case.id}` | `{case.baseline_name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(dense: bool = False) -> str:
    """The README's accuracy section: the elementwise table and the two row tables."""
    rows = row_reports()
    return ("Elementwise rules, float32, over " + (f"{dense_points().size}" if dense else f"{sweep_points().size}")
            + " points from −3.4e38 to 3.4e38 (a step of 0.025 on [−30, 30], 0.5 out to ±200, log-spaced "
            "beyond and down to ±1.2e-38, and ±0), against mpmath at 50 digits; error in units of "
            "|y − exact| / (ulp(exact) + |f′(x)|·ulp(x)) (the gradient: f′ and f″), ulp floored at the "
            "smallest normal; jaxrules \\| the function it replaces:\n\n"
            + elementwise_table(elementwise_reports(dense))
            + "\n\nRow rules, float32, on hard rows of 8 logits (masked ones, one fully, for the rules that "
            "take `where`), against mpmath at 50 digits, largest error in each group of rows, jaxrules \\| the "
            "function it replaces. The value, in ulps of each exact element:\n\n" + row_table(rows, "value")
            + "\n\nThe gradient (a fixed cotangent of varied signs), in ulps of the largest exact element of "
            "its row:\n\n" + row_table(rows, "gradient"))


def readme_section(dense: bool = False) -> str:
    return f"{BEGIN}\n{markdown(dense)}\n{END}"


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxrules.accuracy",
                                description="Print the README's accuracy tables (jaxrules beside jax.nn and optax).")
    p.add_argument("--write", metavar="README", help="replace the text between the accuracy markers in this file")
    p.add_argument("--regenerate", action="store_true",
                   help=f"recompute the committed reference values ({os.path.relpath(DATA)}) with mpmath")
    p.add_argument("--dense", action="store_true", help="a sweep ten times denser, computed now with mpmath (slow)")
    p.add_argument("--details", action="store_true", help="every rule's worst points and every group of rows")
    a = p.parse_args(argv)
    if a.regenerate:
        regenerate()
        reference_data.cache_clear()
    if a.details:
        for _, r in elementwise_reports(a.dense, progress=a.dense):
            print(r, end="\n\n")
        for _, r in row_reports():
            print(r, end="\n\n")
        return 0
    if not a.write:
        print(markdown(a.dense))
        return 0
    text = open(a.write, encoding="utf-8").read()
    start = text.find("<!-- accuracy:begin")
    stop = text.find(END)
    if start < 0 or stop < 0:
        print(f"{a.write}: no '<!-- accuracy:begin ... -->' ... '{END}' markers", file=sys.stderr)
        return 1
    text = text[:start] + readme_section(a.dense) + text[stop + len(END):]
    open(a.write, "w", encoding="utf-8").write(text)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
