"""The variance-preserving SDE of Song et al. (2021), with a linear β schedule."""

from __future__ import annotations

import numbers

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float

from .. import _checks as checks


def check_beta_range(owner: str, beta_min, beta_max) -> None:
    """The ends of a linear `β` schedule: `0 < beta_max < inf`, `beta_min` in
    `[0, beta_max]` (`VPSDE` and `VPLinear`)."""
    checks.number(owner, "beta_max", beta_max)
    real = isinstance(beta_min, numbers.Real)
    if not (real and 0 <= float(beta_min) <= beta_max):
        raise checks.fail(owner, "beta_min", f"in [0, beta_max = {beta_max}]", beta_min)


class VPSDE(eqx.Module):
    """Variance-preserving SDE `dX = -½ β(t) X dt + sqrt(β(t)) dW`, `t ∈ [0, 1]`.

    `β(t) = β_min + t (β_max − β_min)` (Song et al. 2021, "Score-Based Generative
    Modeling through Stochastic Differential Equations", the continuous DDPM). The
    marginals are Gaussian given `X_0 = x_0`:

        X_t | x_0 ~ N(α(t) x_0, σ(t)² I),
        log α(t) = −¼ t² (β_max − β_min) − ½ t β_min,   σ(t)² = 1 − α(t)².

    **Arguments:**

    - `beta_min`, `beta_max`: the linear schedule's end points (defaults 0.1, 20).
    """

    beta_min: float = eqx.field(static=True, default=0.1)
    beta_max: float = eqx.field(static=True, default=20.0)

    def __check_init__(self):
        check_beta_range("VPSDE", self.beta_min, self.beta_max)

    def beta(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """`β(t)`, the noise rate at time `t`."""
        return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """`log α(t) = −½ ∫_0^t β(s) ds`, the log of the mean coefficient."""
        t = jnp.asarray(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """Mean coefficient `α(t)`: `E[X_t | x_0] = α(t) x_0`."""
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """Marginal standard deviation `σ(t) = sqrt(1 − α(t)²)`."""
        # -expm1 keeps σ accurate for small t, where 1 − α² cancels.
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

    def marginal(
        self, x0: Float[Array, "*shape"], t: Float[ArrayLike, ""]
    ) -> tuple[Float[Array, "*shape"], Float[Array, ""]]:
        """Mean `α(t) x_0` and standard deviation `σ(t)` of `X_t | X_0 = x_0`."""
        return self.alpha(t) * x0, self.sigma(t)

    def drift(self, t, y, args=None):
        """Forward drift `−½ β(t) y` in the `f(t, y, args)` convention."""
        del args
        return -0.5 * self.beta(t) * y

    def diffusion(self, t, y, args=None):
        """Diffusion `sqrt(β(t))`, a scalar; also the one of the reverse-time SDE."""
        del y, args
        return jnp.sqrt(self.beta(t))

    def prior_sample(self, key, shape, dtype=jnp.float32):
        """A draw from the prior `N(0, I)`, the (approximate) law of `X_1`."""
        return jr.normal(key, shape, dtype)
