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
    with pytest.raises(ValueError, match="`num_steps` must be a positive int"):
        mj.brownian_increments(jax.random.key(0), (2,), t0=0.0, t1=1.0, num_steps=0)
    with pytest.raises(ValueError, match=r"\(10\) must be divisible by `factor` \(3\)"):
        mj.coarsen_increments(jnp.ones((10, 2)), 3)
    with pytest.raises(ValueError, match="`factor` must be a positive int"):
        mj.coarsen_increments(jnp.ones((10, 2)), 0)


# ---------------------------------------------------------------------------------
# Per-sample noise: sample i's increments depend on (key, i) only (module docstring).

GRID = dict(t0=1.0, t1=0.0, num_steps=6)


def test_increments_of_a_sample_do_not_depend_on_the_batch():
    key = jax.random.key(3)
    big = np.asarray(mj.brownian_increments(key, (64, 2, 3), **GRID))
    for batch in (1, 13):
        small = mj.brownian_increments(key, (batch, 2, 3), **GRID)
        np.testing.assert_array_equal(small, big[:, :batch])
    # Two samples (and two steps) get different noise.
    assert np.all(big[:, 0] != big[:, 1]) and np.all(big[0] != big[1])
    # A PyTree state: leaf by leaf, the same.
    like = lambda b: {  # noqa: E731
        "a": jax.ShapeDtypeStruct((b, 3), jnp.float32),
        "b": jax.ShapeDtypeStruct((b, 2, 2), jnp.float32),
    }
    tree64 = mj.brownian_increments(key, like(64), **GRID)
    tree13 = mj.brownian_increments(key, like(13), **GRID)
    for leaf64, leaf13 in zip(jax.tree.leaves(tree64), jax.tree.leaves(tree13)):
        np.testing.assert_array_equal(leaf13, leaf64[:, :13])


def _noise_path(solve, batch, key):
    # Zero drift, unit noise, y0 = 0, every state saved: the saved path is the running
    # sum of the solver's own increments (its first state is the first increment).
    import diffrax

    y0 = jnp.zeros((batch, 3))
    return np.asarray(
        solve(y0, key=key, saveat=diffrax.SaveAt(steps=True), checkpoint=False, **GRID)[
            0
        ]
    )


@pytest.mark.parametrize("method", ["em", "mlem"])
def test_solvers_give_each_sample_its_own_noise(method):
    zero = lambda t, y, a: jnp.zeros_like(y)  # noqa: E731
    unit = lambda t, y, a: 1.0  # noqa: E731
    if method == "em":
        solve = lambda y0, **kw: mj.em_solve(zero, unit, y0, **kw)  # noqa: E731
    else:
        levels = mj.Levels((zero, zero), (1.0, 2.0))
        sched = mj.FixedProbabilities(jnp.asarray([1.0, 0.3]))
        solve = lambda y0, **kw: mj.mlem_solve(levels, sched, unit, y0, **kw)  # noqa: E731
    key = jax.random.key(11)
    path64 = _noise_path(solve, 64, key)
    for batch in (1, 13):
        np.testing.assert_array_equal(_noise_path(solve, batch, key), path64[:, :batch])
    assert np.all(path64[:, 0] != path64[:, 1])
    # The solver's first increment is the documented one (one rounding of the scale).
    dw = mj.brownian_increments(key, (64, 3), **GRID)
    np.testing.assert_allclose(path64[0], dw[0], rtol=2**-22, atol=0)


def test_sample_increments_are_the_batch_rows():
    key = jax.random.key(3)
    idx = [37, 2, 37, 63]
    big = mj.brownian_increments(key, (64, 2, 3), **GRID)
    rows = mj.sample_increments(key, idx, (2, 3), **GRID)
    assert rows.shape == (6, 4, 2, 3)
    np.testing.assert_allclose(rows, big[:, np.asarray(idx)], rtol=2**-22, atol=0)
    # With h = 1 the scale is exact: the standard normals themselves, bit for bit.
    unit = dict(t0=0.0, t1=1.0, num_steps=1)
    np.testing.assert_array_equal(
        mj.sample_increments(key, idx, (2, 3), **unit),
        mj.brownian_increments(key, (64, 2, 3), **unit)[:, np.asarray(idx)],
    )


def test_sample_increments_regenerate_one_sample_alone():
    # Sample 37 of a batch solve, solved alone on its own increments.
    levels = mj.Levels(
        (lambda t, y, a: -y, lambda t, y, a: -1.1 * y + jnp.sin(y)), (1.0, 4.0)
    )
    g = lambda t, y, a: 0.4  # noqa: E731
    key = jax.random.key(2)
    y0 = jax.random.normal(jax.random.key(0), (64, 3))
    sched = mj.FixedProbabilities(jnp.asarray([1.0, 0.5]))
    batch, _ = mj.mlem_solve(levels, sched, g, y0, key=key, **GRID)
    dw = mj.sample_increments(key, [37], (3,), **GRID)
    alone, _ = mj.mlem_solve(levels, sched, g, y0[37:38], key=key, brownian=dw, **GRID)
    np.testing.assert_allclose(alone[0], batch[37], rtol=1e-5, atol=1e-6)
    other, _ = mj.mlem_solve(levels, sched, g, y0[36:37], key=key, brownian=dw, **GRID)
    assert not np.allclose(other[0], batch[36], atol=1e-3)


def test_key_layout_holds_without_partitionable_threefry():
    # The layout is pinned: a program that turns JAX's partitionable threefry off
    # still draws the documented increments and level uniforms.
    from mlem_jax._brownian import step_uniforms

    key = jax.random.key(5)
    ref = mj.brownian_increments(key, (13, 3), **GRID)
    _, level_key = split_key(key)
    u = step_uniforms(level_key, 2, 3, jnp.float32)
    with jax.threefry_partitionable(False):
        np.testing.assert_array_equal(mj.brownian_increments(key, (13, 3), **GRID), ref)
        _, level_key_off = split_key(key)
        np.testing.assert_array_equal(
            step_uniforms(level_key_off, 2, 3, jnp.float32), u
        )


def test_sample_increments_bad_input():
    key = jax.random.key(0)
    cases = [
        ([], ValueError, r"`indices` must be a non-empty 1-D sequence"),
        ([1, -2], ValueError, r"non-negative ints.*\[1, -2\]"),
        ([0.5], ValueError, r"`indices`"),
        ([[0, 1]], ValueError, r"1-D"),
    ]
    for indices, error, words in cases:
        with pytest.raises(error, match=words):
            mj.sample_increments(key, indices, (3,), **GRID)
    with pytest.raises(TypeError, match=r"`sample_shape` must be a tuple of ints"):
        mj.sample_increments(key, [0], 3, **GRID)  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match=r"`indices` must be concrete ints"):
        jax.jit(lambda i: mj.sample_increments(key, i, (3,), **GRID))(jnp.arange(2))
    with pytest.raises(ValueError, match=r"`num_steps` must be a positive int"):
        mj.sample_increments(key, [0], (3,), t0=0.0, t1=1.0, num_steps=0)
