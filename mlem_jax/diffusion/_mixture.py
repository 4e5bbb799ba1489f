"""A Gaussian mixture as a *true* data distribution: exact samples, and the exact
log-density and score of every VP-SDE marginal.

Component `k` has weight `w_k`, mean `μ_k` and the covariance of probabilistic PCA,

    Σ_k = U_k diag(λ_k) U_kᵀ + c_k I,   U_k: D × r with orthonormal columns,

so under the forward process `X_t = α_t X_0 + σ_t ε` it stays a Gaussian mixture with
component `k` equal to `N(α_t μ_k, α_t² Σ_k + σ_t² I)`, whose covariance has the same
eigenvectors: eigenvalues `e_kj = α_t² (λ_kj + c_k) + σ_t²` along `U_k` and
`d_k = α_t² c_k + σ_t²` on the rest. Every density, responsibility and score then costs
`O(K D r)` per point at any `t`, with no `D × D` solve.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .. import _checks as checks
from ._sde import VPSDE

_WHERE = "GaussianMixture.from_arrays"


def _check_mixture(w, mu, u, lam, c) -> None:
    """`from_arrays`'s checks of the NumPy arrays of a mixture."""
    k = w.shape[0] if w.ndim == 1 and w.size >= 1 else -1
    d = mu.shape[1] if mu.ndim == 2 else -1
    r = u.shape[2] if u.ndim == 3 else -1
    for arg, a, shape, spelled in (
        ("weights", w, (k,), "a 1-D array (K,)"),
        ("means", mu, (k, d), f"of shape (K, D) = ({k}, D)"),
        ("basis", u, (k, d, r), f"of shape (K, D, r) = ({k}, {d}, r)"),
        ("variances", lam, (k, r), f"of shape (K, r) = ({k}, {r})"),
        ("floor", c, (k,), f"of shape (K,) = ({k},)"),
    ):
        if a.shape != shape:
            raise checks.fail(_WHERE, arg, spelled, a.shape)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{_WHERE}: `{arg}` must be finite.")
    if np.any(w < 0) or abs(w.sum() - 1.0) > 1e-4:
        raise checks.fail(_WHERE, "weights", "non-negative and sum to 1", w.tolist())
    if np.any(lam < 0):
        raise checks.fail(_WHERE, "variances", ">= 0", float(lam.min()))
    if np.any(c <= 0):
        raise checks.fail(_WHERE, "floor", "positive", c.tolist())
    gram = np.einsum("kdi,kdj->kij", u, u)
    err = np.abs(gram - np.eye(r)).max() if r else 0.0
    if err > 1e-3:
        message = f"`basis` must have orthonormal columns; deviation {err:.3g}"
        raise ValueError(f"{_WHERE}: {message} (U_kᵀ U_k = I within 1e-3).")


