"""Diffusion parametrisations `x_t = α_t x_0 + σ_t ε` and prediction conversions.

A parametrisation fixes the marginals `X_t | x_0 ~ N(α_t x_0, σ_t² I)` of a forward
diffusion. Samplers need only `α_t`, `σ_t`, the log-SNR `λ_t = log(α_t / σ_t)` and its
inverse `t(λ)`: exponential integrators (DDIM, DPM-Solver++) step in `λ`.

A network predicts one of

- `"eps"`: the noise `ε`,
- `"x0"`: the data `x_0`,
- `"v"`: the velocity `v = α_t ε − σ_t x_0` (Salimans & Ho 2022),

and `convert_prediction` turns any of them into any other, in one place.

**References:** Song et al., "Score-Based Generative Modeling through Stochastic
Differential Equations" (2021) (VP, VE); Nichol & Dhariwal, "Improved Denoising
Diffusion Probabilistic Models" (2021) (cosine); Karras et al., "Elucidating the Design
Space of Diffusion-Based Generative Models" (2022) (EDM); Lu et al., "DPM-Solver"
(2022) (log-SNR and its inverse).
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .. import _checks as checks
from ._sde import check_beta_range

PREDICTIONS = ("eps", "x0", "v")


class AbstractParametrisation(eqx.Module):
    """Base class: the marginal coefficients `α_t`, `σ_t` of a forward diffusion.

    Subclasses define `log_alpha`, `sigma` and `t_of_log_snr`; the rest follows.
    """

    @abc.abstractmethod
    def log_alpha(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """`log α_t`."""

    @abc.abstractmethod
    def sigma(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """`σ_t`, the standard deviation of the added noise."""

    @abc.abstractmethod
    def t_of_log_snr(self, lam: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """The inverse of `log_snr`: the time `t` with `λ_t = lam`."""

    @abc.abstractmethod
    def time_range(self) -> tuple[float, float]:
        """`(t_min, t_max)`: the times this parametrisation is defined on (the
        samplers refuse `t0`, `t1` outside it; `VPCosine` also excludes `t = 1`,
        where `α_t = 0`)."""

    def alpha(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """`α_t`, the mean coefficient: `E[X_t | x_0] = α_t x_0`."""
        return jnp.exp(self.log_alpha(t))

    def log_sigma(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """`log σ_t`."""
        return jnp.log(self.sigma(t))

    def log_snr(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """The (half) log signal-to-noise ratio `λ_t = log α_t − log σ_t`."""
        return self.log_alpha(t) - self.log_sigma(t)

    def derivatives(self, t: Float[ArrayLike, ""]) -> tuple[Array, Array]:
        """`(dα/dt, dσ/dt)` at a scalar `t` (forward-mode autodiff of the closed
        forms)."""
        t = jnp.asarray(t)
        one = jnp.ones_like(t)
        _, da = jax.jvp(self.alpha, (t,), (one,))
        _, ds = jax.jvp(self.sigma, (t,), (one,))
        return da, ds

    def convert(
        self,
        prediction: Float[Array, "*shape"],
        t: Float[ArrayLike, ""],
        y: Float[Array, "*shape"],
        *,
        source: str,
        target: str,
    ) -> Float[Array, "*shape"]:
        """`convert_prediction` with `α_t`, `σ_t` of this parametrisation."""
        return convert_prediction(
            prediction,
            y,
            alpha=self.alpha(t),
            sigma=self.sigma(t),
            source=source,
            target=target,
        )


def _check_sigma_range(owner: str, sigma_min, sigma_max) -> None:
    """The noise range of a σ-parametrisation (`VE`, `EDM`): positive finite
    `sigma_min < sigma_max`."""
    checks.number(owner, "sigma_min", sigma_min)
    checks.number(owner, "sigma_max", sigma_max)
    if not sigma_min < sigma_max:
        raise checks.fail(
            owner, "sigma_min", f"below `sigma_max` ({sigma_max})", sigma_min
        )


class VPLinear(AbstractParametrisation):
    """Variance preserving, linear `β(t) = β_min + t (β_max − β_min)`, `t ∈ [0, 1]`.

    The marginals of `mlem_jax.diffusion.VPSDE` with the same `beta_min`, `beta_max`:

        log α_t = −¼ t² (β_max − β_min) − ½ t β_min,   σ_t² = 1 − α_t²,
        t(λ) = 2 L / (β_min + sqrt(β_min² + 2 (β_max − β_min) L)),  L = log(1 + e^{−2λ}).
    """

    beta_min: float = eqx.field(static=True, default=0.1)
    beta_max: float = eqx.field(static=True, default=20.0)

    def __check_init__(self):
        check_beta_range("VPLinear", self.beta_min, self.beta_max)

    def time_range(self):
        return (0.0, 1.0)

    def beta(self, t):
        """`β(t)`."""
        return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)

    def log_alpha(self, t):
        t = jnp.asarray(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sigma(self, t):
        # −expm1 keeps σ accurate at small t, where 1 − α² cancels.
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

    def t_of_log_snr(self, lam):
        # L = −2 log α = log(1 + e^{−2λ}); solve ¼Δβ t² + ½β_min t = ½L for t ≥ 0 in
        # the form that has no cancellation and allows Δβ = 0.
        big_l = jax.nn.softplus(-2.0 * jnp.asarray(lam))
        db = self.beta_max - self.beta_min
        return (
            2.0 * big_l / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2 * db * big_l))
        )


class VPCosine(AbstractParametrisation):
    """Variance preserving, cosine schedule (Nichol & Dhariwal 2021), `t ∈ [0, 1)`:

        α_t = cos(π/2 · (t + s)/(1 + s)) / cos(π/2 · s/(1 + s)),   σ_t² = 1 − α_t².

    `α_1 = 0`, so sample from `t < 1` (DPM-Solver uses `t ≤ 0.9946`).

    **Arguments:**

    - `s`: the offset (default 0.008).
    """

    s: float = eqx.field(static=True, default=0.008)

    def __check_init__(self):
        checks.number("VPCosine", "s", self.s)

    def time_range(self):
        return (0.0, 1.0)

    def _log_cos0(self):
        return math.log(math.cos(math.pi / 2 * self.s / (1 + self.s)))

    def log_alpha(self, t):
        t = jnp.asarray(t)
        return jnp.log(jnp.cos(jnp.pi / 2 * (t + self.s) / (1 + self.s))) - (
            self._log_cos0()
        )

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

    def t_of_log_snr(self, lam):
        log_alpha = -0.5 * jax.nn.softplus(-2.0 * jnp.asarray(lam))
        c = jnp.exp(log_alpha + self._log_cos0())
        return 2 * (1 + self.s) / jnp.pi * jnp.arccos(c) - self.s


class VE(AbstractParametrisation):
    """Variance exploding: `α_t = 1`, `σ_t = σ_min (σ_max/σ_min)^t`, `t ∈ [0, 1]`.

    **Arguments:**

    - `sigma_min`, `sigma_max`: defaults 0.01 and 50 (Song et al. 2021).
    """

    sigma_min: float = eqx.field(static=True, default=0.01)
    sigma_max: float = eqx.field(static=True, default=50.0)

    def __check_init__(self):
        _check_sigma_range("VE", self.sigma_min, self.sigma_max)

    def time_range(self):
        return (0.0, 1.0)

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, float))

    def log_sigma(self, t):
        t = jnp.asarray(t)
        return math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t):
        return jnp.exp(self.log_sigma(t))

    def t_of_log_snr(self, lam):
        return (-jnp.asarray(lam) - math.log(self.sigma_min)) / math.log(
            self.sigma_max / self.sigma_min
        )


class EDM(AbstractParametrisation):
    """The EDM σ-parametrisation (Karras et al. 2022): `t = σ`, `α_t = 1`, `σ_t = t`.

    Time runs over noise levels, from `sigma_max` down to `sigma_min`; `λ_t = −log t`.
    The data scale `sigma_data` is kept for the network preconditioning and for
    `time_grid` defaults; it does not change the marginals.

    **Arguments:**

    - `sigma_min`, `sigma_max`, `sigma_data`: defaults 0.002, 80, 0.5.
    """

    sigma_min: float = eqx.field(static=True, default=0.002)
    sigma_max: float = eqx.field(static=True, default=80.0)
    sigma_data: float = eqx.field(static=True, default=0.5)

    def __check_init__(self):
        _check_sigma_range("EDM", self.sigma_min, self.sigma_max)
        checks.number("EDM", "sigma_data", self.sigma_data)

    def time_range(self):
        return (0.0, math.inf)

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, float))

    def sigma(self, t):
        return jnp.asarray(t)

    def t_of_log_snr(self, lam):
        return jnp.exp(-jnp.asarray(lam))


def check_prediction(where: str, arg: str, value) -> str:
    """`value` if it is one of `PREDICTIONS`, else an error naming `arg`."""
    what = "one of 'eps', 'x0', 'v' (noise, data or velocity prediction)"
    return checks.choice(where, arg, value, PREDICTIONS, what)


def convert_prediction(
    prediction: Float[Array, "*shape"],
    y: Float[Array, "*shape"],
    *,
    alpha: Float[ArrayLike, "*b"],
    sigma: Float[ArrayLike, "*b"],
    source: str,
    target: str,
) -> Float[Array, "*shape"]:
    """Convert a network's prediction at the noisy state `y = α x_0 + σ ε`.

    With `v = α ε − σ x_0` (velocity), for any `α, σ` (not only `α² + σ² = 1`):

        x_0 = (y − σ ε)/α,          ε = (y − α x_0)/σ,
        x_0 = (α y − σ v)/(α² + σ²),  ε = (σ y + α v)/(α² + σ²).

    Every map is affine in the prediction, so a randomized telescope of predictions
    converts into an unbiased telescope of the converted ones.

    **Arguments:**

    - `prediction`: the network output, shaped like `y`.
    - `y`: the noisy state.
    - `alpha`, `sigma`: scalars, or arrays broadcastable to `y` (per-sample times).
    - `source`, `target`: each `"eps"`, `"x0"` or `"v"`.

    **Returns:** the `target` prediction, shaped and typed like `prediction`.
    """
    check_prediction("convert_prediction", "source", source)
    check_prediction("convert_prediction", "target", target)
    prediction = jnp.asarray(prediction)
    y = jnp.asarray(y)
    if prediction.shape != y.shape:
        what = f"of the shape of `y`, {y.shape}"
        raise checks.fail("convert_prediction", "prediction", what, prediction.shape)
    dtype = prediction.dtype
    a = jnp.asarray(alpha).astype(dtype)
    s = jnp.asarray(sigma).astype(dtype)
    for name, c in (("alpha", a), ("sigma", s)):
        try:
            jnp.broadcast_shapes(c.shape, y.shape)
        except ValueError:
            what = f"broadcastable to the shape of `y`, {y.shape}"
            raise checks.fail("convert_prediction", name, what, c.shape) from None
    if source == target:
        return prediction
    # Through x0 and eps; v ↔ (x0, eps) are the only non-trivial maps.
    if source == "eps":
        x0 = (y - s * prediction) / a
    elif source == "x0":
        x0 = prediction
    else:
        x0 = (a * y - s * prediction) / (a**2 + s**2)
    if target == "x0":
        return x0
    if source == "eps":
        eps = prediction
    elif source == "v":
        eps = (s * y + a * prediction) / (a**2 + s**2)
    else:
        eps = (y - a * x0) / s
    if target == "eps":
        return eps
    return a * eps - s * x0
