# Copied from diffrax 0.7.2 (https://github.com/patrick-kidger/diffrax, tag v0.7.2,
# commit b3a1885), Copyright Patrick Kidger, Apache License 2.0 (LICENSE-diffrax in this
# folder). Changed: MLEMSolver variants plugged in where a solver is named; a curated
# subset (see README.md in this folder for what is left out and why).
"""From diffrax's test/test_sde2.py."""

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import pytest
from dfx_helpers import variants
from diffrax import ControlTerm, MultiTerm, ODETerm


# Define the SDE
def dict_drift(t, y, args):
    pytree, _ = args
    return jtu.tree_map(lambda _, x: -0.5 * x, pytree, y)


def dict_diffusion(t, y, args):
    pytree, additive = args

    def get_matrix(y_leaf):
        if additive:
            return 2.0 * jnp.ones(y_leaf.shape + (3,), dtype=jnp.float64)
        else:
            return 2.0 * jnp.broadcast_to(
                jnp.expand_dims(y_leaf, axis=y_leaf.ndim), y_leaf.shape + (3,)
            )

    return jtu.tree_map(get_matrix, y)


# diffrax: shapes () and (5, 2) × the stochastic Runge–Kutta solvers × float64 and
# complex128. Kept, for time: shape (5, 2), float64, the random three-level variant
# (a PyTree state with matrix noise: each leaf is driven by a 3-dimensional Brownian
# motion; shapes only are checked, so every variant applies). Changed: the Brownian
# tree carries no Lévy area (only the Runge–Kutta solvers use it) and has tolerance
# 0.3 (= dt0), which compiles faster.
@pytest.mark.parametrize("shape", [(5, 2)])
@pytest.mark.parametrize("dtype", (jnp.float64,))
@variants("three_levels_random")
def test_sde_solver_shape(shape, variant, dtype, x64):
    pytree = ({"a": 0, "b": [0, 0]}, 0, 0)
    key = jr.PRNGKey(0)
    y0 = jtu.tree_map(lambda _: jr.normal(key, shape, dtype=dtype), pytree)
    t0, t1, dt0 = 0.0, 1.0, 0.3

    additive = False
    args = (pytree, additive)
    solver = variant.solver()
    bmkey = jr.key(1)
    struct = jax.ShapeDtypeStruct((3,), dtype)
    bm_shape = jtu.tree_map(lambda _: struct, pytree)
    bm = diffrax.VirtualBrownianTree(t0, t1, 0.3, bm_shape, bmkey)
    terms = MultiTerm(ODETerm(dict_drift), ControlTerm(dict_diffusion, bm))
    solution = diffrax.diffeqsolve(
        terms, solver, t0, t1, dt0, y0, args, saveat=diffrax.SaveAt(t1=True)
    )
    assert jtu.tree_structure(solution.ys) == jtu.tree_structure(y0)
    for leaf in jtu.tree_leaves(solution.ys):
        assert leaf[0].shape == shape
