"""The digits feature metric (mlem_jax.diffusion._quality): its power to tell samples
apart, and its feature network. The kernel distance itself: test_metrics.py."""

import jax
import numpy as np
import pytest

from mlem_jax import diffusion as md


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
    with pytest.raises(ValueError, match=r"`x` must be images of shape \(n, 1, 8, 8\)"):
        quality.net.features(np.zeros((4, 64)))
    with pytest.raises(ValueError, match="`labels` must be one integer per image"):
        md.train_feature_net(
            np.zeros((4, 1, 8, 8)), np.zeros(3, int), key=jax.random.key(0)
        )
    with pytest.raises(ValueError, match="`labels` must be integers"):
        md.train_feature_net(np.zeros((4, 1, 8, 8)), np.zeros(4), key=jax.random.key(0))
