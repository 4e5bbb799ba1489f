"""How a key becomes Brownian increments and level draws (the fixed key layout).

Every solver in mlem_jax derives its randomness from one `key` in the same way, so that
`em_solve`, `mlem_solve` and `MLEMSolver` runs with the same key can be compared
pathwise:

    brownian_key, level_key = jax.random.split(key)
    ΔW_n = sqrt(|h|) · jax.random.normal(jax.random.fold_in(brownian_key, n), shape)
    U_n  = jax.random.uniform(jax.random.fold_in(level_key, n), (k,), float32)
    B_{n,l} = U_{n,l} < p_l

for step `n = 0, …, num_steps − 1` of signed size `h = (t1 − t0) / num_steps`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, DTypeLike, Float, PRNGKeyArray


def split_key(key: PRNGKeyArray) -> tuple[PRNGKeyArray, PRNGKeyArray]:
    """`(brownian_key, level_key)`: the documented split of a solve's `key`."""
    brownian_key, level_key = jax.random.split(key)
    return brownian_key, level_key


def step_increment(
    brownian_key: PRNGKeyArray, n: ArrayLike, shape: tuple[int, ...], h, dtype
) -> Array:
    """The Brownian increment of step `n` (variance `|h|` per component)."""
    z = jax.random.normal(jax.random.fold_in(brownian_key, n), shape, dtype)
    return jnp.sqrt(jnp.abs(h)).astype(dtype) * z


def step_uniforms(level_key: PRNGKeyArray, n: ArrayLike, k: int, dtype) -> Array:
    """The uniforms `U_n` behind step `n`'s level draws `B_l = U_l < p_l`.

    Always drawn in float32 (then cast to `dtype`), so float32 and float64 solves
    with the same key make the same level decisions.
    """
    u = jax.random.uniform(jax.random.fold_in(level_key, n), (k,), jnp.float32)
    return u.astype(dtype)


def brownian_increments(
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    t0: float,
    t1: float,
    num_steps: int,
    dtype: DTypeLike = jnp.float32,
) -> Float[Array, " num_steps *shape"]:
    """The Brownian increments that a solve with this `key` uses.

    `em_solve(..., key=key)` and `mlem_solve(..., key=key)` with the same `t0`, `t1`,
    `num_steps` and `y0.shape == shape` draw exactly these increments. Pass them (or
    `coarsen_increments` of them) as `brownian=` to drive solves at other step counts
    with the same Brownian path.

    **Returns:** an array of shape `(num_steps, *shape)`; row `n` is `W(t_{n+1}) −
    W(t_n)` with `t_n = t0 + n·(t1 − t0)/num_steps`.
    """
    if not isinstance(num_steps, int) or num_steps <= 0:
        raise ValueError(
            f"brownian_increments: `num_steps` must be a positive int; got {num_steps!r}."
        )
    shape = tuple(shape)
    h = (jnp.asarray(t1, dtype) - jnp.asarray(t0, dtype)) / num_steps
    brownian_key, _ = split_key(key)
    steps = jnp.arange(num_steps)
    return jax.vmap(lambda n: step_increment(brownian_key, n, shape, h, dtype))(steps)


def coarsen_increments(
    increments: Float[Array, " num_steps *shape"], factor: int
) -> Float[Array, " num_steps/factor *shape"]:
    """Sum each run of `factor` consecutive increments: the same Brownian path seen
    with `factor`-times larger steps.

    **Arguments:**

    - `increments`: shape `(num_steps, *shape)`, `num_steps` divisible by `factor`.
    - `factor`: a positive int.
    """
    if not isinstance(factor, int) or factor <= 0:
        raise ValueError(
            f"coarsen_increments: `factor` must be a positive int; got {factor!r}."
        )
    n = increments.shape[0]
    if n % factor != 0:
        raise ValueError(
            f"coarsen_increments: the number of increments ({n}) must be divisible by "
            f"`factor` ({factor})."
        )
    return increments.reshape(n // factor, factor, *increments.shape[1:]).sum(axis=1)
