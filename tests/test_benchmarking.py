"""The benchmark's bookkeeping: frontiers, exponent fits, matched-error costs."""

import math

import numpy as np
import pytest

from mlem_jax.benchmarking import cost_to_reach, fit_exponent, pareto_frontier


def test_pareto_frontier_keeps_only_unbeaten_runs():
    runs = [
        dict(cost=1.0, error=1.0),
        dict(cost=2.0, error=1.5),  # dearer and worse: beaten
        dict(cost=3.0, error=0.5),
        dict(cost=3.0, error=0.7),  # same cost, worse: beaten
        dict(cost=5.0, error=0.6),  # dearer and worse than (3, 0.5): beaten
        dict(cost=8.0, error=0.1),
    ]
    front = pareto_frontier(runs)
    assert [(p["cost"], p["error"]) for p in front] == [
        (1.0, 1.0),
        (3.0, 0.5),
        (8.0, 0.1),
    ]


def test_fit_exponent_recovers_a_power_law():
    errors = np.array([1.0, 0.5, 0.25, 0.125])
    points = [dict(error=e, cost=7.0 * e**-3.5) for e in errors]
    exponent, stderr = fit_exponent(points)
    assert exponent == pytest.approx(3.5, rel=1e-10)
    assert stderr == pytest.approx(0.0, abs=1e-8)
    assert math.isnan(fit_exponent(points[:1])[0])


def test_cost_to_reach_is_the_cheapest_run_below_the_error():
    runs = [
        dict(cost=1.0, error=1.0),
        dict(cost=3.0, error=0.5),
        dict(cost=2.0, error=0.4),
    ]
    assert cost_to_reach(runs, 0.5) == 2.0
    assert cost_to_reach(runs, 1.0) == 1.0
    assert cost_to_reach(runs, 0.1) == math.inf
