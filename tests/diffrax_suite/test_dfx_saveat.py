# Copied from diffrax 0.7.2 (https://github.com/patrick-kidger/diffrax, tag v0.7.2,
# commit b3a1885), Copyright Patrick Kidger, Apache License 2.0 (LICENSE-diffrax in this
# folder). Changed: MLEMSolver variants plugged in where a solver is named; a curated
# subset (see README.md in this folder for what is left out and why).
"""From diffrax's test/test_saveat_solution.py (fixed-step tests; they name Euler or
Dopri5, the solver is swapped)."""

import diffrax
import jax
import jax.numpy as jnp
import optimistix as optx
from dfx_helpers import tree_allclose, variants


# Two solves with the same key take the same draws: applies to every variant.
@variants("three_levels_random")
def test_saveat_solution_skip_vs_saveat(variant):
    ts = jnp.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    n = 2
    saveat_skip = diffrax.SaveAt(steps=n, t0=True)
    saveat = diffrax.SaveAt(ts=ts[::n])
    term = diffrax.ODETerm(lambda t, y, args: -0.5 * y)

    def solve(saveat):
        return diffrax.diffeqsolve(
            term,
            t0=ts[0],
            t1=ts[-1],
            y0=jnp.array([1.0]),
            dt0=None,
            solver=variant.solver(),
            saveat=saveat,
            stepsize_controller=diffrax.StepTo(ts=ts),
            max_steps=6,
        )

    sol_skip = solve(saveat_skip)
    sol = solve(saveat)
    assert sol is not None
    assert sol.ts is not None
    assert sol.ys is not None
    assert sol_skip is not None
    assert sol_skip.ts is not None
    assert sol_skip.ys is not None
    assert jnp.allclose(sol_skip.ts, sol.ts)
    assert jnp.allclose(sol_skip.ys, sol.ys)


# Compares with Euler's values: the one-level variant.
@variants("one_level")
def test_saveat_steps_with_event(variant):
    def solve(saveat):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, args: -0.5 * y),
            t0=0,
            t1=5,
            y0=1.0,
            dt0=1,
            solver=variant.solver(),
            saveat=saveat,
            event=diffrax.Event(
                cond_fn=lambda t, y, args, **k: t - 3.5,
                root_finder=optx.Newton(rtol=1e-5, atol=1e-5),
            ),
            max_steps=6,
        )
        assert sol.result == diffrax.RESULTS.event_occurred
        assert sol.ts is not None
        assert sol.ys is not None
        return sol.ts, sol.ys

    ts1, ys1 = solve(diffrax.SaveAt(steps=2))
    assert jnp.allclose(ts1, jnp.array([2.0, 3.5, jnp.inf]))
    # Computed using Euler
    # y(1) = 0.5
    # y(2) = 0.25
    # y(3) = 0.125
    # y(4) = 0.0625
    # linearly interpolate => y(3.5) = 0.09375
    assert jnp.allclose(ys1, jnp.array([0.25, 0.09375, jnp.inf]))
    # diffrax: also steps=2 with t1=True and steps=3 (with and without t1); kept:
    # steps=3 with t1 (for time).
    ts4, ys4 = solve(diffrax.SaveAt(steps=3, t1=True))
    assert jnp.allclose(ts4, jnp.array([3.0, 3.5]))
    assert jnp.allclose(ys4, jnp.array([0.125, 0.09375]))


# vmap over t1 (one batch element has t0 == t1, no steps): the draws stay shared, so
# the batched solve equals the unbatched one for every variant. Solver: Dopri5 in
# diffrax; float16 states; SubSaveAt with fn.
@variants("three_levels_random")
def test_t0_eq_t1_complicated(variant):
    ntsave = 4
    dtype = jnp.float16
    y0 = jnp.array([2.0], dtype=dtype)
    term = diffrax.ODETerm(lambda t, y, args: y)

    def _solve(tf):
        ts = jnp.linspace(0.0, tf, ntsave, dtype=dtype)
        get0 = diffrax.SubSaveAt(
            ts=ts,
            t1=True,
        )
        get1 = diffrax.SubSaveAt(
            t0=True,
            ts=ts,
        )
        get2 = diffrax.SubSaveAt(
            t0=True,
            ts=ts,
            steps=1,
            fn=lambda t, y, args: jnp.where(jnp.isinf(y), 3.0, 4.0),
        )
        subs = (get0, get1, get2)
        saveat = diffrax.SaveAt(subs=subs)
        sol = diffrax.diffeqsolve(
            term,
            t0=ts[0],
            t1=ts[-1],
            y0=y0,
            dt0=0.1,
            solver=variant.solver(),
            saveat=saveat,
            max_steps=15,
        )
        return sol.ys

    compare = jnp.full((ntsave + 1, *y0.shape), y0, dtype=dtype)
    # diffrax builds this in float64 (its suite runs under x64); here float32, the
    # dtype the fn's output takes without x64.
    compare_c = jnp.concatenate(
        [
            jnp.full((ntsave + 1, *y0.shape), 4.0, dtype=jnp.float32),
            jnp.full((15, *y0.shape), jnp.inf, dtype=jnp.float32),
        ]
    )
    true_ya, true_yb, true_yc = _solve(1.0)  # pyright: ignore[reportGeneralTypeIssues]
    true_ya = jnp.stack([compare, true_ya])
    true_yb = jnp.stack([compare, true_yb])
    true_yc = jnp.stack([compare_c, true_yc])

    ya, yb, yc = jax.vmap(_solve)(jnp.array([0.0, 1.0]))  # pyright: ignore[reportGeneralTypeIssues]
    assert tree_allclose(ya, true_ya)
    assert tree_allclose(yb, true_yb)
    assert tree_allclose(yc, true_yc)
