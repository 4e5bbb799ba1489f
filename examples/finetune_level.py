"""Fine-tune a level by differentiating through ML-EM samples.

The ladder is the synthetic random-feature hierarchy; we fine-tune the output weights
of its top level so that the ML-EM samples at t = 1 have a prescribed mean, a simple
differentiable objective standing in for a reward or an inverse-problem loss. The
gradient is pathwise (each step's level draws are fixed by its key) and flows through
the rarely-evaluated top level's increments `(B/p)(f^k − f^{k−1})`; `checkpoint="sqrt"`
keeps reverse-mode memory at about 2·sqrt(num_steps) states. A fresh key per step
averages over the level draws and the Brownian motion.

    python examples/finetune_level.py
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import mlem_jax as mj
from mlem_jax.synthetic import random_feature_hierarchy

key = jax.random.key(0)
levels, _ = random_feature_hierarchy(key, dim=2, gamma=3.0, num_levels=3, scale=2.0)
schedule = mj.FixedProbabilities((1.0, 0.5, 0.2))
y0 = jax.random.normal(jax.random.fold_in(key, 1), (256, 2))
target = jnp.array([1.0, -0.5])


def loss(top, key):
    ladder = mj.Levels(levels.fns[:-1] + (top,), levels.costs)
    y1, _ = mj.mlem_solve(
        ladder,
        schedule,
        lambda t, y, args: 0.5,
        y0,
        t0=0.0,
        t1=1.0,
        num_steps=100,
        key=key,
        checkpoint="sqrt",
    )
    return jnp.sum((y1.mean(0) - target) ** 2)


# Train only the top level's output weights: freeze everything else.
top = levels.top
trainable = jax.tree.map(lambda _: False, top)
trainable = eqx.tree_at(lambda f: f.out, trainable, True)
optimizer = optax.adam(3e-3)
opt_state = optimizer.init(eqx.filter(top, trainable))


@eqx.filter_jit
def step(top, opt_state, key):
    params, frozen = eqx.partition(top, trainable)
    value, grad = jax.value_and_grad(lambda p: loss(eqx.combine(p, frozen), key))(
        params
    )
    updates, opt_state = optimizer.update(grad, opt_state, params)
    return eqx.combine(optax.apply_updates(params, updates), frozen), opt_state, value


for i in range(150):
    top, opt_state, value = step(top, opt_state, jax.random.fold_in(key, i))
    if i % 25 == 0:
        print(f"step {i:3d}  loss {float(value):.5f}")

# Held-out check with keys not used in training.
test_keys = jax.random.split(jax.random.key(123), 8)
before = jnp.mean(jax.lax.map(lambda k: loss(levels.top, k), test_keys))
after = jnp.mean(jax.lax.map(lambda k: loss(top, k), test_keys))
print(f"held-out loss: before {float(before):.5f}, after {float(after):.5f}")
