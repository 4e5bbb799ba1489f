"""The functional solvers: `mlem_solve` and its baseline `em_solve`."""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree

from ._brownian import leaf_keys, split_key, step_increment, tree_increment
from ._levels import Levels, refinements
from ._misc import check_key, check_num_steps, concrete_or_none, time_dtype
from ._schedules import AbstractSchedule
from ._step import check_drift_tree, level_value, mlem_drift, step_draws

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


class _SaveSpec(eqx.Module):
    t0: bool = eqx.field(static=True)
    t1: bool = eqx.field(static=True)
    steps: bool = eqx.field(static=True)
    ts_index: Int[Array, " m"] | None


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
    return _solve(
        "mlem_solve",
        levels.fns,
        levels.costs,
        schedule,
        diffusion,
        y0,
        t0,
        t1,
        num_steps,
        key,
        args,
        brownian,
        saveat,
        checkpoint,
    )


def check_ladder(name: str, levels, schedule) -> None:
    """Raise a clear error (naming `name`) unless `levels` is a `Levels` and
    `schedule` a schedule with one entry per level."""
    if not isinstance(levels, Levels):
        raise TypeError(
            f"{name}: `levels` must be a mlem_jax.Levels; got {type(levels).__name__}."
        )
    if not isinstance(schedule, AbstractSchedule):
        raise TypeError(
            f"{name}: `schedule` must be a mlem_jax schedule (FixedProbabilities, "
            f"Rates, ...); got {type(schedule).__name__}."
        )
    if schedule.num_levels != levels.num_levels:
        raise ValueError(
            f"{name}: `schedule` has {schedule.num_levels} levels but `levels` has "
            f"{levels.num_levels}; expected one probability or rate per level."
        )


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
    if not callable(drift):
        raise TypeError(
            "em_solve: `drift` must be a callable f(t, y, args); got "
            f"{type(drift).__name__}."
        )
    if isinstance(cost, bool) or not (
        isinstance(cost, (numbers.Real, np.ndarray, jax.Array))
        and np.shape(cost) == ()
        and np.issubdtype(np.asarray(cost).dtype, np.number)
        and np.isfinite(cost)
        and cost > 0
    ):
        raise ValueError(
            f"em_solve: `cost` must be a positive finite number; got {cost!r}."
        )
    return _solve(
        "em_solve",
        (drift,),
        (float(cost),),
        None,
        diffusion,
        y0,
        t0,
        t1,
        num_steps,
        key,
        args,
        brownian,
        saveat,
        checkpoint,
    )


def _solve(
    name,
    fns,
    costs,
    schedule,
    diffusion,
    y0,
    t0,
    t1,
    num_steps,
    key,
    args,
    brownian,
    saveat,
    checkpoint,
    shard: Any = None,
):
    num_steps = check_num_steps(name, num_steps)
    if not (isinstance(checkpoint, bool) or checkpoint == "sqrt"):
        raise ValueError(
            f'{name}: `checkpoint` must be True, False or "sqrt"; got {checkpoint!r}.'
        )
    y0 = _as_state(name, y0)
    if diffusion is not None and not callable(diffusion):
        raise TypeError(
            f"{name}: `diffusion` must be a callable g(t, y, args) or None (ODE); got "
            f"{type(diffusion).__name__}."
        )
    check_key(name, key)
    tdtype = time_dtype(y0)
    t0 = jnp.asarray(t0, tdtype)
    t1 = jnp.asarray(t1, tdtype)
    t0c, t1c = concrete_or_none(t0), concrete_or_none(t1)
    if t0.shape != () or t1.shape != ():
        raise ValueError(f"{name}: `t0` and `t1` must be scalars.")
    if t0c is not None and t1c is not None:
        if not (np.isfinite(t0c) and np.isfinite(t1c)):
            raise ValueError(f"{name}: `t0` and `t1` must be finite; got {t0c}, {t1c}.")
        if t0c == t1c:
            raise ValueError(f"{name}: `t0` and `t1` must differ; both are {t0c}.")
    if brownian is not None:
        if diffusion is None:
            raise ValueError(
                f"{name}: `brownian` was given but `diffusion` is None (an ODE has no "
                "noise); pass a diffusion g(t, y, args) or drop `brownian`."
            )
        if isinstance(brownian, diffrax.AbstractPath):
            out = jax.eval_shape(lambda p: _path_increment(p, t0, t1), brownian)
            shapes = lambda tree: jax.tree.map(
                lambda x: getattr(x, "shape", None), tree
            )
            expected = (
                shapes(y0)
                if shard is None
                else jax.tree.map(lambda x: shard.global_shape(x.shape), y0)
            )
            if jax.tree.structure(out) != jax.tree.structure(y0) or (
                shapes(out) != expected
            ):
                raise ValueError(
                    f"{name}: the Brownian path `brownian` has shape {shapes(out)}; "
                    f"expected y0's shape {expected}."
                )
        else:
            brownian = check_increments(
                name,
                brownian,
                num_steps,
                y0,
                "an array of increments or a diffrax Brownian path",
            )
    for i, fn in enumerate(fns):
        # Abstract evaluation only: no compute, a clear error naming the level.
        out = eqx.filter_eval_shape(fn, t0, y0, args)
        check_drift_tree(out, y0, "`drift`" if schedule is None else f"level {i + 1}")
    spec, save_ts = _save_spec(name, saveat, t0, t1, t0c, t1c, num_steps)
    always = None
    if schedule is not None and t0c is not None and t1c is not None:
        always = schedule.always_fires((float(t1c) - float(t0c)) / num_steps)
    ys, evaluations, ts = _integrate(
        fns,
        schedule,
        always,
        diffusion,
        y0,
        t0,
        t1,
        num_steps,
        key,
        args,
        brownian,
        spec,
        save_ts,
        checkpoint,
        shard,
    )
    cost = jnp.asarray(costs, tdtype) @ evaluations.astype(tdtype)
    warn_non_finite(name, ys)
    return ys, SolveInfo(evaluations=evaluations, cost=cost, ts=ts, num_steps=num_steps)


