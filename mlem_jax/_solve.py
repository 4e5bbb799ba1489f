"""The functional solvers: `mlem_solve` and its baseline `em_solve`."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree

from . import _checks as checks
from ._integrate import (
    AbstractStepper,
    EulerMaruyama,
    Grid,
    Problem,
    SaveSpec,
    integrate,
    path_increment,
)
from ._levels import Levels
from ._misc import check_key, check_num_steps, concrete_or_none, time_dtype
from ._schedules import AbstractSchedule
from ._step import check_drift_tree

DiffusionFn = Callable[[Any, Any, Any], Any]


class SolveInfo(eqx.Module):
    """What a solve did, returned next to its result.

    **Fields:**

    - `evaluations`: shape `(k,)`, how many times each level was evaluated (for
        `em_solve`, `(num_steps,)` in a length-1 array).
    - `cost`: the realised cost `Σ_l costs[l] · evaluations[l]`.
    - `ts`: the times of the saved states when `saveat` was given, else `None`.
    - `num_steps`: the number of steps taken.
    """

    evaluations: Int[Array, " k"]
    cost: Float[Array, ""]
    ts: Float[Array, " n"] | None
    num_steps: int = eqx.field(static=True)


def mlem_solve(
    levels: Levels,
    schedule: AbstractSchedule,
    diffusion: DiffusionFn | None,
    y0: PyTree[ArrayLike],
    *,
    t0: float | ArrayLike,
    t1: float | ArrayLike,
    num_steps: int,
    key: PRNGKeyArray,
    args: Any = None,
    brownian: PyTree[ArrayLike] | diffrax.AbstractBrownianPath | None = None,
    saveat: diffrax.SaveAt | None = None,
    checkpoint: bool | str = True,
) -> tuple[PyTree[Array], SolveInfo]:
    """Solve `dY = f(t, Y) dt + g(t, Y) dW` with the Multilevel Euler–Maruyama method.

    Each of the `num_steps` fixed steps of signed size `h = (t1 − t0)/num_steps` is

        y ← y + h · Σ_l (B_l/p_l)(f^l − f^{l−1})(t, y) + g(t, y) · ΔW,

    with `B_l ~ Bernoulli(p_l)` drawn once per level per step and shared by the whole
    batch in `y0`. A level is evaluated only when `B_l` or `B_{l+1}` fires, inside a
    `lax.cond` that stays a real branch, so skipped levels cost nothing. The drift is
    unbiased for the top level `f^k`; with every `p_l = 1` this is Euler–Maruyama.

    **Arguments:**

    - `levels`: the drift hierarchy, a `mlem_jax.Levels`.
    - `schedule`: the level probabilities, e.g. `FixedProbabilities` or `Rates`; it
        must have as many levels as `levels`.
    - `diffusion`: `g(t, y, args)` returning an array broadcastable to `y` (diagonal
        noise) or a scalar; for a PyTree `y`, a PyTree like `y` of such arrays (or
        one scalar for every leaf). `None` solves the ODE `dY = f dt`.
    - `y0`: the initial state, a floating array or a PyTree of them (e.g. a dict;
        every level then returns a PyTree like it). Put a batch of independent
        samples in a leading axis: every element gets its own Brownian motion while
        the level draws are shared, which is what keeps the compute skipping real.
        The estimator is linear, so a PyTree is solved leaf by leaf with one draw per
        level per step for the whole state.
    - `t0`, `t1`: start and end times; `t1 < t0` integrates backwards in time (as
        diffusion models sample), with `ΔW` then a Brownian increment over `|h|`.
    - `num_steps`: the number of steps, a positive int.
    - `key`: a PRNG key, split as documented in `mlem_jax._brownian` into a Brownian
        stream and a level stream (a PyTree state splits the Brownian stream into one
        key per leaf, in `jax.tree.leaves` order); `em_solve` with the same key and
        grid uses the same Brownian increments.
    - `args`: passed to every level and to `diffusion`.
    - `brownian`: optional explicit Brownian motion, either an array of increments of
        shape `(num_steps, *y0.shape)` (see `brownian_increments` and
        `coarsen_increments`; for a PyTree `y0`, a PyTree like it of such arrays) or
        a diffrax Brownian path shaped like `y0` (e.g.
        `diffrax.VirtualBrownianTree`), evaluated on the step grid. `key` then only
        drives the level draws.
    - `saveat`: optional `diffrax.SaveAt` with any of `t0`, `t1`, `ts` (times on the
        step grid `t0 + n·h`) and `steps`. Without it the final state is returned.
    - `checkpoint`: how reverse-mode autodiff stores the trajectory. `True`
        (default): rematerialise each step instead of storing its intermediate
        values, keeping one state per step (memory `O(num_steps · y0.size)`).
        `"sqrt"`: two-level checkpointing, an outer scan over about `√num_steps`
        blocks of about `√num_steps` steps each, keeping only the block-boundary
        states and recomputing one block at a time (memory `O(√num_steps ·
        y0.size)`, about one extra forward solve of compute). `False`: store
        everything (fastest, most memory).

    **Returns:** `(y1, info)`: the final state (or, with `saveat`, the saved states
    stacked along a new leading axis of every leaf, at the times `info.ts`) and a
    `SolveInfo` with
    the realised per-level evaluation counts and cost.

    Pure: the same arguments give bit-identical results. Works under `jax.jit`,
    `jax.grad` and `jax.jvp` (pathwise: the draws are fixed by `key`) and under
    `jax.vmap` over `y0`, `args` or parameters with an unbatched `key`; a batched key
    raises an error that explains why and what to do instead.

    **Reference:** A. Jacot, "Polynomial Speedup in Diffusion Models with the
    Multilevel Euler-Maruyama Method", arXiv:2603.24594 (2026).
    """
    check_ladder("mlem_solve", levels, schedule)
    options = SolveOptions(t0, t1, num_steps, key, args, brownian, saveat, checkpoint)
    problem = solve_problem("mlem_solve", levels.fns, schedule, diffusion, y0, options)
    return run_problem("mlem_solve", problem, EulerMaruyama(diffusion), levels.costs)


def check_ladder(name: str, levels, schedule, arg: str = "schedule") -> None:
    """Raise a clear error (naming `name`) unless `levels` is a `Levels` and
    `schedule` (the argument `arg`) a schedule with one entry per level."""
    checks.instance(name, "levels", levels, Levels, "a mlem_jax.Levels")
    what = "a mlem_jax schedule (FixedProbabilities, Rates, ...)"
    checks.instance(name, arg, schedule, AbstractSchedule, what)
    k, n = schedule.num_levels, levels.num_levels
    if k != n:
        raise ValueError(f"{name}: `{arg}` has {k} levels but `levels` has {n}.")


def em_solve(
    drift: Callable[[Any, Any, Any], Any],
    diffusion: DiffusionFn | None,
    y0: PyTree[ArrayLike],
    *,
    t0: float | ArrayLike,
    t1: float | ArrayLike,
    num_steps: int,
    key: PRNGKeyArray,
    args: Any = None,
    brownian: PyTree[ArrayLike] | diffrax.AbstractBrownianPath | None = None,
    saveat: diffrax.SaveAt | None = None,
    cost: float = 1.0,
    checkpoint: bool | str = True,
) -> tuple[PyTree[Array], SolveInfo]:
    """Solve `dY = f(t, Y) dt + g(t, Y) dW` with Euler–Maruyama: the baseline.

    `y ← y + h · f(t, y) + g(t, y) · ΔW` on `num_steps` fixed steps. With the same
    `key`, `y0`, `t0`, `t1` and `num_steps` as a `mlem_solve`, it uses the same
    Brownian increments, so the two can be compared pathwise.

    **Arguments:** as `mlem_solve`, with `drift` (one function `f(t, y, args)`, e.g.
    `levels.top`) in place of `levels` and `schedule`, and `cost`: the cost of one
    drift evaluation, for `info.cost`.

    **Returns:** `(y1, info)` as `mlem_solve`; `info.evaluations == [num_steps]`.
    """
    checks.function("em_solve", "drift", drift, "a callable f(t, y, args)")
    cost = checks.number("em_solve", "cost", cost)
    options = SolveOptions(t0, t1, num_steps, key, args, brownian, saveat, checkpoint)
    problem = solve_problem("em_solve", (drift,), None, diffusion, y0, options)
    return run_problem("em_solve", problem, EulerMaruyama(diffusion), (cost,))


class SolveOptions(NamedTuple):
    """The keyword arguments every solve front shares (see `mlem_solve`), handed
    from the front to `solve_problem` as one record."""

    t0: Any
    t1: Any
    num_steps: int
    key: Any
    args: Any = None
    brownian: Any = None
    saveat: diffrax.SaveAt | None = None
    checkpoint: bool | str = True


def solve_problem(
    name: str, fns, schedule, diffusion, y0, options: SolveOptions
) -> Problem:
    """Check the arguments of a solve (errors name `name`) into a `Problem`: the
    level functions `fns` (one drift when `schedule` is `None`), `diffusion`, `y0`
    and the front's `options`."""
    num_steps = check_num_steps(name, options.num_steps)
    checkpoint = options.checkpoint
    if not (isinstance(checkpoint, bool) or checkpoint == "sqrt"):
        raise checks.fail(name, "checkpoint", 'True, False or "sqrt"', checkpoint)
    y0 = _as_state(name, y0)
    if diffusion is not None:
        what = "a callable g(t, y, args) or None (ODE)"
        checks.function(name, "diffusion", diffusion, what)
    check_key(name, options.key)
    grid = _check_times(name, options.t0, options.t1, num_steps, time_dtype(y0))
    brownian = _check_brownian(name, options.brownian, diffusion, y0, grid)
    for i, fn in enumerate(fns):
        # Abstract evaluation only: no compute, a clear error naming the level.
        out = eqx.filter_eval_shape(fn, grid.t0, y0, options.args)
        check_drift_tree(out, y0, "`drift`" if schedule is None else f"level {i + 1}")
    h = _concrete_step(grid)
    always = None
    if schedule is not None and h is not None:
        always = schedule.always_fires(h)
    return Problem(
        fns=tuple(fns),
        schedule=schedule,
        always=always,
        y0=y0,
        grid=grid,
        key=options.key,
        args=options.args,
        brownian=brownian,
        save=_save_spec(name, options.saveat, grid),
        checkpoint=checkpoint,
    )


