"""The Gaussian mixture as a true distribution (mlem_jax.diffusion._mixture): its
density and score against dense float64 closed forms and finite differences, exact
sampling's moments, the exact quality metrics on exact and on wrong samples, training
on it as a data source, and its refusals."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mlem_jax import diffusion as md

SHAPE = (1, 2, 3)  # D = 6
SDE = md.VPSDE()

# Compiled once each (eager JAX dispatches every small op on its own).
_sample = eqx.filter_jit(lambda m, key, n: m.sample_with_components(key, n))
_log_prob = eqx.filter_jit(lambda m, x: m.log_prob(x))
_log_prob_t = eqx.filter_jit(lambda m, x, t: m.log_prob(x, t, SDE))
_score = eqx.filter_jit(lambda m, t, x: m.score(t, x, SDE))


def _draw(m, key, n):
    return _sample(m, key, n)[0]


def _random_mixture(k=3, rank=2, seed=0, floor_scale=1.0):
    rng = np.random.default_rng(seed)
    d = math.prod(SHAPE)
    weights = rng.dirichlet(np.full(k, 3.0))
    means = 2.0 * rng.normal(size=(k, d))
    basis = np.linalg.qr(rng.normal(size=(k, d, d)))[0][:, :, :rank]
    variances = rng.uniform(0.2, 1.5, size=(k, rank))
    floor = floor_scale * rng.uniform(0.05, 0.2, size=k)
    return md.GaussianMixture.from_arrays(
        weights, means, basis, variances, floor, SHAPE
    )


def _dense_log_prob(m, x, t=None):
    """float64 log-density from full covariances (an independent closed form)."""
    w = np.exp(np.asarray(m.log_weights, np.float64))
    mu = np.asarray(m.means, np.float64)
    cov = np.asarray(m.covariances(), np.float64)
    a, s = (1.0, 0.0) if t is None else (float(SDE.alpha(t)), float(SDE.sigma(t)))
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    d = x.shape[1]
    out = []
    for k in range(len(w)):
        c = a**2 * cov[k] + s**2 * np.eye(d)
        r = x - a * mu[k]
        quad = np.einsum("nd,nd->n", r, np.linalg.solve(c, r.T).T)
        out.append(
            np.log(w[k])
            - 0.5 * (quad + np.linalg.slogdet(c)[1] + d * np.log(2 * np.pi))
        )
    out = np.stack(out, 1)
    top = out.max(1, keepdims=True)
    return (top + np.log(np.exp(out - top).sum(1, keepdims=True)))[:, 0]


@pytest.fixture(scope="module")
def mixture():
    return _random_mixture()


@pytest.mark.parametrize("t", [None, 0.02, 0.3, 1.0])
def test_log_prob_and_score_against_dense_float64(mixture, t):
    x = np.asarray(_draw(mixture, jr.key(1), 5))
    if t is not None:  # points where the marginal at t lives
        x = float(SDE.alpha(t)) * x + float(SDE.sigma(t)) * np.random.default_rng(
            1
        ).normal(size=x.shape)
    x = x.astype(np.float32)
    lp = np.asarray(
        _log_prob(mixture, x) if t is None else _log_prob_t(mixture, x, jnp.float32(t))
    )
    np.testing.assert_allclose(lp, _dense_log_prob(mixture, x, t), rtol=1e-5, atol=1e-4)
    if t is None:
        return
    # The score against central finite differences of the float64 dense density.
    score = np.asarray(_score(mixture, jnp.float32(t), x)).reshape(5, -1)
    flat = x.reshape(5, -1).astype(np.float64)
    h = 1e-5
    fd = np.stack(
        [
            (
                _dense_log_prob(mixture, (flat + h * e).reshape(x.shape), t)
                - _dense_log_prob(mixture, (flat - h * e).reshape(x.shape), t)
            )
            / (2 * h)
            for e in np.eye(flat.shape[1])
        ],
        1,
    )
    np.testing.assert_allclose(score, fd, rtol=2e-4, atol=2e-4 * np.abs(fd).max())


def test_exact_eps_and_score_fn_are_the_score(mixture):
    y = _draw(mixture, jr.key(2), 4)
    t = jnp.float32(0.4)

    @eqx.filter_jit
    def all_forms(m, t, y):
        eps = jax.vmap(md.MixtureEps(m, SDE), in_axes=(None, 0))(t, y)
        return (
            m.score(t, y, SDE),
            md.MixtureScore(m, SDE)(t, y),
            -eps / SDE.sigma(t),  # what EpsilonScore makes of it
            md.reverse_drift(SDE, md.MixtureEps(m, SDE))(t, y),
            md.ReverseDrift(SDE, md.MixtureScore(m, SDE))(t, y),
        )

    score, score_fn, from_eps, drift_eps, drift = all_forms(mixture, t, y)
    np.testing.assert_allclose(score_fn, score, rtol=1e-6)
    np.testing.assert_allclose(from_eps, score, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(drift_eps, drift, rtol=1e-4, atol=1e-4)


def test_exact_sampling_moments(mixture):
    n = 40_000
    x, comp = _sample(mixture, jr.key(3), n)
    flat = np.asarray(x, np.float64).reshape(n, -1)
    mean, cov = np.asarray(mixture.mean()), np.asarray(mixture.covariance())
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(flat.mean(0) - mean) < 4 * sd / math.sqrt(n))
    # Entry (i, j) of a sample covariance has standard error about
    # sqrt((Σ_ii Σ_jj + Σ_ij²)/n) (Gaussian fourth moments; 6 of them for a mixture's
    # heavier tails).
    se = np.sqrt((np.outer(sd**2, sd**2) + cov**2) / n)
    assert np.all(np.abs(np.cov(flat.T) - cov) < 6 * se)
    w = np.asarray(mixture.weights())
    freq = np.bincount(np.asarray(comp), minlength=len(w)) / n
    assert np.all(np.abs(freq - w) < 4 * np.sqrt(w * (1 - w) / n))
    # Same key, same draws.
    np.testing.assert_array_equal(x, _sample(mixture, jr.key(3), n)[0])


@pytest.fixture(scope="module")
def quality(mixture):
    return md.MixtureQuality.from_mixture(mixture, key=jr.key(4), num=20_000)


def test_entropy_against_dense_monte_carlo(mixture, quality):
    x = _draw(mixture, jr.key(5), 10_000)
    lp = _dense_log_prob(mixture, x)
    se = math.hypot(lp.std() / math.sqrt(lp.size), quality.neg_entropy_stderr)
    assert abs(lp.mean() - quality.neg_entropy) < 4 * se


def test_metrics_are_zero_on_exact_samples_and_positive_on_wrong_ones(mixture, quality):
    n = 2000
    for i in range(2):
        x = _draw(mixture, jr.key(10 + i), n)
        gap, se = quality(x)
        assert abs(gap) < 4 * se
        for hard in (False, True):
            kl, kl_se = quality.mode_kl(x, hard=hard)
            assert abs(kl) < 4 * kl_se
    # Wider components: the samples fall where the data are less likely.
    wide = _draw(_random_mixture(floor_scale=4.0), jr.key(20), n)
    gap, se = quality(wide)
    assert gap > 10 * se
    # The right components with the wrong weights: the mode histogram sees it.
    flat = eqx.tree_at(
        lambda m: m.log_weights, mixture, jnp.full(3, -math.log(3.0), jnp.float32)
    )
    kl, kl_se = quality.mode_kl(_draw(flat, jr.key(21), n))
    assert kl > 5 * kl_se
    # Paired differences: exactly 0 on the same samples, and the difference of the
    # two gaps with a smaller error than either.
    x = _draw(mixture, jr.key(30), n)
    noisy = x + 0.3 * jr.normal(jr.key(31), x.shape)
    assert quality.difference(x, x) == (0.0, 0.0)
    d, d_se = quality.difference(noisy, x)
    np.testing.assert_allclose(d, quality(noisy)[0] - quality(x)[0], rtol=1e-6)
    assert d > 10 * d_se
    report = quality.report(x)
    assert set(report) >= {"gap", "gap_stderr", "mode_kl", "mode_kl_hard"}


def test_blown_up_samples_score_badly_not_nan(mixture, quality):
    x = np.array(_draw(mixture, jr.key(40), 8))
    x[0, 0, 0, 0] = np.nan
    gap, se = quality(x)
    assert np.isfinite(gap) and gap > 1e3


def test_train_on_a_data_source_draws_fresh_batches(mixture):
    from mlem_jax.training import TrainConfig, train

    class Linear(eqx.Module):  # the smallest ε-network: fast to compile
        w: jax.Array

        def __call__(self, t, x):
            return self.w * x

    config = TrainConfig(steps=6, batch_size=16, warmup_steps=1, checkpoint_every=0)
    model = Linear(jnp.zeros(()))
    a = train(model, mixture, key=jr.key(0), config=config, progress=False)
    b = train(model, mixture, key=jr.key(0), config=config, progress=False)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert np.all(np.isfinite(a.losses)) and float(a.raw_model.w) != 0.0


def test_fitted_digits_mixture():
    from mlem_jax import data

    m = data.digits_mixture(n_components=6, rank=3)
    assert m.event_shape == (1, 8, 8) and (m.num_components, m.rank) == (6, 3)
    np.testing.assert_allclose(float(m.weights().sum()), 1.0, rtol=1e-5)
    assert float(m.floor.min()) >= 1e-2 * (1 - 1e-6)
    x = data.digits_mixture_samples(num=64, split="test", n_components=6, rank=3)
    assert x.shape == (64, 1, 8, 8)
    np.testing.assert_array_equal(
        x, data.digits_mixture_samples(num=64, split="test", n_components=6, rank=3)
    )
    assert not np.array_equal(
        x, data.digits_mixture_samples(num=64, split="train", n_components=6, rank=3)
    )
    # Digit-like: the fit's mean is the digits' mean.
    np.testing.assert_allclose(
        np.asarray(m.mean()), data.digits().reshape(-1, 64).mean(0), atol=1e-3
    )


def test_bad_inputs_are_named(mixture, quality):
    from mlem_jax import data

    m = mixture
    args = (
        np.exp(np.asarray(m.log_weights)),
        np.asarray(m.means),
        np.asarray(m.basis),
        np.asarray(m.variances),
        np.asarray(m.floor),
    )

    def build(i, value, shape=SHAPE):
        new = list(args)
        new[i] = value
        return md.GaussianMixture.from_arrays(*new, shape)

    with pytest.raises(ValueError, match="`weights` must be non-negative and sum to 1"):
        build(0, args[0] * 2)
    with pytest.raises(ValueError, match=r"`means` must be of shape \(K, D\)"):
        build(1, args[1][:2])
    with pytest.raises(ValueError, match="`basis` must have orthonormal columns"):
        build(2, 2 * args[2])
    with pytest.raises(ValueError, match="`variances` must be >= 0"):
        build(3, -args[3])
    with pytest.raises(ValueError, match="`floor` must be positive"):
        build(4, 0 * args[4])
    with pytest.raises(ValueError, match="`means` must be finite"):
        build(1, np.full_like(args[1], np.nan))
    with pytest.raises(ValueError, match="`event_shape`"):
        md.GaussianMixture.from_arrays(*args, (2, 2))
    with pytest.raises(ValueError, match=r"`x` must be of shape \(n, 1, 2, 3\)"):
        m.log_prob(jnp.zeros((2, 6)))
    with pytest.raises(ValueError, match="needs the forward process `sde`"):
        m.log_prob(jnp.zeros((2, *SHAPE)), 0.5)
    with pytest.raises(ValueError, match="`samples` must be at least 2 samples"):
        quality(jnp.zeros((4, 6)))
    with pytest.raises(ValueError, match="same shape"):
        quality.difference(jnp.zeros((4, *SHAPE)), jnp.zeros((5, *SHAPE)))
    with pytest.raises(ValueError, match="`n_components` must be a positive int"):
        data.digits_mixture(n_components=0)
    with pytest.raises(ValueError, match="`reg_covar` must be a positive"):
        data.digits_mixture(reg_covar=-1.0)
    with pytest.raises(ValueError, match="`num` must be a positive int"):
        data.digits_mixture_samples(num=0)
