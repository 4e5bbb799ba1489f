"""The one integration loop (`mlem_jax._integrate`): a stepper of the family runs in
it, on a uniform or an array grid, with its carry, its per-step `aux` and the
saving options; the public solves are fronts over it."""

from typing import ClassVar

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import mlem_jax as mj
from mlem_jax._integrate import (
    AbstractStepper,
    EulerMaruyama,
    Grid,
    Problem,
    SaveSpec,
    integrate,
)


class _ExactLinear(AbstractStepper):
    """The exact flow of `dy/dt = a·y` over each step (ignores `predict`'s value
    but calls it, so the loop's level draws are exercised); counts its steps in
    its carry and returns `dt` as `aux`."""

    a: float
    unit_noise: ClassVar[bool] = False

    @property
    def stochastic(self):
        return False

    def init(self, y0):
        return jnp.zeros((), jnp.int32)

    def step(self, t, t_next, dt, y, predict, noise, state, args):
        assert noise is None
        drift = predict(t, y)
        y_next = y * jnp.exp(self.a * dt) + 0.0 * drift
        return y_next, state + 1, dt


def _problem(y0, grid, **kw):
    fns = (lambda t, y, args: -y,)
    return Problem(
        fns=fns,
        schedule=None,
        always=None,
        y0=y0,
        grid=grid,
        key=jax.random.key(0),
        **kw,
    )


def test_exact_stepper_on_array_grid_matches_closed_form():
    y0 = jnp.array([1.0, 2.0])
    ts = jnp.array([0.0, 0.1, 0.35, 0.5, 1.0])
    grid = Grid(t0=ts[0], t1=ts[-1], num_steps=4, ts=ts, dts=jnp.diff(ts))
    y1, needed, aux, saved = integrate(_ExactLinear(-0.7), _problem(y0, grid))
    # The exact flow composes: y0·exp(a·(t1 − t0)) up to float32 rounding of 4 steps.
    np.testing.assert_allclose(y1, y0 * np.exp(-0.7), rtol=4 * 2e-7)
    np.testing.assert_array_equal(aux, np.diff(np.asarray(ts)))
    assert needed.shape == (4, 1) and bool(needed.all())
    assert saved is None


def test_euler_maruyama_stepper_is_em_solve_and_saves_steps():
    """`integrate(EulerMaruyama(g), problem)` is `em_solve`, bit for bit, and the
    saved step times are the uniform grid's."""
    drift = lambda t, y, args: -0.5 * y + jnp.sin(t)
    g = lambda t, y, args: 0.2
    y0 = jnp.linspace(-1.0, 1.0, 5)
    key = jax.random.key(4)
    ref, info = mj.em_solve(
        drift,
        g,
        y0,
        t0=0.0,
        t1=1.0,
        num_steps=8,
        key=key,
        saveat=diffrax.SaveAt(steps=True),
    )
    grid = Grid(t0=jnp.asarray(0.0), t1=jnp.asarray(1.0), num_steps=8)
    save = SaveSpec(t0=False, t1=False, steps=True, ts_index=None, save_ts=None)
    problem = Problem(
        fns=(drift,),
        schedule=None,
        always=None,
        y0=y0,
        grid=grid,
        key=key,
        save=save,
    )
    ys, _, _, ts = integrate(EulerMaruyama(g), problem)
    np.testing.assert_array_equal(ys, ref)
    assert info.ts is not None
    np.testing.assert_array_equal(ts, info.ts)
    np.testing.assert_allclose(ts, np.arange(1, 9) / 8, rtol=1e-6)


def test_periodic_schedule_runs_in_the_loop_for_any_stepper():
    """`Periodic((1, m))` in the loop: the top level runs at steps n ≡ 0 (mod m),
    the cheap one every step; with constant levels the stale correction is exact,
    so EM with the periodic ladder equals EM with the top level."""
    f1 = lambda t, y, args: jnp.full_like(y, 1.0)
    f2 = lambda t, y, args: jnp.full_like(y, 3.0)
    y0 = jnp.zeros(3)
    grid = Grid(t0=jnp.asarray(0.0), t1=jnp.asarray(1.0), num_steps=6)
    problem = Problem(
        fns=(f1, f2),
        schedule=mj.Periodic((1, 3)),
        always=(True, False),
        y0=y0,
        grid=grid,
        key=jax.random.key(0),
    )
    y1, needed, _, _ = integrate(EulerMaruyama(None), problem)
    np.testing.assert_allclose(y1, 3.0 * np.ones(3), rtol=1e-6)
    np.testing.assert_array_equal(needed.sum(axis=0), [6, 2])
