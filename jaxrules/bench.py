"""python -m jaxrules.bench: our rules side by side with JAX's autodiff of the same functions.

Tables (``--only`` picks some):

* ``residuals``: bytes the backward keeps alive per element (every distinct buffer held by
  ``jax.vjp``'s pullback, inputs included), ours against jax autodiff of the reference. Deterministic.
* ``step``: one optax training step of an MLP 784-1024-1024-10 (batch 256, float32) built from
  jaxrules rules, against the same network in jax.nn + optax differentiated by jax (and PyTorch
  eager when torch is importable); achieved GFLOP/s against a matmul peak measured in the same run.
* ``fused``: XLA's compiled temp memory and the time of ``jit(value_and_grad(...))`` for the fused
  rules (linear + softmax cross-entropy at N=4096, D=512, V=32768, reductions "mean" and "none";
  attention at batch 1, length 4096, 4 heads, head_dim 64, full and causal; grouped kv heads)
  against the plain formula differentiated by jax, with issue 18's targets.

Times, where a table has them, are medians of ratios of interleaved runs on this (shared, noisy)
machine, never a single absolute time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from typing import Any, Callable

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
        args = rule.sample(0, (n,), jnp.float32)
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


# --- step time -------------------------------------------------------------------------------

MLP_SIZES = (784, 1024, 1024, 10)


def _ops(which: str) -> Any:
    import optax
    import jaxrules as jr
    if which == "jaxrules":
        return types.SimpleNamespace(dense=jr.dense, relu=jr.relu,
                                     xent=jr.softmax_cross_entropy_with_integer_labels)
    return types.SimpleNamespace(dense=lambda x, W, b: x @ W + b, relu=jax.nn.relu,
                                 xent=optax.softmax_cross_entropy_with_integer_labels)


def mlp_step(which: str, batch: int = 256, sizes: tuple[int, ...] = MLP_SIZES, lr: float = 1e-3):
    """(jit-compiled step, params, opt_state, x, y) for one optax SGD-momentum step of the MLP."""
    import optax
    ops = _ops(which)
    keys = jax.random.split(jax.random.key(0), len(sizes) + 1)
    params = [(jax.random.normal(k, (m, n), jnp.float32) * (2 / m) ** 0.5, jnp.zeros(n, jnp.float32))
              for k, m, n in zip(keys, sizes[:-1], sizes[1:])]
    x = jax.random.normal(keys[-1], (batch, sizes[0]), jnp.float32)
    y = jnp.arange(batch) % sizes[-1]
    tx = optax.sgd(lr, momentum=0.9)

    def loss(params, x, y):
        h = x
        for i, (W, b) in enumerate(params):
            h = ops.dense(h, W, b)
            if i < len(params) - 1:
                h = ops.relu(h)
        return ops.xent(h, y).mean()

    @jax.jit
    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step, params, tx.init(params), x, y


def _time(run: Callable[[], Any], n: int) -> float:
    """Seconds per call of run(), over n calls after the result of the last is ready."""
    t = time.perf_counter()
    for _ in range(n):
        out = run()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / n


def _torch_step(batch: int, sizes: tuple[int, ...]):
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    layers: list[Any] = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(m, n))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(batch, sizes[0]), torch.arange(batch) % sizes[-1]

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return jnp.zeros(())
    return step


def print_step(repeats: int = 41, n: int = 5, batch: int = 256, out: Callable[[str], None] = print) -> bool:
    sizes = MLP_SIZES
    flops = 6 * batch * sum(m * k for m, k in zip(sizes[:-1], sizes[1:]))  # forward + x̄ + W̄ products
    runs = {}
    for which in ("jaxrules", "jax"):
        step, params, opt_state, x, y = mlp_step(which, batch, sizes)
        state = [params, opt_state]

        def run(step=step, state=state, x=x, y=y):
            state[0], state[1], v = step(state[0], state[1], x, y)
            return v
        jax.block_until_ready(run())  # compile
        runs[which] = run
    torch_step = _torch_step(batch, sizes)
    if torch_step is not None:
        torch_step()
        runs["torch eager"] = torch_step
    a = jax.random.normal(jax.random.key(1), (1024, 1024), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    jax.block_until_ready(mm(a))
    runs["matmul 1024³"] = lambda: mm(a)

    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):  # interleaved, so that load on the shared machine hits every variant
        for k, run in runs.items():
            times[k].append(_time(run, n))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(a / b for a, b in zip(times["jaxrules"], times["jax"]))
    peak = 2 * 1024 ** 3 / med["matmul 1024³"] / 1e9
    out(f"## Training step: MLP {'-'.join(map(str, sizes))}, batch {batch}, float32, optax SGD momentum\n")
    out("| variant | ms/step (median) | GFLOP/s | of matmul peak | ratio to jax (median of ratios) |")
    out("| --- | ---: | ---: | ---: | ---: |")
    for k in runs:
        if k.startswith("matmul"):
            continue
        r = statistics.median(a / b for a, b in zip(times[k], times["jax"]))
        gf = flops / med[k] / 1e9
        out(f"| {k} | {med[k] * 1e3:.2f} | {gf:.0f} | {gf / peak:.0%} | {r:.3f} |")
    out(f"| matmul 1024³ (peak) | {med['matmul 1024³'] * 1e3:.2f} | {peak:.0f} | 100% | |")
    if torch_step is None:
        out("\nPyTorch is not importable here: its row is left out (pip install torch to add it).")
    gf_ours = flops / med["jaxrules"] / 1e9
    ok = ratio <= 1.02
    out(f"\njaxrules / jax autodiff: {ratio:.3f} (target <= 1.02: {'holds' if ok else 'FAILS'}); "
        f"jaxrules at {gf_ours / peak:.0%} of the matmul peak (target >= 80%: "
        f"{'holds' if gf_ours / peak >= 0.8 else 'FAILS'})\n")
    return ok and gf_ours / peak >= 0.8


# --- fused rules: compiled memory and time ---------------------------------------------------

def fused_cases() -> dict[str, tuple[Callable, Callable, tuple]]:
    """{name: (ours, plain, args)}: loss functions of the differentiated arguments, at issue 18's sizes.

    Cross-entropy: N=4096, D=512, V=32768, against ``optax.softmax_cross_entropy_with_integer_labels(x @ W,
    y).mean()`` (reduction "mean", and "none" followed by .mean()). Attention: batch 1, length 4096, 4
    heads, head_dim 64, full and causal, against softmax(QKᵀ/√d)V; and 8 query heads over 1 or 8 kv heads
    (causal, compiled only).
    """
    import optax
    import jaxrules as jr
    k = jax.random.split(jax.random.key(0), 6)
    n, d, v = 4096, 512, 32768
    x = jax.random.normal(k[0], (n, d), jnp.float32)
    W = jax.random.normal(k[1], (d, v), jnp.float32) * 0.02
    labels = jax.random.randint(k[2], (n,), 0, v)
    t, heads, hd = 4096, 4, 64
    q, kk, vv = (jax.random.normal(kj, (1, t, heads, hd), jnp.float32) for kj in k[3:])

    def plain_attention(q, k, v, causal=False):
        s = jnp.einsum("btnh,bsnh->bnts", q, k) / hd ** 0.5
        if causal:
            s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
        return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(s, axis=-1), v)

    def plain_xent(x, W):
        return optax.softmax_cross_entropy_with_integer_labels(x @ W, labels).mean()
    q8 = jax.ShapeDtypeStruct((1, t, 8, hd), jnp.float32)
    return {
        "xent mean": (lambda x, W: jr.linear_softmax_cross_entropy(x, W, labels, reduction="mean"), plain_xent, (x, W)),
        "xent none": (lambda x, W: jr.linear_softmax_cross_entropy(x, W, labels).mean(), plain_xent, (x, W)),
        "attention": (lambda q, k, v: jr.dot_product_attention(q, k, v).sum(),
                      lambda q, k, v: plain_attention(q, k, v).sum(), (q, kk, vv)),
        "attention causal": (lambda q, k, v: jr.dot_product_attention(q, k, v, is_causal=True).sum(),
                             lambda q, k, v: plain_attention(q, k, v, True).sum(), (q, kk, vv)),
        "gqa 1 kv head": (lambda q, k, v: jr.dot_product_attention(q, k, v, is_causal=True).sum(), None,
                          (q8, *(jax.ShapeDtypeStruct((1, t, 1, hd), jnp.float32),) * 2)),
        "gqa 8 kv heads": (lambda q, k, v: jr.dot_product_attention(q, k, v, is_causal=True).sum(), None, (q8, q8, q8)),
    }


def compiled(f: Callable, args: tuple) -> tuple[Callable, int]:
    """jit(value_and_grad(f)) over all args, compiled; and XLA's temp bytes for it."""
    c = jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(args))))).lower(*args).compile()
    return c, c.memory_analysis().temp_size_in_bytes