def check_increments(
    name: str, brownian, num_steps: int, y0: PyTree[Array], expected: str
) -> PyTree[Array]:
    """`brownian` as Brownian increments of shape `(num_steps, *y0.shape)` in `y0`'s
    dtype (for a PyTree `y0`, a PyTree like it of such arrays, leaf by leaf), or a
    clear error naming `brownian` (`expected` says what it may be)."""
    structure = jax.tree.structure(y0)
    if not jtu.treedef_is_leaf(structure):
        if jax.tree.structure(brownian) != structure:
            raise ValueError(
                f"{name}: `brownian` increments must be a PyTree with the structure "
                f"of `y0` {structure}; got {jax.tree.structure(brownian)}."
            )
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
        raise TypeError(
            f"{name}: `brownian`{where} must be {expected}; got "
            f"{type(brownian).__name__}."
        ) from e
    if brownian.shape != (num_steps, *y0.shape):
        raise ValueError(
            f"{name}: `brownian` increments{where} have shape {brownian.shape}; "
            f"expected (num_steps, *y0.shape) = {(num_steps, *y0.shape)}."
        )
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
        raise ValueError(
            f"{name}: `y0` holds {counts[0]} non-finite value(s) (NaN or inf) of "
            f"{counts[1]}; every entry of the initial state must be finite."
        )


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
            stacklevel=3,
        )


def _as_state(name: str, y0) -> PyTree[Array]:
    """`y0` as a floating array, or a PyTree of them, or a clear error."""
    if isinstance(y0, list) and all(
        isinstance(leaf, numbers.Number) for leaf in jax.tree.leaves(y0)
    ):
        raise TypeError(
            f"{name}: `y0` is a Python list of numbers, which JAX reads as a PyTree "
            "of scalar states (each drift would receive a list); pass an array, "
            "`jnp.asarray(y0)`."
        )
    single = jtu.treedef_is_leaf(jax.tree.structure(y0))
    what = "a floating array or a PyTree of floating arrays"
    leaves, structure = jax.tree.flatten(y0)
    if not leaves:
        raise TypeError(
            f"{name}: `y0` must be {what}; got {type(y0).__name__} with no arrays."
        )
    arrays = []
    for leaf in leaves:
        try:
            leaf = jnp.asarray(leaf)
        except (TypeError, ValueError) as e:
            got = type(leaf).__name__
            raise TypeError(
                f"{name}: `y0` must be {what}; got "
                + (got if single else f"a leaf of type {got}")
                + "."
            ) from e
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(
                f"{name}: `y0` must have a floating dtype (float32 or float64); got "
                + (str(leaf.dtype) if single else f"a leaf of dtype {leaf.dtype}")
                + "."
            )
        arrays.append(leaf)
    state = jax.tree.unflatten(structure, arrays)
    check_finite_state(name, state)
    return state


def _path_increment(path, t0, t1):
    """`W(t1) − W(t0)` from a diffrax path, also one that carries Lévy area (for the
    stochastic Runge–Kutta solvers), whose `evaluate` returns an object with `.W`."""
    increment = path.evaluate(t0, t1)
    return getattr(increment, "W", increment)


