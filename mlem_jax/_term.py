"""`MultilevelTerm`: a drift hierarchy as a diffrax term."""

from __future__ import annotations

import diffrax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._levels import Levels


class MultilevelTerm(diffrax.AbstractTerm):
    r"""The drift term `f(t, y) dt` of an ML-EM solve, carrying its whole hierarchy.

    Its vector field is the top level `f^k`, so every diffrax solver accepts it as an
    ordinary drift term: `diffrax.Euler()` on this term is Euler–Maruyama with the
    most accurate level, the baseline that ML-EM is unbiased for.
    `mlem_jax.MLEMSolver` instead reads the whole hierarchy `levels` from it and
    evaluates the randomized telescope `Σ_l (B_l/p_l)(f^l − f^{l−1})`.

    **Arguments:**

    - `levels`: the drift hierarchy, a `mlem_jax.Levels`.

    **Example:**

    ```python
    levels = mj.Levels(fns=(f1, f2, f3), costs=(1.0, 8.0, 64.0))
    drift = mj.MultilevelTerm(levels)
    noise = diffrax.ControlTerm(
        lambda t, y, args: lineax.DiagonalLinearOperator(g(t, y, args)),
        mj.StepBrownianPath(y0.shape, key, t0=1.0, t1=0.0, num_steps=200),
    )
    terms = diffrax.MultiTerm(drift, noise)
    sol = diffrax.diffeqsolve(terms, mj.MLEMSolver(sched, key=key), 1.0, 0.0,
                              -1 / 200, y0)          # ML-EM
    sol = diffrax.diffeqsolve(terms, diffrax.Euler(), 1.0, 0.0, -1 / 200, y0)  # EM
    ```
    """

    levels: Levels

    def __check_init__(self):
        if not isinstance(self.levels, Levels):
            raise TypeError(
                "MultilevelTerm: `levels` must be a mlem_jax.Levels; got "
                f"{type(self.levels).__name__}."
            )

    def vf(self, t, y, args):
        return self.levels.top(t, y, args)

    def contr(self, t0, t1, **kwargs):
        del kwargs
        return t1 - t0

    def prod(self, vf, control):
        # As diffrax.ODETerm: the scalar control, in each leaf's dtype, times the leaf.
        return jtu.tree_map(lambda v: jnp.asarray(control, jnp.result_type(v)) * v, vf)
