"""`benchmarks/stitch.py`'s bookkeeping (outside the package): the per-step tables
its probability schedules run as, the paired "not significantly worse" test, and
the matched comparison and summary table on a small made-up result."""

import math
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax as mj
from mlem_jax._step import probabilities_on_grid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from stitch import _not_worse, is_deterministic, matched, step_table, table  # noqa: E402


def _probs(schedule, ts):
    ts = np.asarray(ts, np.float64)
    return np.asarray(
        probabilities_on_grid(schedule, jnp.asarray(ts[:-1]), jnp.asarray(np.diff(ts)))
    )


@pytest.mark.parametrize("order", [(1, 3), (3, 1)])
def test_a_stitch_and_its_step_table_give_the_same_probabilities(order):
    # A reverse-time, non-uniform grid, as the log-SNR grid is.
    ts = np.array([1.0, 0.8, 0.5, 0.3, 0.15, 0.05, 0.001])
    st = mj.Stitch.from_fractions(4, order, (0.5,), grid=ts)
    p_stitch, p_table = _probs(st, ts), _probs(step_table(st, ts), ts)
    assert np.array_equal(p_stitch, p_table)
    # Level order[0] alone for the first 3 steps, order[1] after.
    expected = np.zeros((6, 4))
    expected[:3, order[0]] = 1.0
    expected[3:, order[1]] = 1.0
    assert np.array_equal(p_table, expected)
    assert is_deterministic(step_table(st, ts), ts)


def test_a_randomised_schedule_keeps_its_probabilities_in_the_table():
    ts = np.linspace(1.0, 0.001, 9)
    rates = mj.Rates(
        jnp.asarray([[jnp.inf, 3.0, 0.5], [jnp.inf, 1.0, 0.0]]), (0, 0.5, 1)
    )
    p, q = _probs(rates, ts), _probs(step_table(rates, ts), ts)
    np.testing.assert_allclose(q, p, rtol=1e-6, atol=0)
    assert not is_deterministic(step_table(rates, ts), ts)


def test_not_worse_is_a_paired_two_standard_error_test():
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, 400)
    noise = rng.normal(0.0, 0.1, 400)
    assert _not_worse(base + noise, base)  # same on average
    assert _not_worse(base - 0.5, base)  # better
    assert not _not_worse(base + 0.1 + noise * 0.1, base)  # clearly worse


def _run(kind, flops, seconds, sq, **fields):
    sq = np.asarray(sq, np.float64)
    if kind == "stitch":
        fields.update(predicted_error=1.0, realised_error=0.5)
    return dict(
        kind=kind,
        flops=flops,
        seconds=seconds,
        top_equivalent=flops,
        top_equivalent_seconds=seconds,
        error=float(np.sqrt(sq.mean())),
        evaluations=[0.0, flops],
        _sq=sq,
        **fields,
    )


class _Quality:
    reference = jnp.zeros((64, 2))
    num_blocks = 4


def test_matched_picks_the_cheapest_run_not_significantly_worse(monkeypatch):
    import stitch

    sq = np.linspace(0.5, 1.5, 64)
    runs = [
        _run("single", 32.0, 4.0, 0.25 * sq, level=2, steps=32),  # accurate, dear
        _run("single", 16.0, 2.0, 4.0 * sq, level=2, steps=16),  # worse
        _run("stitch", 20.0, 3.0, sq, order=[1, 2], fraction=0.5, steps=32),
        _run("stitch", 24.0, 2.5, 0.9 * sq, order=[1, 2], fraction=0.2, steps=32),
        _run(
            "hybrid",
            10.0,
            2.0,
            sq,
            goal="budget",
            goal_fraction=0.3,
            goal_value=10.0,
            returned="Rates",
            steps=32,
            predicted_error=0.5,
            realised_error=0.4,
            predicted_top_equivalent=10.0,
        ),
    ]
    # KID differences: no run is worse than another (so KID matching is cheapest).
    monkeypatch.setattr(
        stitch.md, "kernel_distance_difference", lambda *a, **k: (0.0, 1.0)
    )
    result = dict(
        level_flops=[1.0, 1.0], settings=dict(range_top_equivalent=(8.0, 40.0))
    )
    [m] = matched(result, runs, {i: i for i in range(5)}, _Quality())
    assert m["describe"].startswith("hybrid")
    # Best stitch not worse: both are; the cheaper in FLOPs is f0.5 (20), in
    # seconds f0.2 (2.5).
    assert m["best T-Stitch"]["rms_flops"]["ratio"] == pytest.approx(2.0)
    assert m["best T-Stitch"]["rms_seconds"]["ratio"] == pytest.approx(1.25)
    # Top network: only the 32-step run is as accurate.
    assert m["top network"]["rms_flops"]["ratio"] == pytest.approx(3.2)
    assert m["top network"]["kid_flops"]["ratio"] == pytest.approx(1.6)
    result.update(
        ladder="toy",
        equation="reverse SDE",
        sampler="S",
        grid="uniform",
        samples=64,
        runs=[{a: b for a, b in r.items() if a != "_sq"} for r in runs],
        matched=[m],
    )
    text = table(result)
    assert "2.00×" in text and "hybrid budget 0.3 x32 (Rates)" in text
    assert "0.500 / 0.400 (1.25)" in text
    assert math.isfinite(m["error"])


def test_interpolated_cost_reads_each_curve_log_log():
    from stitch import interpolated_cost

    curve = [
        dict(kind="single", level=2, steps=n, error=e, flops=float(n))
        for n, e in ((8, 4.0), (16, 2.0), (32, 1.0))
    ]
    other = [dict(kind="single", level=1, steps=8, error=1.5, flops=20.0)]
    cost, where = interpolated_cost(curve + other, 2.0**0.5, "flops")
    assert cost == pytest.approx(16 * 2**0.5)  # halfway between 16 and 32 in logs
    assert where == "level 2 x16 / level 2 x32"
    assert interpolated_cost(curve, 4.5, "flops")[0] == 8.0  # its cheapest point
    assert interpolated_cost(curve, 0.5, "flops") == (None, None)


def test_blown_up_runs_never_match(monkeypatch):
    import stitch

    sq = np.linspace(0.5, 1.5, 64)
    heavy = sq.copy()
    heavy[0] = 1e6  # one blown-up sample: a paired test would pass at any error
    runs = [
        _run("single", 1.0, 1.0, heavy, level=1, steps=8, blowups=1),
        _run("single", 30.0, 3.0, sq, level=2, steps=32),
        _run("multilevel", 10.0, 2.0, sq, levels=[1, 2], fraction=0.5, steps=32),
    ]
    monkeypatch.setattr(
        stitch.md, "kernel_distance_difference", lambda *a, **k: (0.0, 1.0)
    )
    result = dict(
        level_flops=[1.0, 1.0], settings=dict(range_top_equivalent=(8.0, 40.0))
    )
    assert _not_worse(heavy, sq)  # why they are left out
    [m] = matched(result, runs, {i: i for i in range(3)}, _Quality())
    assert m["best single network"]["rms_flops"]["describe"] == "level 2 x32"
