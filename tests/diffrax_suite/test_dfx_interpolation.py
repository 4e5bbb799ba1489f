# Copied from diffrax 0.7.2 (https://github.com/patrick-kidger/diffrax, tag v0.7.2,
# commit b3a1885), Copyright Patrick Kidger, Apache License 2.0 (LICENSE-diffrax in this
# folder). Changed: MLEMSolver variants plugged in where a solver is named; a curated
# subset (see README.md in this folder for what is left out and why).
"""From diffrax's test/test_global_interpolation.py (the dense-output tests)."""

import functools as ft

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
from dfx_helpers import tree_allclose, variants


def _test_dense_interpolation(solver, key, t1):
    y0 = jr.uniform(key, (), minval=0.4, maxval=2)
    dt0 = t1 / 1e3
    term = diffrax.ODETerm(lambda t, y, args: -y)
    sol = diffrax.diffeqsolve(
        term,
        solver=solver,
        t0=0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        saveat=diffrax.SaveAt(dense=True),
    )
    points = jnp.linspace(0, t1, int(1e4))  # finer resolution than the step size
    vals = jax.vmap(sol.evaluate)(points)
    true_vals = jnp.exp(-points) * y0

    derivs = jax.vmap(sol.derivative)(points)
    true_derivs = -true_vals

    return vals, true_vals, derivs, true_derivs


# diffrax keys its tolerances on the solver's type (1e-3 for diffrax.Euler, 1e-6 for
# the others); the one-level MLEMSolver is Euler, so it takes Euler's. With p < 1 the
# drift is random and Euler's 1e-3 does not apply: one-level variant only.
@variants("one_level")
def test_dense_interpolation(variant):
    solver = variant.solver()
    key = jr.PRNGKey(5678)
    vals, true_vals, derivs, true_derivs = _test_dense_interpolation(solver, key, 1)
    assert jnp.array_equal(vals[0], true_vals[0])
    val_tol = 1e-3  # diffrax.Euler's
    assert tree_allclose(vals, true_vals, atol=val_tol, rtol=val_tol)
    deriv_tol = 1e-3  # diffrax.Euler's
    assert tree_allclose(derivs, true_derivs, atol=deriv_tol, rtol=deriv_tol)


# When vmap'ing then it can happen that some batch elements take more steps to solve
# than others. This means some padding is used to make things line up; here we test
# that all of this works as intended. (vmap over t1: the step counter is batched.)
@variants("one_level")
def test_dense_interpolation_vmap(variant, getkey):
    solver = variant.solver()
    key = jr.PRNGKey(5678)
    _test_dense = ft.partial(_test_dense_interpolation, solver, key)
    _test_dense_vmap = jax.vmap(_test_dense)
    vals, true_vals, derivs, true_derivs = _test_dense_vmap(jnp.array([0.5, 1.0]))
    assert jnp.array_equal(vals[:, 0], true_vals[:, 0])
    val_tol = 1e-3  # diffrax.Euler's
    assert tree_allclose(vals, true_vals, atol=val_tol, rtol=val_tol)
    deriv_tol = 1e-3  # diffrax.Euler's
    assert tree_allclose(derivs, true_derivs, atol=deriv_tol, rtol=deriv_tol)
