"""Tests for mlem_jax.diffusion's parametrisations and prediction conversions."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax.diffusion as md

PARAMS = {
    "vp_linear": (md.VPLinear(), np.linspace(1e-3, 1.0, 9)),
    "vp_cosine": (md.VPCosine(), np.linspace(1e-3, 0.99, 9)),
    "ve": (md.VE(), np.linspace(0.0, 1.0, 9)),
    "edm": (md.EDM(), np.geomspace(0.002, 80.0, 9)),
}


def test_vp_linear_matches_vpsde():
    sde = md.VPSDE(beta_min=0.2, beta_max=12.0)
    param = md.VPLinear(beta_min=0.2, beta_max=12.0)
    t = jnp.linspace(1e-4, 1.0, 11)
    np.testing.assert_allclose(param.alpha(t), sde.alpha(t), rtol=1e-6)
    np.testing.assert_allclose(param.sigma(t), sde.sigma(t), rtol=1e-6)
    np.testing.assert_allclose(param.beta(t), sde.beta(t), rtol=1e-6)


def test_closed_forms(x64):
    t = 0.37
    # VP linear: log α = −¼t²Δβ − ½tβ_min.
    p = md.VPLinear()
    la = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    np.testing.assert_allclose(p.log_alpha(t), la, rtol=1e-12)
    np.testing.assert_allclose(p.sigma(t), math.sqrt(1 - math.exp(2 * la)), rtol=1e-12)
    np.testing.assert_allclose(
        p.log_snr(t), la - 0.5 * math.log(1 - math.exp(2 * la)), rtol=1e-12
    )
    # VP cosine (Nichol & Dhariwal): α_0 = 1, α = cos ratio.
    c = md.VPCosine(s=0.008)
    ratio = math.cos(math.pi / 2 * (t + 0.008) / 1.008) / math.cos(
        math.pi / 2 * 0.008 / 1.008
    )
    np.testing.assert_allclose(c.alpha(t), ratio, rtol=1e-12)
    np.testing.assert_allclose(c.alpha(0.0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(c.sigma(t) ** 2 + c.alpha(t) ** 2, 1.0, rtol=1e-12)
    # VE: geometric σ between the end points, α = 1.
    v = md.VE(sigma_min=0.01, sigma_max=50.0)
    np.testing.assert_allclose(v.sigma(0.0), 0.01, rtol=1e-12)
    np.testing.assert_allclose(v.sigma(1.0), 50.0, rtol=1e-12)
    np.testing.assert_allclose(v.sigma(t), 0.01 * 5000**t, rtol=1e-12)
    np.testing.assert_allclose(v.alpha(t), 1.0)
    # EDM: σ = t, λ = −log t.
    e = md.EDM()
    np.testing.assert_allclose(e.sigma(3.0), 3.0)
    np.testing.assert_allclose(e.log_snr(3.0), -math.log(3.0), rtol=1e-12)


@pytest.mark.parametrize("name", PARAMS)
def test_log_snr_round_trip_and_monotone(name, x64):
    param, ts = PARAMS[name]
    ts = jnp.asarray(ts)
    lam = param.log_snr(ts)
    assert np.all(np.diff(np.asarray(lam)) < 0), "λ_t must decrease with t"
    np.testing.assert_allclose(param.t_of_log_snr(lam), ts, rtol=1e-9, atol=1e-12)
    lams = jnp.linspace(float(lam[-1]), float(lam[0]), 7)
    np.testing.assert_allclose(param.log_snr(param.t_of_log_snr(lams)), lams, rtol=1e-9)


@pytest.mark.parametrize("name", PARAMS)
def test_derivatives_match_finite_differences(name, x64):
    param, ts = PARAMS[name]
    t = float(ts[4])
    da, ds = param.derivatives(t)
    eps = 1e-6 * max(1.0, t)
    np.testing.assert_allclose(
        da, (param.alpha(t + eps) - param.alpha(t - eps)) / (2 * eps), rtol=1e-6
    )
    np.testing.assert_allclose(
        ds, (param.sigma(t + eps) - param.sigma(t - eps)) / (2 * eps), rtol=1e-6
    )


def test_vp_linear_dlogalpha_is_minus_half_beta(x64):
    p = md.VPLinear()
    t = 0.4
    da, _ = p.derivatives(t)
    np.testing.assert_allclose(da / p.alpha(t), -0.5 * p.beta(t), rtol=1e-12)


@pytest.mark.parametrize("alpha, sigma", [(0.8, 0.6), (0.05, 0.9987), (1.0, 7.0)])
def test_conversions_are_exact_and_round_trip(alpha, sigma, x64):
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(k1, (5, 3), jnp.float64)
    eps = jax.random.normal(k2, (5, 3), jnp.float64)
    y = alpha * x0 + sigma * eps
    truth = {"x0": x0, "eps": eps, "v": alpha * eps - sigma * x0}
    for source, target in itertools.product(md._param.PREDICTIONS, repeat=2):
        out = md.convert_prediction(
            truth[source], y, alpha=alpha, sigma=sigma, source=source, target=target
        )
        np.testing.assert_allclose(out, truth[target], rtol=1e-10, atol=1e-10)
        back = md.convert_prediction(
            out, y, alpha=alpha, sigma=sigma, source=target, target=source
        )
        np.testing.assert_allclose(back, truth[source], rtol=1e-10, atol=1e-10)


def test_per_sample_coefficients_broadcast():
    x0 = jnp.ones((4, 2))
    a = jnp.linspace(0.2, 0.9, 4)[:, None]
    s = jnp.sqrt(1 - a**2)
    y = a * x0
    eps = md.convert_prediction(x0, y, alpha=a, sigma=s, source="x0", target="eps")
    np.testing.assert_allclose(eps, 0.0, atol=1e-6)


def test_method_convert_uses_alpha_sigma():
    p = md.VPLinear()
    y = jnp.ones((2, 3))
    eps = jnp.full((2, 3), 0.5)
    got = p.convert(eps, 0.3, y, source="eps", target="x0")
    want = (y - p.sigma(0.3) * eps) / p.alpha(0.3)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bad_names_and_shapes():
    y = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="`source`.*'epsilon'"):
        md.convert_prediction(y, y, alpha=1.0, sigma=1.0, source="epsilon", target="x0")
    with pytest.raises(ValueError, match="`target`"):
        md.convert_prediction(y, y, alpha=1.0, sigma=1.0, source="eps", target="score")
    with pytest.raises(ValueError, match="`prediction` must be of the shape of `y`"):
        md.convert_prediction(
            jnp.zeros((3, 2)), y, alpha=1.0, sigma=1.0, source="eps", target="x0"
        )
    with pytest.raises(
        ValueError, match="`alpha` must be broadcastable to the shape of `y`"
    ):
        md.convert_prediction(
            y, y, alpha=jnp.ones(4), sigma=1.0, source="eps", target="x0"
        )
    with pytest.raises(ValueError, match="`beta_min`"):
        md.VPLinear(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="`s`"):
        md.VPCosine(s=-0.1)
    with pytest.raises(ValueError, match="`sigma_min`"):
        md.VE(sigma_min=10.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="`sigma_data`"):
        md.EDM(sigma_data=0.0)
