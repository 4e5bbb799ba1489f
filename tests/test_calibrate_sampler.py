"""Calibration along a sampler's own grid (mlem_jax.diffusion._calibrate_sampler),
on Gaussian data where the corrections, and so the variances and the predicted error,
have closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import AsEps, GaussianX0, grid_increments

import mlem_jax as mj
import mlem_jax.diffusion as md

T0, T1 = 1.0, 1e-3
MEAN = jnp.array([0.3, -0.5, 1.0])


ISO = md.VPLinear()


U = jnp.array([1.0, -2.0, 0.5])


BETAS = (0.4, 0.1, 0.0)


def biased_ladder():
    """ε-networks for isotropic Gaussian data: the exact one plus `β_l u`. Their
    corrections do not depend on `y` and the data prediction's Jacobian is a
    multiple of I, so a sampler's added error is exactly linear in the corrections
    and the Rademacher sensitivity probes are exact: `Calibration.predict`'s error is
    then the exact expected mean-square distance (with one bin per step)."""
    exact = AsEps(GaussianX0(ISO, MEAN, jnp.full(3, 0.5)))

    def level(beta):
        return lambda t, y, args: exact(t, y) + beta * U

    return mj.Levels(tuple(level(b) for b in BETAS), (1.0, 4.0, 16.0))


CAL_STEPS = 10


CAL_SAMPLERS = {"sde2m": md.SDEDPMSolverPP2M()}


@pytest.fixture(scope="module")
def sampler_calibrations():
    y0 = jax.random.normal(jax.random.key(0), (2, 3))
    out = {}
    for name, sampler in CAL_SAMPLERS.items():
        out[name] = md.calibrate_sampler(
            biased_ladder(),
            ISO,
            sampler,
            y0,
            t0=T0,
            t1=T1,
            num_steps=CAL_STEPS,
            key=jax.random.key(1),
            grid="logsnr",
            num_bins=CAL_STEPS,
            pilot_keys=0,
            measure_costs=False,
        )
    return y0, out


@pytest.mark.parametrize("name", list(CAL_SAMPLERS))
def test_calibrate_sampler_variances_closed_form(name, sampler_calibrations):
    """`V_l(t_n) = ‖(c_n/h_n) Δx̂_0‖²` with `Δx̂_0 = −(σ/α)(β_l − β_{l−1}) u` and the
    sampler's coefficient `c_n` of the prediction: `α'(1 − e^{−h})` for DDIM,
    `α'(1 − e^{−2h})(1 + 1/(2r))` for SDE-DPM-Solver++(2M) after its first step."""
    _, cals = sampler_calibrations
    cal = cals[name]
    ts = np.asarray(md.time_grid(ISO, CAL_STEPS, t0=T0, t1=T1, kind="logsnr"))
    np.testing.assert_allclose(cal.grid, ts, rtol=1e-6)
    lam = np.asarray(ISO.log_snr(jnp.asarray(ts)), np.float64)
    alpha = np.asarray(ISO.alpha(jnp.asarray(ts)), np.float64)
    sigma = np.asarray(ISO.sigma(jnp.asarray(ts)), np.float64)
    h_lam = np.diff(lam)
    if name == "ddim0":
        c = alpha[1:] * -np.expm1(-h_lam)
    else:
        c = alpha[1:] * -np.expm1(-2 * h_lam)
        c[1:] *= 1 + h_lam[1:] / (2 * h_lam[:-1])
    u2 = float(np.sum(np.asarray(U, np.float64) ** 2))
    for l in (1, 2):
        d_beta = BETAS[l] - BETAS[l - 1]
        expected = (c / np.diff(ts) * sigma[:-1] / alpha[:-1] * d_beta) ** 2 * u2
        # Bins are in increasing time, steps in decreasing time.
        np.testing.assert_allclose(cal.variances[::-1, l], expected, rtol=2e-3)


