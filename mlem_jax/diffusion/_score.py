"""Scores, denoising score matching, and the drifts used for sampling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._sde import VPSDE

# A score: (t, y) -> ∇_y log p_t(y), with y batched as (batch, *shape).
ScoreFn = Callable[[Float[ArrayLike, ""], Float[Array, " batch *shape"]], Array]


def _expand(x: Array, like: Array) -> Array:
    """Append singleton axes to a per-sample array `x` so it broadcasts with `like`."""
    return x.reshape(x.shape + (1,) * (like.ndim - x.ndim))


class EpsilonScore(eqx.Module):
    """The score of a noise-prediction network: `s(t, y) = −ε_θ(t, y) / σ(t)`.

    **Arguments:**

    - `model`: a network `ε_θ(t, x)` acting on one image (e.g. `mlem_jax.nn.UNet`);
      it is `jax.vmap`-ed over the leading batch axis of `y`.
    - `sde`: the [`mlem_jax.diffusion.VPSDE`][] the network was trained for.
    """

    model: Callable
    sde: VPSDE

    def __call__(
        self, t, y: Float[Array, " batch *shape"]
    ) -> Float[Array, " batch *shape"]:
        eps = jax.vmap(self.model, in_axes=(None, 0))(t, y)
        return -eps / self.sde.sigma(t).astype(y.dtype)


class GaussianScore(eqx.Module):
    """The exact score of the VP-SDE marginals when the data are `N(mean, cov)`.

    `X_t ~ N(α m, α² Σ + σ² I)`, so `∇ log p_t(y) = −(α² Σ + σ² I)^{-1} (y − α m)`.
    Data of any shape are flattened; `mean` has `d` entries and `cov` is `d × d`.
    Useful to test samplers against a closed form, with no network.
    """

    sde: VPSDE
    mean: Float[Array, " d"]
    cov: Float[Array, " d d"]

    def __call__(
        self, t, y: Float[Array, " batch *shape"]
    ) -> Float[Array, " batch *shape"]:
        alpha = self.sde.alpha(t)
        sigma2 = self.sde.sigma(t) ** 2
        d = self.mean.shape[0]
        cov_t = alpha**2 * self.cov + sigma2 * jnp.eye(d, dtype=self.cov.dtype)
        flat = y.reshape(y.shape[0], d) - alpha * self.mean[None, :]
        score = -jnp.linalg.solve(cov_t, flat.T).T
        return score.reshape(y.shape).astype(y.dtype)


class ReverseDrift(eqx.Module):
    """Drift of the reverse-time SDE, `f(t, y) = −½ β(t) y − β(t) s(t, y)`.

    Integrated from `t = 1` down to `t ≈ 0` (negative steps) together with the
    diffusion `sqrt(β(t))` ([`VPSDE.diffusion`][]), it samples the data distribution:
    with `dt < 0`, `dY = f dt + g dW` is Song et al.'s reverse SDE
    `dx = [−½βx − β∇log p_t] dt + sqrt(β) dw̄`. Signature `f(t, y, args)`, the one
    `mlem_jax.em_solve` and `mlem_jax.Levels` expect; `y` is `(batch, *shape)`.
    """

    sde: VPSDE
    score: ScoreFn

    def __call__(self, t, y, args=None):
        del args
        beta = self.sde.beta(t).astype(y.dtype)
        return -0.5 * beta * y - beta * self.score(t, y)


class ProbabilityFlowDrift(eqx.Module):
    """Drift of the probability-flow ODE, `f(t, y) = −½ β(t) y − ½ β(t) s(t, y)`.

    Integrate with no diffusion (`diffusion=None`) from `t = 1` to `t ≈ 0`; it has the
    same marginals as the SDE. Signature `f(t, y, args)`, `y` batched.
    """

    sde: VPSDE
    score: ScoreFn

    def __call__(self, t, y, args=None):
        del args
        beta = self.sde.beta(t).astype(y.dtype)
        return -0.5 * beta * (y + self.score(t, y))


def reverse_drift(sde: VPSDE, model: Callable) -> ReverseDrift:
    """`ReverseDrift(sde, EpsilonScore(model, sde))`: the sampling drift of a network."""
    return ReverseDrift(sde, EpsilonScore(model, sde))


def probability_flow_drift(sde: VPSDE, model: Callable) -> ProbabilityFlowDrift:
    """`ProbabilityFlowDrift(sde, EpsilonScore(model, sde))` for a network."""
    return ProbabilityFlowDrift(sde, EpsilonScore(model, sde))


def dsm_loss(
    sde: VPSDE,
    model: Callable,
    x0: Float[Array, " batch *shape"],
    key: PRNGKeyArray,
    t_min: float = 1e-5,
    labels: Any = None,
) -> Float[Array, ""]:
    """Denoising score-matching loss in noise-prediction form.

    `E_t E_ε ‖ε_θ(t, α(t) x_0 + σ(t) ε) − ε‖² / dim`, with `t` stratified on
    `[t_min, 1]` (one draw per equal sub-interval, a lower-variance estimate of the
    uniform average) and `ε ~ N(0, I)`. This is score matching with the weighting
    `λ(t) = σ(t)²` of Song et al. (2021), since `s = −ε/σ`.

    **Arguments:**

    - `sde`: the forward SDE.
    - `model`: `ε_θ(t, x)` on one image.
    - `x0`: a batch of data, `(batch, *shape)`.
    - `key`: a JAX PRNG key.
    - `t_min`: smallest time drawn (σ(0) = 0 makes `t = 0` meaningless).
    - `labels`: for a class-conditional model `ε_θ(t, x, label)`, one label per
      image, shape `(batch,)` (passed as the model's `args`); `None`: `ε_θ(t, x)`.

    **Returns:**

    The scalar mean loss over the batch and pixels.
    """
    t, xt, eps = _noised(sde, x0, key, t_min)
    pred = _apply(model, t, xt, labels)
    return jnp.mean((pred - eps) ** 2)


def _apply(model, t, xt, labels):
    if labels is None:
        return jax.vmap(model)(t, xt)
    return jax.vmap(model)(t, xt, labels)


def _noised(sde, x0, key, t_min):
    """Stratified times on `[t_min, 1]`, noise `ε`, and `x_t = α(t) x_0 + σ(t) ε`."""
    batch = x0.shape[0]
    k_t, k_eps = jr.split(key)
    u = jr.uniform(k_t, (batch,), dtype=x0.dtype)
    t = t_min + (1.0 - t_min) * (jnp.arange(batch, dtype=x0.dtype) + u) / batch
    eps = jr.normal(k_eps, x0.shape, x0.dtype)
    alpha = _expand(sde.alpha(t).astype(x0.dtype), x0)
    sigma = _expand(sde.sigma(t).astype(x0.dtype), x0)
    return t, alpha * x0 + sigma * eps, eps


def distillation_loss(
    sde: VPSDE,
    model: Callable,
    teacher: Callable,
    x0: Float[Array, " batch *shape"],
    key: PRNGKeyArray,
    t_min: float = 1e-5,
    labels: Any = None,
) -> Float[Array, ""]:
    """Distillation loss: `E_t E_ε ‖ε_θ(t, x_t) − ε_T(t, x_t)‖² / dim` on the same
    noised inputs `x_t` as [`dsm_loss`][] (same `t` and `ε` draws for a key), with the
    teacher `ε_T` held fixed.

    A ladder whose cheaper levels are distilled from its top level has much smaller
    level differences `V_l = E‖f^l − f^{l−1}‖²` than one whose levels were trained
    independently (each level's own training error then enters every difference),
    and the cost of ML-EM scales with `(Σ_l sqrt(V_l C_l))²`.

    **Arguments:** as [`dsm_loss`][], plus `teacher`: a noise-prediction network on one
    image (its output is wrapped in `jax.lax.stop_gradient`); `labels` reach both
    networks (class-conditional ones).
    """
    t, xt, _ = _noised(sde, x0, key, t_min)
    target = jax.lax.stop_gradient(_apply(teacher, t, xt, labels))
    return jnp.mean((_apply(model, t, xt, labels) - target) ** 2)
