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


# ---------------------------------------------------------------------------------
# The step's base level: the lowest level with p > 0


def _three_levels():
    fns = (
        lambda t, y, a: -y,
        lambda t, y, a: -y + 0.5 * jnp.sin(y),
        lambda t, y, a: -y + 0.5 * jnp.sin(y) + 0.25 * jnp.cos(3 * y),
    )
    return mj.Levels(fns, (1.0, 4.0, 16.0))


def _solve(levels, schedule, fn_em, num_steps=12):
    """`mlem_solve` and `em_solve` of drift `fn_em` on the same Brownian path."""
    kw = dict(t0=1.0, t1=0.0, num_steps=num_steps, key=KEY)
    y, info = mj.mlem_solve(levels, schedule, additive, Y0, **kw)
    y_em, _ = mj.em_solve(fn_em, additive, Y0, **kw)
    return y, y_em, info


def test_levels_below_the_base_are_never_evaluated():
    # p = (0, 1, 1): the base is level 2, so the step is f^2 + (f^3 − f^2) = f^3 and
    # level 1 never runs.
    levels = _three_levels()
    y, y_em, info = _solve(levels, mj.Rates((0.0, jnp.inf, jnp.inf)), levels.top)
    np.testing.assert_allclose(y, y_em, rtol=1e-6, atol=1e-6)
    assert info.evaluations.tolist() == [0, 12, 12]


def test_base_level_alone_is_that_level():
    # p = (0, 1, 0): level 2 alone (a stitching segment), bit for bit.
    levels = _three_levels()
    y, y_em, info = _solve(levels, mj.Rates((0.0, jnp.inf, 0.0)), levels.fns[1])
    np.testing.assert_array_equal(y, y_em)
    assert info.evaluations.tolist() == [0, 12, 0]


def test_probability_zero_above_the_base_drops_exactly_that_correction():
    # p = (1, 0, 1): f^1 + (f^3 − f^2): the correction f^2 − f^1 is dropped.
    levels = _three_levels()
    f1, f2, f3 = levels.fns

    def dropped(t, y, a):
        return f1(t, y, a) + (f3(t, y, a) - f2(t, y, a))

    y, y_em, info = _solve(levels, mj.Rates((jnp.inf, 0.0, jnp.inf)), dropped)
    np.testing.assert_allclose(y, y_em, rtol=1e-6, atol=1e-6)
    assert info.evaluations.tolist() == [12, 12, 12]


def test_randomised_telescope_above_a_base_is_unbiased_and_skips_below():
    # p = (0, 1, 0.3): one ODE step's drift estimate averages to f^3, level 1 never
    # runs, and level 3 runs at about 30% of the keys.
    levels = _three_levels()
    sched = mj.Rates((0.0, jnp.inf, 0.6))  # h = 0.5: p = (0, 1, 0.3)
    h = 0.5

    def one(key):
        y, info = mj.mlem_solve(
            levels, sched, None, Y0, t0=0.0, t1=h, num_steps=1, key=key
        )
        return (y - Y0) / h, info.evaluations

    keys = jax.random.split(jax.random.key(5), 4000)
    drifts, evaluations = jax.lax.map(one, keys)
    drifts = np.asarray(drifts, np.float64)
    target = np.asarray(levels.top(0.0, Y0, None), np.float64)
    stderr = drifts.std(0) / np.sqrt(len(keys))
    assert np.all(np.abs(drifts.mean(0) - target) <= 5 * stderr + 1e-6)
    evaluations = np.asarray(evaluations)
    assert np.all(evaluations[:, 0] == 0) and np.all(evaluations[:, 1] == 1)
    p3 = evaluations[:, 2].mean()
    assert abs(p3 - 0.3) <= 5 * np.sqrt(0.3 * 0.7 / len(keys))


@pytest.mark.parametrize(
    "probs, expected",
    [
        ((1.0, 0.5, 0.25), (1.0, 1 - 0.5 * 0.75, 0.25)),
        ((0.0, 0.5, 1.0), (0.0, 1.0, 1.0)),  # level 1 is below the base
        ((1.0, 0.0, 0.5), (1.0, 0.5, 0.5)),  # a dropped correction is still coarse
        ((0.0, 0.0, 1.0), (0.0, 0.0, 1.0)),
    ],
)
def test_expected_evaluations_know_the_base(probs, expected):
    from mlem_jax._step import expected_evaluations

    for xp in (np, jnp):
        out = expected_evaluations(xp.asarray(probs))
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6)


@pytest.mark.parametrize("refines", [(False, False, True), (False, True, True)])
def test_expected_evaluations_with_refinements_is_the_exact_expectation(refines):
    """Level l − 1 runs whenever a refinement at l does, also where l is the step's
    base: `expected_evaluations(probs, refines)` equals the expectation of the
    draws' `needed` (`_draws_from_fires`) summed exactly over the 2^k fire
    patterns, for probabilities with and without a base above level 1."""
    import itertools

    from mlem_jax._step import _draws_from_fires, expected_evaluations

    for probs in ([0.7, 0.4, 0.2], [0.0, 0.6, 0.3], [0.0, 0.0, 0.5], [0.0, 0.0, 1.0]):
        p = np.asarray(probs)
        exact = np.zeros(3)
        for pattern in itertools.product([False, True], repeat=3):
            fires = np.asarray(pattern)
            if np.any(fires & (p == 0)) or np.any(~fires & (p == 1)):
                continue
            weight = np.prod(np.where(fires, p, 1 - p))
            _, needed, _ = _draws_from_fires(
                jnp.asarray(fires), jnp.asarray(p, jnp.float32), refines
            )
            exact += weight * np.asarray(needed, np.float64)
        got = expected_evaluations(p, refines)
        np.testing.assert_allclose(got, exact, rtol=1e-12, atol=1e-15)
        # Without refinements the level below a guided base is not counted.
        if probs[1] == 0.0 and refines[2]:
            assert expected_evaluations(p)[1] == 0.0 < got[1]
