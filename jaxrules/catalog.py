"""The catalog: one table of every public rule, its independent reference, its input domain.

The tests (``tests/test_catalog.py``), the README's rule table and the residual benchmark are all
generated from :data:`RULES`, so adding a rule means adding a row here, and the row is then checked
everywhere. ``python -m jaxrules.catalog`` prints the README table; ``--write README.md`` updates it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxrules as jr

Case = Any  # a shape, or a tuple of shapes, handed to the sampler

ELEMENTWISE_CASES: tuple[Case, ...] = ((3, 4), (), (7,), (0, 3))
BROADCAST_PAIRS: tuple[Case, ...] = tuple(
    (a, b) for a in ((), (4,), (3, 4), (1, 4), (2, 1, 4)) for b in ((), (4,), (3, 4), (1, 4), (2, 1, 4))
)


@dataclass(frozen=True)
class Rule:
    """One row of the catalog.

    name: the public name (``jr.<name>``); settings: the static settings bound in ``fn``, if any.
    fn / reference: our rule and the independent reference, with the same settings bound.
    sample: ``(key, case, dtype) -> args``, keeping away from kinks and ties.
    cases: the cases (shapes) every dtype is tested on; the first is the main one.
    pullback / saves: the math shown in the README, and what the backward keeps.
    tol: per-dtype (rtol, atol) overrides of ``jaxrules.testing.default_tolerance``.
    checks: extra keyword arguments for ``check_rule`` (e.g. ``grad_grad=False`` with a reason).
    elementwise: one array in, one array of the same shape out (the per-element residual table).
    """

    name: str
    fn: Callable[..., Any]
    reference: Callable[..., Any]
    reference_name: str
    module: str
    sample: Callable[[jax.Array, Case, Any], tuple[Any, ...]]
    pullback: str
    saves: str
    cases: tuple[Case, ...] = ELEMENTWISE_CASES
    settings: str = ""
    tol: dict[Any, tuple[float, float]] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    elementwise: bool = False

    @property
    def id(self) -> str:
        return f"{self.name}({self.settings})" if self.settings else self.name

    def tolerance(self, dtype: Any) -> tuple[float, float]:
        from jaxrules.testing import default_tolerance
        return self.tol.get(np.dtype(dtype), default_tolerance(dtype))


# --- samplers --------------------------------------------------------------------------------

def away_from(*kinks: float, low: float = -4.0, high: float = 4.0, gap: float = 0.1):
    """Sampler of one array, uniform in [low, high] but at least ``gap`` from every kink."""
    def sample(key, shape, dtype):
        x = jax.random.uniform(key, shape, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32, low, high)
        for k in kinks:
            x = jnp.where(jnp.abs(x - k) < gap, k + gap * jnp.where(x >= k, 1.0, -1.0), x)
        return (x.astype(dtype),)
    return sample


def _pair(low: float = -3.0, high: float = 3.0, y_away_from_zero: bool = False):
    def sample(key, shapes, dtype):
        kx, ky = jax.random.split(key)
        x = jax.random.uniform(kx, shapes[0], dtype, low, high)
        y = jax.random.uniform(ky, shapes[1], dtype, low, high)
        if y_away_from_zero:
            y = jnp.where(y >= 0, y + 0.5, y - 0.5).astype(dtype)
        return x, y
    return sample


def _rrelu_sample(key, shape, dtype):
    (x,) = away_from(0.0)(key, shape, dtype)
    return x, jax.random.key(7)


def _rrelu_reference(lower, upper, training):
    def reference(x, key):
        a = jax.random.uniform(key, x.shape, jnp.float32, lower, upper).astype(x.dtype) if training \
            else jnp.full(x.shape, (lower + upper) / 2, x.dtype)
        return jnp.where(x >= 0, x, a * x)
    return reference


def _act(name: str, pullback: str, saves: str, kinks: tuple[float, ...] = (), settings: dict | None = None,
         reference: Callable | None = None, reference_name: str | None = None, **extra) -> Rule:
    settings = settings or {}
    fn = getattr(jr, name)
    ref = reference or getattr(jax.nn, name)
    if settings:
        fn, ref = partial(fn, **settings), partial(ref, **settings)
    return Rule(name=name, fn=fn, reference=ref, reference_name=reference_name or f"jax.nn.{name}",
                module="activations", sample=away_from(*kinks), pullback=pullback, saves=saves,
                settings=", ".join(f"{k}={v}" for k, v in settings.items()), elementwise=True, **extra)


# --- the table -------------------------------------------------------------------------------

_LOW_PRECISION = {np.dtype(jnp.float16): (2e-2, 4e-3), np.dtype(jnp.bfloat16): (8e-2, 2e-2)}

RULES: tuple[Rule, ...] = (
    # activations (seeds 000, 001, 003)
    _act("sigmoid", "x̄ = y(1 − y) ∘ ȳ", "y"),
    _act("tanh", "x̄ = (1 − y²) ∘ ȳ", "y", reference=jnp.tanh, reference_name="jnp.tanh"),
    _act("relu", "x̄ = 1[x > 0] ∘ ȳ", "mask", kinks=(0.0,)),
    _act("relu", "x̄ = (1[x > 0] + ½·1[x = 0]) ∘ ȳ", "2 masks", kinks=(0.0,), settings={"grad_at_zero": 0.5},
         reference=lambda x, grad_at_zero: jax.nn.relu(x), reference_name="jax.nn.relu"),
    _act("leaky_relu", "x̄ = (1 if x ≥ 0 else α) ∘ ȳ", "mask", kinks=(0.0,)),
    _act("elu", "x̄ = (1 if y > 0 else y + α) ∘ ȳ", "y", kinks=(0.0,)),
    _act("celu", "x̄ = (1 if y > 0 else y/α + 1) ∘ ȳ", "y", kinks=(0.0,)),
    _act("selu", "x̄ = (λ if y > 0 else y + λα) ∘ ȳ", "y", kinks=(0.0,)),
    _act("gelu", "x̄ = (½(1 + t) + ½x(1 − t²)√(2/π)(1 + 0.134145x²)) ∘ ȳ", "x"),
    _act("gelu", "x̄ = (Φ(x) + xφ(x)) ∘ ȳ", "x", settings={"approximate": False}),
    _act("silu", "x̄ = σ(x)(1 + x(1 − σ(x))) ∘ ȳ", "x"),
    _act("softplus", "x̄ = −expm1(−y) ∘ ȳ = σ(x) ∘ ȳ", "y"),
    _act("log_sigmoid", "x̄ = −expm1(y) ∘ ȳ = σ(−x) ∘ ȳ", "y"),
    _act("mish", "x̄ = (tanh s + x(1 − tanh² s)σ(x)) ∘ ȳ, s = softplus(x)", "x"),
    _act("relu6", "x̄ = 1[0 < x < 6] ∘ ȳ", "mask", kinks=(0.0, 6.0)),
    _act("hard_sigmoid", "x̄ = ⅙·1[−3 < x < 3] ∘ ȳ", "mask", kinks=(-3.0, 3.0)),
    _act("hard_silu", "x̄ = (h(x) + x/6·1[−3 < x < 3]) ∘ ȳ", "x", kinks=(-3.0, 3.0)),
    _act("hard_tanh", "x̄ = 1[−1 ≤ x ≤ 1] ∘ ȳ", "mask", kinks=(-1.0, 1.0)),
    _act("soft_sign", "x̄ = ȳ / (|x| + 1)²", "x"),
    _act("squareplus", "x̄ = y²/(y² + b/4) ∘ ȳ", "y"),
    _act("sparse_plus", "x̄ = min(√y, 1) ∘ ȳ", "y", kinks=(-1.0, 1.0)),
    _act("sparse_sigmoid", "x̄ = ½·1[−1 < x < 1] ∘ ȳ", "mask", kinks=(-1.0, 1.0)),
    Rule("rrelu", jr.rrelu, _rrelu_reference(1 / 8, 1 / 3, True), "jnp.where(x ≥ 0, x, a·x), a ~ U(⅛, ⅓)",
         "activations", _rrelu_sample, "x̄ = (1 if x ≥ 0 else a) ∘ ȳ, a redrawn from the key", "mask + key",
         elementwise=True),
    Rule("rrelu", partial(jr.rrelu, training=False), _rrelu_reference(1 / 8, 1 / 3, False),
         "jnp.where(x ≥ 0, x, a·x), a = 11/48", "activations", _rrelu_sample,
         "x̄ = (1 if x ≥ 0 else (l + u)/2) ∘ ȳ", "mask", settings="training=False", elementwise=True),
    # arithmetic (seed 001, 002)
    Rule("add", jr.add, jnp.add, "jnp.add", "arithmetic", _pair(), "x̄ = unbroadcast(z̄), ȳ = unbroadcast(z̄)",
         "shapes", cases=BROADCAST_PAIRS),
    Rule("subtract", jr.subtract, jnp.subtract, "jnp.subtract", "arithmetic", _pair(),
         "x̄ = unbroadcast(z̄), ȳ = −unbroadcast(z̄)", "shapes", cases=BROADCAST_PAIRS),
    Rule("multiply", jr.multiply, jnp.multiply, "jnp.multiply", "arithmetic", _pair(),
         "x̄ = unbroadcast(z̄ ∘ y), ȳ = unbroadcast(z̄ ∘ x)", "x, y", cases=BROADCAST_PAIRS),
    Rule("divide", jr.divide, jnp.divide, "jnp.divide", "arithmetic", _pair(y_away_from_zero=True),
         "x̄ = unbroadcast(z̄ / y), ȳ = −unbroadcast(z̄ ∘ (x/y) / y)", "x, y", cases=BROADCAST_PAIRS,
         tol=_LOW_PRECISION),
)


def by_id() -> dict[str, Rule]:
    return {r.id: r for r in RULES}


# --- the README table ------------------------------------------------------------------------

BEGIN, END = "<!-- rules:begin (generated by python -m jaxrules.catalog --write README.md) -->", "<!-- rules:end -->"


def markdown_table() -> str:
    lines = ["| rule | reference | pullback | backward keeps |", "| --- | --- | --- | --- |"]
    for r in RULES:
        rule = f"`jr.{r.name}`" + (f" ({r.settings})" if r.settings else "")
        lines.append(f"| {rule} | `{r.reference_name}` | {r.pullback} | {r.saves} |")
    return "\n".join(lines)


def readme_section() -> str:
    return f"{BEGIN}\n{markdown_table()}\n{END}"


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxrules.catalog", description=__doc__.splitlines()[0])
    p.add_argument("--write", metavar="README", help="replace the generated table in this file")
    a = p.parse_args(argv)
    if not a.write:
        print(markdown_table())
        return 0
    text = open(a.write, encoding="utf-8").read()
    start, stop = text.find(BEGIN), text.find(END)
    if start < 0 or stop < 0:
        print(f"{a.write}: no {BEGIN!r} ... {END!r} markers", file=sys.stderr)
        return 1
    text = text[:start] + readme_section() + text[stop + len(END):]
    open(a.write, "w", encoding="utf-8").write(text)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