def _check_times(name: str, t0, t1, num_steps: int, tdtype) -> Grid:
    """The uniform `Grid` from `t0` to `t1` in `tdtype`: scalars, and (when
    concrete) finite and different."""
    t0, t1 = jnp.asarray(t0, tdtype), jnp.asarray(t1, tdtype)
    if t0.shape != () or t1.shape != ():
        raise ValueError(f"{name}: `t0` and `t1` must be scalars.")
    t0c, t1c = concrete_or_none(t0), concrete_or_none(t1)
    if t0c is not None and t1c is not None:
        if not (np.isfinite(t0c) and np.isfinite(t1c)):
            raise ValueError(f"{name}: `t0` and `t1` must be finite; got {t0c}, {t1c}.")
        if t0c == t1c:
            raise ValueError(f"{name}: `t0` and `t1` must differ; both are {t0c}.")
    return Grid(t0=t0, t1=t1, num_steps=num_steps)


def _concrete_ends(grid: Grid) -> tuple[float, float] | None:
    """`(t0, t1)` of `grid` as floats, or `None` if either is traced."""
    t0c, t1c = concrete_or_none(grid.t0), concrete_or_none(grid.t1)
    if t0c is None or t1c is None:
        return None
    return float(t0c), float(t1c)


def _concrete_step(grid: Grid) -> float | None:
    """The step `h` of `grid` as a float, or `None` if its ends are traced."""
    ends = _concrete_ends(grid)
    return None if ends is None else (ends[1] - ends[0]) / grid.num_steps


