# Copied from diffrax 0.7.2 (https://github.com/patrick-kidger/diffrax, tag v0.7.2,
# commit b3a1885), Copyright Patrick Kidger, Apache License 2.0 (LICENSE-diffrax in this
# folder). Changed: MLEMSolver variants plugged in where a solver is named; a curated
# subset (see README.md in this folder for what is left out and why).
"""From diffrax's test/test_vmap.py."""

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest
from dfx_helpers import variants


# diffrax: ConstantStepSize and PIDController (adaptive: refused) × float64 and
# complex128, with Heun (the solver is swapped). Kept: ConstantStepSize, complex128,
# SaveAt(ts=...), the random three-level variant (shapes only are checked; it is the
# variant that draws levels under vmap).
@pytest.mark.parametrize("stepsize_controller", (diffrax.ConstantStepSize(),))
@pytest.mark.parametrize("dtype", (jnp.complex128,))
@variants("three_levels_random")
def test_vmap_y0(stepsize_controller, dtype, variant, x64):
    t0 = 0
    t1 = 1
    dt0 = 0.1

    key = jr.PRNGKey(5678)

    y0 = jr.normal(key, (10, 2), dtype=dtype)
    a = jnp.array([[-0.2, 1], [1, -0.2]], dtype=dtype)

    def f(t, y, args):
        return a @ y

    solver = variant.solver()
    # diffrax: also SaveAt(t0=True) and SaveAt(t1=True), each one more compiled
    # solve (for time).
    _t = jnp.array([0, 0.3, 0.7, 1])
    saveat = diffrax.SaveAt(ts=_t)
    sol = jax.vmap(
        lambda y0i: diffrax.diffeqsolve(
            diffrax.ODETerm(f),
            solver,
            t0,
            t1,
            dt0,
            y0i,
            stepsize_controller=stepsize_controller,
            saveat=saveat,
        )
    )(y0)
    assert jnp.array_equal(sol.t0, jnp.full((10,), t0))
    assert jnp.array_equal(sol.t1, jnp.full((10,), t1))
    assert jnp.array_equal(sol.ts, jnp.broadcast_to(_t, (10, 4)))  # pyright: ignore
    assert sol.ys.shape == (10, 4, 2)  # pyright: ignore
