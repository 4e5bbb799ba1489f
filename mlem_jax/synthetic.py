"""Drift hierarchies of the project's own making, with a cost–accuracy exponent γ
that is set, not measured: the test bench of ML-EM's theory.

The drift is a random-feature series

    f(y) = −κ·y + scale · Σ_{j≥1} a_j sin(ω_j·y + φ_j) v_j,     a_j = j^{−(1/γ + 1/2)},

and level `l` keeps the first `n_l = base_features · growth^{l−1}` terms. With random
frequencies `ω_j`, phases `φ_j` and directions `v_j`, the terms are nearly orthogonal,
so the truncation error is `‖f − f^l‖ ≈ scale · sqrt(Σ_{j>n_l} a_j²/2) ∝ n_l^{−1/γ}`,
while one evaluation costs `∝ n_l` (two matrix products of width `n_l`): reaching
accuracy `ε` costs `ε^{−γ}`.

The reference drift stands for the whole infinite series. A reference truncated
at `N` terms would make every level look closer to the truth than it is, the top
level most (at `N = 4 n_k` its error is 0.78 of the series' for `γ = 3`), and so
bend the measured `γ` below the design value. Because the `ω_j, φ_j, v_j` are
drawn independently of `j`, the series' tail beyond `J` terms is a sum of
independent features that differ only in amplitude; the reference keeps the first
`J` terms exactly and replaces the tail by `N − J` features of equal amplitude
carrying the tail's whole energy `Σ_{j>J} a_j²` (computed to double precision),
which gives it the same covariance. Every level's distance to the reference is
then the infinite series' truncation error.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks as checks
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


def feature_error(
    num_features: int, total_features: int | None, gamma: float, scale: float
):
    """Predicted RMS distance between the drift truncated at `num_features` terms and
    at `total_features` terms (`None`: the infinite series, which is what the
    reference of `random_feature_hierarchy` stands for):
    `scale · sqrt(Σ_{n<j≤N} a_j² / 2)`."""
    s = 2 / gamma + 1
    energy = _tail_energy(num_features, s)
    if total_features is not None:
        energy -= _tail_energy(total_features, s)
    return float(scale * np.sqrt(energy / 2))


def _tail_energy(n: int, s: float) -> float:
    """`Σ_{j>n} j^{−s}` for `s > 1`: an explicit sum over the next 2^20 terms plus the
    Euler–Maclaurin remainder (relative error below 1e-15)."""
    m = n + 2**20
    head = np.sum(np.arange(n + 1, m + 1, dtype=np.float64) ** -s)
    remainder = m ** (1 - s) / (s - 1) - m ** (-s) / 2 + s * m ** (-s - 1) / 12
    return float(head + remainder)


def random_feature_hierarchy(
    key: PRNGKeyArray,
    *,
    dim: int,
    gamma: float,
    num_levels: int,
    base_features: int = 16,
    growth: int = 2,
    reference_features: int | None = None,
    exact_tail: bool = True,
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
    - `exact_tail`: if true (the default), the reference stands for the infinite
        series: its first half of terms are the series' own, its second half carry
        the energy of the whole tail (see the module's docstring), so
        `‖f^l − reference‖` is the series' truncation error
        `feature_error(n_l, None, ...)`. If false, the reference is the series
        truncated at `reference_features` terms.
    - `scale`: overall size of the non-linear part; `frequency`: scale of `ω_j`;
        `damping`: the linear restoring rate `κ`, shared by every level (a large `κ`
        makes the SDE stiff: Euler–Maruyama then needs many steps, which ML-EM pays
        with its cheapest level).

    **Returns:** `(levels, reference)`. The levels share their leading terms with
    the reference, so `‖f^l − reference‖` falls like `n_l^{−1/γ}`
    (`feature_error` gives the predicted value).
    """
    where = "random_feature_hierarchy"
    checks.number(where, "gamma", gamma)
    checks.integer(where, "num_levels", num_levels)
    features = [base_features * growth**l for l in range(num_levels)]
    total = reference_features or 4 * features[-1]
    if total < (2 if exact_tail else 1) * features[-1]:
        twice = "twice " if exact_tail else ""
        what = f"at least {twice}the top level's {features[-1]} terms"
        if exact_tail:
            what += " (with `exact_tail`, half of them carry the tail)"
        raise checks.fail(where, "reference_features", what, total)
    k_omega, k_phase, k_dir = jax.random.split(key, 3)
    omega = frequency * jax.random.normal(k_omega, (dim, total), dtype)
    phase = jax.random.uniform(k_phase, (total,), dtype, 0, 2 * np.pi)
    directions = jax.random.normal(k_dir, (total, dim), dtype) / np.sqrt(dim)
    amplitude = np.arange(1, total + 1, dtype=np.float64) ** (-(1 / gamma + 0.5))
    if exact_tail:
        kept = total // 2
        tail = _tail_energy(kept, 2 / gamma + 1)
        amplitude[kept:] = np.sqrt(tail / (total - kept))
    out = scale * jnp.asarray(amplitude, dtype)[:, None] * directions

    def truncate(n):
        return RandomFeatureDrift(omega[:, :n], phase[:n], out[:n], float(damping))

    levels = Levels(fns=tuple(truncate(n) for n in features), costs=features)
    return levels, truncate(total)
