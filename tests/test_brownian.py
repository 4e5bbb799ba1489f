"""The Brownian increments (`mlem_jax._brownian`): the default stream of the solvers,
their key layout, and coarsening."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TREE_Y0

import mlem_jax as mj
from mlem_jax._brownian import split_key

pytestmark = pytest.mark.usefixtures("strict_promotion")


def test_brownian_increments_match_the_default_stream():
    key = jax.random.key(8)
    y0 = jnp.zeros((2, 3))
    default, _ = mj.em_solve(
        lambda t, y, a: jnp.zeros_like(y),
        lambda t, y, a: 1.0,
        y0,
        t0=1.0,
        t1=0.0,
        num_steps=10,
        key=key,
    )
    dw = mj.brownian_increments(key, (2, 3), t0=1.0, t1=0.0, num_steps=10)
    np.testing.assert_allclose(default, dw.sum(axis=0), rtol=1e-6, atol=1e-6)
    # Increments have variance |h| (a loose check on their scale).
    big = mj.brownian_increments(key, (20_000,), t0=0.0, t1=1.0, num_steps=4)
    np.testing.assert_allclose(jnp.var(big, axis=1), 0.25, rtol=0.05)


def test_pytree_key_layout():
    # The documented layout: one key per leaf, split from the Brownian key in leaf
    # order; a one-leaf state keeps the single-array layout (existing results hold).
    key = jax.random.key(3)
    grid = dict(t0=0.0, t1=1.0, num_steps=3)
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), TREE_Y0)
    dw = mj.brownian_increments(key, like, **grid)
    brownian_key, _ = split_key(key)
    for leaf_key, leaf, leaf_dw in zip(
        jax.random.split(brownian_key, 2), jax.tree.leaves(like), jax.tree.leaves(dw)
    ):
        z = jax.vmap(
            lambda n: jax.random.normal(jax.random.fold_in(leaf_key, n), leaf.shape)  # noqa: B023
        )(jnp.arange(3))
        np.testing.assert_allclose(leaf_dw, jnp.sqrt(1 / 3) * z, rtol=1e-6)
    one = mj.brownian_increments(
        key, {"a": jax.ShapeDtypeStruct((2,), jnp.float32)}, **grid
    )
    np.testing.assert_array_equal(one["a"], mj.brownian_increments(key, (2,), **grid))


def test_brownian_helpers_bad_input():
    with pytest.raises(ValueError, match="`num_steps` must be positive"):
        mj.brownian_increments(jax.random.key(0), (2,), t0=0.0, t1=1.0, num_steps=0)
    with pytest.raises(ValueError, match=r"\(10\) must be divisible by `factor` \(3\)"):
        mj.coarsen_increments(jnp.ones((10, 2)), 3)
    with pytest.raises(ValueError, match="`factor` must be a positive int"):
        mj.coarsen_increments(jnp.ones((10, 2)), 0)