class GaussianMixture(eqx.Module):
    """A mixture of `K` Gaussians in `D = prod(event_shape)` dimensions with
    low-rank-plus-isotropic covariances `Σ_k = U_k diag(λ_k) U_kᵀ + c_k I`.

    Build one with [`GaussianMixture.from_arrays`][] (which checks its arguments) or
    `mlem_jax.data.digits_mixture()`. Points are batched: `(n, *event_shape)`.

    - `sample(key, n)`: `n` exact draws.
    - `log_prob(x, t=0, sde=None)`: the log-density of the data (`t = 0`) or of the
      VP-SDE marginal at time `t`.
    - `score(t, y, sde)`: `∇_y log p_t(y)`; `responsibilities(x, ...)`: the posterior
      component probabilities.
    """

    log_weights: Float[Array, " k"]
    means: Float[Array, " k d"]
    basis: Float[Array, " k d r"]
    variances: Float[Array, " k r"]
    floor: Float[Array, " k"]
    event_shape: tuple[int, ...] = eqx.field(static=True)

    @classmethod
    def from_arrays(
        cls,
        weights: Float[ArrayLike, " k"],
        means: Float[ArrayLike, " k d"],
        basis: Float[ArrayLike, " k d r"],
        variances: Float[ArrayLike, " k r"],
        floor: Float[ArrayLike, " k"],
        event_shape: tuple[int, ...] | None = None,
        dtype=jnp.float32,
    ) -> GaussianMixture:
        """Check and assemble a mixture.

        **Arguments:**

        - `weights`: `(K,)` non-negative, summing to 1 (within 1e-4; renormalised).
        - `means`: `(K, D)`.
        - `basis`: `(K, D, r)`, each `U_k` with orthonormal columns (within 1e-3).
        - `variances`: `(K, r)` non-negative extra variances along the columns.
        - `floor`: `(K,)` positive isotropic variances `c_k`.
        - `event_shape`: the shape of one point (default `(D,)`), e.g. `(1, 8, 8)`.
        - `dtype`: the floating dtype of the stored arrays.
        """
        w = np.asarray(weights, np.float64)
        mu = np.asarray(means, np.float64)
        u = np.asarray(basis, np.float64)
        lam = np.asarray(variances, np.float64)
        c = np.asarray(floor, np.float64)
        _check_mixture(w, mu, u, lam, c)
        d = u.shape[1]
        shape = (d,) if event_shape is None else tuple(int(s) for s in event_shape)
        if math.prod(shape) != d:
            what = f"a shape of D = {d} values, the means' size"
            raise checks.fail(_WHERE, "event_shape", what, shape)
        with np.errstate(divide="ignore"):
            log_w = np.log(w / w.sum())
        return cls(
            jnp.asarray(log_w, dtype),
            jnp.asarray(mu, dtype),
            jnp.asarray(u, dtype),
            jnp.asarray(lam, dtype),
            jnp.asarray(c, dtype),
            shape,
        )

    @property
    def num_components(self) -> int:
        return self.log_weights.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def rank(self) -> int:
        return self.basis.shape[2]

    def weights(self) -> Float[Array, " k"]:
        return jnp.exp(self.log_weights)

    def covariances(self) -> Float[Array, " k d d"]:
        """The full `(K, D, D)` covariances (for checks; the methods never form
        them)."""
        eye = jnp.eye(self.dim, dtype=self.means.dtype)
        low = jnp.einsum("kdr,kr,ker->kde", self.basis, self.variances, self.basis)
        return low + self.floor[:, None, None] * eye

    def mean(self) -> Float[Array, " d"]:
        """The mixture's mean (flat)."""
        return self.weights() @ self.means

    def covariance(self) -> Float[Array, " d d"]:
        """The mixture's covariance (flat): `Σ_k w_k (Σ_k + μ_k μ_kᵀ) − m mᵀ`."""
        w = self.weights()
        m = w @ self.means
        second = jnp.einsum("k,kde->de", w, self.covariances())
        second = second + jnp.einsum("k,kd,ke->de", w, self.means, self.means)
        return second - jnp.outer(m, m)

    # -- sampling ----------------------------------------------------------------

    def sample_with_components(
        self, key: PRNGKeyArray, n: int
    ) -> tuple[Float[Array, " n *shape"], Array]:
        """`n` exact draws and the component each was drawn from."""
        k_c, k_low, k_iso = jr.split(key, 3)
        comp = jr.categorical(k_c, self.log_weights, shape=(n,))
        dtype = self.means.dtype
        z = jr.normal(k_low, (n, self.rank), dtype) * jnp.sqrt(self.variances[comp])
        noise = jr.normal(k_iso, (n, self.dim), dtype)
        x = (
            self.means[comp]
            + jnp.einsum("ndr,nr->nd", self.basis[comp], z)
            + jnp.sqrt(self.floor[comp])[:, None] * noise
        )
        return x.reshape(n, *self.event_shape), comp

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, " n *shape"]:
        """`n` exact draws, shape `(n, *event_shape)`."""
        return self.sample_with_components(key, n)[0]

    # -- densities and scores ----------------------------------------------------

    def _coefficients(self, t, sde):
        if sde is None:
            if t is not None:
                raise ValueError(
                    "GaussianMixture: `t` needs the forward process `sde`."
                )
            return jnp.ones((), self.means.dtype), jnp.zeros((), self.means.dtype)
        t = jnp.asarray(t, self.means.dtype)
        return sde.alpha(t).astype(t.dtype), sde.sigma(t).astype(t.dtype)

    def _flat(self, x, name="x"):
        x = jnp.asarray(x)
        if x.shape[1:] != self.event_shape:
            what = f"of shape (n, {', '.join(map(str, self.event_shape))})"
            raise checks.fail("GaussianMixture", name, what, x.shape)
        return x.reshape(x.shape[0], self.dim).astype(self.means.dtype)

    def _parts(self, y, alpha, sigma):
        """Per point and component: log N_k(y), the projections `p = U_kᵀ(y − α μ_k)`
        and the two precisions `1/d_k`, `1/e_kj`."""
        a2, s2 = alpha**2, sigma**2
        d_k = a2 * self.floor + s2  # (K,)
        e_k = a2 * (self.variances + self.floor[:, None]) + s2  # (K, r)
        um = jnp.einsum("kdr,kd->kr", self.basis, self.means)
        p = jnp.einsum("kdr,nd->nkr", self.basis, y) - alpha * um[None]
        sq = (
            jnp.sum(y**2, 1)[:, None]
            - 2 * alpha * y @ self.means.T
            + a2 * jnp.sum(self.means**2, 1)[None]
        )
        sq = jnp.maximum(sq, 0.0)
        p2 = jnp.sum(p**2, -1)
        quad = (sq - p2) / d_k + jnp.sum(p**2 / e_k[None], -1)
        logdet = (self.dim - self.rank) * jnp.log(d_k) + jnp.sum(jnp.log(e_k), -1)
        log_n = -0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))
        return log_n, p, 1 / d_k, 1 / e_k

    def component_log_probs(
        self, x: Float[ArrayLike, " n *shape"], t=None, sde: VPSDE | None = None
    ) -> Float[Array, " n k"]:
        """`log w_k + log N_k(x)` under the marginal at `t` (data if `t` is None)."""
        alpha, sigma = self._coefficients(t, sde)
        log_n, *_ = self._parts(self._flat(x), alpha, sigma)
        return self.log_weights[None] + log_n

    def log_prob(
        self, x: Float[ArrayLike, " n *shape"], t=None, sde: VPSDE | None = None
    ) -> Float[Array, " n"]:
        """The log-density of each point, under the data (`t = None`) or the VP-SDE
        marginal at time `t` (then `sde` is needed)."""
        return jax.nn.logsumexp(self.component_log_probs(x, t, sde), axis=1)

    def responsibilities(
        self, x: Float[ArrayLike, " n *shape"], t=None, sde: VPSDE | None = None
    ) -> Float[Array, " n k"]:
        """The posterior probability of each component given each point."""
        return jax.nn.softmax(self.component_log_probs(x, t, sde), axis=1)

    def score(
        self, t, y: Float[ArrayLike, " n *shape"], sde: VPSDE
    ) -> Float[Array, " n *shape"]:
        """The exact score `∇_y log p_t(y)` of the VP-SDE marginal at time `t`."""
        y = jnp.asarray(y)
        flat = self._flat(y, "y")
        alpha, sigma = self._coefficients(t, sde)
        log_n, p, inv_d, inv_e = self._parts(flat, alpha, sigma)
        resp = jax.nn.softmax(self.log_weights[None] + log_n, axis=1)  # (n, K)
        rd = resp * inv_d[None]
        # Σ_k r_k P_k (y − α μ_k), P_k = I/d_k − U_k diag(1/d_k − 1/e_k) U_kᵀ.
        q = resp[..., None] * p * (inv_d[:, None] - inv_e)[None]
        prec = (
            flat * jnp.sum(rd, 1, keepdims=True)
            - alpha * rd @ self.means
            - jnp.einsum("kdr,nkr->nd", self.basis, q)
        )
        return (-prec).reshape(y.shape).astype(y.dtype)

    def entropy(self, key: PRNGKeyArray, n: int = 100_000, batch: int = 10_000):
        """A Monte Carlo estimate of the differential entropy `−E log p(X)` from `n`
        exact draws, with its standard error: `(entropy, standard_error)`."""
        n = checks.integer("GaussianMixture.entropy", "n", n, minimum=2)
        batch = checks.integer("GaussianMixture.entropy", "batch", batch)
        lp = _log_prob_of_draws(self, key, n, batch)
        return float(-lp.mean()), float(lp.std(ddof=1) / math.sqrt(lp.size))


