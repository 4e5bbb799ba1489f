"""Scores, sampling drifts and the denoising loss (mlem_jax.diffusion._score)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from helpers import gaussian_score

import mlem_jax.diffusion as md
import mlem_jax.nn as mnn

SDE = md.VPSDE()


def test_dsm_loss_of_exact_score_matches_closed_form():
    """With the exact score, the DSM loss at t is mean_i α²λ_i / (α²λ_i + σ²).

    (ε* = E[ε | x_t] = −σ s, and the residual ε − ε* has covariance I − σ² P_t.)
    The per-sample loss is at most χ²_d/d (variance ≤ 2/d = 1), so the batch mean is
    within 5/√n of the integral over t of the closed form.
    """
    mean, cov, score = gaussian_score(SDE)
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
