"""`MLEMSolver`: the Multilevel Euler–Maruyama method as a diffrax solver."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

# diffeqsolve hands `step` every term wrapped in diffrax's WrapTerm (which flips time
# for reverse-time solves). ML-EM must reach through it to the MultilevelTerm's
# hierarchy and to the direction of time; diffrax exports no public way to do either.
# AdjointTerm (same module, also unexported) is how BacksolveAdjoint's backward solve
# arrives, which ML-EM must refuse by name.
from diffrax._term import AdjointTerm, WrapTerm
from jaxtyping import Array, Int, PRNGKeyArray

from . import _checks as checks
from ._brownian import split_key
from ._levels import refinements
from ._misc import check_key, time_dtype
from ._schedules import AbstractSchedule
from ._step import mlem_drift, refuse_batching, step_draws, unbatching
from ._term import MultilevelTerm

ADAPTIVE_MESSAGE = (
    "ML-EM cannot adapt its step size: it draws its levels at random every step, so "
    "it has no error estimate to accept or reject a step by, and retrying a rejected "
    "step would re-use its random draws. Use a fixed step-size controller: "
    "`stepsize_controller=diffrax.ConstantStepSize()` with `dt0`, or "
    "`diffrax.StepTo(ts=...)`."
)

BACKSOLVE_MESSAGE = (
    "MLEMSolver: diffrax.BacksolveAdjoint is not supported (the backward solve "
    "reached the solver as an AdjointTerm). Its backward solve would integrate the "
    "adjoint SDE with fresh level draws and Brownian increments, not the forward "
    "solve's, and ML-EM is an Itô method. Use diffrax.RecursiveCheckpointAdjoint "
    "(the default), diffrax.DirectAdjoint or diffrax.ForwardMode."
)

BATCHED_PROBABILITIES_MESSAGE = (
    "MLEMSolver: the level probabilities are batched under jax.vmap: the schedule "
    "depends on the step's time or size (e.g. mlem_jax.Rates), and those are batched "
    "(vmap over t0, t1 or dt0, or diffrax's loop batching its time under vmap with "
    "events). Batched probabilities would turn every level's lax.cond into a select "
    "that runs all levels for every sample. Use a schedule whose probabilities do "
    "not depend on the batched times (mlem_jax.FixedProbabilities), or solve the "
    "batch elements one after another with jax.lax.map."
)

# Any step size at all: `always_fires` is asked about levels that fire at every step
# whatever its size, since the solver's step sizes are traced.
_ANY_STEP = float(np.finfo(np.float32).tiny)


# Under jax.vmap, diffrax's loop batches its whole carry, the step counter included,
# as soon as its stopping condition is batched (vmap over t0/t1, or over y0 with
# events). It still steps all batch elements together, and with a fixed step-size
# controller every step is accepted: the elements still running share one count (the
# largest), and the draws of finished ones are discarded. Taking that count keeps the
# level draws, and so every lax.cond, unbatched.
_shared_step_count = unbatching(lambda step: jnp.max(step, axis=0))


_unbatched_probabilities = refuse_batching(BATCHED_PROBABILITIES_MESSAGE)


class MLEMState(eqx.Module):
    """The state `MLEMSolver` carries between steps.

    **Fields:**

    - `step`: the index `n` of the next step; step `n` draws its levels from
        `step_uniforms(level_key, n, k)` with `_, level_key = split_key(key)`, as the
        functional `mlem_solve`.
    - `evaluations`: shape `(k,)`, how many times each level has been evaluated so
        far (the same count as `mlem_solve`'s `SolveInfo.evaluations`).

    Passing a saved state back (`diffeqsolve(..., solver_state=sol.solver_state)`)
    continues a solve: the step counter and the counts carry on, so a solve split in
    two gives the same result as one solve.
    """

    step: Int[Array, ""]
    evaluations: Int[Array, " k"]


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

    **Terms.** The drift is a ladder: `MultilevelTerm(levels)`, or any
    `diffrax.ODETerm(f)`, which is a one-level ladder (with `p_1 = 1` the solver is
    then exactly `diffrax.Euler`, bit for bit). Pass it alone (an ODE) or as
    `diffrax.MultiTerm(drift, diffusion_term)` for an SDE, with any diffusion term
    diffrax's `Euler` takes, e.g. `diffrax.ControlTerm(g, path)` with diagonal,
    matrix or PyTree noise (`lineax` operators). The ladder is the `MultilevelTerm`
    among the terms of a `MultiTerm`, else the first `ODETerm`; every other term is
    applied as `diffrax.Euler` applies it. The state `y0` may be any PyTree of real or
    complex floating arrays; one draw per level per step serves the whole state.
    Forward and reverse time (`t1 < t0`) are supported.

    **Fixed steps only.** Use `diffrax.ConstantStepSize` or `diffrax.StepTo`. ML-EM
    cannot adapt its step size: it draws its levels at random every step, so it has
    no error estimate to accept or reject a step by, and retrying a rejected step
    would re-use its random draws. Like `diffrax.Euler`, `step` returns `None` as
    its error estimate, and diffrax refuses adaptive controllers ("Cannot use
    adaptive step sizes with a solver that does not provide error estimates").

    Gradients are pathwise (the level draws are fixed by `key`): reverse mode with
    `diffrax.RecursiveCheckpointAdjoint` (the default) or `diffrax.DirectAdjoint`,
    forward mode with `diffrax.ForwardMode`. `diffrax.BacksolveAdjoint` is refused
    with an error naming it (its backward solve would need the forward solve's
    draws). For reverse mode drive the noise with `mlem_jax.StepBrownianPath` or
    `diffrax.VirtualBrownianTree`; `diffrax.UnsafeBrownianPath` allows forward mode
    only.

    The level draws of step `n` (counted from the start of the solve) are
    `B_l = U_l < p_l` with `U = step_uniforms(level_key, n, k)` and
    `_, level_key = jax.random.split(key)`, as in `mlem_jax.mlem_solve`. Driven by
    `mlem_jax.StepBrownianPath` with the same `key` and grid, `diffeqsolve` with this
    solver reproduces `mlem_solve(..., key=key)` to float rounding. Levels the
    schedule fires at every step (`schedule.always_fires`) draw nothing.

    **Under `jax.vmap`** over `y0`, `t0`, `t1`, `args` (or parameters) with an
    unbatched `key`, the level draws stay unbatched and every level's `lax.cond`
    stays a real branch, also where diffrax's loop batches its step counter (vmap
    over `t0`/`t1`, or over `y0` with events: all running batch elements share one
    step count). Two things would batch the draws, and each raises an error naming
    it: a batched `key`, and probabilities that depend on batched times (e.g.
    `mlem_jax.Rates` under vmap over `t0`, `t1` or `dt0`, or under events).

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
        what = "a mlem_jax schedule (FixedProbabilities, Rates, ...)"
        checks.instance("MLEMSolver", "schedule", schedule, AbstractSchedule, what)
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
        fns, _, _, others = self._ladder(terms, y0)
        for term in others:
            if term is not None:
                _check_noise_term(term, t0, t1, y0, args)
        return MLEMState(
            step=jnp.zeros((), jnp.int32),
            evaluations=jnp.zeros((len(fns),), jnp.int32),
        )

    def step(self, terms, t0, t1, y0, args, solver_state: MLEMState, made_jump):
        del made_jump
        fns, ladder, direction, others = self._ladder(terms, y0)
        dtype = time_dtype(y0)
        # diffeqsolve runs reverse-time solves in negated time; undo it for the
        # levels and the schedule, which see the real time and signed step.
        t = jnp.asarray(t0) * direction
        h = (jnp.asarray(t1) * direction - t).astype(dtype)
        always = self.schedule.always_fires(_ANY_STEP)
        # Checked on a boolean of the probabilities: custom_vmap on a float would
        # break reverse-mode linearization.
        needed, weights = step_draws(
            self.schedule,
            split_key(self.key)[1],
            _shared_step_count(solver_state.step),
            t,
            h,
            dtype,
            always,
            check_probabilities=lambda p: _unbatched_probabilities(jnp.isnan(p)),
            refines=refinements(fns),
        )
        drift = mlem_drift(fns, needed, weights, t, y0, args, always)
        # The sum of every term's increment, in the terms' order, added to y0: as
        # diffrax.Euler on a MultiTerm (so one level at p = 1 is Euler bit for bit).
        increments = [
            ladder.prod(drift, ladder.contr(t0, t1))
            if term is None
            else term.vf_prod(t0, y0, args, term.contr(t0, t1))
            for term in others
        ]
        increment = jtu.tree_map(lambda *xs: sum(xs[1:], xs[0]), *increments)
        y1 = jtu.tree_map(lambda a, b: a + b, y0, increment)
        state = MLEMState(
            step=solver_state.step + 1,
            evaluations=solver_state.evaluations + needed.astype(jnp.int32),
        )
        dense_info = dict(y0=y0, y1=y1)
        return y1, None, dense_info, state, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        # The top level's vector field (plus the diffusion's), as diffrax.Euler.
        return terms.vf(t0, y0, args)

    def _ladder(self, terms, y0):
        """`(level fns, ladder term, direction, terms)` from the terms `step` gets;
        `terms` lists every term in `MultiTerm` order, with `None` for the ladder."""
        expected = (
            "MLEMSolver: the terms must be a drift term (mlem_jax.MultilevelTerm or "
            "diffrax.ODETerm) for an ODE, or diffrax.MultiTerm(drift, diffusion_term) "
            "for an SDE"
        )
        is_term = lambda x: isinstance(x, diffrax.AbstractTerm)  # noqa: E731
        for term in jtu.tree_leaves(
            terms, is_leaf=lambda x: is_term(x) and not isinstance(x, WrapTerm)
        ):
            if isinstance(term, AdjointTerm):
                raise TypeError(BACKSOLVE_MESSAGE)
        subterms = terms.terms if isinstance(terms, diffrax.MultiTerm) else (terms,)
        inner = [s.term if isinstance(s, WrapTerm) else s for s in subterms]
        multilevel = [i for i, s in enumerate(inner) if isinstance(s, MultilevelTerm)]
        nested = sum(
            isinstance(x, MultilevelTerm)
            for x in jtu.tree_leaves(terms, is_leaf=is_term)
            for x in jtu.tree_leaves(x, is_leaf=lambda x: isinstance(x, MultilevelTerm))
        )
        if len(multilevel) > 1 or nested != len(multilevel):
            got = (
                f"{nested} MultilevelTerms, expected one, directly inside the MultiTerm"
            )
            raise TypeError(f"{expected}; got {got}.")
        plain = [i for i, s in enumerate(inner) if isinstance(s, diffrax.ODETerm)]
        if not (multilevel or plain):
            names = ", ".join(type(s).__name__ for s in inner)
            raise TypeError(f"{expected}; got no drift term among ({names}).")
        index = (multilevel or plain)[0]
        ladder = subterms[index]
        direction = ladder.direction if isinstance(ladder, WrapTerm) else 1
        drift = inner[index]
        if isinstance(drift, MultilevelTerm):
            fns, source = drift.levels.fns, "the MultilevelTerm has"
        else:
            fns, source = (drift.vf,), "the ODETerm drift is a ladder of"
        k, n = self.schedule.num_levels, len(fns)
        if k != len(fns):
            raise ValueError(f"MLEMSolver: `schedule` has {k} levels but {source} {n}.")
        for leaf in jtu.tree_leaves(y0):
            dtype = jnp.result_type(leaf)
            if not jnp.issubdtype(dtype, jnp.inexact):
                what = "a PyTree of floating or complex arrays (a leaf's dtype)"
                raise checks.fail("MLEMSolver", "y0", what, dtype, TypeError)
        others = tuple(s if i != index else None for i, s in enumerate(subterms))
        return fns, ladder, direction, others


MLEMSolver.__init__.__doc__ = """**Arguments:**

- `schedule`: the level probabilities, one per level of the drift ladder.
- `key`: a single PRNG key for the level draws (split as `mlem_jax.mlem_solve` does).
"""


def _check_noise_term(term, t0, t1, y0, args) -> None:
    """A clear error, once at `init`, for a noise term whose control (a Brownian
    path, say a `StepBrownianPath` of another shape) does not fit `y0`: without it
    the first step fails inside a broadcast."""
    shapes = lambda tree: jtu.tree_map(lambda x: x.shape, tree)  # noqa: E731
    try:
        out = eqx.filter_eval_shape(
            lambda: term.vf_prod(t0, y0, args, term.contr(t0, t1))
        )
    except (TypeError, ValueError) as e:
        try:
            control = shapes(eqx.filter_eval_shape(term.contr, t0, t1))
        except (TypeError, ValueError):
            control = "?"
        got = f"increments of shape {control}, which does not fit y0 of shape"
        fix = "build the path with y0's shape, e.g. mlem_jax.StepBrownianPath(y0.shape)"
        why = (
            f"the noise term's control (its Brownian path) has {got} {shapes(y0)} ({e})"
        )
        raise ValueError(f"MLEMSolver: {why}; {fix}.") from None
    got, want = shapes(out), shapes(y0)
    if jtu.tree_structure(out) != jtu.tree_structure(y0) or got != want:
        why = f"the noise term gives increments of shape {got}; expected y0's shape"
        raise ValueError(f"MLEMSolver: {why} {want}.")
