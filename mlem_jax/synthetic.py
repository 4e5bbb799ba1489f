"""Drift hierarchies of the project's own making, with a cost–accuracy exponent γ
that is set, not measured: the test bench of ML-EM's theory.

The drift is a random-feature series

    f(y) = −κ·y + scale · Σ_{j≥1} a_j sin(ω_j·y + φ_j) v_j,     a_j = j^{−(1/γ + 1/2)},

and level `l` keeps the first `n_l = base_features · growth^{l−1}` terms. With random
frequencies `ω_j`, phases `φ_j` and directions `v_j`, the terms are nearly orthogonal,
so the truncation error is `‖f − f^l‖ ≈ scale · sqrt(Σ_{j>n_l} a_j²/2) ∝ n_l^{−1/γ}`,
while one evaluation costs `∝ n_l` (two matrix products of width `n_l`): reaching
accuracy `ε` costs `ε^{−γ}`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._levels import Levels


class RandomFeatureDrift(eqx.Module):
    """`f(t, y) = −κ·y + sin(y @ omega + phase) @ out`, for `y` of shape `(..., dim)`.

    One level of `random_feature_hierarchy`; `args` and `t` are ignored.
    """

    omega: Float[Array, "dim n"]
    phase: Float[Array, " n"]
    out: Float[Array, "n dim"]
    damping: float = eqx.field(static=True, default=1.0)

    def __call__(self, t, y, args):
        del t, args
        features = jnp.sin(y @ self.omega.astype(y.dtype) + self.phase.astype(y.dtype))
        return -self.damping * y + features @ self.out.astype(y.dtype)

    @property
    def num_features(self) -> int:
        return self.phase.shape[0]


def feature_error(num_features: int, total_features: int, gamma: float, scale: float):
    """Predicted RMS distance between the drift truncated at `num_features` terms and
    at `total_features` terms: `scale · sqrt(Σ_{n<j≤N} a_j² / 2)`."""
    j = np.arange(num_features + 1, total_features + 1, dtype=np.float64)
    return float(scale * np.sqrt(np.sum(j ** (-2 / gamma - 1)) / 2))


def random_feature_hierarchy(
    key: PRNGKeyArray,
    *,
    dim: int,
    gamma: float,
    num_levels: int,
    base_features: int = 16,
    growth: int = 2,
    reference_features: int | None = None,
    scale: float = 1.0,
    frequency: float = 1.0,
    damping: float = 1.0,
    dtype=jnp.float32,
) -> tuple[Levels, RandomFeatureDrift]:
    """A `Levels` of random-feature drifts whose cost grows like `ε^{−γ}`.

    **Arguments:**

    - `key`: PRNG key for the frequencies, phases and directions.
    - `dim`: dimension of the state `y` (shape `(..., dim)`).
    - `gamma`: the cost–accuracy exponent `γ > 0`; `γ > 2` is the regime where
        ML-EM's cost is that of a constant number of top-level evaluations.
    - `num_levels`: the number of levels `k`.
    - `base_features`, `growth`: level `l` has `base_features · growth^{l−1}` terms;
        costs are reported as the number of terms.
    - `reference_features`: terms of the returned reference drift, the "true" `f`
        that the levels approximate (default: `4 ×` the top level's).
    - `scale`: overall size of the non-linear part; `frequency`: scale of `ω_j`;
        `damping`: the linear restoring rate `κ`, shared by every level (a large `κ`
        makes the SDE stiff: Euler–Maruyama then needs many steps, which ML-EM pays
        with its cheapest level).

    **Returns:** `(levels, reference)`. The levels share their leading terms with
    the reference, so `‖f^l − reference‖` falls like `n_l^{−1/γ}`
    (`feature_error` gives the predicted value).
    """
    if gamma <= 0:
        raise ValueError(f"random_feature_hierarchy: `gamma` must be > 0; got {gamma}.")
    if num_levels < 1:
        raise ValueError(
            f"random_feature_hierarchy: `num_levels` must be >= 1; got {num_levels}."
        )
    features = [base_features * growth**l for l in range(num_levels)]
    total = reference_features or 4 * features[-1]
    if total < features[-1]:
        raise ValueError(
            "random_feature_hierarchy: `reference_features` must be at least the top "
            f"level's {features[-1]} terms; got {total}."
        )
    k_omega, k_phase, k_dir = jax.random.split(key, 3)
    omega = frequency * jax.random.normal(k_omega, (dim, total), dtype)
    phase = jax.random.uniform(k_phase, (total,), dtype, 0, 2 * np.pi)
    directions = jax.random.normal(k_dir, (total, dim), dtype) / np.sqrt(dim)
    j = jnp.arange(1, total + 1, dtype=dtype)
    out = scale * (j ** (-(1 / gamma + 0.5)))[:, None] * directions

    def truncate(n):
        return RandomFeatureDrift(omega[:, :n], phase[:n], out[:n], float(damping))

    levels = Levels(fns=tuple(truncate(n) for n in features), costs=features)
    return levels, truncate(total)
