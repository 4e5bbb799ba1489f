# Copied from diffrax 0.7.2 (https://github.com/patrick-kidger/diffrax, tag v0.7.2,
# commit b3a1885), Copyright Patrick Kidger, Apache License 2.0 (LICENSE-diffrax in this
# folder). Changed: MLEMSolver variants plugged in where a solver is named; a curated
# subset (see README.md in this folder for what is left out and why).
"""From diffrax's test/test_event.py (the tests name Tsit5; the solver is swapped)."""

from typing import cast

import diffrax
import jax
import jax.numpy as jnp
import optimistix as optx
from dfx_helpers import HEAVY_VARIANTS
from jaxtyping import Array


# diffrax: also PIDController (adaptive: refused).
@HEAVY_VARIANTS
def test_event_vmap_y0(variant):
    stepsize_controller = diffrax.ConstantStepSize()
    term = diffrax.ODETerm(lambda t, y, args: -y)
    solver = variant.solver()
    t0 = 0
    t1 = jnp.inf
    dt0 = 1

    def cond_fn(t, y, args, **kwargs):
        del t, args, kwargs
        assert isinstance(y, Array)
        return y - 1

    root_finder = optx.Newton(1e-5, 1e-5, optx.rms_norm)
    event = diffrax.Event(cond_fn, root_finder)

    @jax.vmap
    @jax.value_and_grad
    def run(y):
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t0,
            t1,
            dt0,
            y,
            stepsize_controller=stepsize_controller,
            event=event,
        )
        return cast(Array, sol.ys)[-1]

    y0s = jnp.arange(10.0) + 2.0
    vals, grads = run(y0s)
    for val, grad in zip(vals, grads):
        assert jnp.all(jnp.isclose(val - 1, 0.0, atol=1e-5))
        assert not jnp.isnan(grad).any()


# diffrax: also PIDController (adaptive: refused).
@HEAVY_VARIANTS
def test_event_vmap_t0(variant):
    stepsize_controller = diffrax.ConstantStepSize()
    term = diffrax.ODETerm(lambda t, y, args: -y)
    solver = variant.solver()
    t1 = jnp.inf
    dt0 = 1
    y0 = 10

    def cond_fn(t, y, args, **kwargs):
        del t, args, kwargs
        assert isinstance(y, Array)
        return y - 1

    root_finder = optx.Newton(1e-5, 1e-5, optx.rms_norm)
    event = diffrax.Event(cond_fn, root_finder)

    @jax.vmap
    @jax.value_and_grad
    def run(t):
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t,
            t1,
            dt0,
            y0,
            stepsize_controller=stepsize_controller,
            event=event,
        )
        return cast(Array, sol.ys)[-1]

    t0s = jnp.arange(10.0) / 10
    vals, grads = run(t0s)
    for val, grad in zip(vals, grads):
        assert jnp.all(jnp.isclose(val - 1, 0.0, atol=1e-5))
        assert not jnp.isnan(grad).any()
