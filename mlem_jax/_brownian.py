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

**Per-sample noise.** Every draw above is JAX's counter-based threefry in its
*partitionable* form (`jax.threefry_partitionable(True)`, JAX's default since 0.5 and
pinned here, so a program that turns the flag off still gets these bits): the bits of
element `j` of `jax.random.normal(k, shape)` are `threefry2x32(k, j)` of its flat
(row-major) index `j` alone, whatever `shape`. For a state with the batch in its
leading axis, `(batch, *sample_shape)`, sample `i` occupies the flat indices
`[i·m, (i+1)·m)` (`m` = the size of `sample_shape`), so its standard normals

    z_n[i] are a function of (key, n, i, sample_shape) only, bit for bit:

sample `i` of a batch of 64 gets the normals of sample `i` of a batch of 13
(`i < 13`), of a batch of one (`i = 0`), and of `sample_increments(key, [i], ...)`
drawn alone; the sharded solves (every device draws the global batch's increment and
keeps its rows) and several processes give the same bits. The same holds leaf by leaf
for a PyTree state whose every leaf has the batch in its leading axis.
`ΔW_n[i] = sqrt(|h|) · z_n[i]` is one multiply more: the same bits in every run of a
given solve or sampler at any batch size or device count (the tests check this), and
equal to one float rounding across different programs (XLA may fold the constant
`sqrt(|h|)` into the normal's own scaling in one program and not in another). What
differs between batch sizes is the drift's arithmetic (a network's batched matmuls
round differently): the samples agree to that rounding, the noise exactly. The level
draws `U_n` belong to the solve, not to the sample (one per level per step for the
whole batch: that is what makes skipping a level real).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, DTypeLike, Float, PRNGKeyArray, PyTree

from . import _checks as checks
from ._misc import check_num_steps, time_dtype


def split_key(key: PRNGKeyArray) -> tuple[PRNGKeyArray, PRNGKeyArray]:
    """`(brownian_key, level_key)`: the documented split of a solve's `key`."""
    with jax.threefry_partitionable(True):
        brownian_key, level_key = jax.random.split(key)
    return brownian_key, level_key


def step_increment(
    brownian_key: PRNGKeyArray, n: ArrayLike, shape: tuple[int, ...], h, dtype
) -> Array:
    """The Brownian increment of step `n` (variance `|h|` per component)."""
    with jax.threefry_partitionable(True):
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
    with jax.threefry_partitionable(True):
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
    with jax.threefry_partitionable(True):
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
            what = "a tuple of ints or a PyTree of jax.ShapeDtypeStruct (a leaf)"
            checks.instance(
                "brownian_increments", "shape", leaf, jax.ShapeDtypeStruct, what
            )
    tdtype = time_dtype(like)
    h = (jnp.asarray(t1, tdtype) - jnp.asarray(t0, tdtype)) / num_steps
    brownian_key, _ = split_key(key)
    keys = leaf_keys(brownian_key, like)
    steps = jnp.arange(num_steps)
    return jax.vmap(lambda n: tree_increment(keys, n, like, h))(steps)


def sample_increments(
    key: PRNGKeyArray,
    indices: Sequence[int] | np.ndarray,
    sample_shape: tuple[int, ...],
    *,
    t0: float,
    t1: float,
    num_steps: int,
    dtype: DTypeLike = jnp.float32,
) -> Float[Array, " num_steps n *sample_shape"]:
    """The Brownian increments of chosen samples of a batch, without the batch.

    Row `r` of the result is row `indices[r]` of `brownian_increments(key, (batch,
    *sample_shape), ...)` for any `batch > max(indices)` (the normals bit for bit, the
    increments to the one rounding of their `sqrt(|h|)` scale; see the module
    docstring): the noise that sample `indices[r]` gets in every solve and sampler
    with this `key` and grid, whatever the batch size or device count. Pass it as `brownian=` to regenerate chosen samples alone, e.g. at
    more steps (with `coarsen_increments` of a finer draw) or for a refinement:

        dw = mj.sample_increments(key, [37], (8, 8, 1), t0=1.0, t1=1e-3,
                                  num_steps=200)
        y, _ = mj.em_solve(f, g, y0[37:38], t0=1.0, t1=1e-3, num_steps=200,
                           key=key, brownian=dw)

    equals sample 37 of the batch solve to the drift's batched rounding.

    It draws, one step at a time, the rows up to `max(indices)` and keeps the ones
    asked for: memory `max(indices) + 1` samples per step, cost that many samples'
    normals per step (JAX exposes no offset into a threefry stream).

    **Arguments:**

    - `key`: the solve's key (not yet split).
    - `indices`: the samples' indices in the batch, non-negative ints (concrete; a
        list, tuple or NumPy array), in any order, repeats allowed.
    - `sample_shape`: the shape of one sample (the state's shape without its
        leading batch axis).
    - `t0`, `t1`, `num_steps`, `dtype`: as `brownian_increments`.

    **Returns:** an array of shape `(num_steps, len(indices), *sample_shape)`.
    """
    name = "sample_increments"
    num_steps = check_num_steps(name, num_steps)
    try:
        idx = np.asarray(indices)
    except Exception as e:  # a traced value cannot become a NumPy array
        what = "concrete ints (a list, tuple or NumPy array), not a traced value"
        raise checks.fail(
            name, "indices", what, type(indices).__name__, TypeError
        ) from e
    if (
        idx.ndim != 1
        or idx.size == 0
        or not (np.issubdtype(idx.dtype, np.integer) and not idx.dtype == np.bool_)
        or (idx < 0).any()
    ):
        what = "a non-empty 1-D sequence of non-negative ints (indices in the batch)"
        raise checks.fail(name, "indices", what, indices)
    if not (
        isinstance(sample_shape, (tuple, list))
        and all(isinstance(d, int) and not isinstance(d, bool) for d in sample_shape)
    ):
        what = "a tuple of ints (one sample's shape, without the batch axis)"
        raise checks.fail(name, "sample_shape", what, sample_shape, TypeError)
    like = jax.ShapeDtypeStruct((int(idx.max()) + 1, *sample_shape), jnp.dtype(dtype))
    tdtype = time_dtype(like)
    h = (jnp.asarray(t1, tdtype) - jnp.asarray(t0, tdtype)) / num_steps
    brownian_key, _ = split_key(key)
    take = jnp.asarray(idx)
    return jax.lax.map(
        lambda n: step_increment(brownian_key, n, like.shape, h, like.dtype)[take],
        jnp.arange(num_steps),
    )


def coarsen_increments(
    increments: Float[Array, " num_steps *shape"], factor: int
) -> Float[Array, " num_steps/factor *shape"]:
    """Sum each run of `factor` consecutive increments: the same Brownian path seen
    with `factor`-times larger steps.

    **Arguments:**

    - `increments`: shape `(num_steps, *shape)`, `num_steps` divisible by `factor`.
    - `factor`: a positive int.
    """
    factor = checks.integer("coarsen_increments", "factor", factor)
    n = increments.shape[0]
    if n % factor != 0:
        why = f"the number of increments ({n}) must be divisible by `factor` ({factor})"
        raise ValueError(f"coarsen_increments: {why}.")
    return increments.reshape(n // factor, factor, *increments.shape[1:]).sum(axis=1)