def print_fused(repeats: int = 9, out: Callable[[str], None] = print) -> bool:
    """Issue 18's targets: time ratios are medians over ``repeats`` interleaved rounds (each round runs
    every variant once, so load on the shared machine hits them alike)."""
    cases = fused_cases()
    mem: dict[str, int] = {}
    runs: dict[str, tuple[Callable, tuple]] = {}
    for name, (ours, plain, args) in cases.items():
        c, mem[name] = compiled(ours, args)
        if plain is not None:
            runs[name] = (c, args)
            plain_name = "plain xent" if name.startswith("xent") else f"plain {name}"
            if plain_name not in runs:
                runs[plain_name] = (cp := compiled(plain, args))[0], args
                mem[plain_name] = cp[1]
    for c, args in runs.values():
        jax.block_until_ready(c(*args))  # compile and warm up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, (c, args) in runs.items():
            times[k].append(_time(lambda c=c, args=args: c(*args), 1))

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))
    mb = lambda k: mem[k] / 2 ** 20  # noqa: E731
    rows = [
        ("CE reduction=\"mean\", N=4096, D=512, V=32768: time vs optax(x @ W, y).mean()",
         ratio("xent mean", "plain xent"), "<=", 0.93, "{:.2f}"),
        ("the same: temp memory (MB)", mb("xent mean"), "<=", 96.0, "{:.0f}"),
        ("CE reduction=\"none\" (then .mean()): time vs plain", ratio("xent none", "plain xent"), "<=", 1.20, "{:.2f}"),
        ("attention T=4096, 4 heads, d=64: temp memory, plain / jaxrules (x less)", mem["plain attention"] /
         mem["attention"], ">=", 64.0, "{:.0f}x"),
        ("attention: time vs plain", ratio("attention", "plain attention"), "<=", 0.35, "{:.2f}"),
        ("causal time / full time, same shapes", ratio("attention causal", "attention"), "<=", 0.65, "{:.2f}"),
        ("temp memory, 1 kv head / 8 kv heads (8 query heads, causal)", mem["gqa 1 kv head"] / mem["gqa 8 kv heads"],
         "<=", 0.90, "{:.2f}"),
    ]
    out(f"## Fused rules: jit(value_and_grad), float32, medians of {repeats} interleaved rounds\n")
    out("| measure | jaxrules | target | |")
    out("| --- | ---: | ---: | --- |")
    ok = True
    for label, value, op, target, fmt in rows:
        met = value <= target if op == "<=" else value >= target
        ok &= met
        out(f"| {label} | {fmt.format(value)} | {op} {fmt.format(target)} | {'holds' if met else 'NOT met'} |")
    out("\nTemp memory (XLA's compiled temp_size, MB): " + ", ".join(f"{k} {mb(k):.0f}" for k in mem))
    out("Median seconds per step: " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in times.items()) + "\n")
    return ok


TABLES: dict[str, Callable[..., bool]] = {"residuals": print_residuals, "step": print_step, "fused": print_fused}


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
