"""The synthetic hierarchy's truncation errors, against the series' closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlem_jax.synthetic import feature_error, random_feature_hierarchy

FEATURES = (4, 32, 256)
SAMPLES = 4096
DIM = 8


def _tolerance(weights):
    """Relative tolerance on an RMS distance `sqrt(Σ_j w_j ‖v_j‖²/2)` over one draw.

    The sines are orthogonal over the states to far below a percent (their
    frequencies have norm ~sqrt(8)), so the draw's randomness is in the direction
    norms: `‖v_j‖² ~ χ²_dim/dim`, relative s.d. `sqrt(2/dim)` each, so the mean
    square has relative s.d. `sqrt(2/dim) · ‖w‖₂/‖w‖₁` and the RMS half that. Three
    of those, plus 2% for the 4096-state average."""
    w = np.asarray(weights, np.float64)
    return 3 * 0.5 * np.sqrt(2 / DIM) * np.sqrt(np.sum(w**2)) / np.sum(w) + 0.02


def _weights(n, gamma, total, exact):
    a2 = np.arange(1, total + 1, dtype=np.float64) ** (-2 / gamma - 1)
    if exact:
        kept = total // 2
        tail = 2 * feature_error(kept, None, gamma, 1.0) ** 2
        a2[kept:] = tail / (total - kept)
    return a2[n:]


def _distances(gamma, exact_tail):
    """RMS distance of each level to the reference, over SAMPLES Gaussian states."""
    levels, reference = random_feature_hierarchy(
        jax.random.key(0),
        dim=DIM,
        gamma=gamma,
        num_levels=3,
        base_features=4,
        growth=8,
        scale=3.0,
        exact_tail=exact_tail,
    )
    y = jax.random.normal(jax.random.key(1), (SAMPLES, DIM))
    r = reference(0.0, y, None)
    return np.array(
        [
            float(jnp.sqrt(jnp.mean(jnp.sum((f(0.0, y, None) - r) ** 2, -1))))
            for f in levels.fns
        ]
    )


@pytest.mark.parametrize("gamma", [2.5, 4.0])
def test_reference_carries_the_infinite_tail(gamma):
    measured = _distances(gamma, exact_tail=True)
    predicted = np.array([feature_error(n, None, gamma, 3.0) for n in FEATURES])
    total = 4 * FEATURES[-1]
    for m, p, n in zip(measured, predicted, FEATURES):
        assert abs(m / p - 1) < _tolerance(_weights(n, gamma, total, True)), (n, m, p)
    # So the measured cost–accuracy exponent is the design one: the slope 1/γ of
    # log error against log cost moves by at most the end levels' tolerances over
    # the log cost span.
    fitted = -np.polyfit(np.log(measured), np.log(FEATURES), 1)[0]
    slack = sum(_tolerance(_weights(n, gamma, total, True)) for n in FEATURES[::2])
    assert abs(1 / fitted - 1 / gamma) < slack / np.log(FEATURES[-1] / FEATURES[0])


def test_truncated_reference_underestimates_the_top_levels_error():
    gamma, total = 3.0, 4 * FEATURES[-1]
    measured = _distances(gamma, exact_tail=False)
    truncated = np.array([feature_error(n, total, gamma, 3.0) for n in FEATURES])
    for m, p, n in zip(measured, truncated, FEATURES):
        assert abs(m / p - 1) < _tolerance(_weights(n, gamma, total, False)), (n, m, p)
    # Against the series, the top level's error is understated by ~20% here.
    series = feature_error(FEATURES[-1], None, gamma, 3.0)
    assert measured[-1] < 0.85 * series


def test_tail_energy_matches_a_direct_sum():
    # sum_{j>n} j^-s for s = 2/gamma + 1 = 2 is pi^2/6 - sum_{j<=n} j^-2.
    n = 10
    direct = np.pi**2 / 6 - np.sum(np.arange(1, n + 1, dtype=np.float64) ** -2.0)
    assert feature_error(n, None, 2.0, 1.0) == pytest.approx(
        np.sqrt(direct / 2), rel=1e-12
    )


def test_reference_features_too_few_for_the_tail():
    with pytest.raises(ValueError, match="`reference_features` must be at least twice"):
        random_feature_hierarchy(
            jax.random.key(0), dim=2, gamma=3.0, num_levels=2, reference_features=40
        )
