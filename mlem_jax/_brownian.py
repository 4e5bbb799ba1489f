"""How a key becomes Brownian increments and level draws (the fixed key layout).

Every solver in mlem_jax derives its randomness from one `key` in the same way, so that
`em_solve`, `mlem_solve` and `MLEMSolver` runs with the same key can be compared
pathwise:

    brownian_key, level_key = jax.random.split(key)
    ΔW_n = sqrt(|h|) · jax.random.normal(jax.random.fold_in(brownian_key, n), shape)
    U_n  = jax.random.uniform(jax.random.fold_in(level_key, n), (k,), float32)
    B_{n,l} = U_{n,l} < p_l

for step `n = 0, …, num_steps − 1` of signed size `h = (t1 − t0) / num_steps`.

A PyTree state `y` (e.g. a dict of arrays) draws one independent increment per leaf,
leaf `i` (in `jax.tree.leaves` order) from its own key:

    leaf_keys = jax.random.split(brownian_key, num_leaves)
    ΔW_n[i] = sqrt(|h|) · jax.random.normal(jax.random.fold_in(leaf_keys[i], n), shape_i)

A state with one leaf (a single array) is not split: it uses `brownian_key` itself,
as above. The level draws
`U_n` are the same for any state: one per level per step for the whole state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, DTypeLike, Float, PRNGKeyArray, PyTree

from ._misc import check_num_steps, time_dtype


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


def leaf_keys(brownian_key: PRNGKeyArray, like: PyTree) -> PyTree[PRNGKeyArray]:
    """One Brownian key per leaf of `like` (a PyTree of arrays or shape/dtype
    structs), as a PyTree of `like`'s structure: `brownian_key` itself for a single
    array (or any one-leaf PyTree), else `jax.random.split(brownian_key, num_leaves)`
    in leaf order."""
    leaves, treedef = jtu.tree_flatten(like)
    if len(leaves) == 1:
        return jtu.tree_unflatten(treedef, [brownian_key])
    keys = jax.random.split(brownian_key, len(leaves))
    return jtu.tree_unflatten(treedef, list(keys))


def tree_increment(keys: PyTree[PRNGKeyArray], n: ArrayLike, like: PyTree, h):
    """The Brownian increments of step `n` for a state shaped like `like`, each leaf
    from its key in `keys` (from `leaf_keys`) in that leaf's shape and dtype."""
    return jtu.tree_map(
        lambda k, x: step_increment(k, n, x.shape, h, x.dtype), keys, like
    )


def step_uniforms(level_key: PRNGKeyArray, n: ArrayLike, k: int, dtype) -> Array:
    """The uniforms `U_n` behind step `n`'s level draws `B_l = U_l < p_l`.

    Always drawn in float32 (then cast to `dtype`), so float32 and float64 solves
    with the same key make the same level decisions.
    """
    u = jax.random.uniform(jax.random.fold_in(level_key, n), (k,), jnp.float32)
    return u.astype(dtype)


def brownian_increments(
    key: PRNGKeyArray,
    shape: tuple[int, ...] | PyTree[jax.ShapeDtypeStruct],
    *,
    t0: float,
    t1: float,
    num_steps: int,
    dtype: DTypeLike = jnp.float32,
) -> PyTree[Float[Array, " num_steps ..."]]:
    """The Brownian increments that a solve with this `key` uses.

    `em_solve(..., key=key)` and `mlem_solve(..., key=key)` with the same `t0`, `t1`,
    `num_steps` and `y0.shape == shape` draw exactly these increments. Pass them (or
    `coarsen_increments` of them) as `brownian=` to drive solves at other step counts
    with the same Brownian path.

    **Arguments:**

    - `key`: the solve's key (not yet split).
    - `shape`: the state's shape, a tuple of ints; or, for a PyTree state, a PyTree of
        `jax.ShapeDtypeStruct` like the state (e.g.
        `jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), y0)`), each
        leaf then in its own dtype (see the module docstring for the key layout).
    - `t0`, `t1`, `num_steps`: the solve's grid.
    - `dtype`: the increments' dtype for a tuple `shape`.

    **Returns:** an array of shape `(num_steps, *shape)` (a PyTree of them, one per
    leaf, for a PyTree `shape`); row `n` is `W(t_{n+1}) − W(t_n)` with
    `t_n = t0 + n·(t1 − t0)/num_steps`.
    """
    num_steps = check_num_steps("brownian_increments", num_steps)
    if isinstance(shape, (tuple, list)) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        like = jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))
    else:
        like = shape
        for leaf in jtu.tree_leaves(like):
            if not isinstance(leaf, jax.ShapeDtypeStruct):
                raise TypeError(
                    "brownian_increments: `shape` must be a tuple of ints or a PyTree "
                    "of jax.ShapeDtypeStruct (one per leaf of the state); got a leaf "
                    f"{leaf!r}."
                )
    tdtype = time_dtype(like)
    h = (jnp.asarray(t1, tdtype) - jnp.asarray(t0, tdtype)) / num_steps
    brownian_key, _ = split_key(key)
    keys = leaf_keys(brownian_key, like)
    steps = jnp.arange(num_steps)
    return jax.vmap(lambda n: tree_increment(keys, n, like, h))(steps)


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
