"""mlem_jax.diffusion as a whole: reverse sampling recovers Gaussian data exactly as
Euler–Maruyama predicts, and a network ladder as `Levels` (diffusion._levels). The
parts: test_sde.py, test_score.py, test_metrics.py, test_param.py, test_samplers.py,
test_quality.py."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import gaussian_score

import mlem_jax as mj
import mlem_jax.diffusion as md
import mlem_jax.nn as mnn

SDE = md.VPSDE()


def _em_moments(coeffs, y0_mean, y0_cov, ts, with_noise):
    """Exact mean and covariance of the Euler–Maruyama iterates of a linear SDE.

    For drift f(t, y) = A(t) y + b(t), one step is y' = (I + h A) y + h b + g ΔW.
    """
    m, c = np.asarray(y0_mean, np.float64), np.asarray(y0_cov, np.float64)
    a_all, b_all, beta = coeffs(ts[:-1])
    for n, h in enumerate(np.diff(ts)):
        step = np.eye(2) + h * a_all[n]
        m = step @ m + h * b_all[n]
        c = step @ c @ step.T
        if with_noise:
            c = c + beta[n] * abs(h) * np.eye(2)
    return m, c


def _reverse_linear_drift(mean, cov, scale):
    """f = −½β y − scale·β s(t, y) with s = −P (y − α m), as A(t) y + b(t)."""
    mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)

    def coefficients(ts):
        # float64 closed forms of the VP-SDE (same formulas as VPSDE, in numpy).
        beta = SDE.beta_min + ts * (SDE.beta_max - SDE.beta_min)
        alpha = np.exp(
            -0.25 * ts**2 * (SDE.beta_max - SDE.beta_min) - 0.5 * ts * SDE.beta_min
        )
        sigma2 = 1 - alpha**2
        cov_t = alpha[:, None, None] ** 2 * cov + sigma2[:, None, None] * np.eye(2)
        prec = np.linalg.inv(cov_t)
        a_all = (
            -0.5 * beta[:, None, None] * np.eye(2) + scale * beta[:, None, None] * prec
        )
        b_all = (
            -scale * beta[:, None] * np.einsum("nij,j->ni", prec, mean) * alpha[:, None]
        )
        return a_all, b_all, beta

    return coefficients


@pytest.mark.parametrize("kind", ["sde", "ode"])
def test_reverse_sampling_recovers_gaussian_data(kind):
    """Sample N(m, Σ) data with the analytic score and em_solve from t=1 to t=1e-3.

    The drift is linear in y, so the mean and covariance of the Euler–Maruyama
    iterates follow an exact recursion: the samples must match it to Monte Carlo
    accuracy (5 standard errors for n samples), and the recursion must match the
    data moments up to the O(h) discretisation error, which halves when h halves.
    """
    mean, cov, score = gaussian_score(SDE)
    n, steps, t1 = 20_000, 200, 1e-3
    if kind == "sde":
        drift, diffusion, scale = md.ReverseDrift(SDE, score), SDE.diffusion, 1.0
    else:
        drift, diffusion, scale = md.ProbabilityFlowDrift(SDE, score), None, 0.5
    y0 = SDE.prior_sample(jr.key(0), (n, 2))
    y1, _ = jax.jit(
        lambda y0: mj.em_solve(
            drift, diffusion, y0, t0=1.0, t1=t1, num_steps=steps, key=jr.key(1)
        )
    )(y0)

    coeffs = _reverse_linear_drift(mean, cov, scale)
    ts = np.linspace(1.0, t1, steps + 1)
    m_em, c_em = _em_moments(coeffs, np.zeros(2), np.eye(2), ts, kind == "sde")
    sample_mean = np.asarray(y1.mean(0), np.float64)
    sample_cov = np.cov(np.asarray(y1, np.float64).T)
    # Standard errors: mean sqrt(C_ii/n); covariance entry sqrt((C_ii C_jj + C_ij²)/n).
    # (For the ODE the randomness is only the initial draw, and the same bounds hold.)
    se_mean = np.sqrt(np.diag(c_em) / n)
    se_cov = np.sqrt((np.outer(np.diag(c_em), np.diag(c_em)) + c_em**2) / n)
    np.testing.assert_array_less(np.abs(sample_mean - m_em), 5 * se_mean)
    np.testing.assert_array_less(np.abs(sample_cov - c_em), 5 * se_cov)

    # Discretisation error: against the recursion with 50× more steps (the exact
    # solve from the N(0, I) prior, to O(h/50)), first-order weak convergence.
    def em(k):
        grid = np.linspace(1.0, t1, k + 1)
        return _em_moments(coeffs, np.zeros(2), np.eye(2), grid, kind == "sde")

    m_lim, c_lim = em(50 * steps)
    errs = [
        np.abs(m_k - m_lim).max() + np.abs(c_k - c_lim).max()
        for m_k, c_k in (em(steps), em(2 * steps))
    ]
    assert 1.6 < errs[0] / errs[1] < 2.5
    # The exact solve from the N(0, I) prior misses the data law only through the
    # prior mismatch at t = 1, O(α(1)) = O(6e-3) (for the SDE it even contracts).
    alpha, sigma2 = float(SDE.alpha(t1)), float(SDE.sigma(t1)) ** 2
    m_true = alpha * np.asarray(mean)
    c_true = alpha**2 * np.asarray(cov) + sigma2 * np.eye(2)
    prior = np.abs(m_lim - m_true).max() + np.abs(c_lim - c_true).max()
    assert prior < 5 * float(SDE.alpha(1.0))
    # So the samples recover the data mean and covariance within Monte Carlo error
    # plus discretisation error plus prior mismatch (≈ 0.01 here).
    bias = errs[0] + prior
    assert bias < 0.05
    np.testing.assert_array_less(np.abs(sample_mean - m_true), 5 * se_mean + bias)
    np.testing.assert_array_less(np.abs(sample_cov - c_true), 5 * se_cov + bias)


def test_make_levels_costs_and_mlem_sampling():
    ladder = mnn.unet_ladder((1, 8, 8), (4, 8), key=jr.key(0), num_res_blocks=1)
    y = jnp.zeros((2, 1, 8, 8))
    levels = md.make_levels(SDE, ladder, y)
    assert isinstance(levels, mj.Levels) and len(levels.fns) == 2
    assert 0 < levels.costs[0] < levels.costs[1]
    given = md.make_levels(SDE, ladder, y, costs=(1.0, 4.0))
    assert tuple(given.costs) == (1.0, 4.0)
    with pytest.raises(ValueError, match="`costs` must be one cost per model"):
        md.make_levels(SDE, ladder, y, costs=(1.0,))
    # With every p_l = 1, ML-EM is Euler–Maruyama with the top level (same key, same
    # Brownian increments).
    y0 = SDE.prior_sample(jr.key(2), y.shape)
    kw = dict(t0=1.0, t1=1e-3, num_steps=3, key=jr.key(3))
    x_ml, _ = mj.mlem_solve(
        levels, mj.FixedProbabilities((1.0, 1.0)), SDE.diffusion, y0, **kw
    )
    x_em, _ = mj.em_solve(levels.fns[-1], SDE.diffusion, y0, **kw)
    np.testing.assert_allclose(x_ml, x_em, rtol=1e-4, atol=1e-4)
