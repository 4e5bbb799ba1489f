"""Calibration on a hierarchy whose V_l(t), costs and drift errors are known exactly."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax as mj

GAMMA = 3.0
COSTS = (1.0, 4.0, 16.0, 64.0)
DIM = 4


def _amplitudes():
    # Drift errors against the top level e_l = c_l^(−1/γ) for l < k, e_k = 0, with
    # orthogonal increments: a_l² = e_{l−1}² − e_l² for the increment of level l.
    e = [c ** (-1 / GAMMA) for c in COSTS[:-1]] + [0.0]
    a = [1.0] + [math.sqrt(e[l - 1] ** 2 - e[l] ** 2) for l in range(1, len(COSTS))]
    return np.array(a), np.array(e)


def known_hierarchy():
    """f^l(t, y) = −y + (1 + t) Σ_{j≤l} a_j u_j with orthonormal u_j: the increments
    Δ_l = a_l (1 + t) u_l do not depend on y, so V_l(t) = a_l² (1 + t)² exactly."""
    a, _ = _amplitudes()
    u = np.eye(DIM)

    def level(l):
        shift = jnp.asarray(sum(a[j] * u[j] for j in range(l + 1)), jnp.float32)
        return lambda t, y, args: -y + (1 + t) * shift

    return mj.Levels(tuple(level(l) for l in range(len(COSTS))), COSTS)


@pytest.fixture(scope="module")
def calibration():
    levels = known_hierarchy()
    y0 = jax.random.normal(jax.random.key(0), (32, DIM))
    return mj.calibrate(
        levels,
        lambda t, y, a: 0.3,
        y0,
        t0=0.0,
        t1=1.0,
        num_steps=64,
        key=jax.random.key(1),
        num_bins=4,
        pilot_keys=64,
        measure_costs=False,
    )


def test_variances_match_closed_form(calibration):
    a, _ = _amplitudes()
    h = 1 / 64
    ts = h * np.arange(64)
    bins = np.minimum((ts + h / 2) // 0.25, 3).astype(int)
    expected = np.stack([np.mean((1 + ts[bins == b]) ** 2) * a**2 for b in range(4)])
    np.testing.assert_allclose(calibration.times, [0.0, 0.25, 0.5, 0.75, 1.0])
    # Column 0 is E‖f^1‖², which depends on the trajectories; the increments don't.
    np.testing.assert_allclose(calibration.variances[:, 1:], expected[:, 1:], rtol=1e-4)


def test_sensitivity_matches_closed_form(calibration):
    # y' = y + h(−y + c) + noise + z: a perturbation z after step n is multiplied by
    # (1 − h) in each of the 64 − n − 1 later steps, whatever the trajectory.
    h = 1 / 64
    n = np.arange(64)
    per_step = (1 - h) ** (2 * (64 - n - 1))
    bins = np.minimum((h * n + h / 2) // 0.25, 3).astype(int)
    expected = [per_step[bins == b].mean() for b in range(4)]
    np.testing.assert_allclose(calibration.sensitivity, expected, rtol=1e-4)


def test_drift_errors_and_gamma(calibration):
    _, e = _amplitudes()
    # The mean over steps of (1 + t)² multiplies every squared error.
    h = 1 / 64
    factor = np.sqrt(np.mean((1 + h * np.arange(64)) ** 2))
    np.testing.assert_allclose(
        calibration.drift_errors, factor * e, rtol=1e-4, atol=1e-6
    )
    # log c = −γ log e + b holds exactly (the common factor only shifts b).
    assert abs(calibration.gamma - GAMMA) < 1e-3
    assert calibration.gamma_stderr < 1e-3
    assert calibration.warnings == ()


def test_trajectory_statistics_is_level_statistics_at_each_state():
    """The one scan behind `calibrate`, `calibrate_sampler` and `drift_errors`: per
    state, `level_statistics` of the (scaled) values, a reference after the levels."""
    from mlem_jax._calibrate import level_statistics, trajectory_statistics

    fns = tuple(lambda t, y, a, c=c: c * t * y for c in (0.5, 0.9, 1.0, 1.2))
    ts = jnp.linspace(1.0, 0.5, 3)
    ys = jax.random.normal(jax.random.key(0), (3, 5, 2))
    scales = jnp.array([1.0, 2.0, -0.5])
    got = trajectory_statistics(fns, ts, ys, None, 3, scales)
    for n in range(3):
        values = [scales[n] * f(ts[n], ys[n], None) for f in fns]
        for g, e in zip(got, level_statistics(values, 3)):
            np.testing.assert_allclose(g[n], e, rtol=1e-6)


def test_rate_rule_is_the_closed_form(calibration):
    c = np.array(COSTS)
    increment_cost = c + np.concatenate([[0.0], c[:-1]])
    shape = calibration.rate_shape()
    assert np.all(np.isinf(shape[:, 0]))
    weighted = (
        calibration.variances[:, 1:]
        * calibration.sensitivity[:, None]
        * calibration.amplification[None, 1:]
    )
    np.testing.assert_allclose(shape[:, 1:], np.sqrt(weighted / increment_cost[1:]))
    # Scaled to a budget: the predicted cost is the budget and λ ∝ sqrt(V/C) holds.
    em_cost = 64 * COSTS[-1]
    sched = calibration.schedule(budget=0.3 * em_cost)
    assert isinstance(sched, mj.Rates)
    np.testing.assert_allclose(
        calibration.predict(sched).cost, 0.3 * em_cost, rtol=1e-6
    )
    ratio = np.asarray(sched.rates[:, 1:]) / shape[:, 1:]
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-5)
    # Scaled to an error target: the predicted added error is the target.
    sched = calibration.schedule(target_error=0.05)
    np.testing.assert_allclose(calibration.predict(sched).error, 0.05, rtol=1e-6)


def test_predicted_evaluations_are_the_closed_form(calibration):
    sched = mj.Rates((jnp.inf, 16.0, 8.0, 2.0))
    pred = calibration.predict(sched)
    p = np.array([1.0, 16 / 64, 8 / 64, 2 / 64])
    nxt = np.append(p[1:], 0.0)
    np.testing.assert_allclose(
        pred.evaluations, 64 * (1 - (1 - p) * (1 - nxt)), rtol=1e-6
    )
    np.testing.assert_allclose(pred.cost, pred.evaluations @ np.array(COSTS))


def test_prediction_is_a_record(calibration):
    pred = calibration.predict(mj.Rates((jnp.inf, 16.0, 8.0, 2.0)))
    assert isinstance(pred, mj.Prediction)
    assert pred.cost == pred.evaluations @ np.array(calibration.costs)
    with pytest.raises(TypeError, match="not subscriptable"):
        pred["cost"]  # a record, not a dict


def test_amplification_is_one_without_feedback(calibration):
    # Increments that do not depend on y are not amplified by the dynamics: the
    # measured added mean-square error equals the predicted one, level by level.
    # A pilot's error is the same for the whole batch, a sum of many independent
    # ±1-weighted increments (probability 1/2): about Gaussian, so its square has
    # relative sd sqrt(2); 64 pilots give sd ≈ 0.18, and the band is 4 sd.
    amplification = calibration.amplification
    assert amplification.shape == (len(COSTS),) and amplification[0] == 1.0
    np.testing.assert_allclose(amplification[1:], 1.0, atol=4 * math.sqrt(2 / 64))


def test_amplification_sees_the_direction_of_each_levels_corrections():
    # y' = diag(0.5, −3) y: level 2's increment points along the expanding axis,
    # level 3's along the contracting one. The isotropic sensitivity a(t) averages
    # the two axes; A_l is the ratio of the growth along level l's axis to it,
    # weighted by V_l (constant here): sum_n g_l(n) / sum_n a_bin(n).
    rates = np.array([0.5, -3.0])
    c = 0.2
    base = lambda t, y, a: y * jnp.asarray(rates, y.dtype)
    levels = mj.Levels(
        (
            base,
            lambda t, y, a: base(t, y, a) + jnp.array([c, 0.0]),
            lambda t, y, a: base(t, y, a) + jnp.array([c, c]),
        ),
        (1.0, 2.0, 4.0),
    )
    n, h = 64, 1 / 64
    cal = mj.calibrate(
        levels,
        lambda t, y, a: 0.3,
        jnp.zeros((8, 2)),
        t0=0.0,
        t1=1.0,
        num_steps=n,
        key=jax.random.key(2),
        num_bins=4,
        pilot_keys=64,
        measure_costs=False,
    )
    growth = (1 + h * rates[None, :]) ** (2 * (n - 1 - np.arange(n)))[:, None]
    a_bin = np.repeat(growth.mean(axis=1).reshape(4, -1).mean(axis=1), n // 4)
    expected = growth.sum(axis=0) / a_bin.sum()  # axis 0 for level 2, 1 for level 3
    assert expected[0] > 1.5 and expected[1] < 0.25  # far from isotropic
    # Each pilot's squared error: relative sd sqrt(2) (as above); 4 sd of 64.
    np.testing.assert_allclose(
        cal.amplification[1:], expected, rtol=4 * math.sqrt(2 / 64)
    )
    # And the rates follow: the expanding level fires more, relative to V_l/C_l.
    shape = cal.rate_shape()
    np.testing.assert_allclose(
        (shape[:, 1] / shape[:, 2]) ** 2,
        cal.amplification[1] / cal.amplification[2] * (4.0 + 2.0) / (2.0 + 1.0),
        rtol=1e-6,
    )


def test_table_and_warnings():
    levels = mj.Levels(
        (lambda t, y, a: -y, lambda t, y, a: -y + 0.1, lambda t, y, a: -y + 0.1),
        (1.0, 1.0, 2.0),
    )
    with pytest.warns(UserWarning, match="levels 2 and 3 do not differ"):
        cal = mj.calibrate(
            levels,
            None,
            jnp.ones((4, 2)),
            t0=0.0,
            t1=1.0,
            num_steps=8,
            key=jax.random.key(0),
            num_bins=2,
            pilot_keys=0,
        )
    text = str(cal)
    assert "ML-EM calibration: 3 levels" in text and "fitted gamma" in text
    assert any("costs do not increase" in w for w in cal.warnings)
    assert cal.flops is not None and len(cal.flops) == 3


def test_gamma_below_two_warns():
    # Against a reference, errors 1, 1/2 (halving) while the cost doubles: γ = 1.
    u = np.eye(3)
    amps = [1.0, math.sqrt(1.0 - 0.25), 0.5]

    def level(l):
        shift = jnp.asarray(sum(amps[j] * u[j] for j in range(l + 1)), jnp.float32)
        return lambda t, y, args: -y + shift

    levels = mj.Levels((level(0), level(1)), (1.0, 2.0))
    cal = mj.calibrate(
        levels,
        None,
        jnp.zeros((4, 3)),
        t0=0.0,
        t1=1.0,
        num_steps=4,
        key=jax.random.key(0),
        num_bins=1,
        pilot_keys=0,
        measure_costs=False,
        reference=level(2),
    )
    np.testing.assert_allclose(cal.drift_errors, [1.0, 0.5], rtol=1e-5)
    assert abs(cal.gamma - 1.0) < 1e-3
    assert any("outside the HTMC regime" in w for w in cal.warnings)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(levels=(lambda t, y, a: y,)),
            TypeError,
            "`levels` must be a mlem_jax.Levels",
        ),
        (dict(num_bins=0), ValueError, "`num_bins` must be a positive int"),
        (
            dict(num_steps=2, num_bins=4),
            ValueError,
            r"`num_steps` must be at least `num_bins` \(4\)",
        ),
        (dict(pilot_keys=-1), ValueError, "`pilot_keys` must be a non-negative int"),
    ],
)
def test_calibrate_bad_input(kwargs, error, match):
    kw = dict(
        levels=known_hierarchy(),
        diffusion=None,
        y0=jnp.ones((2, DIM)),
        t0=0.0,
        t1=1.0,
        num_steps=8,
        key=jax.random.key(0),
        num_bins=2,
        pilot_keys=0,
        measure_costs=False,
    )
    kw.update(kwargs)
    with pytest.raises(error, match=match):
        mj.calibrate(**kw)


def test_schedule_bad_input(calibration):
    with pytest.raises(ValueError, match="exactly one of `target_error` or `budget`"):
        calibration.schedule()
    with pytest.raises(ValueError, match="exactly one of `target_error` or `budget`"):
        calibration.schedule(target_error=0.1, budget=10.0)
    with pytest.raises(
        ValueError, match="`target_error` must be a positive finite number"
    ):
        calibration.schedule(target_error=0.0)
    with pytest.raises(
        ValueError, match="`budget` must be above 64, the cost of running level 1"
    ):
        calibration.schedule(budget=10.0)
    with pytest.raises(ValueError, match="cannot be met by scaling the rates"):
        calibration.schedule(budget=1e9)


def test_min_probability_floors_every_level_and_keeps_the_budget(calibration):
    n = 64
    budget, p_min = 600.0, 0.05
    plain = calibration.schedule(budget=budget, num_steps=n)
    floored = calibration.schedule(budget=budget, num_steps=n, min_probability=p_min)
    rates = np.asarray(floored.rates)
    # Rates are per unit time on [0, 1]: p = λ h ≥ p_min means λ ≥ p_min n.
    assert np.all(rates[:, 1:] >= p_min * n * (1 - 1e-6))
    assert np.any(np.asarray(plain.rates)[:, 1:] < p_min * n)  # the floor binds
    for s in (plain, floored):
        assert calibration.predict(s, n).cost == pytest.approx(budget, rel=1e-3)
    # Rates above the floor keep the rule's proportions sqrt(aV/C).
    shape = calibration.rate_shape()[:, 1:]
    free = rates[:, 1:] > p_min * n * (1 + 1e-6)
    assert free.sum() >= 2
    ratio = rates[:, 1:][free] / shape[free]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    with pytest.raises(ValueError, match=r"`min_probability` must be in \[0, 1\]"):
        calibration.schedule(budget=budget, min_probability=1.5)
    # The cheapest schedule: level 1 at every step (cost 1 each), then the floor.
    assert calibration.min_cost(n) == pytest.approx(n * COSTS[0])
    assert n * COSTS[0] < calibration.min_cost(n, p_min) < budget
    with pytest.raises(ValueError, match="every other level with probability 0.1"):
        calibration.schedule(budget=budget, num_steps=n, min_probability=0.1)


def test_seconds_cost_uses_the_rule_with_seconds_in_place_of_costs(calibration):
    # Seconds whose ratios differ from the costs' (a latency-bound base level):
    # the rates must follow sqrt(A a V / S_l) with S_l = s_l + s_{l-1}, and a
    # budget in seconds must be met in seconds.
    seconds = (0.5, 0.8, 2.0, 5.0)
    timed = calibration.with_seconds(seconds)
    s = np.array(seconds)
    increment_seconds = s + np.concatenate([[0.0], s[:-1]])
    weighted = (
        timed.variances[:, 1:]
        * timed.sensitivity[:, None]
        * timed.amplification[None, 1:]
    )
    shape = timed.rate_shape(cost="seconds")
    np.testing.assert_allclose(shape[:, 1:], np.sqrt(weighted / increment_seconds[1:]))
    budget = 0.3 * 64 * seconds[-1]
    sched = timed.schedule(budget=budget, cost="seconds")
    pred = timed.predict(sched, cost="seconds")
    np.testing.assert_allclose(pred.cost, budget, rtol=1e-6)
    np.testing.assert_allclose(pred.cost, pred.evaluations @ s, rtol=1e-9)
    ratio = np.asarray(sched.rates[:, 1:]) / shape[:, 1:]
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-5)
    # The seconds-optimal rates differ from the cost-optimal ones in the ratio
    # sqrt(C_l / S_l) between levels, and the default is unchanged by timings.
    by_costs = np.asarray(timed.schedule(budget=budget * 10).rates)
    np.testing.assert_allclose(
        by_costs, np.asarray(calibration.schedule(budget=budget * 10).rates)
    )
    np.testing.assert_allclose(
        timed.min_cost(64, cost="seconds"), 64 * seconds[0], rtol=1e-9
    )


def test_seconds_cost_bad_input(calibration):
    with pytest.raises(
        ValueError,
        match="`cost` must be one of 'costs', 'flops', 'seconds'; got 'time'",
    ):
        calibration.schedule(budget=10.0, cost="time")
    with pytest.raises(
        ValueError, match=r"`cost='seconds'` needs measured seconds.*with_seconds"
    ):
        calibration.schedule(budget=10.0, cost="seconds")
    with pytest.raises(ValueError, match=r"`cost='flops'` needs measured flops"):
        calibration.predict(mj.Rates((jnp.inf, 1.0, 1.0, 1.0)), cost="flops")
    with pytest.raises(ValueError, match="4 positive finite numbers"):
        calibration.with_seconds((1.0, 2.0))
    with pytest.raises(ValueError, match="4 positive finite numbers"):
        calibration.with_seconds((1.0, 2.0, 0.0, 1.0))
    with pytest.raises(TypeError, match="sequence of numbers"):
        calibration.with_seconds(None)


def test_time_in_scan_bad_input_and_result():
    f = lambda t, y, args: jnp.tanh(y)
    seconds = mj.time_in_scan(f, 0.5, jnp.ones((4, 4)), num_steps=4, repeats=2)
    assert np.isfinite(seconds) and seconds > 0
    with pytest.raises(
        ValueError, match="time_in_scan: `num_steps` must be a positive int"
    ):
        mj.time_in_scan(f, 0.5, jnp.ones((4, 4)), num_steps=0)
    with pytest.raises(ValueError, match="`repeats` must be a positive int"):
        mj.time_in_scan(f, 0.5, jnp.ones((4, 4)), repeats=0)


def test_pair_variances_match_closed_form(calibration):
    # Orthogonal increments: E‖f^j − f^i‖² = (1 + t)² Σ_{i<l≤j} a_l² for i ≥ 1.
    a, _ = _amplitudes()
    pairs = calibration.pair_variances
    k = len(COSTS)
    assert pairs.shape == (4, k + 1, k + 1)
    np.testing.assert_allclose(pairs, np.swapaxes(pairs, 1, 2))
    for l in range(k):  # adjacent pairs are the increments
        np.testing.assert_allclose(pairs[:, l, l + 1], calibration.variances[:, l])
    for i in range(1, k):
        for j in range(i + 1, k + 1):
            expected = calibration.variances[:, i:j].sum(axis=1)
            np.testing.assert_allclose(pairs[:, i, j], expected, rtol=1e-4)
    # A sub-ladder's increments are the merged ones; costs and timings follow.
    sub = calibration.with_seconds((1.0, 2.0, 3.0, 4.0)).restrict((0, 2, 3))
    np.testing.assert_allclose(sub.variances[:, 1], pairs[:, 1, 3])
    np.testing.assert_allclose(sub.variances[:, 2], calibration.variances[:, 3])
    assert sub.costs == (COSTS[0], COSTS[2], COSTS[3])
    assert sub.seconds == (1.0, 3.0, 4.0)
    full = calibration.restrict(range(k))
    np.testing.assert_allclose(full.variances, calibration.variances)


def test_choose_levels_skips_a_level_that_saves_no_seconds(calibration):
    # Level 2 costs as many seconds as level 3: its increment buys no saving, so
    # the seconds-optimal ladder skips it, and is predicted no dearer than the full
    # ladder or Euler–Maruyama with the top level at the same added error.
    timed = calibration.with_seconds((1.0, 15.9, 16.0, 64.0))
    target = 0.05
    chosen = timed.choose_levels(target_error=target, cost="seconds")
    assert 1 not in chosen and chosen[-1] == 3

    def cost_of(idx):
        sub = timed.restrict(idx)
        return sub.predict(
            sub.schedule(target_error=target, cost="seconds"), cost="seconds"
        ).cost

    assert cost_of(chosen) <= cost_of((0, 1, 2, 3)) * (1 + 1e-9)
    assert cost_of(chosen) <= 64 * 64.0
    # With a budget: the chosen ladder adds the least predicted error.
    budget = 0.3 * 64 * 64.0
    chosen = timed.choose_levels(budget=budget, cost="seconds")
    sub = timed.restrict(chosen)
    err = sub.predict(sub.schedule(budget=budget, cost="seconds"), cost="seconds")
    full = timed.predict(timed.schedule(budget=budget, cost="seconds"), cost="seconds")
    assert err.error <= full.error * (1 + 1e-9)


def test_restrict_and_choose_levels_bad_input(calibration):
    with pytest.raises(
        ValueError, match=r"`levels` must be increasing level indices in \[0, 4\)"
    ):
        calibration.restrict((2, 1))
    with pytest.raises(ValueError, match="exactly one of `target_error` or `budget`"):
        calibration.choose_levels()
    # A prefix of the ladder keeps its variances.
    np.testing.assert_allclose(
        calibration.restrict((0, 1)).variances, calibration.variances[:, :2]
    )


def test_cli_level_schedule_chooses_a_sub_ladder(calibration):
    from mlem_jax.cli import level_schedule

    used, schedule = level_schedule(calibration, 64, 20.0, 0.0, levels="auto")
    assert used[-1] == 3 and schedule.num_levels == len(used)


def _assert_same_calibration(a, b):
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and y.dtype == x.dtype, field.name
            np.testing.assert_array_equal(x, y, err_msg=field.name)
        elif isinstance(x, float) and math.isnan(x):
            assert math.isnan(y), field.name
        else:
            assert x == y and type(x) is type(y), (field.name, x, y)


def test_json_round_trip_keeps_every_field(calibration):
    timed = calibration.with_seconds((0.5, 0.8, 2.0, 5.0))
    grid = np.linspace(timed.t0, timed.t1, timed.num_steps + 1) ** 1.5
    gridded = dataclasses.replace(timed, grid=grid, warnings=("a", "b"))
    for cal in (calibration, timed, gridded):
        back = mj.Calibration.from_json(cal.to_json())
        _assert_same_calibration(cal, back)
        # The same schedule and prediction from the copy as from the original.
        a = cal.schedule(budget=20 * cal.costs[-1], num_steps=64)
        b = back.schedule(budget=20 * back.costs[-1], num_steps=64)
        np.testing.assert_array_equal(a.rates, b.rates)


def test_json_without_pair_variances_is_refused(calibration):
    import json

    fields = json.loads(calibration.to_json())
    del fields["pair_variances"]
    with pytest.raises(ValueError, match="not a valid calibration.*pair_variances"):
        mj.Calibration.from_json(json.dumps(fields))


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "JSONDecodeError"),
        ("[1, 2]", "expected a JSON object"),
        ('{"times": [0, 1]}', "KeyError: 'variances'"),
    ],
)
def test_from_json_refuses_bad_text_with_a_reason(text, words):
    with pytest.raises(ValueError, match="not a valid calibration") as e:
        mj.Calibration.from_json(text)
    assert words in str(e.value)


def test_from_json_refuses_an_unknown_field(calibration):
    import json

    fields = json.loads(calibration.to_json())
    fields["colour"] = "blue"
    with pytest.raises(ValueError, match="colour"):
        mj.Calibration.from_json(json.dumps(fields))


# ---------------------------------------------------------------------------------
# Stitching and the hybrid: dropped corrections priced as bias


def _stitch_bias_closed_form(level, switch_steps, n=64):
    # f^j − f^k = −(1 + t) Σ_{l>j} a_l u_l does not depend on y and keeps its
    # direction, and a perturbation after step n is multiplied by (1 − h)^(63 − n):
    # the stitch moves the final state by Σ_{n<switch} h (1 − h)^(63 − n) (1 + t_n)
    # ‖Σ_{l>j} a_l u_l‖.
    a, _ = _amplitudes()
    h = 1 / n
    steps = np.arange(switch_steps)
    norm = np.sqrt(np.sum(a[level + 1 :] ** 2))
    return float(np.sum(h * (1 - h) ** (n - 1 - steps) * (1 + h * steps)) * norm)


@pytest.mark.parametrize("level, fraction", [(0, 0.5), (2, 0.25), (1, 1.0)])
def test_stitch_bias_is_predicted_and_realised(calibration, level, fraction):
    levels = known_hierarchy()
    grid = np.linspace(0.0, 1.0, 65)
    sched = mj.Stitch.from_fractions(4, (level, 3), (fraction,), grid=grid)
    exact = _stitch_bias_closed_form(level, int(64 * fraction))
    y0 = jax.random.normal(jax.random.key(4), (8, DIM))
    kw = dict(t0=0.0, t1=1.0, num_steps=64, key=jax.random.key(5))
    y, info = mj.mlem_solve(levels, sched, lambda t, y, a: 0.3, y0, **kw)
    y_top, _ = mj.em_solve(levels.top, lambda t, y, a: 0.3, y0, **kw)
    realised = np.sqrt(np.mean(np.sum((np.asarray(y) - np.asarray(y_top)) ** 2, -1)))
    np.testing.assert_allclose(realised, exact, rtol=1e-4)
    # The increments do not depend on y, so the dynamics amplify none of them:
    # with A_l = 1 (what the pilots measure here, up to their noise) the
    # calibration's a(t) and V(t) are averages over 4 bins, and the bias is their
    # product's square root summed over the steps: exact to within the bins'
    # Cauchy–Schwarz gap (well under 2% here).
    unamplified = dataclasses.replace(calibration, amplification=np.ones(4))
    pred = unamplified.predict(sched)
    np.testing.assert_allclose(pred.error, exact, rtol=0.02)
    # An amplification A on every dropped level scales the bias by sqrt(A).
    amplified = dataclasses.replace(calibration, amplification=np.full(4, 4.0))
    np.testing.assert_allclose(amplified.predict(sched).error, 2 * pred.error)
    switch = int(64 * fraction)
    expected = np.zeros(4)
    expected[level] += switch
    expected[3] += 64 - switch
    np.testing.assert_array_equal(info.evaluations, expected)
    np.testing.assert_allclose(pred.evaluations, expected)


def test_hybrid_is_never_predicted_worse_than_stitching_or_the_top_level(
    calibration,
):
    top = 64 * COSTS[-1]
    for target in (0.02, 0.05, 0.1):
        sched = calibration.hybrid(target_error=target)
        pred = calibration.predict(sched)
        assert pred.error <= target * (1 + 1e-6)
        stitches = [calibration.predict(s) for s in calibration.stitches()]
        best = min(p.cost for p in stitches if p.error <= target)
        assert pred.cost <= best * (1 + 1e-9) and pred.cost <= top
    budget = 0.3 * top
    sched = calibration.hybrid(budget=budget)
    pred = calibration.predict(sched)
    stitches = [calibration.predict(s) for s in calibration.stitches()]
    assert pred.cost <= budget * (1 + 1e-6)
    assert pred.error <= min(p.error for p in stitches if p.cost <= budget)


def test_hybrid_realised_error_and_cost_match_the_prediction(calibration):
    # A target between what stitching alone and ML-EM alone do well, so that the
    # hybrid randomises some corrections and drops others. Its error is the same
    # for every sample (the increments do not depend on y): over 512 level keys the
    # mean square has relative sd about sqrt(2/512) = 0.06 from the variance part;
    # the band is 4 sd on the RMS (12%), and the bins' gap 2% (as above).
    levels = known_hierarchy()
    target = 0.05
    sched = calibration.hybrid(target_error=target)
    pred = calibration.predict(sched)
    y0 = jax.random.normal(jax.random.key(4), (2, DIM))
    kw = dict(t0=0.0, t1=1.0, num_steps=64)
    y_top, _ = mj.em_solve(
        levels.top, lambda t, y, a: 0.3, y0, key=jax.random.key(5), **kw
    )
    dw = mj.brownian_increments(
        jax.random.key(5), jax.ShapeDtypeStruct(y0.shape, y0.dtype), **kw
    )

    def one(key):
        y, info = mj.mlem_solve(
            levels, sched, lambda t, y, a: 0.3, y0, key=key, brownian=dw, **kw
        )
        return y, info.cost

    keys = jax.random.split(jax.random.key(6), 512)
    ys, costs = jax.jit(lambda k: jax.lax.map(one, k))(keys)
    errors = np.sum((np.asarray(ys, np.float64) - np.asarray(y_top)) ** 2, -1)
    realised = float(np.sqrt(errors.mean()))
    assert realised == pytest.approx(pred.error, rel=0.14)
    costs = np.asarray(costs, np.float64)
    assert abs(costs.mean() - pred.cost) <= 5 * costs.std() / np.sqrt(512) + 1e-6


def test_hybrid_bad_input(calibration):
    with pytest.raises(ValueError, match="exactly one of `target_error` or `budget`"):
        calibration.hybrid()
    with pytest.raises(
        ValueError, match="`target_error` must be a positive finite number"
    ):
        calibration.hybrid(target_error=-1.0)
    with pytest.raises(ValueError, match=r"`min_probability` must be in \[0, 1\]"):
        calibration.hybrid(budget=100.0, min_probability=2.0)
    with pytest.raises(ValueError, match="no schedule is predicted to meet the budget"):
        calibration.hybrid(budget=1.0)


def test_from_json_refuses_non_finite_measurements(calibration):
    """A calibration with NaN variances once loaded, and its verdict said "worth
    it"; it is refused at load, naming the field."""
    import json

    for name, damage in [
        ("variances", lambda v: [[math.nan] * len(v[0])] + v[1:]),
        ("sensitivity", lambda v: [math.inf] + v[1:]),
        ("variances", lambda v: [[-1.0] * len(v[0])] + v[1:]),
    ]:
        fields = json.loads(calibration.to_json())
        fields[name] = damage(fields[name])
        with pytest.raises(ValueError, match=f"not a valid calibration.*`{name}`"):
            mj.Calibration.from_json(json.dumps(fields))


def test_predict_names_a_schedule_with_the_wrong_number_of_levels(calibration):
    k = calibration.num_levels
    for schedule in (
        mj.FixedProbabilities(jnp.ones(k + 1)),
        mj.Rates((jnp.inf,) * (k - 1)),
    ):
        with pytest.raises(ValueError, match=f"`schedule` has .* calibration has {k}"):
            calibration.predict(schedule)
