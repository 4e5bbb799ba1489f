"""`mlem_jax._cost`: the cost–accuracy exponent fit shared by calibration, the
benchmark harness and the ladder-training script."""

import math

import numpy as np
import pytest

from mlem_jax._cost import fit_cost_exponent


def test_an_exact_power_law_is_recovered():
    errors = np.array([1.0, 0.5, 0.25, 0.125])
    costs = 3.0 * errors**-2.5
    fit = fit_cost_exponent(errors, costs)
    assert fit.exponent == pytest.approx(2.5, rel=1e-12)
    assert fit.intercept == pytest.approx(math.log(3.0), rel=1e-12)
    assert fit.stderr == pytest.approx(0.0, abs=1e-10)


def test_the_stderr_is_the_least_squares_one():
    rng = np.random.default_rng(0)
    errors = np.exp(rng.uniform(-3, 0, 12))
    costs = errors**-3.0 * np.exp(rng.normal(0, 0.2, 12))
    fit = fit_cost_exponent(errors, costs)
    # The textbook slope standard error, from numpy's covariance of the fit.
    (slope, _), cov = np.polyfit(np.log(errors), np.log(costs), 1, cov="unscaled")
    x, y = np.log(errors), np.log(costs)
    resid = y - np.polyval([slope, _], x)
    sigma2 = resid @ resid / (len(x) - 2)
    assert fit.exponent == -slope
    assert fit.stderr == pytest.approx(math.sqrt(sigma2 * cov[0, 0]), rel=1e-9)
    assert abs(fit.exponent - 3.0) < 4 * fit.stderr


def test_too_few_points_give_nan_not_an_error():
    assert all(math.isnan(v) for v in fit_cost_exponent([], []))
    assert all(math.isnan(v) for v in fit_cost_exponent([0.5], [2.0]))
    two = fit_cost_exponent([1.0, 0.5], [1.0, 4.0])
    assert two.exponent == pytest.approx(2.0) and math.isnan(two.stderr)


def test_mismatched_points_are_refused():
    with pytest.raises(ValueError, match="one entry per point"):
        fit_cost_exponent([1.0, 0.5, 0.2], [1.0, 2.0])
