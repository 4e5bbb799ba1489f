"""`MultilevelTerm`: a drift hierarchy as a diffrax term. How `MLEMSolver` reads the
whole hierarchy from it is tested in tests/test_solver.py."""

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import nonlinear_levels

import mlem_jax as mj


def test_levels_must_be_levels():
    with pytest.raises(TypeError, match="`levels` must be a mlem_jax.Levels"):
        mj.MultilevelTerm(lambda t, y, a: y)


def test_other_solvers_see_the_top_level():
    # Its vector field is the top level: diffrax.Euler on the term is Euler on
    # ODETerm(f^k), in reverse time too.
    levels = nonlinear_levels()
    y0 = jnp.linspace(-1.0, 1.5, 6, dtype=jnp.float32).reshape(2, 3)

    def solve(term):
        sol = diffrax.diffeqsolve(
            term, diffrax.Euler(), 1.0, 0.0, -0.125, y0, args=jnp.float32(1.3)
        )
        return sol.ys

    ys = solve(mj.MultilevelTerm(levels))
    np.testing.assert_allclose(ys, solve(diffrax.ODETerm(levels.top)), rtol=1e-6)
    assert not np.allclose(ys, solve(diffrax.ODETerm(levels.fns[0])), atol=1e-3)
