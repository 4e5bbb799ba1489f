"""`Calibration.verdict` against the closed form of a two-level ladder, and the
Euler–Maruyama error that `calibrate` measures for it against a fine reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax as mj
from mlem_jax._calibrate import _em_convergence


def two_levels(cost_top, variance, em_error=0.1, num_steps=32, seconds=None):
    """A hand-built calibration on [0, 1]: one time bin, sensitivity and
    amplification 1, level costs (1, cost_top), `V_2 = variance`, Euler–Maruyama's
    error `em_error` at `num_steps` with order 1."""
    pairs = np.zeros((1, 3, 3))
    pairs[0, 0, 1] = pairs[0, 1, 0] = 4.0
    pairs[0, 1, 2] = pairs[0, 2, 1] = variance
    pairs[0, 0, 2] = pairs[0, 2, 0] = 4.0 + variance
    return mj.Calibration(
        times=np.array([0.0, 1.0]),
        variances=np.array([[4.0, variance]]),
        sensitivity=np.array([1.0]),
        costs=(1.0, float(cost_top)),
        flops=None,
        seconds=seconds,
        drift_errors=np.array([math.sqrt(variance), 0.0]),
        gamma=math.nan,
        gamma_stderr=math.nan,
        amplification=np.ones(2),
        t0=0.0,
        t1=1.0,
        num_steps=num_steps,
        warnings=(),
        pair_variances=pairs,
        em_error=em_error,
        em_order=1.0,
    )


def closed_form_cost(cost_top, variance, error, em_error, num_steps, steps):
    """ML-EM's least expected cost at total error `error`: at `n` steps the
    telescope may add `δ² = error² − e(n)²`; one randomised level fired with
    probability `p = λ h` adds `n h² V (1/p − 1) = V/λ − V/n`, so
    `λ = V / (δ² + V/n)`; the base level runs every step. Cost `n + λ·cost_top`."""
    best = math.inf
    for n in steps:
        delta2 = error**2 - (em_error * num_steps / n) ** 2
        if delta2 <= 0:
            continue
        rate = variance / (delta2 + variance / n)
        best = min(best, n + rate * cost_top)
    return best


@pytest.mark.parametrize("cost_top,variance", [(64.0, 0.5), (16.0, 4.0)])
def test_verdict_costs_are_the_closed_form(cost_top, variance):
    cal = two_levels(cost_top, variance)
    steps = [8, 16, 24, 32, 48, 64, 96, 128, 256]
    errors = [0.02, 0.05, 0.1, 0.2]
    v = cal.verdict(errors=errors, steps=steps, error=0.1)
    for j, e in enumerate(v.errors):
        expected = closed_form_cost(cost_top, variance, e, 0.1, 32, steps)
        em = cost_top * 32 * 0.1 / e  # Euler–Maruyama: 32·(0.1/e) steps at cost_top
        # The verdict interpolates log–log on a grid of rate scales 9% apart:
        # far below 1% on this smooth curve.
        assert v.mlem_costs["costs"][j] == pytest.approx(expected, rel=1e-2)
        assert v.em_costs["costs"][j] == pytest.approx(em, rel=1e-9)
        assert v.speedups["costs"][j] == pytest.approx(em / expected, rel=1e-2)


@pytest.mark.parametrize("cost_top,variance", [(64.0, 0.5), (16.0, 4.0)])
def test_verdict_alternative_is_the_best_stitch_or_the_top_level(cost_top, variance):
    # Stitching level 1 for a fraction f of the 32 steps (rounded to whole steps)
    # drops the correction sqrt(V) on them: bias f·sqrt(V) (sensitivity 1,
    # interval 1), cost per step f + (1 − f)·cost_top; at error e it needs e(n)² +
    # bias² = e², i.e. n = 32·0.1/sqrt(e² − bias²) steps. The top level alone is
    # f = 0.
    cal = two_levels(cost_top, variance)
    errors = [0.02, 0.05, 0.1, 0.2, 1.0]
    v = cal.verdict(errors=errors, steps=[8, 16, 32, 64, 128], error=0.1)
    named = np.append(0.0, np.round(np.arange(1, 20) / 20, 2))
    fractions = np.rint(named * 32) / 32
    for j, e in enumerate(v.errors):
        bias = fractions * math.sqrt(variance)
        left = e**2 - bias**2
        with np.errstate(invalid="ignore", divide="ignore"):
            cost = np.where(
                left > 0,
                32 * 0.1 / np.sqrt(left) * (fractions + (1 - fractions) * cost_top),
                np.inf,
            )
        assert v.alternative_costs["costs"][j] == pytest.approx(cost.min(), rel=1e-9)
        best = int(np.argmin(cost))
        expected = (
            "the top level alone"
            if best == 0
            else f"stitching level 1 for the first {100 * named[best]:.0f}%"
        )
        assert v.alternatives[j].startswith(expected)
        multilevel = min(v.mlem_costs["costs"][j], v.hybrid_costs["costs"][j])
        assert v.gains["costs"][j] == pytest.approx(cost.min() / multilevel)


def test_verdict_sentence_threshold_and_limiting_level():
    # A top level 64× the base whose correction is small: worth it (against the
    # best of stitching and the top level alone) at every error judged from 0.1
    # up, and the level that limits it is the top one.
    cheap = two_levels(64.0, 0.01).verdict(error=0.1)
    assert cheap.worth_above is not None and cheap.worth_above < 0.1
    quoted = int(np.flatnonzero(cheap.errors == 0.1)[0])
    assert cheap.quoted == quoted and cheap.speedups["costs"][quoted] > 1
    assert np.all(cheap.gains["costs"][cheap.errors >= cheap.worth_above] > 1)
    level, share = cheap.limiting_level()
    assert level in (1, 2) and 0.5 <= share <= 1.0
    text = str(cheap)
    assert text.startswith("Worth it at errors above")
    assert f"The level that limits ML-EM is {level}" in text
    assert f"the best alternative: {cheap.alternatives[quoted]}" in text

    # A top level barely dearer than the base, with a large correction: EM with
    # the top level is cheaper at every error, and the sentence says so.
    dear = two_levels(1.2, 50.0).verdict(error=0.1)
    assert dear.worth_above is None
    assert np.all(np.nan_to_num(dear.speedups["costs"]) < 1.0)
    assert np.all(np.nan_to_num(dear.gains["costs"]) <= 1.0 + 1e-9)
    assert str(dear).startswith("Not worth it")

    # Between the two: the base level runs every step, so with a tiny correction
    # its cost is what remains; the sentence names it.
    base_bound = two_levels(64.0, 1e-6).verdict(error=0.1)
    assert base_bound.limiting_level() == (1, pytest.approx(1.0, abs=0.05))
    assert "evaluated at every step" in str(base_bound)


def test_verdict_in_seconds_uses_the_seconds():
    # Seconds make the base level as dear as the top one: no gain in seconds,
    # a gain in cost units.
    cal = two_levels(64.0, 0.01, seconds=(1.0, 1.0))
    v = cal.verdict(cost="seconds", error=0.1)
    assert set(v.speedups) == {"seconds"}
    assert v.worth_above is None
    assert two_levels(64.0, 0.01).verdict(error=0.1).worth_above is not None


def test_verdict_bad_input():
    cal = two_levels(64.0, 0.5)
    with pytest.raises(ValueError, match="no `em_error`.*pilot_keys > 0"):
        two_levels(64.0, 0.5, em_error=None).verdict()
    with pytest.raises(ValueError, match="`errors` must be a non-empty list of pos"):
        cal.verdict(errors=[0.1, -1.0])
    with pytest.raises(ValueError, match=r"`min_probability` must lie in \[0, 1\)"):
        cal.verdict(min_probability=1.0)
    with pytest.raises(ValueError, match="`steps` must be positive step counts"):
        cal.verdict(steps=[0, 8])
    with pytest.raises(ValueError, match="`error` must be > 0"):
        cal.verdict(error=0.0)
    with pytest.raises(ValueError, match="`cost='flops'` needs measured flops"):
        cal.verdict(cost="flops")


def test_em_error_matches_a_fine_reference():
    """`calibrate`'s estimate (distance to a 16n-step solve) against the RMS
    distance to a 64n-step solve on another path: independent paths, 2048 samples ×
    4 components each, so relative standard errors of about 1.6% each (5 of them
    combined: 11%), plus the estimate's own bias of at most e(16n)/e(n) = 1/16 for
    this strong order-1 method (additive noise)."""
    n, batch = 64, 2048
    shift = jnp.asarray([1.0, 0.5, 0.0, -0.5])

    def drift(t, y, args):
        return -2.0 * y + (1 + t) * shift + jnp.sin(3.0 * y)

    def diffusion(t, y, args):
        return 0.5 * jnp.ones_like(y)

    y0 = jax.random.normal(jax.random.key(0), (batch, 4))
    em_error, order = _em_convergence(
        drift, diffusion, y0, 0.0, 1.0, n, jax.random.key(1), None
    )
    dw = mj.brownian_increments(
        jax.random.key(2), y0.shape, t0=0.0, t1=1.0, num_steps=64 * n
    )
    fine = mj.em_solve(
        drift,
        diffusion,
        y0,
        t0=0.0,
        t1=1.0,
        num_steps=64 * n,
        key=jax.random.key(3),
        brownian=dw,
    )[0]
    coarse = mj.em_solve(
        drift,
        diffusion,
        y0,
        t0=0.0,
        t1=1.0,
        num_steps=n,
        key=jax.random.key(3),
        brownian=mj.coarsen_increments(dw, 64),
    )[0]
    measured = float(jnp.sqrt(jnp.mean(jnp.sum((coarse - fine) ** 2, axis=1))))
    assert em_error == pytest.approx(measured, rel=0.11 + 1 / 16)
    assert order == pytest.approx(1.0, abs=0.2)


def test_calibrate_measures_em_error():
    levels = mj.Levels((lambda t, y, a: -y, lambda t, y, a: -1.1 * y), (1.0, 8.0))

    def calibrated(pilot_keys):
        return mj.calibrate(
            levels,
            lambda t, y, a: 0.5 * jnp.ones_like(y),
            jnp.ones((16, 2)),
            t0=0.0,
            t1=1.0,
            num_steps=16,
            key=jax.random.key(0),
            num_bins=2,
            pilot_keys=pilot_keys,
            measure_costs=False,
        )

    cal = calibrated(2)
    assert cal.em_error is not None and cal.em_error > 0
    assert cal.em_order is not None and 0.25 <= cal.em_order <= 2.0
    assert cal.em_error_at(32) == pytest.approx(
        cal.em_error * 0.5**cal.em_order, rel=1e-12
    )
    assert calibrated(0).em_error is None  # no pilots, no measurement