def _save_spec(name, saveat, t0, t1, t0c, t1c, num_steps):
    if saveat is None:
        return None, None
    if not isinstance(saveat, diffrax.SaveAt):
        raise TypeError(
            f"{name}: `saveat` must be a diffrax.SaveAt or None; got "
            f"{type(saveat).__name__}."
        )
    sub = saveat.subs
    if (
        not isinstance(sub, diffrax.SubSaveAt)
        or saveat.dense
        or saveat.solver_state
        or saveat.controller_state
        or saveat.made_jump
        or sub.fn is not diffrax.SubSaveAt(t1=True).fn
    ):
        raise ValueError(
            f"{name}: `saveat` supports only SaveAt(t0=..., t1=..., ts=..., steps=...) "
            "with no `fn`, `subs`, `dense` or state saving; use diffrax.diffeqsolve "
            "with mlem_jax.MLEMSolver for those."
        )
    ts_index = None
    save_ts = None
    if sub.ts is not None:
        ts = jnp.asarray(sub.ts, t0.dtype)
        if ts.ndim != 1:
            raise ValueError(f"{name}: `saveat.ts` must be 1-D; got shape {ts.shape}.")
        h = (t1 - t0) / num_steps
        index = (ts - t0) / h
        tsc = concrete_or_none(ts)
        if tsc is not None and t0c is not None and t1c is not None:
            hc = (float(t1c) - float(t0c)) / num_steps
            exact = (tsc.astype(np.float64) - float(t0c)) / hc
            rounded = np.rint(exact)
            if np.any(rounded < 0) or np.any(rounded > num_steps):
                raise ValueError(
                    f"{name}: `saveat.ts` must lie between t0={float(t0c)} and "
                    f"t1={float(t1c)}; got {tsc.tolist()}."
                )
            if np.any(np.abs(exact - rounded) > 1e-3):
                raise ValueError(
                    f"{name}: `saveat.ts` must lie on the step grid t0 + n·h with "
                    f"h = {hc}; got {tsc.tolist()}."
                )
        ts_index = jnp.rint(index).astype(jnp.int32)
        save_ts = ts
    spec = _SaveSpec(
        t0=bool(sub.t0), t1=bool(sub.t1), steps=bool(sub.steps), ts_index=ts_index
    )
    if not (spec.t0 or spec.t1 or spec.steps or ts_index is not None):
        raise ValueError(f"{name}: `saveat` saves nothing; set t0, t1, ts or steps.")
    return spec, save_ts


@eqx.filter_jit
def _integrate(
    fns,
    schedule,
    always,
    diffusion,
    y0,
    t0,
    t1,
    num_steps,
    key,
    args,
    brownian,
    spec,
    save_ts,
    checkpoint,
    shard: Any = None,
):
    tdtype = t0.dtype  # at least float32 (see `time_dtype`)
    h = (t1 - t0) / num_steps
    brownian_key, level_key = split_key(key)
    keys = leaf_keys(brownian_key, y0)
    if shard is not None:
        # One shard of a batch split over the devices of `shard.axis_name` (inside
        # shard_map): the Brownian stream is the global batch's, cut to this shard;
        # the level stream is the whole key's (shared draws) or the device's own.
        level_key = shard.level_key(key)
    is_path = isinstance(brownian, diffrax.AbstractPath)
    steps = jnp.arange(num_steps)
    xs = (steps, brownian if (brownian is not None and not is_path) else None)
    tree_map = jax.tree.map
    refines = refinements(fns)

    def step(carry, x):
        y, buf = carry
        n, given_dw = x
        t = t0 + n.astype(tdtype) * h
        if schedule is None:
            drift = level_value(fns[0], "`drift`", t, y, args)
            needed = jnp.ones((1,), bool)
        else:
            needed, weights = step_draws(
                schedule, level_key, n, t, h, tdtype, always, refines=refines
            )
            drift = mlem_drift(fns, needed, weights, t, y, args, always)
        y_next = tree_map(lambda yi, d: yi + h.astype(yi.dtype) * d, y, drift)
        if diffusion is not None:
            if brownian is None and shard is not None:
                dw = tree_map(
                    lambda kk, yi, sh=shard: sh.slice(
                        step_increment(kk, n, sh.global_shape(yi.shape), h, yi.dtype)
                    ),
                    keys,
                    y,
                )
            elif brownian is None:
                dw = tree_increment(keys, n, y, h)
            elif is_path:
                t_next = jnp.where(
                    n + 1 == num_steps, t1, t0 + (n + 1).astype(tdtype) * h
                )
                lo, hi = jnp.minimum(t, t_next), jnp.maximum(t, t_next)
                # Same sign convention as diffrax in reverse time: the control of the
                # step from t to t + h is W(t + h) − W(t).
                sign = jnp.where(h > 0, 1, -1)
                dw = tree_map(
                    lambda w, yi: (sign.astype(yi.dtype) * w).astype(yi.dtype),
                    _path_increment(brownian, lo, hi),
                    y,
                )
                if shard is not None:
                    dw = tree_map(shard.slice, dw)
            else:
                dw = given_dw
            g = _diffusion_value(diffusion, t, y, args)
            y_next = tree_map(lambda a, gi, w: a + gi * w, y_next, g, dw)
        if spec is not None and spec.ts_index is not None:
            hit = spec.ts_index == n + 1
            buf = tree_map(
                lambda b, yn: jnp.where(hit.reshape(-1, *([1] * yn.ndim)), yn[None], b),
                buf,
                y_next,
            )
        out = y_next if (spec is not None and spec.steps) else None
        return (y_next, buf), (needed, out)

    if checkpoint:
        step = jax.checkpoint(step, prevent_cse=False)
    buf = None
    if spec is not None and spec.ts_index is not None:
        m = spec.ts_index.shape[0]
        buf = tree_map(
            lambda yi: jnp.where(
                (spec.ts_index == 0).reshape(-1, *([1] * yi.ndim)),
                yi[None],
                jnp.zeros((m, *yi.shape), yi.dtype),
            ),
            y0,
        )
    if checkpoint == "sqrt":
        (y1, buf), (needed, step_ys) = _two_level_scan(step, (y0, buf), xs, num_steps)
    else:
        (y1, buf), (needed, step_ys) = jax.lax.scan(step, (y0, buf), xs)
    evaluations = needed.sum(axis=0, dtype=jnp.int32)
    if spec is None:
        return y1, evaluations, None
    ys, ts = [], []
    if spec.t0:
        ys.append(tree_map(lambda a: a[None], y0))
        ts.append(t0[None])
    if buf is not None:
        ys.append(buf)
        ts.append(save_ts)
    if spec.steps:
        ys.append(step_ys)
        grid = t0 + (steps + 1).astype(tdtype) * h
        ts.append(grid.at[-1].set(t1))
    if spec.t1:
        ys.append(tree_map(lambda a: a[None], y1))
        ts.append(t1[None])
    return (
        tree_map(lambda *parts: jnp.concatenate(parts), *ys),
        evaluations,
        (jnp.concatenate(ts)),
    )


