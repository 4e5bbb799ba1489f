"""Pathwise gradients through ML-EM samples: finite differences, forward vs reverse,
sub-linear-memory checkpointing, and diffrax's adjoints against the functional core."""

import diffrax
import jax
import jax.flatten_util
import jax.numpy as jnp
import lineax
import numpy as np
import pytest
from helpers import affine_problem

import mlem_jax as mj

NUM_STEPS = 11  # not a square: the two-level scan also runs a remainder block

SCHED = mj.FixedProbabilities((1.0, 0.4))
KEY = jax.random.key(5)


def _diffusion(t, y, a):
    return 0.3 * jnp.cos(y) * a


def _loss(checkpoint, saveat=None):
    def loss(params):
        levels, y0, args = params
        ys, _ = mj.mlem_solve(
            levels,
            SCHED,
            _diffusion,
            y0,
            t0=1.0,
            t1=0.0,
            num_steps=NUM_STEPS,
            key=KEY,
            args=args,
            checkpoint=checkpoint,
            saveat=saveat,
        )
        return jnp.sum(jnp.sin(ys))

    return loss


def test_gradients_match_central_differences_and_forward_mode(x64):
    # A loss on saved states (two grid times, the final one included, and every step).
    saveat = diffrax.SaveAt(ts=[1.0 - 3 / NUM_STEPS, 0.0], steps=True)
    params = affine_problem(jnp.float64)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    grads = {
        c: jax.jit(jax.grad(lambda x, c=c: _loss(c, saveat)(unravel(x))))(flat)
        for c in (True, "sqrt")
    }
    # The same gradient whatever the checkpointing.
    np.testing.assert_allclose(grads["sqrt"], grads[True], rtol=1e-12, atol=1e-14)
    g = grads["sqrt"]
    assert float(jnp.abs(g).max()) > 1e-2
    f = jax.jit(lambda x: _loss(True, saveat)(unravel(x)))
    eps = 1e-6
    basis = np.eye(flat.size)
    central = np.array(
        [(f(flat + eps * e) - f(flat - eps * e)) / (2 * eps) for e in basis]
    )
    # Central differences: truncation O(eps²) plus rounding O(1e-16/eps).
    np.testing.assert_allclose(central, g, rtol=1e-7, atol=1e-8)
    forward = jax.jit(
        jax.vmap(
            lambda v: jax.jvp(lambda x: _loss(True, saveat)(unravel(x)), (flat,), (v,))[
                1
            ]
        )
    )(jnp.asarray(basis))
    np.testing.assert_allclose(forward, g, rtol=1e-10, atol=1e-12)


def test_sqrt_checkpointing_gives_the_same_solve():
    levels, y0, args = affine_problem(jnp.float32)
    kw = dict(t0=0.0, t1=1.0, num_steps=NUM_STEPS, key=KEY, args=args)
    saveat = diffrax.SaveAt(t0=True, steps=True)
    a, ia = mj.mlem_solve(levels, SCHED, _diffusion, y0, saveat=saveat, **kw)
    b, ib = mj.mlem_solve(
        levels, SCHED, _diffusion, y0, saveat=saveat, checkpoint="sqrt", **kw
    )
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ia.evaluations, ib.evaluations)


def test_diffeqsolve_gradients_match_mlem_solve(x64):
    # Gradients in the level parameters, y0, args and the schedule's logits (pathwise,
    # draws fixed) through diffeqsolve + MLEMSolver, with diffrax's checkpointed
    # reverse mode, agree with mlem_solve's two-level checkpointed ones. (ForwardMode
    # and DirectAdjoint against finite differences: test_solver.py.)
    levels, y0, args = affine_problem(jnp.float64)
    sched = mj.LogitProbabilities(jnp.array([jnp.inf, -0.4]))
    t0, t1 = 1.0, 0.0
    path = mj.StepBrownianPath(
        y0.shape, KEY, t0=t0, t1=t1, num_steps=NUM_STEPS, dtype=jnp.float64
    )
    noise = diffrax.ControlTerm(
        lambda t, y, a: lineax.DiagonalLinearOperator(_diffusion(t, y, a)), path
    )

    def via_diffrax(params, adjoint):
        levels, y0, args, sched = params
        sol = diffrax.diffeqsolve(
            diffrax.MultiTerm(mj.MultilevelTerm(levels), noise),
            mj.MLEMSolver(sched, key=KEY),
            t0,
            t1,
            (t1 - t0) / NUM_STEPS,
            y0,
            args=args,
            adjoint=adjoint,
            max_steps=NUM_STEPS,
        )
        return jnp.sum(jnp.sin(sol.ys[-1]))

    def via_core(params):
        levels, y0, args, sched = params
        y1, _ = mj.mlem_solve(
            levels,
            sched,
            _diffusion,
            y0,
            t0=t0,
            t1=t1,
            num_steps=NUM_STEPS,
            key=KEY,
            args=args,
            checkpoint="sqrt",
        )
        return jnp.sum(jnp.sin(y1))

    params = (levels, y0, args, sched)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    expected = np.asarray(jax.jit(jax.grad(lambda x: via_core(unravel(x))))(flat))
    reverse = jax.jit(
        jax.grad(
            lambda x: via_diffrax(unravel(x), diffrax.RecursiveCheckpointAdjoint())
        )
    )(flat)
    finite = np.isfinite(np.asarray(flat))  # the +inf logit has no gradient
    assert np.all(expected[~finite] == 0)
    assert np.abs(expected[-1]) > 1e-3  # the learned logit gets a pathwise gradient
    np.testing.assert_allclose(
        np.asarray(reverse)[finite], expected[finite], rtol=1e-10, atol=1e-12
    )


def test_bad_checkpoint_value():
    levels, y0, args = affine_problem(jnp.float32)
    with pytest.raises(ValueError, match='`checkpoint` must be True, False or "sqrt"'):
        mj.mlem_solve(
            levels,
            SCHED,
            None,
            y0,
            t0=0.0,
            t1=1.0,
            num_steps=4,
            key=KEY,
            checkpoint="log",
        )
    with pytest.raises(ValueError, match='`checkpoint` must be True, False or "sqrt"'):
        mj.em_solve(
            levels.top, None, y0, t0=0.0, t1=1.0, num_steps=4, key=KEY, checkpoint=2
        )
