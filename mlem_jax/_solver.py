"""`MLEMSolver`: the Multilevel Euler–Maruyama method as a diffrax solver."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

# diffeqsolve hands `step` every term wrapped in diffrax's WrapTerm (which flips time
# for reverse-time solves). ML-EM must reach through it to the MultilevelTerm's
# hierarchy and to the direction of time; diffrax exports no public way to do either.
from diffrax._term import WrapTerm
from jaxtyping import Array, Int, PRNGKeyArray, UInt32

from ._brownian import split_key, step_uniforms
from ._misc import check_key
from ._schedules import AbstractSchedule
from ._step import level_draws, mlem_drift
from ._term import MultilevelTerm

ADAPTIVE_MESSAGE = (
    "MLEMSolver: adaptive step-size controllers are not supported. ML-EM draws its "
    "levels at random every step, so it has no error estimate to accept or reject a "
    "step by, and retrying a rejected step would re-use its random draws. Use a fixed "
    "step-size controller: `stepsize_controller=diffrax.ConstantStepSize()` with "
    "`dt0`, or `diffrax.StepTo(ts=...)`."
)


class MLEMState(eqx.Module):
    """The state `MLEMSolver` carries between steps.

    **Fields:**

    - `level_key`: the level stream of the solver's key (`split_key(key)[1]`), as
        raw key data (`jax.random.key_data`): diffrax's checks cannot carry typed
        keys out of a solve.
    - `step`: the index `n` of the next step; step `n` draws its levels from
        `step_uniforms(level_key, n, k)`, as the functional `mlem_solve`.
    - `evaluations`: shape `(k,)`, how many times each level has been evaluated so
        far (the same count as `mlem_solve`'s `SolveInfo.evaluations`).

    Passing a saved state back (`diffeqsolve(..., solver_state=sol.solver_state)`)
    continues a solve: the step counter and the counts carry on, so a solve split in
    two gives the same result as one solve.
    """

    level_key: UInt32[Array, "..."]
    step: Int[Array, ""]
    evaluations: Int[Array, " k"]


class _NoErrorEstimate(eqx.Module):
    """The error estimate of an ML-EM step: there is none, and using it says why.

    `step` returns one of these in place of every leaf of `y`. Fixed step-size
    controllers ignore the error estimate; an adaptive controller computes with it,
    which raises `ADAPTIVE_MESSAGE` instead of diffrax's generic complaint.
    """

    def _refuse(self, *args, **kwargs):
        raise ValueError(ADAPTIVE_MESSAGE)

    __jax_array__ = __array__ = __float__ = __abs__ = __neg__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = _refuse
    __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __pow__ = _refuse


class MLEMSolver(diffrax.AbstractItoSolver):
    r"""The Multilevel Euler–Maruyama method (ML-EM).

    Solves `dY = f(t, Y) dt + g(t, Y) dW` (Itô) or the ODE `dY = f(t, Y) dt` where the
    drift `f` comes as a hierarchy `f^1, …, f^k` of increasing accuracy and cost. Each
    step of signed size `h` from `(t, y)` is

        y' = y + h · Σ_l (B_l/p_l)(f^l − f^{l−1})(t, y) + g(t, y) ΔW,

    with `B_l ~ Bernoulli(p_l)` drawn once per level per step (shared by the whole
    batch in `y`) and `p_l = schedule.probabilities(t, h)`. Level `l` is evaluated only
    when `B_l` or `B_{l+1}` fires, inside a `lax.cond` that is a real branch, so the
    expensive levels are rarely paid for. The drift estimate is unbiased for the top
    level `f^k`; with every `p_l = 1` this is Euler–Maruyama (`diffrax.Euler`) on it.

    The terms must be `MultilevelTerm(levels)` (an ODE) or
    `diffrax.MultiTerm(MultilevelTerm(levels), diffusion_term)` with any diffusion
    term, e.g. `diffrax.ControlTerm(g, path)`; the noise is applied as in
    `diffrax.Euler`. Forward and reverse time (`t1 < t0`) are supported.

    Step sizes must be fixed (`diffrax.ConstantStepSize`, `diffrax.StepTo`): there is
    no error estimate, and an adaptive controller raises an error saying so.

    Gradients are pathwise (the level draws are fixed by `key`): reverse mode with
    `diffrax.RecursiveCheckpointAdjoint` (the default) or `diffrax.DirectAdjoint`,
    forward mode with `diffrax.ForwardMode`. `diffrax.BacksolveAdjoint` is not
    supported (its backward solve would need the forward solve's draws). For
    reverse mode drive the noise with `mlem_jax.StepBrownianPath` or
    `diffrax.VirtualBrownianTree`; `diffrax.UnsafeBrownianPath` allows forward mode
    only.

    The level draws of step `n` (counted from the start of the solve) are
    `B_l = U_l < p_l` with `U = step_uniforms(level_key, n, k)` and
    `_, level_key = jax.random.split(key)`, as in `mlem_jax.mlem_solve`. Driven by
    `mlem_jax.StepBrownianPath` with the same `key` and grid, `diffeqsolve` with this
    solver reproduces `mlem_solve(..., key=key)` to float rounding.

    **Arguments:**

    - `schedule`: the level probabilities, e.g. `mlem_jax.FixedProbabilities` or
        `mlem_jax.Rates`, with one entry per level of the `MultilevelTerm`.
    - `key`: a single PRNG key driving the level draws. Under `jax.vmap` keep it
        unbatched (put the batch inside `y0`): batched draws would run every level
        for every sample, and raise an error explaining this.

    **Cost accounting:** the solver state is an `MLEMState` whose `evaluations` field
    counts the evaluations of each level. Save it with `SaveAt(solver_state=True)`:

    ```python
    term = diffrax.MultiTerm(mj.MultilevelTerm(levels), diffrax.ControlTerm(
        lambda t, y, args: lineax.DiagonalLinearOperator(g(t, y, args)),
        mj.StepBrownianPath(y0.shape, key, t0=0.0, t1=1.0, num_steps=100)))
    sol = diffrax.diffeqsolve(
        term, mj.MLEMSolver(mj.FixedProbabilities((1.0, 0.3, 0.05)), key=key),
        t0=0.0, t1=1.0, dt0=0.01, y0=y0,
        saveat=diffrax.SaveAt(t1=True, solver_state=True))
    evaluations = sol.solver_state.evaluations          # shape (k,)
    cost = jnp.asarray(levels.costs) @ evaluations.astype(jnp.float32)
    ```

    **Reference:** A. Jacot, "Polynomial Speedup in Diffusion Models with the
    Multilevel Euler-Maruyama Method", arXiv:2603.24594 (2026).
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = (
        diffrax.LocalLinearInterpolation
    )

    schedule: AbstractSchedule
    key: PRNGKeyArray

    def __init__(self, schedule: AbstractSchedule, *, key: PRNGKeyArray):
        if not isinstance(schedule, AbstractSchedule):
            raise TypeError(
                "MLEMSolver: `schedule` must be a mlem_jax schedule "
                f"(FixedProbabilities, Rates, ...); got {type(schedule).__name__}."
            )
        check_key("MLEMSolver", key)
        self.schedule = schedule
        self.key = key

    def order(self, terms):
        # As Euler–Maruyama, which it is when every p_l = 1. With p_l < 1 the random
        # drift adds variance of order h per unit time, so for an ODE the strong
        # error also decays like h^(1/2).
        return 1

    def strong_order(self, terms):
        return 0.5

    def init(self, terms, t0, t1, y0, args) -> MLEMState:
        del t0, t1, args
        levels, _, _ = self._unpack(terms, y0)
        _, level_key = split_key(self.key)
        if jax.dtypes.issubdtype(level_key.dtype, jax.dtypes.prng_key):
            level_key = jax.random.key_data(level_key)
        return MLEMState(
            level_key=level_key,
            step=jnp.zeros((), jnp.int32),
            evaluations=jnp.zeros((levels.num_levels,), jnp.int32),
        )

    def step(self, terms, t0, t1, y0, args, solver_state: MLEMState, made_jump):
        del made_jump
        levels, direction, diffusion = self._unpack(terms, y0)
        dtype = y0.dtype
        # diffeqsolve runs reverse-time solves in negated time; undo it for the
        # levels and the schedule, which see the real time and signed step.
        t = jnp.asarray(t0) * direction
        h = (jnp.asarray(t1) * direction - t).astype(dtype)
        probs = self.schedule.probabilities(t, h).astype(dtype)
        level_key = solver_state.level_key
        if jax.dtypes.issubdtype(self.key.dtype, jax.dtypes.prng_key):
            level_key = jax.random.wrap_key_data(
                level_key, impl=jax.random.key_impl(self.key)
            )
        uniforms = step_uniforms(level_key, solver_state.step, levels.num_levels, dtype)
        _, needed, weights = level_draws(uniforms, probs)
        y1 = y0 + h * mlem_drift(levels.fns, needed, weights, t, y0, args)
        if diffusion is not None:
            control = diffusion.contr(t0, t1)
            y1 = y1 + diffusion.vf_prod(t0, y0, args, control)
        state = MLEMState(
            level_key=solver_state.level_key,
            step=solver_state.step + 1,
            evaluations=solver_state.evaluations + needed.astype(jnp.int32),
        )
        y_error = jtu.tree_map(lambda _: _NoErrorEstimate(), y1)
        dense_info = dict(y0=y0, y1=y1)
        return y1, y_error, dense_info, state, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        # The top level's vector field (plus the diffusion's), as diffrax.Euler.
        return terms.vf(t0, y0, args)

    def _unpack(self, terms, y0):
        """`(levels, direction, diffusion_term or None)` from the terms `step` gets."""
        expected = (
            "MLEMSolver: the terms must be mlem_jax.MultilevelTerm(levels) for an ODE, "
            "or diffrax.MultiTerm(mlem_jax.MultilevelTerm(levels), diffusion_term) "
            "for an SDE"
        )
        if isinstance(terms, diffrax.MultiTerm):
            if len(terms.terms) == 1:
                drift, diffusion = terms.terms[0], None
            elif len(terms.terms) == 2:
                drift, diffusion = terms.terms
            else:
                raise TypeError(f"{expected}; got a MultiTerm of {len(terms.terms)}.")
        else:
            drift, diffusion = terms, None
        direction = 1
        if isinstance(drift, WrapTerm):
            drift, direction = drift.term, drift.direction
        if not isinstance(drift, MultilevelTerm):
            raise TypeError(
                f"{expected}; got {type(drift).__name__} as the drift term. Wrap the "
                "drift hierarchy as MultilevelTerm(mlem_jax.Levels(fns, costs))."
            )
        levels = drift.levels
        if self.schedule.num_levels != levels.num_levels:
            raise ValueError(
                f"MLEMSolver: `schedule` has {self.schedule.num_levels} levels but the "
                f"MultilevelTerm has {levels.num_levels}; expected one probability or "
                "rate per level."
            )
        if not (isinstance(y0, jnp.ndarray) and jnp.issubdtype(y0.dtype, jnp.floating)):
            raise TypeError(
                "MLEMSolver: `y0` must be a single floating array (put a batch in a "
                f"leading axis); got {type(y0).__name__}."
            )
        return levels, direction, diffusion


MLEMSolver.__init__.__doc__ = """**Arguments:**

- `schedule`: the level probabilities, one per level of the `MultilevelTerm`.
- `key`: a single PRNG key for the level draws (split as `mlem_jax.mlem_solve` does).
"""
