"""The benchmark harness's bookkeeping (`benchmarks/_harness.py`, outside the
package): frontiers, exponent fits, matched-error costs."""

import math
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from _harness import (  # noqa: E402
    _run_key,
    cost_to_reach,
    fit_exponent,
    pareto_frontier,
)


def test_run_keys_are_distinct_and_keep_the_stored_layout():
    import jax

    key = jax.random.key(3)
    pairs = [(j, n) for j in range(1, 6) for n in (8, 24, 512, 999, 1000, 1024, 2048)]
    data = {
        tuple(np.asarray(jax.random.key_data(_run_key(key, j, n))).tolist())
        for j, n in pairs
    }
    assert len(data) == len(pairs)  # (1, 1024) and (2, 24) no longer share a key
    # Below 1000 steps, the layout the stored results were made with.
    same = jax.random.fold_in(key, 3 * 1000 + 512)
    assert np.array_equal(
        jax.random.key_data(_run_key(key, 3, 512)), jax.random.key_data(same)
    )


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


def test_summarise_leaves_diverged_runs_out_of_frontiers_and_speedups():
    from _harness import speedup_lines, summarise

    cal = dict(
        target_added_error=1.0,
        measured_added_error=1.0,
        predicted_added_error=1.0,
        predicted_cost=5.0,
    )
    runs = [
        dict(
            method="em",
            level=2,
            steps=8,
            cost=8.0,
            seconds=1.0,
            error=1.0,
            diverged=False,
        ),
        dict(
            method="em",
            level=2,
            steps=16,
            cost=16.0,
            seconds=2.0,
            error=0.5,
            diverged=False,
        ),
        dict(
            method="mlem",
            levels=2,
            steps=16,
            cost=4.0,
            error=math.nan,
            diverged=True,
            **cal,
        ),
        dict(
            method="mlem",
            levels=2,
            steps=16,
            cost=6.0,
            seconds=1.5,
            error=0.9,
            diverged=False,
            **cal,
        ),
    ]
    problem = type("P", (), dict(name="toy", gamma=None))()
    out = summarise(problem, runs, [], {})
    assert out["diverged_runs"] == 1
    assert len(out["runs"]) == 4  # kept in the record
    assert [p["cost"] for p in out["frontiers"]["mlem"]] == [6.0]
    assert out["ladder_floor_error"] == 0.5
    # The surviving ML-EM run reaches 0.9 at cost 6; EM needs cost 16 to get there.
    tight = out["speedup_at_tightest_matched_error"]
    assert tight["error"] == 0.9 and tight["speedup"] == pytest.approx(16 / 6)
    # In seconds the same EM run costs 2 s against ML-EM's 1.5 s: a smaller gain,
    # reported under its own name, and the printed lines say which is which.
    secs = out["seconds_speedup_at_tightest_matched_error"]
    assert secs["error"] == 0.9 and secs["speedup"] == pytest.approx(2 / 1.5)
    lines = speedup_lines(out)
    assert any(
        "in FLOPs at error 0.9 (tightest error both reach): 2.67×" in x for x in lines
    )
    assert any(
        "in seconds at error 0.9 (tightest error both reach): 1.33×" in x for x in lines
    )
    assert [c["measured_cost"] for c in out["calibrated_schedules"]] == [6.0]


def test_run_cost_error_match_em_steps_must_be_em_steps():
    from _harness import run_cost_error, synthetic_problem

    problem = synthetic_problem(3.0, num_levels=2, growth=4, batch=2)
    with pytest.raises(ValueError, match="`match_em_steps` must be among `em_steps`"):
        run_cost_error(problem, em_steps=(8, 16), match_em_steps=(32,))


def test_exponents_are_also_fitted_above_the_ladder_floor():
    from _harness import summarise

    # EM on a power law cost = error^-4 down to 0.25, then the top level's run that
    # reaches its floor 0.1 at a disproportionate cost (the ladder's, not EM's).
    runs = [
        dict(method="em", level=1, steps=8, cost=1.0, error=1.0),
        dict(method="em", level=1, steps=16, cost=16.0, error=0.5),
        dict(method="em", level=2, steps=8, cost=256.0, error=0.25),
        dict(method="em", level=2, steps=64, cost=1e7, error=0.1),
    ]
    problem = type("P", (), dict(name="toy", gamma=None))()
    fit = summarise(problem, runs, [], {})["exponents"]["em"]
    assert fit["points"] == 4 and fit["above_floor"]["points"] == 3
    assert fit["above_floor"]["exponent"] == pytest.approx(4.0, rel=1e-10)
    assert fit["exponent"] > 4.5  # the floor point steepens the all-points fit