def _diffusion_value(diffusion, t, y, args) -> PyTree[Array]:
    """`diffusion(t, y, args)` as a PyTree like `y`, each leaf in the leaf's dtype
    and broadcastable to it (diagonal noise), or a clear error. A single scalar
    serves every leaf of a PyTree `y`."""
    g = diffusion(t, y, args)
    structure = jax.tree.structure(y)
    single = jtu.treedef_is_leaf(structure)
    if not single and jtu.treedef_is_leaf(jax.tree.structure(g)):
        if jnp.shape(g) == ():
            g = jax.tree.unflatten(structure, [g] * structure.num_leaves)
    if not single and jax.tree.structure(g) != structure:
        raise ValueError(
            f"the diffusion returned a PyTree of structure {jax.tree.structure(g)}, "
            f"expected the structure of y {structure} (diagonal noise: one array per "
            "leaf of y, broadcastable to it) or a scalar."
        )

    def leaf(gi, yi):
        gi = jnp.asarray(gi).astype(yi.dtype)
        try:
            broadcast = np.broadcast_shapes(gi.shape, yi.shape)
        except ValueError:
            broadcast = None
        if broadcast != yi.shape:
            raise ValueError(
                f"the diffusion returned shape {gi.shape}, which does not broadcast "
                f"to the shape of y {yi.shape}; expected diagonal noise (an array "
                "broadcastable to y, or a scalar)."
            )
        return gi

    if single:
        return leaf(g, y)
    return jax.tree.map(leaf, g, y)


def _two_level_scan(step, carry, xs, num_steps):
    """`lax.scan(step, carry, xs)` as a scan over blocks of about `√num_steps` steps,
    each block rematerialised in reverse mode: only the block-boundary carries and one
    block's per-step carries are stored at a time, `O(√num_steps)` states in all."""
    block = math.isqrt(num_steps - 1) + 1  # ceil(sqrt(num_steps))
    num_blocks, rest = divmod(num_steps, block)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def run_block(c, xb):
        return jax.lax.scan(step, c, xb)

    main = jax.tree.map(
        lambda a: a[: num_blocks * block].reshape(num_blocks, block, *a.shape[1:]), xs
    )
    carry, out = jax.lax.scan(run_block, carry, main)
    out = jax.tree.map(lambda a: a.reshape(num_blocks * block, *a.shape[2:]), out)
    if rest:
        tail = jax.tree.map(lambda a: a[num_blocks * block :], xs)
        carry, out_tail = run_block(carry, tail)
        out = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, out_tail)
    return carry, out