@eqx.filter_jit
def _draws_log_prob(mixture, key, n):
    return mixture.log_prob(mixture.sample(key, n))


def _log_prob_of_draws(mixture, key, n, batch) -> np.ndarray:
    out, done, i = [], 0, 0
    while done < n:
        b = min(batch, n - done)
        out.append(
            np.asarray(_draws_log_prob(mixture, jr.fold_in(key, i), b), np.float64)
        )
        done, i = done + b, i + 1
    return np.concatenate(out)


class MixtureScore(eqx.Module):
    """The exact score of a [`GaussianMixture`][]'s VP-SDE marginals, as a
    `ScoreFn` `(t, y) -> ∇ log p_t(y)` on batched `y` (like `GaussianScore`): pass
    it to `ReverseDrift` / `ProbabilityFlowDrift` for an exact, "infinitely large"
    level, e.g. `reference=` in calibration."""

    mixture: GaussianMixture
    sde: VPSDE

    def __call__(self, t, y):
        return self.mixture.score(t, y, self.sde)


class MixtureEps(eqx.Module):
    """The exact noise prediction `ε(t, x) = −σ_t ∇ log p_t(x)` of a
    [`GaussianMixture`][] on ONE point, the signature of a trained network
    (`mlem_jax.nn.UNet`): use it wherever a network goes (`reverse_drift`,
    `make_levels`, `sample`) as the exact top of a ladder."""

    mixture: GaussianMixture
    sde: VPSDE

    def __call__(self, t, x):
        x = jnp.asarray(x)
        score = self.mixture.score(t, x[None], self.sde)[0]
        return -self.sde.sigma(t).astype(x.dtype) * score


