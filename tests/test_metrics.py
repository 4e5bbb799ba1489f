"""The sample metrics (mlem_jax.diffusion._metrics): strong error, sliced
Wasserstein, MMD, the kernel distance (KID) against closed forms and its own standard
error, drift errors."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import mlem_jax.diffusion as md


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


def _cubic_mmd2_1d(mu):
    """MMD² with k(a, b) = (ab + 1)³ between N(0, 1) and N(mu, 1): the kernel is
    Σ_j C(3, j) (ab)^j, so MMD² = Σ_j C(3, j) (E a^j − E b^j)² with the Gaussian
    moments E b = mu, E b² = 1 + mu², E b³ = mu³ + 3 mu."""
    return 3 * mu**2 + 3 * (mu**2) ** 2 + (mu**3 + 3 * mu) ** 2


@pytest.mark.parametrize("mu", [0.0, 0.3])
def test_kernel_distance_is_the_closed_form_within_its_standard_error(mu):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 1))
    y = mu + rng.normal(size=(4096, 1))
    kid, se = md.kernel_distance(x, y, num_blocks=16)
    assert se > 0
    assert abs(kid - _cubic_mmd2_1d(mu)) <= 5 * se


def test_kernel_distance_standard_error_matches_its_spread():
    # 40 independent estimates: their spread against the mean reported error
    # (the ratio of variances of 40 draws lies in [0.4, 2.5] with > 99.9%).
    rng = np.random.default_rng(1)
    kids, ses = [], []
    for _ in range(40):
        x = rng.normal(size=(256, 3))
        y = 0.2 + rng.normal(size=(256, 3))
        kid, se = md.kernel_distance(x, y, num_blocks=8)
        kids.append(kid)
        ses.append(se)
    ratio = np.var(kids, ddof=1) / np.mean(np.square(ses))
    assert 0.4 <= ratio <= 2.5


def test_kernel_distance_bad_input():
    x = np.zeros((16, 3))
    with pytest.raises(ValueError, match="`num_blocks` must be an int ≥ 2"):
        md.kernel_distance(x, x, num_blocks=1)
    with pytest.raises(
        ValueError, match="`y` must be of the same feature dimension as `x`, 3; got 2"
    ):
        md.kernel_distance(x, np.zeros((16, 2)))
    with pytest.raises(ValueError, match="at least 2 samples per block"):
        md.kernel_distance(x, np.zeros((8, 3)), num_blocks=8)
    with pytest.raises(ValueError, match="`x2` must be of the same shape as `x1`"):
        md.kernel_distance_difference(x, np.zeros((8, 3)), x)
    with pytest.raises(
        ValueError, match="`y` must be of the same feature dimension as `x1`"
    ):
        md.kernel_distance_difference(x, x, np.zeros((16, 2)))
