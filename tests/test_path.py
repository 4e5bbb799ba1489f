"""`StepBrownianPath`: the functional core's increments as a diffrax path."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import DIRECTIONS

import mlem_jax as mj

KEY = jax.random.key(42)
SHAPE = (2, 3)


@eqx.filter_jit
def _evaluate(path, s, u):
    return path.evaluate(s) if u is None else path.evaluate(s, u)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_step_path_increments(direction):
    t0, t1 = DIRECTIONS[direction]
    n = 6
    path = mj.StepBrownianPath(SHAPE, KEY, t0=t0, t1=t1, num_steps=n)
    dws = mj.brownian_increments(KEY, SHAPE, t0=t0, t1=t1, num_steps=n)
    grid = jnp.linspace(t0, t1, n + 1)
    evaluate = lambda s, u: _evaluate(path, s, u)
    for i in range(n):
        # W(t_{i+1}) − W(t_i) is the core's increment of step i, in either direction.
        np.testing.assert_allclose(evaluate(grid[i], grid[i + 1]), dws[i], rtol=1e-6)
        np.testing.assert_allclose(evaluate(grid[i + 1], grid[i]), -dws[i], rtol=1e-6)
    # A query spanning several steps is the sum of their increments.
    np.testing.assert_allclose(
        evaluate(grid[1], grid[5]), dws[1:5].sum(0), rtol=1e-5, atol=1e-6
    )
    # W(t) alone is the increment from the earlier end of the grid.
    w = _evaluate(path, grid[4], None)
    expected = dws[:4].sum(0) if direction == "forward" else -dws[4:].sum(0)
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
    # Off the grid: linear interpolation within a step (the documented restriction).
    mid = 0.5 * (grid[2] + grid[3])
    np.testing.assert_allclose(
        evaluate(grid[1], mid), dws[1] + 0.5 * dws[2], rtol=1e-5, atol=1e-6
    )


def test_step_brownian_path_refuses_times_outside_its_grid():
    path = mj.StepBrownianPath((3,), KEY, t0=0.0, t1=1.0, num_steps=4)
    assert path.evaluate(0.0, 1.0).shape == (3,)
    with pytest.raises(Exception, match="outside the path's"):
        path.evaluate(0.0, 4.0)
    jitted = eqx.filter_jit(lambda p, s, u: p.evaluate(s, u))
    with pytest.raises(Exception, match="outside the path's"):
        jitted(path, 0.0, 4.0)
    with pytest.warns(UserWarning, match="not on the path's grid"):
        path.evaluate(0.0, 0.3)


def test_constructor_errors():
    with pytest.raises(ValueError, match="`num_steps` must be a positive int"):
        mj.StepBrownianPath(SHAPE, KEY, t0=0.0, t1=1.0, num_steps=0)
    with pytest.raises(ValueError, match="must be finite and differ"):
        mj.StepBrownianPath(SHAPE, KEY, t0=1.0, t1=1.0, num_steps=4)
