"""Tests for mlem_jax.diffusion: VP-SDE closed forms, sampling drifts, loss, metrics."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import mlem_jax as mj
import mlem_jax.diffusion as md
import mlem_jax.nn as mnn

SDE = md.VPSDE()


def test_closed_form_alpha_matches_quadrature_of_beta():
    # log α(t) = −½ ∫_0^t β, checked against an independent trapezoid quadrature.
    for t in (0.01, 0.3, 1.0):
        s = np.linspace(0.0, t, 20_001)
        integral = np.trapezoid(np.asarray(SDE.beta(s), np.float64), s)
        np.testing.assert_allclose(SDE.log_alpha(t), -0.5 * integral, rtol=1e-5)
    t = jnp.array([1e-4, 0.5, 1.0])
    np.testing.assert_allclose(SDE.alpha(t) ** 2 + SDE.sigma(t) ** 2, 1.0, rtol=1e-6)
    # Small t: σ² ≈ β_min t, computed without cancellation.
    np.testing.assert_allclose(SDE.sigma(1e-6) ** 2, 0.1e-6, rtol=1e-3)


def test_forward_noising_matches_closed_form_mean_and_variance():
    """Simulate the forward SDE with Euler–Maruyama and compare with α(t) x0, σ(t)²."""
    n, steps, t1 = 20_000, 400, 0.5
    x0 = jnp.array([1.5, -0.5])
    y0 = jnp.broadcast_to(x0, (n, 2))
    y1, _ = mj.em_solve(
        SDE.drift, SDE.diffusion, y0, t0=0.0, t1=t1, num_steps=steps, key=jr.key(0)
    )
    mean, var = SDE.marginal(x0, t1)[0], SDE.sigma(t1) ** 2
    # Monte Carlo: std of the mean is σ/√n, of the variance σ²√(2/n); Euler–Maruyama
    # has weak order 1 with h β_max ≈ 0.013 here, a bias well below the MC bound.
    np.testing.assert_allclose(y1.mean(0), mean, atol=5 * np.sqrt(var / n) + 0.01)
    np.testing.assert_allclose(y1.var(0), var, atol=5 * var * np.sqrt(2 / n) + 0.01)
    # The noised sample x_t = α x0 + σ ε is what the loss uses: same moments.
    eps = jr.normal(jr.key(1), (n, 2))
    a, s = SDE.marginal(x0, t1)
    xt = a + s * eps
    np.testing.assert_allclose(xt.mean(0), mean, atol=5 * np.sqrt(var / n))


def _gaussian_problem():
    mean = jnp.array([0.5, -1.0])
    cov = jnp.array([[0.6, 0.2], [0.2, 0.3]])
    return mean, cov, md.GaussianScore(SDE, mean, cov)


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
    mean, cov, score = _gaussian_problem()
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


def test_dsm_loss_of_exact_score_matches_closed_form():
    """With the exact score, the DSM loss at t is mean_i α²λ_i / (α²λ_i + σ²).

    (ε* = E[ε | x_t] = −σ s, and the residual ε − ε* has covariance I − σ² P_t.)
    The per-sample loss is at most χ²_d/d (variance ≤ 2/d = 1), so the batch mean is
    within 5/√n of the integral over t of the closed form.
    """
    mean, cov, score = _gaussian_problem()
    n = 20_000
    x0 = jr.multivariate_normal(jr.key(0), mean, cov, (n,))
    model = lambda t, x: -SDE.sigma(t) * score(t, x[None])[0]
    loss = md.dsm_loss(SDE, model, x0, jr.key(1))
    lam = np.linalg.eigvalsh(np.asarray(cov, np.float64))
    ts = np.linspace(1e-5, 1.0, 20_001)
    a2 = np.asarray(SDE.alpha(ts), np.float64)[:, None] ** 2
    s2 = 1 - a2
    exact = np.trapezoid(np.mean(a2 * lam / (a2 * lam + s2), 1), ts) / (1.0 - 1e-5)
    assert abs(float(loss) - exact) < 5 / np.sqrt(n)
    # A network predicting zero has loss E‖ε‖²/d = 1.
    zero = md.dsm_loss(SDE, lambda t, x: jnp.zeros_like(x), x0, jr.key(1))
    assert abs(float(zero) - 1.0) < 5 * np.sqrt(2 / (2 * n))


def test_epsilon_score_and_drifts_of_a_network():
    net = mnn.UNet((1, 8, 8), 4, (1, 2), 1, key=jr.key(0))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    params = jax.tree.map(lambda p: p + 0.05, params)
    net = eqx.combine(params, static)
    y = jr.normal(jr.key(1), (2, 1, 8, 8))
    t = jnp.asarray(0.4)

    @eqx.filter_jit
    def evaluate(net, t, y):
        eps = jax.vmap(net, in_axes=(None, 0))(t, y)
        score = md.EpsilonScore(net, SDE)(t, y)
        f_sde = md.reverse_drift(SDE, net)(t, y, None)
        f_ode = md.probability_flow_drift(SDE, net)(t, y, None)
        return eps, score, f_sde, f_ode

    eps, score, f_sde, f_ode = evaluate(net, t, y)
    np.testing.assert_allclose(score, -eps / SDE.sigma(t), rtol=1e-5)
    beta = SDE.beta(t)
    np.testing.assert_allclose(
        f_sde, -0.5 * beta * y - beta * score, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        f_ode, -0.5 * beta * y - 0.5 * beta * score, rtol=1e-4, atol=1e-5
    )


def test_make_levels_costs_and_mlem_sampling():
    ladder = mnn.unet_ladder((1, 8, 8), (4, 8), key=jr.key(0), num_res_blocks=1)
    y = jnp.zeros((2, 1, 8, 8))
    levels = md.make_levels(SDE, ladder, y)
    assert isinstance(levels, mj.Levels) and len(levels.fns) == 2
    assert 0 < levels.costs[0] < levels.costs[1]
    given = md.make_levels(SDE, ladder, y, costs=(1.0, 4.0))
    assert tuple(given.costs) == (1.0, 4.0)
    with pytest.raises(
        ValueError, match="`costs` has 1 entries but there are 2 models"
    ):
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


def test_strong_error():
    y = jnp.zeros((4, 2, 3))
    ref = jnp.ones((4, 2, 3))
    assert float(md.strong_error(y, ref)) == pytest.approx(np.sqrt(6.0))
    with pytest.raises(ValueError, match="same shape"):
        md.strong_error(y, ref[:2])


def test_sliced_wasserstein_of_a_shift_is_exact():
    """y = x + m: every projection is shifted by θ·m, so SW² = mean_θ (θ·m)².

    Over θ uniform on the sphere, (θ·m)² = |m|² θ_1², θ_1² ~ Beta(1/2, (d−1)/2) with
    mean 1/d and variance 2(d−1)/(d²(d+2)): the P-projection estimate of SW² is within
    5 standard errors of |m|²/d.
    """
    d, p = 8, 2000
    x = jr.normal(jr.key(0), (500, d))
    m = jnp.arange(1.0, d + 1)
    sw = float(md.sliced_wasserstein(x, x + m, jr.key(1), num_projections=p))
    m2 = float(m @ m)
    se = m2 * np.sqrt(2 * (d - 1) / (d**2 * (d + 2)) / p)
    assert abs(sw**2 - m2 / d) < 5 * se
    assert float(md.sliced_wasserstein(x, x, jr.key(1))) == 0.0
    # Unequal sizes: an empirical measure and itself with every point duplicated.
    assert float(md.sliced_wasserstein(x, jnp.concatenate([x, x]), jr.key(1))) < 1e-5
    # Exact 1-D W2 for unequal sizes against a direct computation: {0, 1} vs {0, 0, 3}
    # quantile functions differ on [1/3, 1/2] by 0, [1/2, 2/3] by 1, [2/3, 1] by 2.
    a, b = jnp.array([[0.0], [1.0]]), jnp.array([[0.0], [0.0], [3.0]])
    sw1 = float(md.sliced_wasserstein(a, b, jr.key(0), num_projections=4))
    assert sw1**2 == pytest.approx((1 / 6) * 1 + (1 / 3) * 4, rel=1e-5)
    with pytest.raises(ValueError, match="same sample shape"):
        md.sliced_wasserstein(x, x[:, :3], jr.key(0))


def test_mmd_against_closed_form():
    """Gaussian kernel ℓ, X ~ N(0, I_d), Y ~ N(m, I_d):
    MMD² = 2 (ℓ²/(ℓ²+2))^{d/2} (1 − exp(−|m|²/(2(ℓ²+2)))). The unbiased estimate's
    standard deviation is below 4/√n (kernel values in [0, 1])."""
    n, d, ell = 1500, 2, 1.0
    x = jr.normal(jr.key(0), (n, d))
    y = jr.normal(jr.key(1), (n, d)) + jnp.array([1.0, 0.0])
    exact = (
        2 * (ell**2 / (ell**2 + 2)) ** (d / 2) * (1 - np.exp(-1.0 / (2 * (ell**2 + 2))))
    )
    tol = 4 / np.sqrt(n)
    assert abs(float(md.mmd(x, y, bandwidth=ell)) - exact) < tol
    same = md.mmd(x, jr.normal(jr.key(2), (n, d)), bandwidth=ell)
    assert abs(float(same)) < tol
    assert np.isfinite(float(md.mmd(x, y)))  # median-heuristic bandwidth
    with pytest.raises(ValueError, match="at least 2 samples"):
        md.mmd(x[:1], y)


def test_drift_errors_of_scaled_drifts():
    ys = jr.normal(jr.key(0), (5, 3, 4))
    ts = jnp.linspace(1.0, 0.1, 5)
    fns = tuple(lambda t, y, args, c=c: c * y for c in (0.5, 0.9, 1.0))
    errs = md.drift_errors(fns, ts, ys)
    rms_norm = np.sqrt(np.mean(np.sum(np.asarray(ys) ** 2, -1)))
    np.testing.assert_allclose(errs, np.array([0.5, 0.1, 0.0]) * rms_norm, rtol=1e-5)
    with pytest.raises(ValueError, match="same T"):
        md.drift_errors(fns, ts[:3], ys)


def test_vpsde_bad_parameters():
    with pytest.raises(ValueError, match="beta_min"):
        md.VPSDE(beta_min=5.0, beta_max=1.0)