def _check_brownian(name: str, brownian, diffusion, y0, grid: Grid):
    """`brownian` checked against `y0` and the grid: `None`, a diffrax path shaped
    like `y0`, or increments (`check_increments`)."""
    if brownian is None:
        return None
    if diffusion is None:
        why = "`diffusion` is None (an ODE has no noise)"
        raise ValueError(f"{name}: `brownian` was given but {why}; drop one of them.")
    if not isinstance(brownian, diffrax.AbstractPath):
        what = "an array of increments or a diffrax Brownian path"
        return check_increments(name, brownian, grid.num_steps, y0, what)
    increment = lambda p: path_increment(p, grid.t0, grid.t1)  # noqa: E731
    out = jax.eval_shape(increment, brownian)
    shapes = lambda tree: jax.tree.map(jnp.shape, tree)  # noqa: E731
    got, want = shapes(out), shapes(y0)
    if jax.tree.structure(out) != jax.tree.structure(y0) or got != want:
        what = f"the Brownian path `brownian` has shape {got}; expected y0's shape"
        raise ValueError(f"{name}: {what} {want}.")
    return brownian


def run_problem(
    name: str, problem: Problem, stepper: AbstractStepper, costs, per_step: int = 1
) -> tuple[PyTree[Array], SolveInfo]:
    """`integrate(stepper, problem)` and its `SolveInfo` (each evaluation
    `per_step` calls of the level); warns where a finite `y0` gave non-finite
    states."""
    ys, needed, _, ts = integrate(stepper, problem)
    warn_non_finite(name, ys)
    return ys, solve_info(problem, needed, ts, costs, per_step)


