"""The kernel distance (KID) against its closed form and its own standard error, and
the digits feature metric's power to tell samples apart."""

import jax
import numpy as np
import pytest

from mlem_jax import diffusion as md


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
    with pytest.raises(ValueError, match="`num_blocks` must be an int >= 2"):
        md.kernel_distance(x, x, num_blocks=1)
    with pytest.raises(ValueError, match="same feature dimension, got 3 and 2"):
        md.kernel_distance(x, np.zeros((16, 2)))
    with pytest.raises(ValueError, match="at least 2 samples per block"):
        md.kernel_distance(x, np.zeros((8, 3)), num_blocks=8)
    with pytest.raises(ValueError, match="`x1` and `x2` must have the same shape"):
        md.kernel_distance_difference(x, np.zeros((8, 3)), x)
    with pytest.raises(ValueError, match="`x1` and `y` must have the same feature"):
        md.kernel_distance_difference(x, x, np.zeros((16, 2)))


@pytest.fixture(scope="module")
def quality():
    return md.digits_quality()


def test_digits_quality_classifies_and_separates(quality):
    from mlem_jax.data import digits, digits_labels

    test = digits(split="test")
    accuracy = np.mean(
        np.argmax(np.asarray(quality.net(test)), axis=1) == digits_labels(split="test")
    )
    assert accuracy >= 0.9  # an MLP on these digits reaches about 0.97
    # Held-out digits are data: their KID is zero within 5 standard errors ...
    kid, se = quality(test)
    assert abs(kid) <= 5 * se
    # ... digits with noise of 40% of the data's range are not (180 images: the
    # standard errors are about 0.05).
    noisy = test + 0.8 * np.random.default_rng(0).normal(size=test.shape)
    kid_noisy, se_noisy = quality(noisy)
    assert kid_noisy - kid >= 5 * np.hypot(se, se_noisy)
    # Blown-up samples are clipped to the range, never NaN.
    assert np.isfinite(quality(np.full_like(test, np.nan))[0])


def test_feature_net_training_is_deterministic():
    from mlem_jax.data import digits, digits_labels

    images, labels = digits(split="test"), digits_labels(split="test")
    a, b = (
        md.train_feature_net(images, labels, key=jax.random.key(3), steps=20)
        for _ in range(2)
    )
    x = np.asarray(jax.random.normal(jax.random.key(0), (64, 1, 8, 8)))
    np.testing.assert_array_equal(a.features(x), b.features(x))
    c = md.train_feature_net(images, labels, key=jax.random.key(4), steps=20)
    assert not np.array_equal(a.features(x), c.features(x))


def test_feature_net_bad_input(quality):
    with pytest.raises(ValueError, match=r"expected images of shape \(n, 1, 8, 8\)"):
        quality.net.features(np.zeros((4, 64)))
    with pytest.raises(ValueError, match="`labels` one integer per image"):
        md.train_feature_net(
            np.zeros((4, 1, 8, 8)), np.zeros(3, int), key=jax.random.key(0)
        )
    with pytest.raises(ValueError, match="`labels` must be non-negative integers"):
        md.train_feature_net(np.zeros((4, 1, 8, 8)), np.zeros(4), key=jax.random.key(0))