def mixture_flops(mixture: GaussianMixture) -> float:
    """FLOPs of one exact score evaluation on one point, by XLA's cost analysis."""
    from ._levels import drift_flops
    from ._score import ReverseDrift

    y = jnp.zeros((1, *mixture.event_shape), mixture.means.dtype)
    return drift_flops(ReverseDrift(VPSDE(), MixtureScore(mixture, VPSDE())), y)


def _finite_points(x: Array) -> Array:
    """Samples with non-finite values replaced by a far-away 1e3, so that a blown-up
    sample has a finite, very low log-density (it scores as badly as it is)."""
    x = jnp.asarray(x)
    return jnp.where(jnp.isfinite(x), x, 1e3)


@eqx.filter_jit
def _log_probs(mixture, x):
    return mixture.log_prob(_finite_points(x))


@eqx.filter_jit
def _resps(mixture, x):
    return mixture.responsibilities(_finite_points(x))


class MixtureQuality(eqx.Module):
    """Exact sample-quality metrics for samples of a known [`GaussianMixture`][],
    each with its standard error. `quality(samples)` is the **log-density gap**
    `(gap, standard_error)`:

        gap = E_p[log p(X)] − mean_i log p(x_i)   (nats per sample),

    the true negative entropy (a Monte Carlo estimate on exact draws, made once)
    minus the samples' mean true log-density: about 0 for exact samples, positive for
    samples that fall where the data are less likely (blurred, off the data, between
    modes). It is the cross-entropy gap `H(q, p) − H(p)`, not a divergence: a sampler
    that piles its samples onto the modes can score below 0; read it next to
    [`mode_kl`][], which sees weights put on the wrong modes.

    `difference(samples, other)` is the paired `gap(samples) − gap(other)`, whose
    noise is only that of the per-sample differences (the entropy cancels).
    """

    mixture: GaussianMixture
    neg_entropy: float
    neg_entropy_stderr: float

    @classmethod
    def from_mixture(
        cls, mixture: GaussianMixture, *, key: PRNGKeyArray, num: int = 200_000
    ) -> MixtureQuality:
        """Estimate the negative entropy `E_p log p` from `num` exact draws."""
        checks.integer("MixtureQuality.from_mixture", "num", num, minimum=2)
        h, se = mixture.entropy(key, num)
        return cls(mixture, -h, se)

    def _check(self, x, name):
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[1:] != self.mixture.event_shape or x.shape[0] < 2:
            shape = ", ".join(map(str, self.mixture.event_shape))
            what = f"at least 2 samples of shape (n, {shape})"
            raise checks.fail("MixtureQuality", name, what, x.shape)
        return x

    def log_probs(self, samples: Float[ArrayLike, " n *shape"]) -> np.ndarray:
        """The true log-density of each sample (float64 NumPy)."""
        x = self._check(samples, "samples")
        return np.asarray(_log_probs(self.mixture, x), np.float64)

    def __call__(self, samples: Float[ArrayLike, " n *shape"]) -> tuple[float, float]:
        """`(log-density gap, standard_error)`; the error combines the samples'
        spread and the entropy estimate's."""
        lp = self.log_probs(samples)
        se = math.sqrt(lp.var(ddof=1) / lp.size + self.neg_entropy_stderr**2)
        return float(self.neg_entropy - lp.mean()), se

    def difference(
        self,
        samples: Float[ArrayLike, " n *shape"],
        other: Float[ArrayLike, " n *shape"],
    ) -> tuple[float, float]:
        """`gap(samples) − gap(other)` and its paired standard error: pass samples of
        two samplers made from the same prior draws (and Brownian paths), in the same
        order, for far less noise than two separate gaps."""
        a = self._check(samples, "samples")
        b = self._check(other, "other")
        if a.shape != b.shape:
            what = f"paired with `samples`: the same shape, {a.shape}"
            raise checks.fail("MixtureQuality.difference", "other", what, b.shape)
        d = self.log_probs(b) - self.log_probs(a)
        return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))

    def mode_kl(
        self, samples: Float[ArrayLike, " n *shape"], hard: bool = False
    ) -> tuple[float, float]:
        """Mode coverage: `KL(h ‖ w)` between the samples' component histogram `h`
        and the true weights `w`, debiased, with its standard error.

        `h` averages each sample's posterior component probabilities (`hard=True`:
        counts each sample's most likely component). The plug-in KL of `n` exact
        samples is about `½ tr C` > 0 (`C` the covariance of `(h − w)/sqrt(h)`, a
        χ²-like bias of order `K/2n`); that estimate, from the samples' own spread,
        is subtracted. The standard error adds the delta-method (linear) variance
        and the quadratic term's `½ tr C²`, so that it also holds where the KL is
        0. `(kl, standard_error)`; about 0 within its error on exact samples.
        """
        x = self._check(samples, "samples")
        resp = np.asarray(_resps(self.mixture, x), np.float64)
        n, k = resp.shape
        if hard:
            resp = np.eye(k)[resp.argmax(1)]
        w = np.exp(np.asarray(self.mixture.log_weights, np.float64))
        h = resp.mean(0)
        pos = h > 0
        ratio = np.where(pos, h / np.where(w > 0, w, 1.0), 1.0)
        kl = float(np.sum(np.where(pos, h * np.log(np.where(pos, ratio, 1.0)), 0.0)))
        centred = resp - h
        grad = np.where(pos, np.log(np.where(pos, ratio, 1.0)), 0.0)
        linear = float((centred @ grad).var(ddof=1) / n)
        inv_sqrt = np.where(pos, 1.0 / np.sqrt(np.where(pos, h, 1.0)), 0.0)
        scaled = centred * inv_sqrt / math.sqrt(n * (n - 1))  # C = scaledᵀ scaled
        # C = scaledᵀ scaled (K × K) and scaled scaledᵀ (n × n) share their nonzero
        # spectrum: use the smaller.
        small = scaled.T @ scaled if k <= n else scaled @ scaled.T
        tr_c = float(np.trace(small))
        tr_c2 = float(np.sum(small**2))
        return kl - 0.5 * tr_c, math.sqrt(linear + 0.5 * tr_c2)

    def report(self, samples: Float[ArrayLike, " n *shape"]) -> dict[str, float]:
        """Every metric at once: `gap`, `mode_kl`, `mode_kl_hard` and their standard
        errors (`*_stderr`), plus `mean_log_prob`."""
        gap, gap_se = self(samples)
        kl, kl_se = self.mode_kl(samples)
        hkl, hkl_se = self.mode_kl(samples, hard=True)
        return {
            "gap": gap,
            "gap_stderr": gap_se,
            "mode_kl": kl,
            "mode_kl_stderr": kl_se,
            "mode_kl_hard": hkl,
            "mode_kl_hard_stderr": hkl_se,
            "mean_log_prob": float(self.neg_entropy - gap),
        }