def solve_info(problem: Problem, needed, ts, costs, per_step: int = 1) -> SolveInfo:
    """The `SolveInfo` of a run of `problem` whose steps evaluated `needed` (each
    evaluation `per_step` calls of the level)."""
    evaluations = needed.sum(axis=0, dtype=jnp.int32) * per_step
    tdtype = problem.grid.t0.dtype
    cost = jnp.asarray(costs, tdtype) @ evaluations.astype(tdtype)
    return SolveInfo(
        evaluations=evaluations, cost=cost, ts=ts, num_steps=problem.grid.num_steps
    )


def check_increments(
    name: str, brownian, num_steps: int, y0: PyTree[Array], expected: str
) -> PyTree[Array]:
    """`brownian` as Brownian increments of shape `(num_steps, *y0.shape)` in `y0`'s
    dtype (for a PyTree `y0`, a PyTree like it of such arrays, leaf by leaf), or a
    clear error naming `brownian` (`expected` says what it may be)."""
    structure = jax.tree.structure(y0)
    if not jtu.treedef_is_leaf(structure):
        if jax.tree.structure(brownian) != structure:
            what = f"increments in a PyTree with the structure of `y0` {structure}"
            raise checks.fail(name, "brownian", what, jax.tree.structure(brownian))
        paths = [jtu.keystr(p) for p, _ in jtu.tree_flatten_with_path(y0)[0]]
        leaves = [
            _check_leaf_increments(name, b, num_steps, yi, expected, f" at {p}")
            for b, yi, p in zip(
                jax.tree.leaves(brownian), jax.tree.leaves(y0), paths, strict=True
            )
        ]
        return jax.tree.unflatten(structure, leaves)
    return _check_leaf_increments(name, brownian, num_steps, y0, expected, "")


def _check_leaf_increments(name, brownian, num_steps, y0, expected, where):
    try:
        brownian = jnp.asarray(brownian, y0.dtype)
    except TypeError as e:
        got = type(brownian).__name__
        raise TypeError(
            f"{name}: `brownian`{where} must be {expected}; got {got}."
        ) from e
    got = f"increments{where} have shape {brownian.shape}"
    want = f"(num_steps, *y0.shape) = {(num_steps, *y0.shape)}"
    if brownian.shape != (num_steps, *y0.shape):
        raise ValueError(f"{name}: `brownian` {got}; expected {want}.")
    return brownian


def _finite_count(tree) -> tuple[int, int] | None:
    """`(non-finite entries, entries)` of a PyTree of concrete floating arrays, or
    `None` if any leaf is traced (under `jit`, `vmap`, `grad`)."""
    leaves = jax.tree.leaves(tree)
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return None
    bad = total = 0
    # A concrete value closed over by a traced function is still concrete; count
    # on it now rather than adding the count to the trace.
    with jax.ensure_compile_time_eval():
        for x in leaves:
            x = jnp.asarray(x)
            if jnp.issubdtype(x.dtype, jnp.inexact):
                bad += int(x.size - jnp.count_nonzero(jnp.isfinite(x)))
            total += int(x.size)
    return bad, total


def check_finite_state(name: str, y0) -> None:
    """Refuse a concrete `y0` holding NaN or inf: the solve would return non-finite
    states without a word (skipped under `jit`, where `y0` is traced)."""
    counts = _finite_count(y0)
    if counts is not None and counts[0]:
        bad = f"{counts[0]} non-finite value(s) (NaN or inf) of {counts[1]}"
        raise ValueError(f"{name}: `y0` holds {bad}; every entry must be finite.")


def warn_non_finite(name: str, ys) -> None:
    """Warn (`RuntimeWarning`) when a solve started from a finite `y0` returned
    non-finite values: a level, the diffusion or the steps diverged. Only outside
    `jit` (inside, the result is traced; check `jnp.isfinite` yourself)."""
    counts = _finite_count(ys)
    if counts is not None and counts[0]:
        warnings.warn(
            f"{name}: the solve returned {counts[0]} non-finite value(s) (NaN or inf) "
            f"of {counts[1]} from a finite `y0`: a drift or the diffusion returned "
            "NaN/inf part of the way, or the solve diverged (too few steps, or a "
            "probability so small that a correction weighted 1/p blew up).",
            RuntimeWarning,
            stacklevel=4,
        )


