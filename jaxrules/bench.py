"""python -m jaxrules.bench: our rules side by side with JAX's autodiff of the same functions.

Tables (``--only`` picks some):

* ``residuals``: bytes the backward keeps alive per element (every distinct buffer held by
  ``jax.vjp``'s pullback, inputs included), ours against jax autodiff of the reference. Deterministic.

Times, where a table has them, are medians of ratios of interleaved runs on this (shared, noisy)
machine, never a single absolute time.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

import jax
import jax.numpy as jnp

from jaxrules import catalog
from jaxrules.testing import residual_bytes

# the activations named in the foundation issue's memory target
TARGET_SET = ("sigmoid", "tanh", "relu", "gelu", "silu", "softplus", "elu", "mish", "log_sigmoid")


def residual_table(n: int = 4096) -> tuple[list[tuple[str, float, float]], dict[str, float]]:
    """Per elementwise catalog row: (id, our bytes per element, jax autodiff bytes per element)."""
    rows = []
    for rule in catalog.RULES:
        if not rule.elementwise:
            continue
        args = rule.sample(jax.random.key(0), (n,), jnp.float32)
        rest = args[1:]
        ours = residual_bytes(lambda x: rule.fn(x, *rest), args[0]) / n
        theirs = residual_bytes(lambda x: rule.reference(x, *rest), args[0]) / n
        rows.append((rule.id, ours, theirs))
    target = {r[0]: r for r in rows if r[0] in TARGET_SET}
    summary = {
        "ours": sum(r[1] for r in target.values()),
        "jax": sum(r[2] for r in target.values()),
    }
    return rows, summary


def print_residuals(out: Callable[[str], None] = print) -> bool:
    rows, s = residual_table()
    out("## Residual bytes per element (float32, inputs included)\n")
    out("| rule | jaxrules | jax autodiff | ratio |")
    out("| --- | ---: | ---: | ---: |")
    ok = True
    for name, ours, theirs in rows:
        ok &= ours <= theirs
        out(f"| {name} | {ours:g} | {theirs:.3g} | {ours / theirs:.2f} |")
    out(f"\nSum over {', '.join(TARGET_SET)}: jaxrules {s['ours']:g} B, jax autodiff {s['jax']:.3g} B, "
        f"ratio {s['ours'] / s['jax']:.2f} (target <= 0.50; never more than jax for any rule: "
        f"{'holds' if ok else 'FAILS'})\n")
    return ok and s["ours"] <= s["jax"] / 2


TABLES: dict[str, Callable[..., bool]] = {"residuals": print_residuals}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxrules.bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(TABLES), help=f"comma-separated tables from {', '.join(TABLES)}")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        p.error(f"unknown table(s) {unknown}; choose from {list(TABLES)}")
    print(f"# jaxrules bench (jax {jax.__version__}, {jax.devices()[0].platform}, {jax.device_count()} device(s))\n")
    ok = True
    for n in names:
        ok &= TABLES[n]()
    print("all targets hold" if ok else "some targets do not hold")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
