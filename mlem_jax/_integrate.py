"""The one integration loop of the package: a `lax.scan` over the steps of a fixed
grid, in the shape of diffrax's `_integrate.py`.

Every fixed-step solve is a `Problem` (the checked state, grid, levels, schedule, key
and Brownian source, built once at a public boundary) and a stepper from the
`AbstractStepper` family (`EulerMaruyama` here; the diffusion samplers in
`mlem_jax.diffusion`). `integrate(stepper, problem)` runs the scan: at step `n` it
draws the levels (`step_draws`, or `Periodic`'s deterministic ones), builds the
step's drift `predict(t, y)` (one level, or the randomized telescope `mlem_drift`),
draws the step's noise and hands the three to `stepper.step`. `mlem_solve`,
`em_solve`, `mlem_solve_sharded`, `diffusion.sample`, `diffusion.mlem_sample` and
the sampler calibration's pilot are fronts over it; `MLEMSolver` runs inside
diffrax's own loop and shares the step (`mlem_drift`).
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

from ._brownian import leaf_keys, split_key, step_increment, tree_increment
from ._levels import refinements
from ._schedules import Periodic
from ._step import ladder_draws, level_value, mlem_drift, step_draws

# (t, y) -> the step's drift (or data prediction), a PyTree like y.
PredictFn = Callable[[Array, PyTree[Array]], PyTree[Array]]


class AbstractStepper(eqx.Module):
    """One step of a fixed-step method, given the step's drift.

    `integrate` calls `step(t, t_next, dt, y, predict, noise, state, args)` once per
    step, with `predict(t, y)` the step's drift (one level, or the randomized
    telescope of the step's draws), `noise` the step's Brownian increment over `dt`
    (or, with `unit_noise`, its standard normal; `None` for a deterministic
    stepper) and the stepper's own carry. It returns `(y_next, state, aux)`; `aux`
    (a PyTree or `None`) is stacked over the steps, as diffrax's `dense_info` is.
    """

    # Whether `step` takes the standard normal `z` of the step (`ΔW = sqrt|dt| z`)
    # rather than the increment `ΔW` itself.
    unit_noise: eqx.AbstractClassVar[bool]

    @property
    @abc.abstractmethod
    def stochastic(self) -> bool:
        """Whether the step uses noise."""

    @abc.abstractmethod
    def init(self, y0: PyTree[Array]) -> Any:
        """The carry before the first step."""

    @abc.abstractmethod
    def step(
        self,
        t: Array,
        t_next: Array,
        dt: Array,
        y: PyTree[Array],
        predict: PredictFn,
        noise: PyTree[Array] | None,
        state: Any,
        args: Any,
    ) -> tuple[PyTree[Array], Any, Any]:
        """`(y_next, state, aux)`."""


class EulerMaruyama(AbstractStepper):
    """`y ← y + dt · f(t, y) + g(t, y) · ΔW`: Euler–Maruyama, and with the
    randomized telescope as `f` the Multilevel Euler–Maruyama step.

    **Arguments:**

    - `diffusion`: `g(t, y, args)` (diagonal noise, see `mlem_solve`) or `None`
        for the ODE `dY = f dt`.
    """

    diffusion: Callable[[Any, Any, Any], Any] | None
    unit_noise: ClassVar[bool] = False

    @property
    def stochastic(self) -> bool:
        return self.diffusion is not None

    def init(self, y0):
        del y0
        return None

    def step(self, t, t_next, dt, y, predict, noise, state, args):
        del t_next
        drift = predict(t, y)
        y_next = jax.tree.map(lambda yi, d: yi + dt.astype(yi.dtype) * d, y, drift)
        if self.diffusion is not None:
            g = diffusion_value(self.diffusion, t, y, args)
            y_next = jax.tree.map(lambda a, gi, w: a + gi * w, y_next, g, noise)
        return y_next, state, None


class Grid(eqx.Module):
    """The step times. Uniform (`ts is None`): `t_n = t0 + n·h`, `h = (t1 −
    t0)/num_steps`, the grid of `mlem_solve`; else the `num_steps + 1` times `ts` with
    the steps `dts`."""

    t0: Array
    t1: Array
    num_steps: int = eqx.field(static=True)
    ts: Array | None = None
    dts: Array | None = None

    def at(self, n: Array) -> tuple[Array, Array, Array]:
        """`(t_n, t_{n+1}, dt_n)`."""
        if self.ts is None:
            tdtype = self.t0.dtype
            h = (self.t1 - self.t0) / self.num_steps
            t = self.t0 + n.astype(tdtype) * h
            t_next = jnp.where(
                n + 1 == self.num_steps, self.t1, self.t0 + (n + 1).astype(tdtype) * h
            )
            return t, t_next, h
        assert self.dts is not None
        return self.ts[n], self.ts[n + 1], self.dts[n]

    def ends(self) -> Array:
        """The end times `t_1, …, t_N` of the steps."""
        if self.ts is None:
            h = (self.t1 - self.t0) / self.num_steps
            steps = jnp.arange(1, self.num_steps + 1).astype(self.t0.dtype)
            return (self.t0 + steps * h).at[-1].set(self.t1)
        return self.ts[1:]


class SaveSpec(eqx.Module):
    """What to save besides the final state (see `mlem_solve`'s `saveat`)."""

    t0: bool = eqx.field(static=True)
    t1: bool = eqx.field(static=True)
    steps: bool = eqx.field(static=True)
    ts_index: Int[Array, " m"] | None
    save_ts: Array | None


class Problem(eqx.Module):
    """A fixed-step solve, checked once by its public front.

    **Fields:** `fns` (the levels cheapest first, or the one drift), `schedule`
    (`None` for one drift; an `AbstractSchedule` or `Periodic`), `always` (per
    level, whether it fires at every step, when known before tracing), `y0`,
    `grid`, `key` (split into the Brownian and level streams), `args`, `brownian`
    (`None`, increments of shape `(num_steps, *y0.shape)`, or a diffrax path),
    `save` (a `SaveSpec` or `None`), `checkpoint` (`True`, `False` or `"sqrt"`) and
    `shard` (inside `shard_map`: the shard's hooks, see `mlem_solve_sharded`).
    """

    fns: tuple
    schedule: Any
    always: tuple[bool, ...] | None = eqx.field(static=True)
    y0: PyTree[Array]
    grid: Grid
    key: PRNGKeyArray
    args: Any = None
    brownian: Any = None
    save: SaveSpec | None = None
    checkpoint: bool | str = eqx.field(static=True, default=True)
    shard: Any = None


def _noise(problem: Problem, stepper, keys, n, t, t_next, dt, y, given):
    """The step's Brownian increment over `dt` (or its standard normal)."""
    brownian, shard = problem.brownian, problem.shard
    scale = 1.0 if stepper.unit_noise else dt
    if brownian is None and shard is not None:
        # One shard of a batch split over devices: the global batch's increment,
        # cut to this shard's rows.
        return jax.tree.map(
            lambda kk, yi: shard.slice(
                step_increment(kk, n, shard.global_shape(yi.shape), scale, yi.dtype)
            ),
            keys,
            y,
        )
    if brownian is None:
        return tree_increment(keys, n, y, scale)
    if isinstance(brownian, diffrax.AbstractPath):
        lo, hi = jnp.minimum(t, t_next), jnp.maximum(t, t_next)
        # Same sign convention as diffrax in reverse time: the control of the step
        # from t to t + h is W(t + h) − W(t).
        sign = jnp.where(dt > 0, 1, -1)
        dw = jax.tree.map(
            lambda w, yi: (sign.astype(yi.dtype) * w).astype(yi.dtype),
            path_increment(brownian, lo, hi),
            y,
        )
        if shard is not None:
            dw = jax.tree.map(shard.slice, dw)
    else:
        dw = given
    if stepper.unit_noise:
        return jax.tree.map(lambda w: w / jnp.sqrt(jnp.abs(dt)).astype(w.dtype), dw)
    return dw


@eqx.filter_jit
def integrate(
    stepper: AbstractStepper, problem: Problem
) -> tuple[PyTree[Array], Array, Any, Array | None]:
    """Run `problem` with `stepper`: `(ys, needed, aux, ts)`, the final state (or the
    saved states, at the times `ts`), each step's evaluated levels `needed` (shape
    `(num_steps, k)`; all true for one drift) and the steps' stacked `aux`."""
    y0, grid, save, args = problem.y0, problem.grid, problem.save, problem.args
    num_steps = grid.num_steps
    brownian_key, level_key = split_key(problem.key)
    if problem.shard is not None:
        # The level stream is the whole key's (shared draws) or the device's own.
        level_key = problem.shard.level_key(problem.key)
    keys = leaf_keys(brownian_key, y0)
    given = problem.brownian
    is_array = given is not None and not isinstance(given, diffrax.AbstractPath)
    steps = jnp.arange(num_steps)
    xs = (steps, given if is_array else None)

    def step(carry, x):
        y, state, stored, buf = carry
        n, dw = x
        t, t_next, dt = grid.at(n)
        predict, needed, stored = _drift(problem, level_key, n, t, dt, y, stored)
        noise = None
        if stepper.stochastic:
            noise = _noise(problem, stepper, keys, n, t, t_next, dt, y, dw)
        y_next, state, aux = stepper.step(t, t_next, dt, y, predict, noise, state, args)
        y_next = jax.tree.map(lambda a, b: a.astype(b.dtype), y_next, y)
        if save is not None and save.ts_index is not None:
            hit = save.ts_index == n + 1
            buf = jax.tree.map(
                lambda b, yn: jnp.where(hit.reshape(-1, *([1] * yn.ndim)), yn[None], b),
                buf,
                y_next,
            )
        out = y_next if (save is not None and save.steps) else None
        return (y_next, state, stored, buf), (needed, out, aux)

    if problem.checkpoint:
        step = jax.checkpoint(step, prevent_cse=False)
    buf = None
    if save is not None and save.ts_index is not None:
        index = save.ts_index
        buf = jax.tree.map(
            lambda yi: jnp.where(
                (index == 0).reshape(-1, *([1] * yi.ndim)),
                yi[None],
                jnp.zeros((index.shape[0], *yi.shape), yi.dtype),
            ),
            y0,
        )
    stored = ()
    if isinstance(problem.schedule, Periodic):
        stored = (jax.tree.map(jnp.zeros_like, y0),) * len(problem.fns)
    carry = (y0, stepper.init(y0), stored, buf)
    if problem.checkpoint == "sqrt":
        carry, (needed, step_ys, aux) = _two_level_scan(step, carry, xs, num_steps)
    else:
        carry, (needed, step_ys, aux) = jax.lax.scan(step, carry, xs)
    y1, _, _, buf = carry
    if save is None:
        return y1, needed, aux, None
    ys, ts = _saved(save, grid, y0, y1, buf, step_ys)
    return ys, needed, aux, ts


def _drift(problem: Problem, level_key, n, t, dt, y, stored):
    """Step `n`'s level draws and drift: `(predict, needed, stored)`, with
    `stored` `Periodic`'s last corrections."""
    fns, schedule, always, args = (
        problem.fns,
        problem.schedule,
        problem.always,
        problem.args,
    )
    refines = refinements(fns)
    if schedule is None:

        def predict(tt, yy):
            return level_value(fns[0], "`drift`", tt, yy, args)

        return predict, jnp.ones((1,), bool), stored
    if isinstance(schedule, Periodic):
        # Level l is recomputed at the steps n ≡ 0 (mod periods[l]) and its last
        # correction reused in between; evaluated once, at (t, y).
        fires, needed, weights = ladder_draws(
            n % jnp.asarray(schedule.periods) == 0, refines
        )
        _, terms = mlem_drift(fns, needed, weights, t, y, args, always, increments=True)
        stored = tuple(
            jax.tree.map(lambda a, b, f=fires[l]: jnp.where(f, a, b), term, old)
            for l, (term, old) in enumerate(zip(terms, stored, strict=True))
        )
        total = functools.reduce(
            lambda a, b: jax.tree.map(jnp.add, a, b), stored[1:], stored[0]
        )
        return _Constant(total), needed, stored
    tdtype = problem.grid.t0.dtype  # at least float32 (see `time_dtype`)
    needed, weights = step_draws(
        schedule, level_key, n, t, dt, tdtype, always, refines=refines
    )

    def telescope(tt, yy):
        return mlem_drift(fns, needed, weights, tt, yy, args, always)

    return telescope, needed, stored


def _saved(save: SaveSpec, grid: Grid, y0, y1, buf, step_ys):
    """The saved states, stacked in the order t0, ts, steps, t1, and their times."""
    ys, ts = [], []
    if save.t0:
        ys.append(jax.tree.map(lambda a: a[None], y0))
        ts.append(grid.t0[None])
    if buf is not None:
        assert save.save_ts is not None
        ys.append(buf)
        ts.append(save.save_ts)
    if save.steps:
        ys.append(step_ys)
        ts.append(grid.ends())
    if save.t1:
        ys.append(jax.tree.map(lambda a: a[None], y1))
        ts.append(grid.t1[None])
    ys = jax.tree.map(lambda *parts: jnp.concatenate(parts), *ys)
    return ys, jnp.concatenate(ts)


class _Constant(eqx.Module):
    """A drift returning `value` (computed at the step's `(t, y)`)."""

    value: PyTree[Array]

    def __call__(self, t, y):
        del t, y
        return self.value


def path_increment(path, t0, t1):
    """`W(t1) − W(t0)` from a diffrax path, also one that carries Lévy area (for the
    stochastic Runge–Kutta solvers), whose `evaluate` returns an object with `.W`."""
    increment = path.evaluate(t0, t1)
    return getattr(increment, "W", increment)


def diffusion_value(diffusion, t, y, args) -> PyTree[Array]:
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