def _as_state(name: str, y0) -> PyTree[Array]:
    """`y0` as a floating array, or a PyTree of them, or a clear error."""
    leaves, structure = jax.tree.flatten(y0)
    if isinstance(y0, list) and all(isinstance(x, numbers.Number) for x in leaves):
        why = "JAX reads as a PyTree of scalar states; pass an array, `jnp.asarray(y0)`"
        raise TypeError(f"{name}: `y0` is a Python list of numbers, which {why}.")
    what = "a floating array or a PyTree of floating arrays"
    if not leaves:
        got = f"{type(y0).__name__} with no arrays"
        raise TypeError(f"{name}: `y0` must be {what}; got {got}.")
    leaf_of = "" if jtu.treedef_is_leaf(structure) else "a leaf of "
    arrays = []
    for leaf in leaves:
        try:
            leaf = jnp.asarray(leaf)
        except (TypeError, ValueError) as e:
            got = f"{leaf_of}type {type(leaf).__name__}"
            raise TypeError(f"{name}: `y0` must be {what}; got {got}.") from e
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            got = f"{leaf_of}dtype {leaf.dtype}"
            raise TypeError(f"{name}: `y0` must have a floating dtype; got {got}.")
        arrays.append(leaf)
    state = jax.tree.unflatten(structure, arrays)
    check_finite_state(name, state)
    return state


def _save_spec(name, saveat, grid: Grid) -> SaveSpec | None:
    """`saveat` checked into a `SaveSpec` on `grid` (`None` for none)."""
    if saveat is None:
        return None
    checks.instance(name, "saveat", saveat, diffrax.SaveAt, "a diffrax.SaveAt or None")
    sub = saveat.subs
    plain = (
        isinstance(sub, diffrax.SubSaveAt) and sub.fn is diffrax.SubSaveAt(t1=True).fn
    )
    states = saveat.solver_state or saveat.controller_state or saveat.made_jump
    if not plain or saveat.dense or states:
        what = "SaveAt(t0=..., t1=..., ts=..., steps=...); for `fn`, `subs`, `dense`"
        what += " or state saving use diffrax.diffeqsolve with mlem_jax.MLEMSolver"
        raise ValueError(f"{name}: `saveat` supports only {what}.")
    ts = None if sub.ts is None else _save_times(name, sub.ts, grid)
    spec = SaveSpec(
        t0=bool(sub.t0),
        t1=bool(sub.t1),
        steps=bool(sub.steps),
        ts_index=None if ts is None else ts[0],
        save_ts=None if ts is None else ts[1],
    )
    if not (spec.t0 or spec.t1 or spec.steps or ts is not None):
        raise ValueError(f"{name}: `saveat` saves nothing; set t0, t1, ts or steps.")
    return spec


def _save_times(name, ts, grid: Grid):
    """`(step indices, times)` of the `saveat.ts` times on the step grid (when
    concrete, checked to lie on it)."""
    t0, t1, num_steps = grid.t0, grid.t1, grid.num_steps
    ts = jnp.asarray(ts, t0.dtype)
    if ts.ndim != 1:
        raise ValueError(f"{name}: `saveat.ts` must be 1-D; got shape {ts.shape}.")
    index = (ts - t0) / ((t1 - t0) / num_steps)
    tsc, ends = concrete_or_none(ts), _concrete_ends(grid)
    if tsc is not None and ends is not None:
        hc = (ends[1] - ends[0]) / num_steps
        exact = (tsc.astype(np.float64) - ends[0]) / hc
        rounded = np.rint(exact)
        if np.any(rounded < 0) or np.any(rounded > num_steps):
            what = f"between t0={ends[0]} and t1={ends[1]}"
            raise ValueError(
                f"{name}: `saveat.ts` must lie {what}; got {tsc.tolist()}."
            )
        if np.any(np.abs(exact - rounded) > 1e-3):
            what = f"on the step grid t0 + n·h with h = {hc}"
            raise ValueError(
                f"{name}: `saveat.ts` must lie {what}; got {tsc.tolist()}."
            )
    return jnp.rint(index).astype(jnp.int32), ts
