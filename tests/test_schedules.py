"""The level schedules: `FixedProbabilities`, `Rates`, `LogitProbabilities`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax as mj


def test_fixed_probabilities():
    sched = mj.FixedProbabilities((1.0, 0.5, 0.25))
    assert sched.num_levels == 3
    np.testing.assert_array_equal(sched.probabilities(0.3, -0.01), [1.0, 0.5, 0.25])


@pytest.mark.parametrize("probs", [(1.5,), (1.0, -0.1), (float("nan"),), (0.0, 0.0)])
def test_fixed_probabilities_out_of_range(probs):
    with pytest.raises(
        ValueError, match=r"`probs` must be probabilities in \[0, 1\], one at"
    ):
        mj.FixedProbabilities(probs)


def test_fixed_probabilities_refuse_a_dropped_correction():
    # Zeros below the first non-zero entry move the base level up (unbiased);
    # a zero above it drops a correction, which FixedProbabilities refuses.
    np.testing.assert_array_equal(
        mj.FixedProbabilities((0.0, 1.0, 0.5)).probabilities(0.0, 0.1), [0, 1, 0.5]
    )
    with pytest.raises(
        ValueError, match=r"`probs` must be non-zero above the base level 2.*Rates"
    ):
        mj.FixedProbabilities((0.0, 1.0, 0.0))
    with pytest.raises(Exception, match=r"zero above the base level"):
        jax.jit(lambda p: mj.FixedProbabilities(p).probs)(jnp.array([1.0, 0.0]))


def test_fixed_probabilities_shape():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        mj.FixedProbabilities([[1.0]])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        mj.FixedProbabilities([])


def test_rates_constant():
    sched = mj.Rates((jnp.inf, 20.0, 3.0, 0.0))
    p = sched.probabilities(0.5, -0.01)
    np.testing.assert_allclose(p, [1.0, 0.2, 0.03, 0.0], rtol=1e-6)
    # A rate above 1/|h| saturates at probability 1.
    np.testing.assert_allclose(sched.probabilities(0.5, 0.1), [1.0, 1.0, 0.3, 0.0])


def test_rates_piecewise_constant_midpoint():
    table = jnp.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    sched = mj.Rates(rates=table, times=jnp.array([0.0, 0.25, 0.5, 1.0]))
    h = 0.01
    # Each step reads its rate at its midpoint t + h/2, in either direction.
    np.testing.assert_allclose(sched.probabilities(0.1, h), [0.01, 0.1], rtol=1e-6)
    np.testing.assert_allclose(sched.probabilities(0.245, h), [0.02, 0.2], rtol=1e-5)
    np.testing.assert_allclose(sched.probabilities(0.254, -h), [0.01, 0.1], rtol=1e-5)
    np.testing.assert_allclose(sched.probabilities(0.9, -h), [0.03, 0.3], rtol=1e-5)
    # Outside the grid: the first or last bin.
    np.testing.assert_allclose(sched.probabilities(-5.0, h), [0.01, 0.1], rtol=1e-6)
    np.testing.assert_allclose(sched.probabilities(5.0, h), [0.03, 0.3], rtol=1e-6)


def test_rates_scale():
    sched = mj.Rates((jnp.inf, 2.0)).scale(10.0)
    np.testing.assert_allclose(sched.probabilities(0.0, 0.01), [1.0, 0.2], rtol=1e-6)
    table = mj.Rates(jnp.ones((2, 2)), times=jnp.array([0.0, 0.5, 1.0])).scale(3.0)
    np.testing.assert_allclose(table.rates, 3 * np.ones((2, 2)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rates=(1.0, -1.0)), "must be non-negative"),
        (dict(rates=(1.0, float("nan"))), "non-negative and not NaN"),
        (dict(rates=()), "non-empty 1-D"),
        (dict(rates=[[1.0]]), "non-empty 1-D"),
        (
            dict(rates=jnp.ones((2, 3)), times=jnp.array([0.0, 0.5, 0.4])),
            "strictly increasing",
        ),
        (dict(rates=jnp.ones((2, 3)), times=jnp.array([0.0, 1.0])), r"shape \(m, k\)"),
        (dict(rates=jnp.ones((1, 3)), times=jnp.array([0.0])), "at least 2 entries"),
        (
            dict(rates=jnp.ones((1, 3)), times=jnp.array([0.0, jnp.inf])),
            "finite and strictly increasing",
        ),
    ],
)
def test_rates_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mj.Rates(**kwargs)


def test_always_fires_is_abstract_every_schedule_implements_it():
    # Equinox's abstract-or-final pattern: no default for subclasses to extend.
    class Partial(mj.AbstractSchedule):
        @property
        def num_levels(self):
            return 2

        def probabilities(self, t, h):
            return jnp.ones(2)

    with pytest.raises(TypeError, match="always_fires"):
        Partial()
    assert mj.LogitProbabilities is mj._schedules.LogitProbabilities
    schedules = [
        mj.FixedProbabilities(jnp.array([1.0, 0.5])),
        mj.Rates(jnp.array([jnp.inf, 2.0])),
        mj.LogitProbabilities(jnp.array([jnp.inf, 0.0])),
    ]
    for schedule in schedules:
        assert schedule.always_fires(0.1) == (True, False)

        @jax.jit
        def traced(s):  # arrays unknown before tracing: no level claimed
            assert s.always_fires(0.1) == (False, False)
            return s.probabilities(0.0, 0.1)

        traced(schedule)


def test_traced_schedule_values_are_checked_at_run_time():
    probs = eqx.filter_jit(lambda p: mj.FixedProbabilities(p).probs)
    np.testing.assert_array_equal(probs(jnp.array([1.0, 0.5])), [1.0, 0.5])
    with pytest.raises(Exception, match=r"probabilities in \[0, 1\], one at least > 0"):
        probs(jnp.array([1.0, 1.5]))
    rates = eqx.filter_jit(lambda r: mj.Rates(r).rates)
    assert rates(jnp.array([jnp.inf, 2.0])).shape == (1, 2)
    for bad in ([1.0, jnp.nan], [1.0, -2.0]):
        with pytest.raises(Exception, match="non-negative and not NaN"):
            rates(jnp.array(bad))


# ---------------------------------------------------------------------------------
# Stitch (T-Stitch): one level alone per segment


def test_stitch_probabilities_follow_the_solve_direction():
    reverse = mj.Stitch(3, (0, 2), (0.5,), t0=1.0, t1=0.0)
    np.testing.assert_array_equal(reverse.probabilities(0.9, -0.1), [1, 0, 0])
    np.testing.assert_array_equal(reverse.probabilities(0.3, -0.1), [0, 0, 1])
    # A step belongs to the segment of its midpoint: 0.52 -> 0.42 to level 3.
    np.testing.assert_array_equal(reverse.probabilities(0.52, -0.1), [0, 0, 1])
    np.testing.assert_array_equal(reverse.probabilities(0.58, -0.1), [1, 0, 0])
    forward = mj.Stitch(3, (2, 1, 0), (0.25, 0.75), t0=0.0, t1=1.0)
    for t, level in ((0.1, 2), (0.5, 1), (0.9, 0)):
        np.testing.assert_array_equal(forward.probabilities(t, 0.01), np.eye(3)[level])
    assert forward.always_fires(0.01) == (False, False, False)
    assert mj.Stitch(2, (1,), t0=1.0, t1=0.0).always_fires(-0.1) == (False, True)


def test_stitch_from_fractions_switches_after_that_many_steps():
    ts = jnp.asarray(np.geomspace(1.0, 1e-3, 11))  # non-uniform, reverse time
    sched = mj.Stitch.from_fractions(2, (0, 1), (0.3,), grid=ts)
    probs = jax.vmap(sched.probabilities)(ts[:-1], jnp.diff(ts))
    np.testing.assert_array_equal(probs[:, 0], [1] * 3 + [0] * 7)
    for f, first in ((0.0, 0), (1.0, 10)):
        s = mj.Stitch.from_fractions(2, (0, 1), (f,), grid=ts)
        p = jax.vmap(s.probabilities)(ts[:-1], jnp.diff(ts))
        assert int(p[:, 0].sum()) == first


def test_stitch_solve_is_the_single_level_solves_glued():
    # Level 1 for the first 4 of 16 steps, then level 3, on one Brownian path: the
    # same arithmetic as two em_solves (drifts independent of t, steps of -1/16
    # exact in both), so bit for bit.
    def f(c):
        return lambda t, y, a: -c * y + 0.2 * jnp.sin(y)

    levels = mj.Levels((f(0.5), f(0.8), f(1.0)), (1.0, 4.0, 16.0))
    key = jax.random.key(3)
    y0 = jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)
    grid = jnp.linspace(1.0, 0.0, 17)
    sched = mj.Stitch.from_fractions(3, (0, 2), (0.25,), grid=grid)

    def g(t, y, a):
        return 0.5

    kw = dict(t0=1.0, t1=0.0, num_steps=16, key=key)
    y, info = mj.mlem_solve(levels, sched, g, y0, **kw)
    shape = jax.ShapeDtypeStruct(y0.shape, y0.dtype)
    dw = mj.brownian_increments(key, shape, t0=1.0, t1=0.0, num_steps=16)
    y_mid, _ = mj.em_solve(
        levels.fns[0], g, y0, t0=1.0, t1=0.75, num_steps=4, brownian=dw[:4], key=key
    )
    y_end, _ = mj.em_solve(
        levels.top, g, y_mid, t0=0.75, t1=0.0, num_steps=12, brownian=dw[4:], key=key
    )
    np.testing.assert_array_equal(y, y_end)
    assert info.evaluations.tolist() == [4, 0, 12]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_levels=3, levels=(0, 3), switch_times=(0.5,)), r"`levels` must be"),
        (dict(num_levels=3, levels=(), switch_times=()), r"`levels` must be"),
        (dict(num_levels=3, levels=(0, 1.5), switch_times=(0.5,)), r"`levels` must"),
        (dict(num_levels=0, levels=(0,), switch_times=()), r"`num_levels` must be"),
        (dict(num_levels=3, levels=(0, 2), switch_times=()), r"len\(levels\) - 1"),
        (dict(num_levels=3, levels=(0, 2), switch_times=(1.5,)), r"in the interval"),
        (
            dict(num_levels=3, levels=(0, 1, 2), switch_times=(0.2, 0.7)),
            r"in the order the solve",
        ),
    ],
)
def test_stitch_bad_input_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mj.Stitch(**kwargs, t0=1.0, t1=0.0)


def test_stitch_from_fractions_bad_input():
    ts = jnp.linspace(1.0, 0.0, 11)
    with pytest.raises(ValueError, match=r"`fractions` must be non-decreasing"):
        mj.Stitch.from_fractions(2, (0, 1), (1.2,), grid=ts)
    with pytest.raises(ValueError, match=r"`fractions` must be non-decreasing"):
        mj.Stitch.from_fractions(3, (0, 1, 2), (0.6, 0.2), grid=ts)
    with pytest.raises(ValueError, match=r"`grid` must be finite and strictly"):
        mj.Stitch.from_fractions(2, (0, 1), (0.5,), grid=jnp.array([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"t0` and `t1` must be finite and differ"):
        mj.Stitch(2, (0,), t0=1.0, t1=1.0)
