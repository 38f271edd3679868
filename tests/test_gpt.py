"""jaxrules.models.gpt and the bench's transformer table: the model from jaxrules rules equals the
same model in plain JAX (jax.nn, optax, XLA attention), differentiated by JAX."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrules import bench
from jaxrules.models import gpt

TINY = dict(batch=2, width=32, layers=1, heads=2)
PLAIN = "plain JAX (jax.nn, optax)"


def _compiled(f, *args):
    """f(*args) under jit, compiled without XLA's backend optimisations (twice as fast to compile; the
    values, not XLA's code, are under test here)."""
    return jax.jit(f).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})(*args)


def test_every_variant_agrees_with_plain_jax_in_loss_and_gradients():
    """Every row of the bench (rules alone, MLP or layers recomputed), and a layer_norm model, in one jit."""
    cases = {v: bench.gpt_case(v, 16, 64, **TINY) for v in bench.GPT_VARIANTS}
    params, ids = cases[PLAIN][1:]
    ln = {which: gpt.GPT(vocab=64, layers=1, width=32, heads=2, norm="layer", recompute=r)
          for which, r in (("plain", "none"), ("jaxrules", "layer"))}
    ln_params = gpt.init(ln["plain"], jax.random.key(0))
    assert set(ln_params["norm"]) == {"scale", "bias"}

    def all_of_them(params, ln_params, ids):
        out = {v: jax.value_and_grad(loss)(params, ids) for v, (loss, _, _) in cases.items()}
        for which, cfg in ln.items():
            out[f"{which}, layer_norm"] = jax.value_and_grad(gpt.loss)(
                ln_params, ids[:, :-1], ids[:, 1:], cfg, gpt.operations(which))
        return out

    out = _compiled(all_of_them, params, ln_params, ids)
    plain = out[PLAIN]
    assert 3.5 < plain[0] < 5.0  # about log(64) at initialisation
    for variant in bench.GPT_VARIANTS:
        ours = out[variant]
        np.testing.assert_allclose(ours[0], plain[0], rtol=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(ours[1]), jax.tree_util.tree_leaves(plain[1])):
            assert a.shape == b.shape and a.dtype == b.dtype == jnp.float32
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))
        assert bench.gpt_agreement(ours, plain) <= 1e-4
    assert bench.gpt_agreement(out["jaxrules, layer_norm"], out["plain, layer_norm"]) <= 1e-4


_STRUCTURAL = {"reshape", "squeeze", "expand_dims", "broadcast_in_dim", "slice", "dynamic_slice", "concatenate",
               "convert_element_type", "transpose", "copy", "copy_p"}
_RANDOM = {"_uniform", "_bernoulli"}  # drawing a dropout mask: not a differentiable step


def _steps_outside_rules(jaxpr, rules, outside):
    """Walk a jaxpr, not into custom_vjp calls (their names go to rules); collect the other equations
    that compute a non-scalar float (the reduction of the per-byte losses to their mean may stay outside)."""
    for e in jaxpr.eqns:
        if e.primitive.name == "custom_vjp_call":
            rules.append(e.params["call_jaxpr"].jaxpr.debug_info.func_name)
            continue
        if e.params.get("name") in _RANDOM:
            continue
        subs = [s for v in e.params.values() for s in (v if isinstance(v, (list, tuple)) else [v])
                if hasattr(s, "eqns") or hasattr(getattr(s, "jaxpr", None), "eqns")]
        for s in subs:
            _steps_outside_rules(getattr(s, "jaxpr", s), rules, outside)
        if not subs and any(jnp.issubdtype(v.aval.dtype, jnp.floating) and v.aval.shape for v in e.outvars):
            outside.append(e.primitive.name)
    return rules, outside


def test_every_differentiable_step_of_the_jaxrules_model_is_a_rule():
    cfg = gpt.GPT(vocab=64, layers=2, width=32, heads=2, dropout=0.1)
    params = gpt.init(cfg, jax.random.key(0))
    ids = jnp.zeros((2, 8), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda p: gpt.loss(p, ids, ids, cfg, key=jax.random.key(1)))(params).jaxpr
    rules, outside = _steps_outside_rules(jaxpr, [], [])
    assert set(outside) <= _STRUCTURAL, f"differentiable steps outside the rules: {set(outside) - _STRUCTURAL}"
    # per layer: 2 norms, 4 dense, 2 rope, attention, swiglu, 2 dropout, 2 add; then embedding, norm, loss
    assert len(rules) == 2 * 14 + 3, rules
    for name in ("embedding", "rope", "rms_norm", "dense", "swiglu", "dropout", "add"):
        assert name in rules, (name, rules)


def test_dropout_is_keyed_and_off_without_a_key():
    cfg = gpt.GPT(vocab=64, layers=1, width=32, heads=2, dropout=0.5)
    params = gpt.init(cfg, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)

    def losses(k2, k3):
        def loss(key, cfg=cfg):
            return gpt.loss(params, ids, ids, cfg, key=key)
        return loss(k2), loss(k2), loss(k3), loss(None), loss(None, gpt.GPT(vocab=64, layers=1, width=32, heads=2))
    a, b, c, off, without = _compiled(losses, jax.random.key(2), jax.random.key(3))
    assert a == b != c and a != off and off == without


def test_recomputing_layers_lowers_compiled_temp_memory():
    """XLA merges a plainly written recomputation back into the forward; ours must stay in the backward."""
    mem = {v: bench.gpt_compiled(v, 256, 256, abstract=True, batch=2, width=64, layers=2, heads=2)[1]
           for v in ("jaxrules rules", "jaxrules, layers recomputed")}
    assert mem["jaxrules, layers recomputed"] < 0.8 * mem["jaxrules rules"], mem


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="width 30 must be a multiple of heads 4"):
        gpt.GPT(width=30, heads=4)
    with pytest.raises(ValueError, match="recompute must be 'none', 'mlp' or 'layer'"):
        gpt.GPT(recompute="all")
    with pytest.raises(ValueError, match="norm must be 'rms' or 'layer'"):
        gpt.GPT(norm="batch")
