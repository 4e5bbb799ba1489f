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


@pytest.mark.parametrize("probs", [(1.0, 0.0), (1.5,), (1.0, -0.1), (float("nan"),)])
def test_fixed_probabilities_out_of_range(probs):
    with pytest.raises(ValueError, match=r"`probs` must lie in \(0, 1\]"):
        mj.FixedProbabilities(probs)


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
        (dict(rates=(1.0, float("nan"))), "contains NaN"),
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
    with pytest.raises(Exception, match=r"must lie in \(0, 1\]"):
        probs(jnp.array([1.0, 1.5]))
    rates = eqx.filter_jit(lambda r: mj.Rates(r).rates)
    assert rates(jnp.array([jnp.inf, 2.0])).shape == (1, 2)
    for bad in ([1.0, jnp.nan], [1.0, -2.0]):
        with pytest.raises(Exception, match="non-negative and not NaN"):
            rates(jnp.array(bad))
