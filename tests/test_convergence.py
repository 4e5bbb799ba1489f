"""The top network's own error with a sampler (mlem_jax.diffusion._convergence), which
the verdict of a `calibrate_sampler` calibration compares multilevel sampling with:
on Gaussian data the probability-flow ODE has a closed-form solution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import AsEps, GaussianX0

import mlem_jax as mj
import mlem_jax.diffusion as md
from mlem_jax._verdict import SAMPLER_BASELINE
from mlem_jax.diffusion._convergence import FINE, sampler_convergence

T0, T1 = 1.0, 1e-3
ISO = md.VPLinear()
MEAN = jnp.array([0.3, -0.5, 1.0])
VAR = 0.5
NET = GaussianX0(ISO, MEAN, jnp.full(3, VAR))
Y0 = jax.random.normal(jax.random.key(0), (64, 3))


def ode_solution(y0):
    """The probability-flow ODE from `T0` to `T1` for data `N(MEAN, VAR·I)`: the
    marginals are `N(α m, (α² VAR + σ²) I)` and the flow standardises between them."""
    a0, s0, a1, s1 = ISO.alpha(T0), ISO.sigma(T0), ISO.alpha(T1), ISO.sigma(T1)
    ratio = jnp.sqrt(a1**2 * VAR + s1**2) / jnp.sqrt(a0**2 * VAR + s0**2)
    return a1 * MEAN + ratio * (y0 - a0 * MEAN)


def rms(a, b):
    return float(jnp.sqrt(jnp.mean(jnp.sum((a - b) ** 2, axis=1))))


@pytest.mark.parametrize("sampler", [md.DDIM(), md.DPMSolverPP2M()], ids=str)
def test_error_of_an_ode_sampler_matches_the_closed_form(sampler):
    """The measured error is the distance to the exact flow, up to the finest solve's
    own error: about `FINE^−q` of it for a method of order `q ≥ 1` (two of that)."""
    n = 8
    ts = np.asarray(md.time_grid(ISO, n, t0=T0, t1=T1, kind="logsnr"))
    error, order = sampler_convergence(
        NET, ISO, sampler, Y0, ts=ts, key=jax.random.key(1), prediction="x0", args=None
    )
    y, _ = md.sample(
        NET, ISO, sampler, Y0, t0=T0, t1=T1, num_steps=n, prediction="x0", grid=ts
    )
    exact = rms(y, ode_solution(Y0))
    assert error == pytest.approx(exact, rel=2 / FINE)
    assert 0.5 <= order <= 2.0


def test_a_stochastic_sampler_converges_on_one_path():
    """SDE-DPM-Solver++(1)'s noise at every step count is the sum of one path's fine
    increments, so its pathwise error falls with the steps (strong order about 1/2
    to 1 here); noises drawn independently per step count would leave a distance
    that does not fall, order about 0 (clipped to 1/4)."""
    ts = np.asarray(md.time_grid(ISO, 8, t0=T0, t1=T1, kind="logsnr"))
    args = dict(ts=ts, key=jax.random.key(1), prediction="x0", args=None)
    error, order = sampler_convergence(NET, ISO, md.SDEDPMSolverPP1(), Y0, **args)
    assert order > 0.4
    assert np.isfinite(error) and error > 0


def test_a_sampler_calibration_has_a_verdict():
    """`calibrate_sampler` with pilots measures the top network's own error, so the
    verdict is defined; at the quoted error the baseline takes the pilot's steps."""
    exact = AsEps(NET)
    u = jnp.array([1.0, -2.0, 0.5])

    def level(beta):
        return lambda t, y, args: exact(t, y) + beta * u

    levels = mj.Levels(tuple(level(b) for b in (0.4, 0.0)), (1.0, 16.0))
    cal = md.calibrate_sampler(
        levels,
        ISO,
        md.DPMSolverPP2M(),
        Y0[:16],
        t0=T0,
        t1=T1,
        num_steps=8,
        key=jax.random.key(2),
        grid="logsnr",
        pilot_keys=1,
        measure_costs=False,
    )
    assert cal.em_error is not None and cal.em_error > 0
    verdict = cal.verdict()
    q = verdict.quoted
    assert verdict.errors[q] == pytest.approx(cal.em_error)
    assert verdict.em_steps[q] == pytest.approx(8)
    assert np.sum(np.isclose(verdict.errors, cal.em_error)) == 1
    assert verdict.baseline == SAMPLER_BASELINE and SAMPLER_BASELINE in str(verdict)
