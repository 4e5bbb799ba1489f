"""One ML-EM drift estimate (`mlem_jax._step`): the randomized telescope is unbiased,
each level runs exactly when its draws say (a real branch, never batched), and a
level's output is checked."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import additive, linear_levels

import mlem_jax as mj
from mlem_jax._brownian import split_key, step_uniforms

# Strict dtype promotion catches silent upcasts in the estimate; the bad-drift test
# returns a complex value on purpose and runs without it.
strict = pytest.mark.usefixtures("strict_promotion")

KEY = jax.random.key(0)
Y0 = jnp.ones((4, 2))


def _good(t, y, args):
    return -y


@strict
@pytest.mark.parametrize(
    "schedule",
    [mj.FixedProbabilities((1.0, 0.3, 0.1)), mj.Rates((jnp.inf, 3.0, 0.5))],
    ids=["fixed", "rates"],
)
def test_one_step_estimator_is_unbiased(schedule):
    # Non-linear levels with distinct increments; one ODE step of size h = 0.5 gives
    # the drift estimate D = (y1 − y0)/h. Its mean over keys must be f^k(y0).
    fns = (
        lambda t, y, a: -y,
        lambda t, y, a: -y + 0.5 * jnp.sin(y),
        lambda t, y, a: -y + 0.5 * jnp.sin(y) + 0.25 * jnp.cos(3 * y),
    )
    levels = mj.Levels(fns=fns, costs=(1.0, 2.0, 4.0))
    y0 = jnp.array([0.3, -1.2, 2.0, 0.7])
    h = 0.5

    def estimate(key):
        y1, _ = mj.mlem_solve(
            levels, schedule, None, y0, t0=0.0, t1=h, num_steps=1, key=key
        )
        return (y1 - y0) / h

    n = 20_000
    keys = jax.random.split(jax.random.key(0), n)
    samples = jax.lax.map(estimate, keys)  # sequential: keeps the level key unbatched
    mean = samples.mean(axis=0)
    stderr = samples.std(axis=0) / np.sqrt(n)
    target = fns[-1](0.0, y0, None)
    # 5 standard errors per component: a false failure has probability < 3e-6.
    assert np.all(np.abs(mean - target) <= 5 * stderr + 1e-6), (mean, target, stderr)
    # The estimator really is random (otherwise the test above proves nothing).
    assert np.all(stderr > 1e-4)


@strict
def test_evaluations_follow_the_draws():
    counts = collections.Counter()

    def counted(level, a):
        def fn(t, y, args):
            jax.debug.callback(lambda: counts.update([level]))
            return a * y

        return fn

    levels = mj.Levels(
        fns=(counted(0, -0.5), counted(1, -0.9), counted(2, -1.0)), costs=(1, 4, 16)
    )
    probs = (1.0, 0.3, 0.05)
    num_steps, key = 200, jax.random.key(7)
    y1, info = mj.mlem_solve(
        levels,
        mj.FixedProbabilities(probs),
        additive,
        jnp.ones((8, 2)),
        t0=0.0,
        t1=1.0,
        num_steps=num_steps,
        key=key,
    )
    jax.block_until_ready(y1)
    # Independent reference: the draws recomputed from the documented key layout.
    _, level_key = split_key(key)
    u = jnp.stack([step_uniforms(level_key, n, 3, jnp.float32) for n in range(200)])
    fires = np.asarray(u) < np.asarray(probs)
    needed = fires | np.concatenate([fires[:, 1:], np.zeros((200, 1), bool)], axis=1)
    expected = needed.sum(axis=0)
    observed = np.array([counts[0], counts[1], counts[2]])
    np.testing.assert_array_equal(np.asarray(info.evaluations), expected)
    np.testing.assert_array_equal(observed, expected)
    assert observed[0] == num_steps and observed[2] < num_steps // 4
    assert float(info.cost) == float(np.dot(expected, [1, 4, 16]))


@strict
def test_branches_stay_real_under_vmap_over_y0():
    levels = linear_levels()
    sched = mj.FixedProbabilities((1.0, 0.3, 0.1))
    key = jax.random.key(0)

    def solve(y0):
        return mj.mlem_solve(
            levels, sched, additive, y0, t0=0.0, t1=1.0, num_steps=5, key=key
        )[0]

    jaxpr = str(jax.make_jaxpr(jax.vmap(solve))(jnp.ones((6, 3))))
    # Three levels: three conditionals with an unbatched predicate survive batching.
    assert jaxpr.count("cond[") == 3
    # And vmapping over y0 equals putting the batch in y0 for an ODE.
    out_vmap = jax.vmap(
        lambda y: mj.mlem_solve(
            levels, sched, None, y, t0=0.0, t1=1.0, num_steps=5, key=key
        )[0]
    )(jnp.arange(6.0).reshape(2, 3))
    out_batch, _ = mj.mlem_solve(
        levels,
        sched,
        None,
        jnp.arange(6.0).reshape(2, 3),
        t0=0.0,
        t1=1.0,
        num_steps=5,
        key=key,
    )
    np.testing.assert_allclose(out_vmap, out_batch, rtol=1e-6)


@strict
def test_batched_key_is_refused_with_advice():
    levels = linear_levels()
    sched = mj.FixedProbabilities((1.0, 0.3, 0.1))

    def solve(key):
        return mj.mlem_solve(
            levels, sched, additive, jnp.ones(3), t0=0.0, t1=1.0, num_steps=5, key=key
        )[0]

    keys = jax.random.split(jax.random.key(0), 4)
    with pytest.raises(ValueError, match="level draws are batched under jax.vmap"):
        jax.vmap(solve)(keys)
    with pytest.raises(ValueError, match=r"put the batch inside `y0`"):
        jax.jit(jax.vmap(solve))(keys)
    # em_solve has no level draws: vmapping it over keys is fine.
    ys = jax.vmap(
        lambda k: mj.em_solve(
            levels.top, additive, jnp.ones(3), t0=0.0, t1=1.0, num_steps=5, key=k
        )[0]
    )(keys)
    assert ys.shape == (4, 3) and not np.allclose(ys[0], ys[1])


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda t, y, a: None, "returned None"),
        (lambda t, y, a: jnp.ones(y.shape, jnp.int32), "returned dtype int32"),
        (lambda t, y, a: y > 0, "returned dtype bool"),
        (lambda t, y, a: y + 0j, "returned dtype complex64"),
        (lambda t, y, a: "drift", "returned str"),
        (lambda t, y, a: y[0], r"returned shape \(2,\)"),
    ],
)
def test_bad_drift_return_names_the_level(bad, match):
    with pytest.raises((TypeError, ValueError), match="`drift` " + match):
        mj.em_solve(bad, None, Y0, t0=0.0, t1=1.0, num_steps=2, key=KEY)
    levels = mj.Levels((_good, bad), (1.0, 2.0))
    schedule = mj.FixedProbabilities((1.0, 0.5))
    with pytest.raises((TypeError, ValueError), match="level 2 " + match):
        mj.mlem_solve(levels, schedule, None, Y0, t0=0.0, t1=1.0, num_steps=2, key=KEY)
