# Copied from diffrax 0.7.2 (https://github.com/patrick-kidger/diffrax, tag v0.7.2,
# commit b3a1885), Copyright Patrick Kidger, Apache License 2.0 (LICENSE-diffrax in this
# folder). Changed: MLEMSolver variants plugged in where a solver is named; a curated
# subset (see README.md in this folder for what is left out and why).
"""From diffrax's test/test_integrate.py."""

import contextlib
import math
import operator
from typing import cast

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import pytest
from dfx_helpers import random_pytree, tree_allclose, treedefs, variants
from jaxtyping import Array


# diffrax: every t_dtype (float32, int, float, jnp.int32) × y_dtype × treedef, and
# PIDControllers (adaptive: refused). Kept: three of the 24 fixed-step cases.
@pytest.mark.parametrize(
    "t_dtype, y_dtype, treedef",
    [
        (jnp.float32, jnp.float32, treedefs[2]),
        (int, jnp.complex64, treedefs[2]),
        (jnp.float32, jnp.float32, treedefs[1]),
    ],
    ids=["pytree", "complex-int-times", "none"],
)
def test_basic(variant, t_dtype, y_dtype, treedef, getkey):
    solver = variant.solver()
    if jnp.iscomplexobj(y_dtype) and treedef != jtu.tree_structure(None):
        complex_warn = pytest.warns(match="Complex dtype")

        def f(t, y, args):
            return jtu.tree_map(lambda yi: -1j * yi, y)
    else:
        complex_warn = contextlib.nullcontext()

        def f(t, y, args):
            return jtu.tree_map(operator.neg, y)

    if t_dtype is int:
        t0, t1, dt0 = 0, 1, 0.01
    else:
        t0 = jnp.array(0, dtype=t_dtype)
        t1 = jnp.array(1, dtype=t_dtype)
        dt0 = jnp.array(0.01, dtype=t_dtype)
    y0 = random_pytree(getkey(), treedef, dtype=y_dtype)
    with complex_warn:
        sol = diffrax.diffeqsolve(diffrax.ODETerm(f), solver, t0, t1, dt0, y0)
    y1 = sol.ys
    if jnp.iscomplexobj(y_dtype):
        true_y1 = jtu.tree_map(
            lambda x, x1: (x * jnp.exp(-1j))[None].astype(x1.dtype), y0, y1
        )
    else:
        true_y1 = jtu.tree_map(
            lambda x, x1: (x * math.exp(-1))[None].astype(x1.dtype), y0, y1
        )
    # diffrax's tolerance for Euler. With p < 1 the drift is random: the telescope
    # adds variance dt·Σ_l (1/p_l − 1)(c_l − c_{l−1})²·|y|² per unit time (c: the
    # ladder's factors), so allow five standard deviations of that.
    tol = 1e-2 if variant.exact else 1e-2 + 5 * variant.drift_sd(0.01)
    assert tree_allclose(y1, true_y1, atol=tol, rtol=tol)


# diffrax: the Euler row (dt0 = -0.3) of SaveAt t0, t1, ts, steps, steps=2, dense; the
# Tsit5 rows are other solvers. Kept: ts and dense. SaveAt is built inside the test,
# under x64 as diffrax runs its whole suite.
@pytest.mark.parametrize("saveat", ["ts", "dense"])
# complex128 left out for time: complex states are tested in tests/test_diffrax.py.
@pytest.mark.parametrize("dtype", [jnp.float64])
def test_reverse_time(variant, saveat, dtype, getkey, x64):
    saveat = {
        "ts": diffrax.SaveAt(ts=[3.5, 0.7]),
        "dense": diffrax.SaveAt(dense=True),
    }[saveat]
    dt0 = -0.3
    key = getkey()
    y0 = jr.normal(key, (2, 2), dtype=dtype)
    stepsize_controller = diffrax.ConstantStepSize()

    def f(t, y, args):
        return -y

    t0 = 4
    t1 = 0.3
    sol1 = diffrax.diffeqsolve(
        diffrax.ODETerm(f),
        variant.solver(),
        t0,
        t1,
        dt0,
        y0,
        stepsize_controller=stepsize_controller,
        saveat=saveat,
    )
    assert tree_allclose(sol1.t0, jnp.array(4.0))
    assert tree_allclose(sol1.t1, jnp.array(0.3))

    def g(t, y, args):
        return y

    t0 = -4
    t1 = -0.3
    negdt0 = None if dt0 is None else -dt0
    if saveat.subs is not None and saveat.subs.ts is not None:
        saveat = diffrax.SaveAt(ts=[-ti for ti in saveat.subs.ts])
    sol2 = diffrax.diffeqsolve(
        diffrax.ODETerm(g),
        variant.solver(),
        t0,
        t1,
        negdt0,
        y0,
        stepsize_controller=stepsize_controller,
        saveat=saveat,
    )
    assert tree_allclose(sol2.t0, jnp.array(-4.0))
    assert tree_allclose(sol2.t1, jnp.array(-0.3))

    if saveat.subs is not None and (
        saveat.subs.t0
        or saveat.subs.t1
        or saveat.subs.ts is not None
        or saveat.subs.steps
    ):
        assert sol1.ts is not None
        assert sol2.ts is not None
        assert tree_allclose(
            sol1.ts[~jnp.isinf(sol1.ts)],
            -cast(Array, sol2.ts[~jnp.isinf(sol2.ts)]),
            equal_nan=True,
        )
        assert tree_allclose(
            sol1.ts[jnp.isinf(sol1.ts)],
            cast(Array, sol2.ts[jnp.isinf(sol2.ts)]),
            equal_nan=True,
        )
        assert tree_allclose(sol1.ys, sol2.ys, equal_nan=True)
    if saveat.dense:
        t = jnp.linspace(0.3, 4, 20)
        for ti in t:
            assert tree_allclose(sol1.evaluate(ti), sol2.evaluate(-ti))
            assert tree_allclose(sol1.derivative(ti), -sol2.derivative(-ti))


# For time, the random three-level variant only (as test_event_vmap_t0).
@variants("three_levels_random")
def test_vmap_backprop_with_event(variant):
    def dynamics(t, y, args):
        param = args
        return param - y

    def event_fn(t, y, args, **kwargs):
        return y - 1.5

    def single_loss_fn(param):
        solver = variant.solver()
        root_finder = diffrax.VeryChord(rtol=1e-3, atol=1e-6)
        event = diffrax.Event(event_fn, root_finder)
        term = diffrax.ODETerm(dynamics)
        sol = diffrax.diffeqsolve(
            term,
            solver=solver,
            t0=0.0,
            t1=2.0,
            dt0=0.1,
            y0=0.0,
            args=param,
            event=event,
            max_steps=1000,
        )
        assert sol.ys is not None
        final_y = sol.ys[-1]
        return param**2 + final_y**2

    def batched_loss_fn(params: jnp.ndarray) -> jnp.ndarray:
        return jax.vmap(single_loss_fn)(params)

    def grad_fn(params: jnp.ndarray) -> jnp.ndarray:
        return jax.grad(lambda p: jnp.sum(batched_loss_fn(p)))(params)

    batch = jnp.array([1.0, 2.0, 3.0])

    try:
        grad = grad_fn(batch)
    except NotImplementedError as e:
        pytest.fail(f"NotImplementedError was raised: {e}")
    except Exception as e:
        pytest.fail(f"An unexpected exception was raised: {e}")

    assert not jnp.isnan(grad).any(), "Gradient should not be NaN."
    assert not jnp.isinf(grad).any(), "Gradient should not be infinite."