@pytest.mark.parametrize("name", list(CAL_SAMPLERS))
def test_calibrated_rates_predict_cost_and_error(name, sampler_calibrations):
    """Rates from the calibration, run by `mlem_sample` on the calibrated grid: the
    mean evaluations match `predict` within 5 standard errors of a sum of independent
    Bernoullis, and the mean-square distance to the top-level sampler on the same
    noise matches `predict`'s (exact here: see `biased_ladder`) within 5 standard
    errors of the mean over keys."""
    y0, cals = sampler_calibrations
    cal = cals[name]
    sampler = CAL_SAMPLERS[name]
    schedule = cal.schedule(target_error=0.05)
    pred = cal.predict(schedule)
    ts = md.time_grid(ISO, CAL_STEPS, t0=T0, t1=T1, kind="logsnr")
    dw = (
        grid_increments(jax.random.key(5), ts, y0.shape) if sampler.stochastic else None
    )
    kw = dict(t0=T0, t1=T1, num_steps=CAL_STEPS, grid="logsnr", brownian=dw)
    levels = biased_ladder()
    top, _ = md.sample(levels.top, ISO, sampler, y0, **kw)

    @jax.jit
    def run(keys):
        def one(key):
            y, info = md.mlem_sample(levels, schedule, ISO, sampler, y0, key=key, **kw)
            return jnp.mean(jnp.sum((y - top) ** 2, -1)), info.evaluations

        return jax.lax.map(one, keys)

    num_keys = 400
    mse, evaluations = run(jax.random.split(jax.random.key(2), num_keys))
    mse = np.asarray(mse, np.float64)
    assert abs(mse.mean() - pred.error**2) <= 5 * mse.std() / np.sqrt(num_keys)
    probs = np.asarray(
        jax.vmap(schedule.probabilities)(ts[:-1], jnp.diff(ts)), np.float64
    )
    nxt = np.concatenate([probs[:, 1:], np.zeros((CAL_STEPS, 1))], axis=1)
    q = 1 - (1 - probs) * (1 - nxt)
    np.testing.assert_allclose(pred.evaluations, q.sum(0), rtol=1e-6)
    assert 0 < pred.evaluations[2] < CAL_STEPS - 1  # really randomised
    stderr = np.sqrt((q * (1 - q)).sum(0) / num_keys)
    mean = np.asarray(evaluations, np.float64).mean(0)
    assert np.all(np.abs(mean - q.sum(0)) <= 5 * stderr + 1e-9), (mean, q.sum(0))


def test_calibrate_sampler_euler_is_calibrate_of_the_probability_flow():
    """Euler on a uniform grid is Euler–Maruyama on the probability-flow drift, so
    its calibration is `mlem_jax.calibrate`'s of the levels' PF-ODE drifts: the
    correction `(c_n/h_n) Δx̂_0` is the drift difference and the sensitivity to the
    prediction over `c_n²` is the sensitivity to the state."""
    sde = md.VPSDE()
    ladder_eps = biased_ladder()
    drifts = mj.Levels(
        tuple(
            md.ProbabilityFlowDrift(
                sde, lambda t, y, f=f: -f(t, y, None) / ISO.sigma(t)
            )
            for f in ladder_eps.fns
        ),
        ladder_eps.costs,
    )
    y0 = jax.random.normal(jax.random.key(0), (2, 3))
    kw = dict(t0=T0, t1=T1, num_steps=8, key=jax.random.key(1), num_bins=4)
    kw.update(pilot_keys=0, measure_costs=False)
    ours = md.calibrate_sampler(ladder_eps, ISO, md.Euler(), y0, **kw)
    theirs = mj.calibrate(drifts, None, y0, **kw)
    np.testing.assert_allclose(ours.times, theirs.times, rtol=1e-5)
    # Level 1's column is `‖f^1‖²`: the drift's includes its part linear in `y`,
    # which is not the prediction's; the corrections (every other pair) agree.
    np.testing.assert_allclose(
        ours.variances[:, 1:], theirs.variances[:, 1:], rtol=1e-3
    )
    np.testing.assert_allclose(
        ours.pair_variances[:, 1:, 1:], theirs.pair_variances[:, 1:, 1:], rtol=1e-3
    )
    np.testing.assert_allclose(ours.sensitivity, theirs.sensitivity, rtol=1e-3)


def test_calibrate_sampler_errors_name_the_argument():
    levels = biased_ladder()
    y0 = jnp.zeros((2, 3))
    kw = dict(t0=T0, t1=T1, num_steps=8, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`sampler` must be affine.*got Heun"):
        md.calibrate_sampler(levels, ISO, md.Heun(), y0, **kw)
    with pytest.raises(ValueError, match="`num_steps` must be at least `num_bins`"):
        md.calibrate_sampler(levels, ISO, md.DDIM(), y0, num_bins=16, **kw)
    with pytest.raises(TypeError, match="`levels`"):
        md.calibrate_sampler(levels.fns, ISO, md.DDIM(), y0, **kw)
    with pytest.raises(TypeError, match="`reference`"):
        md.calibrate_sampler(levels, ISO, md.DDIM(), y0, reference=3, **kw)
    with pytest.raises(ValueError, match="`prediction`"):
        md.calibrate_sampler(levels, ISO, md.DDIM(), y0, prediction="score", **kw)
    broken = mj.Levels((lambda t, y, a: y * jnp.nan, levels.top), (1.0, 2.0))
    with pytest.raises(ValueError, match="the network of level 1 returns NaN"):
        md.calibrate_sampler(broken, ISO, md.DDIM(), y0, pilot_keys=0, **kw)
