"""The VP-SDE (mlem_jax.diffusion._sde): closed forms against quadrature and
simulation, bad parameters."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import mlem_jax as mj
import mlem_jax.diffusion as md

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


def test_vpsde_bad_parameters():
    with pytest.raises(ValueError, match="beta_min"):
        md.VPSDE(beta_min=5.0, beta_max=1.0)
