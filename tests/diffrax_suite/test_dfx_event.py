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
import pytest
from dfx_helpers import HEAVY_VARIANTS, variants
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
# For time, the random three-level variant only: it is the one that draws levels
# while vmap batches the step counter (the one-level variant at p = 1 draws nothing;
# test_event_vmap_y0 runs it).
@variants("three_levels_random")
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


# diffrax: steps = 1..5 (the event in the first to fifth step); kept: steps = 3. The
# event time is Euler's exact value: the one-level variant. A PyTree (tuple) state;
# the last SaveAt has an `fn`.
@pytest.mark.parametrize("steps", (3,))
@variants("one_level")
def test_event_save_all_steps(steps, variant):
    term = diffrax.ODETerm(lambda t, y, args: (1.0, 1.0))
    solver = variant.solver()
    t0 = 0
    t1 = 10
    dt0 = 1
    thr = steps - 0.5
    y0 = (0.0, -thr)
    ts = jnp.array([0.5, 3.5, 5.5])

    def cond_fn(t, y, args, **kwargs):
        del t, args, kwargs
        x, _ = y
        return x - thr

    root_finder = optx.Newton(1e-5, 1e-5, optx.rms_norm)
    event = diffrax.Event(cond_fn, root_finder)

    def run(saveat):
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t0,
            t1,
            dt0,
            y0,
            event=event,
            saveat=saveat,
        )
        return cast(Array, sol.ts), cast(tuple, sol.ys)

    # diffrax: also SaveAt(steps=True) and SaveAt(steps=True, t1=True) (for time).
    saveats = [
        diffrax.SaveAt(steps=True, t1=True, t0=True),
        diffrax.SaveAt(steps=True, fn=lambda t, y, args: (y[0], y[1] + thr)),
    ]
    num_steps = [steps + 1, steps]
    yevents = [(thr, 0), (thr, thr)]

    for saveat, n, yevent in zip(saveats, num_steps, yevents, strict=True):
        ts, ys = run(saveat)
        xs, zs = ys
        xevent, zevent = yevent
        assert jnp.sum(jnp.isfinite(ts)) == n
        assert jnp.sum(jnp.isfinite(xs)) == n
        assert jnp.sum(jnp.isfinite(zs)) == n
        assert jnp.all(jnp.isclose(ts[n - 1], thr, atol=1e-5))
        assert jnp.all(jnp.isclose(xs[n - 1], xevent, atol=1e-5))
        assert jnp.all(jnp.isclose(zs[n - 1], zevent, atol=1e-5))


# diffrax: steps = 1..5; kept: steps = 3, the one-level variant (as above).
@pytest.mark.parametrize("steps", (3,))
@variants("one_level")
def test_event_save_ts(steps, variant):
    term = diffrax.ODETerm(lambda t, y, args: (1.0, 1.0))
    solver = variant.solver()
    t0 = 0
    t1 = 10
    dt0 = 1
    thr = steps - 0.5
    y0 = (0.0, -thr)
    ts = jnp.array([0.5, 3.5, 5.5])

    def cond_fn(t, y, args, **kwargs):
        del t, args, kwargs
        x, _ = y
        return x - thr

    root_finder = optx.Newton(1e-5, 1e-5, optx.rms_norm)
    event = diffrax.Event(cond_fn, root_finder)

    def run(saveat):
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t0,
            t1,
            dt0,
            y0,
            event=event,
            saveat=saveat,
        )
        return cast(Array, sol.ts), cast(tuple, sol.ys)

    # diffrax: also SaveAt(ts=ts, t1=True) and SaveAt(ts=ts, t0=True) (for time).
    saveats = [
        diffrax.SaveAt(ts=ts),
        diffrax.SaveAt(ts=ts, steps=True),
        diffrax.SaveAt(ts=ts, fn=lambda t, y, args: (y[0], y[1] + thr)),
    ]
    save_finals = [False, True, False]
    yevents = [(thr, 0), (thr, 0), (thr, thr)]
    for saveat, save_final, yevent in zip(saveats, save_finals, yevents):
        ts, ys = run(saveat)
        xs, zs = ys
        xevent, zevent = yevent
        if save_final:
            assert jnp.all(jnp.isclose(ts[jnp.isfinite(ts)][-1], thr, atol=1e-5))
            assert jnp.all(jnp.isclose(xs[jnp.isfinite(xs)][-1], xevent, atol=1e-5))
            assert jnp.all(jnp.isclose(zs[jnp.isfinite(zs)][-1], zevent, atol=1e-5))
        else:
            assert jnp.all(ts[jnp.isfinite(ts)] <= thr)
