"""Print the seeds' pullback B(f, (x,), (ȳ,)) = ((f(x),), (x̄,)) for a few jaxrules rules.

    python examples/pullback_demo.py
"""

import jax.numpy as jnp
import numpy as np

import jaxrules as jr


def show(name, f, primals, cotangents):
    outputs, input_cotangents = jr.B(f, primals, cotangents)
    print(f"B({name}, x={[p.tolist() for p in primals]}, ȳ={[c.tolist() for c in cotangents]})")
    print(f"  outputs            {[_fmt(o) for o in outputs]}")
    print(f"  input cotangents   {[_fmt(c) for c in input_cotangents]}")


def _fmt(a):
    return np.round(np.asarray(a, np.float64), 4).tolist()


def main():
    x = jnp.array([-2.0, 0.0, 3.0])
    ybar = jnp.array([1.0, 1.0, 2.0])
    show("sigmoid", jr.sigmoid, (x,), (ybar,))            # x̄ = σ(x)(1 − σ(x)) ∘ ȳ
    show("relu", jr.relu, (x,), (ybar,))                  # x̄ = 1[x > 0] ∘ ȳ
    show("multiply", jr.multiply, (x, jnp.array([2.0])), (ybar,))  # x̄ = ȳ ∘ y, ȳ_y = Σ ȳ ∘ x


if __name__ == "__main__":
    main()
