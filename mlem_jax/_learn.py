"""Learning the level probabilities `p_l(t)` (the learnable `LogitProbabilities` lives
with the other schedules in `_schedules.py`): the log-probability
of a solve's level draws, unbiased schedule gradients and `learn_schedule`.

The loss of an ML-EM solve depends on the schedule's parameters `θ` twice: through
the weights `B_l/p_l` of the drawn corrections (the pathwise term, draws held fixed)
and through the distribution of the draws `B_l ~ Bernoulli(p_l)` (the score-function
term). With `log P(B) = Σ_{n,l} B log p + (1 − B) log(1 − p)`,

    ∇_θ E[L] = E[ ∇_θ L |_B + (L − b) ∇_θ log P(B) ],

unbiased for any baseline `b` independent of the draws. `schedule_gradient` uses the
leave-one-out mean of the other samples' losses as `b`, in reverse mode or as a
forward gradient (random tangent directions, no stored trajectory).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from . import _checks as checks
from ._brownian import brownian_increments, split_key
from ._levels import Levels, refinements
from ._misc import NumbersLike, check_grid, check_key
from ._schedules import AbstractSchedule, LogitProbabilities as LogitProbabilities
from ._solve import check_ladder, em_solve, mlem_solve
from ._step import expected_evaluations, step_fires

if TYPE_CHECKING:  # optax loads only when a schedule is learned
    import optax


def _grid_probabilities(schedule, key, t0, t1, num_steps, dtype):
    """`(probs, fires)`, each `(num_steps, k)`, exactly as `mlem_solve` draws them."""
    t0 = jnp.asarray(t0, dtype)
    t1 = jnp.asarray(t1, dtype)
    h = (t1 - t0) / num_steps
    _, level_key = split_key(key)

    def one(n):
        return step_fires(schedule, level_key, n, t0 + n.astype(dtype) * h, h, dtype)

    return jax.vmap(one)(jnp.arange(num_steps))


def draw_log_prob(
    schedule: AbstractSchedule,
    key: PRNGKeyArray,
    *,
    t0: float | ArrayLike,
    t1: float | ArrayLike,
    num_steps: int,
    dtype=jnp.float32,
) -> Float[Array, ""]:
    """`log P(B)` of the level draws that `mlem_solve(..., key=key)` makes.

    `Σ_{n,l} B_{n,l} log p_{n,l} + (1 − B_{n,l}) log(1 − p_{n,l})`, with the draws
    `B = U < p` rebuilt from `key` by the documented key layout (no level is
    evaluated). Differentiable in the schedule's parameters: its gradient is the
    score `Σ (B − p)/(p(1 − p)) ∂p`, the term the pathwise gradient misses.

    **Arguments:** `schedule`, `key`, `t0`, `t1`, `num_steps` as in the solve;
    `dtype`: that of the solve's `y0` (the draws are compared in it).

    **Returns:** a scalar.
    """
    check_key("draw_log_prob", key)
    check_grid("draw_log_prob", t0, t1, num_steps)
    probs, fires = _grid_probabilities(schedule, key, t0, t1, num_steps, dtype)
    # Safe logs: a draw that fired has p > 0, one that did not has p < 1.
    log_fire = jnp.log(jnp.where(fires, probs, 1))
    log_skip = jnp.log1p(-jnp.where(fires, 0, probs))
    return jnp.sum(jnp.where(fires, log_fire, log_skip))


def expected_cost(
    levels: Levels,
    schedule: AbstractSchedule,
    *,
    t0: float | ArrayLike,
    t1: float | ArrayLike,
    num_steps: int,
    dtype=jnp.float32,
) -> Float[Array, ""]:
    """Expected cost of an ML-EM solve, `Σ_n Σ_l c_l (1 − (1 − p_l)(1 − p_{l+1}))`
    (level `l` runs when `B_l` or `B_{l+1}` fires, and the level below a
    `mlem_jax.Refinement` also whenever the refinement runs, as the step evaluates
    it: `expected_evaluations`), differentiable in the schedule.

    **Returns:** a scalar in the units of `levels.costs`; its mean over keys is
    `SolveInfo.cost`'s.
    """
    t0 = jnp.asarray(t0, dtype)
    t1 = jnp.asarray(t1, dtype)
    h = (t1 - t0) / num_steps
    ts = t0 + jnp.arange(num_steps, dtype=dtype) * h
    probs = jax.vmap(lambda t: schedule.probabilities(t, h).astype(dtype))(ts)
    evaluations = jnp.sum(expected_evaluations(probs, refinements(levels.fns)), axis=0)
    return evaluations @ jnp.asarray(levels.costs, dtype)


def _trainable(schedule):
    """A tree like `schedule`: a float mask (1 = learned) on its inexact arrays, `None`
    elsewhere. Infinite entries (`p` pinned to 0 or 1) and bin edges are not learned."""
    mask = jax.tree.map(
        lambda x: jnp.isfinite(x).astype(x.dtype) if eqx.is_inexact_array(x) else None,
        schedule,
    )
    if getattr(schedule, "times", None) is not None:
        mask = eqx.tree_at(lambda s: s.times, mask, replace_fn=jnp.zeros_like)
    return mask


def _masked(tree, mask):
    return jax.tree.map(
        lambda x, m: None if m is None else jnp.where(m > 0, x, 0),
        tree,
        mask,
        is_leaf=lambda x: x is None,
    )


def schedule_gradient(
    loss: Callable[[AbstractSchedule, PRNGKeyArray], Any],
    schedule: AbstractSchedule,
    keys: PRNGKeyArray,
    *,
    t0: float | ArrayLike,
    t1: float | ArrayLike,
    num_steps: int,
    dtype=jnp.float32,
    mode: str = "reverse",
    tangent_key: PRNGKeyArray | None = None,
) -> tuple[Float[Array, ""], AbstractSchedule]:
    """An unbiased estimate of `∇_θ E[loss]` for the parameters `θ` of `schedule`.

    For each key `i`, `L_i = loss(schedule, key_i)` must run its ML-EM solve with
    `key=key_i` and the same `t0`, `t1`, `num_steps` and dtype (its draws are then
    the ones `draw_log_prob` rebuilds). The estimate is

        (1/M) Σ_i [ ∇_θ L_i |_B + (L_i − b_i) ∇_θ log P(B_i) ],

    the pathwise term (draws fixed, weights `B/p` differentiated) plus the score-
    function term, with the leave-one-out baseline `b_i = mean_{j≠i} L_j`, which
    does not depend on draw `i` and so keeps the estimate unbiased while removing
    most of the score term's variance. Anything else random in `loss` (a Brownian
    path) may be shared by all keys.

    **Arguments:**

    - `loss`: `loss(schedule, key) -> scalar`.
    - `schedule`: the current schedule (e.g. `LogitProbabilities`); its finite float
        arrays other than bin edges are differentiated.
    - `keys`: `M ≥ 2` keys, shape `(M,)` (from `jax.random.split`). They are run
        one after another (`jax.lax.map`), keeping each solve's level skipping.
    - `t0`, `t1`, `num_steps`, `dtype`: the solves' grid and `y0` dtype.
    - `mode`: `"reverse"` (reverse mode through each solve; use the solve's
        checkpointing for memory) or `"forward"`: a forward gradient, one random
        Gaussian tangent `v` per key (from `tangent_key`) and forward-mode
        derivatives `(∇L·v) v`, unbiased since `E[v vᵀ] = I`; no trajectory is
        stored, at the price of variance growing with the number of parameters.

    **Returns:** `(mean loss, gradient)`, the gradient a tree like `schedule`
    (zero on entries that are not learned), ready for `optax`.
    """
    name = "schedule_gradient"
    checks.choice(name, "mode", mode, ("reverse", "forward"), '"reverse" or "forward"')
    what = "a mlem_jax schedule"
    checks.instance(name, "schedule", schedule, AbstractSchedule, what)
    if getattr(keys, "ndim", 0) != 1 or keys.shape[0] < 2:
        what = "at least 2 keys, shape (M,) from jax.random.split (each key's "
        what += "baseline is the others' mean loss)"
        raise checks.fail(name, "keys", what, getattr(keys, "shape", None))
    if mode == "forward" and tangent_key is None:
        raise ValueError(f'{name}: mode="forward" needs a `tangent_key`.')
    check_grid(name, t0, t1, num_steps)
    params, static = eqx.partition(schedule, eqx.is_inexact_array)
    grid: dict[str, Any] = dict(t0=t0, t1=t1, num_steps=num_steps, dtype=dtype)

    def loss_p(p, key):
        return jnp.asarray(loss(eqx.combine(p, static), key)).astype(dtype)

    def log_prob_p(p, key):
        return draw_log_prob(eqx.combine(p, static), key, **grid)

    mask = _params_of(_trainable(schedule), params)
    if mode == "reverse":
        values, grad = _reverse_gradient(loss_p, log_prob_p, params, keys)
    else:
        assert tangent_key is not None  # checked above
        estimate = _forward_gradient(loss_p, log_prob_p, params, mask)
        values, grad = estimate(keys, tangent_key)
    grad = _masked(grad, mask)
    return jnp.mean(values), eqx.combine(grad, static)


def _reverse_gradient(loss_p, log_prob_p, params, keys):
    """`(losses, gradient)` of `schedule_gradient` in reverse mode: each key's
    pathwise gradient and score, weighted by its leave-one-out advantage."""
    m = keys.shape[0]

    def one(key):
        value, g_path = jax.value_and_grad(loss_p)(params, key)
        g_score = jax.grad(log_prob_p)(params, key)
        return value, g_path, g_score

    values, g_path, g_score = jax.lax.map(one, keys)
    baseline = (jnp.sum(values) - values) / (m - 1)
    weights = (values - baseline) / m
    grad = jax.tree.map(
        lambda a, b: jnp.sum(a, 0) / m + jnp.tensordot(weights.astype(b.dtype), b, 1),
        g_path,
        g_score,
    )
    return values, grad


def _forward_gradient(loss_p, log_prob_p, params, mask):
    """`estimate(keys, tangent_key) -> (losses, gradient)` of `schedule_gradient`
    as a forward gradient: one Gaussian tangent per key (masked to the learned
    entries), `(∇L·v) v` with the leave-one-out baseline."""

    def tangent(tkey):
        leaves, treedef = jax.tree.flatten(params)
        subkeys = jax.random.split(tkey, len(leaves))
        v = [
            jax.random.normal(k, x.shape, x.dtype)
            for k, x in zip(subkeys, leaves, strict=True)
        ]
        return _masked(jax.tree.unflatten(treedef, v), mask)

    def one(xs):
        key, tkey = xs
        v = tangent(tkey)
        value, d_path = jax.jvp(lambda p: loss_p(p, key), (params,), (v,))
        _, d_score = jax.jvp(lambda p: log_prob_p(p, key), (params,), (v,))
        return value, d_path, d_score

    def estimate(keys, tangent_key):
        m = keys.shape[0]
        tangent_keys = jax.random.split(tangent_key, m)
        values, d_path, d_score = jax.lax.map(one, (keys, tangent_keys))
        baseline = (jnp.sum(values) - values) / (m - 1)
        directional = (d_path + (values - baseline) * d_score) / m
        tangents = jax.vmap(tangent)(tangent_keys)
        grad = jax.tree.map(
            lambda v: jnp.tensordot(directional.astype(v.dtype), v, 1), tangents
        )
        return values, grad

    return estimate


def _params_of(mask, params):
    """The mask restricted to the leaves of `params` (same structure)."""
    return jax.tree.map(lambda p, m: m, params, mask, is_leaf=lambda x: x is None)


def _shift_learned(schedule: LogitProbabilities, shift) -> LogitProbabilities:
    learned = jnp.isfinite(schedule.logits)
    logits = jnp.where(learned, schedule.logits + shift, schedule.logits)
    return eqx.tree_at(lambda s: s.logits, schedule, logits)


def _project_to_budget(levels, schedule, budget, grid, iterations=60):
    """Shift every learned logit by one scalar so that the expected cost is `budget`
    (expected cost increases with the shift): bisection, differentiable-free."""

    def cost(s):
        return expected_cost(levels, _shift_learned(schedule, s), **grid)

    def body(_, lohi):
        lo, hi = lohi
        mid = (lo + hi) / 2
        over = cost(mid) > budget
        return jnp.where(over, lo, mid), jnp.where(over, mid, hi)

    dtype = schedule.logits.dtype
    lo, hi = jax.lax.fori_loop(
        0, iterations, body, (jnp.asarray(-40.0, dtype), jnp.asarray(40.0, dtype))
    )
    return _shift_learned(schedule, (lo + hi) / 2)


@dataclasses.dataclass(frozen=True)
class LearnedSchedule:
    """What `learn_schedule` returns.

    **Fields:**

    - `schedule`: the learned `LogitProbabilities`, usable by `mlem_solve` and
        `MLEMSolver` (tuned for `num_steps` steps on `[t0, t1]`).
    - `initial`: the starting schedule, as `LogitProbabilities` (after projection
        onto the budget, if one was given).
    - `history`: per iteration, the mean sampled squared error `loss` and the
        schedule's `expected_cost`.
    """

    schedule: LogitProbabilities
    initial: LogitProbabilities
    history: dict[str, np.ndarray]


def learn_schedule(
    levels: Levels,
    diffusion,
    y0: ArrayLike,
    *,
    t0: float,
    t1: float,
    num_steps: int,
    key: PRNGKeyArray,
    init: AbstractSchedule,
    budget: float | None = None,
    cost_weight: float | None = None,
    args: Any = None,
    num_iterations: int = 200,
    samples: int = 8,
    optimizer: optax.GradientTransformation | None = None,
    mode: str = "reverse",
    times: NumbersLike | None = None,
    checkpoint: bool | str = True,
    callback: Callable[[int, float, float], None] | None = None,
) -> LearnedSchedule:
    """Learn time-dependent level probabilities `p_l(t)` by stochastic gradient descent.

    The objective is the squared strong error that ML-EM adds, `E‖Y − Y_EM‖²`
    (averaged over the batch in `y0`), where `Y_EM` is Euler–Maruyama with the top
    level on the same Brownian path and grid, either

    - at a fixed expected cost `budget`: after every update all learned logits are
        shifted by one scalar so that `expected_cost == budget` (error at a fixed
        budget), or
    - penalised: `E‖Y − Y_EM‖² + cost_weight · expected_cost`.

    Each iteration draws a fresh Brownian path, solves the target once, and runs
    `samples` ML-EM solves with independent level keys on that path; the gradient is
    `schedule_gradient`'s unbiased pathwise + score-function estimate with a
    leave-one-out baseline (the cost term is differentiated exactly).

    **Arguments:**

    - `levels`, `diffusion`, `y0`, `t0`, `t1`, `num_steps`, `args`: the problem, as in
        `mlem_solve`; `y0` a representative batch (leading axis).
    - `key`: drives the Brownian paths and level draws of the training solves.
    - `init`: the starting schedule, typically `calibrate(...).schedule(budget=...)`;
        converted with `LogitProbabilities.from_schedule` (on its own time bins, or
        on `times`). Levels that fire at every step stay fixed.
    - `budget` or `cost_weight`: exactly one (see above).
    - `num_iterations`, `samples`: optimisation steps and ML-EM solves per step
        (`samples ≥ 2`).
    - `optimizer`: an optax transformation (default `optax.adam(0.01)`: the
        gradient estimates are noisy, and larger Adam steps make the logits wander).
    - `mode`: `"reverse"` or `"forward"` (forward gradients), see
        `schedule_gradient`.
    - `checkpoint`: passed to `mlem_solve` for reverse mode (`"sqrt"` for long
        solves).
    - `callback`: called as `callback(iteration, loss, expected_cost)`.

    **Returns:** a `LearnedSchedule`; its `.schedule` goes straight into
    `mlem_solve(levels, learned.schedule, ...)` or `MLEMSolver(learned.schedule, ...)`.
    """
    name = "learn_schedule"
    check_ladder(name, levels, init, "init")
    if (budget is None) == (cost_weight is None):
        raise ValueError(f"{name}: give exactly one of `budget` or `cost_weight`.")
    checks.number(name, "budget", budget, none_ok=True)
    checks.number(name, "cost_weight", cost_weight, zero_ok=True, none_ok=True)
    samples = checks.integer(name, "samples", samples, minimum=2)
    num_iterations = checks.integer(name, "num_iterations", num_iterations, minimum=0)
    check_grid(name, t0, t1, num_steps)
    check_key(name, key)
    y0 = jnp.asarray(y0)
    grid: dict[str, Any] = dict(t0=t0, t1=t1, num_steps=num_steps, dtype=y0.dtype)
    schedule = _initial_schedule(levels, init, budget, grid, times)
    initial = schedule
    if optimizer is None:
        import optax

        optimizer = optax.adam(0.01)
    opt_state = optimizer.init(eqx.filter(schedule, eqx.is_inexact_array))
    solve = dict(t0=t0, t1=t1, num_steps=num_steps, args=args)

    @jax.jit
    def update(schedule, opt_state, key):
        path_key, level_key, tangent_key = jax.random.split(key, 3)
        loss = _added_error(levels, diffusion, y0, path_key, checkpoint, solve)
        value, grad = schedule_gradient(
            loss,
            schedule,
            jax.random.split(level_key, samples),
            mode=mode,
            tangent_key=tangent_key,
            **grid,
        )
        cost, grad = _with_cost(levels, schedule, grad, cost_weight, grid)
        schedule, opt_state = _apply(optimizer, schedule, grad, opt_state)
        if budget is not None:
            schedule = _project_to_budget(levels, schedule, budget, grid)
        return schedule, opt_state, value, cost

    losses, costs = [], []
    for i in range(num_iterations):
        schedule, opt_state, value, cost = update(
            schedule, opt_state, jax.random.fold_in(key, i)
        )
        losses.append(float(value))
        costs.append(float(cost))
        if callback is not None:
            callback(i, losses[-1], costs[-1])
    return LearnedSchedule(
        schedule=schedule,
        initial=initial,
        history={"loss": np.asarray(losses), "expected_cost": np.asarray(costs)},
    )


def _with_cost(levels, schedule, grad, cost_weight, grid):
    """`(expected cost, gradient)`: the schedule's `expected_cost` on `grid` and
    `grad` (its inexact arrays) plus, with a `cost_weight`, that weight times the
    cost's gradient on the learned entries."""
    cost_fn = lambda s: expected_cost(levels, s, **grid)  # noqa: E731
    cost, g_cost = jax.value_and_grad(cost_fn)(schedule)
    grad_p = eqx.filter(grad, eqx.is_inexact_array)
    if cost_weight is not None:
        g_cost = _masked(
            eqx.filter(g_cost, eqx.is_inexact_array),
            _params_of(_trainable(schedule), grad_p),
        )
        grad_p = jax.tree.map(lambda a, b: a + cost_weight * b, grad_p, g_cost)
    return cost, grad_p


def _apply(optimizer, schedule, grad_p, opt_state):
    """`(schedule, opt_state)` after one `optimizer` update of the learned entries
    of `schedule` by the gradient `grad_p`."""
    import optax

    p, stat = eqx.partition(schedule, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grad_p, opt_state, p)
    updates = _masked(updates, _params_of(_trainable(schedule), updates))
    return eqx.combine(optax.apply_updates(p, updates), stat), opt_state


def _initial_schedule(levels, init, budget, grid, times) -> LogitProbabilities:
    """`init` as `LogitProbabilities` on `grid` (on its own bins, or `times`),
    projected onto `budget` if one is given (which must exceed the cost of the
    levels that fire at every step)."""
    schedule = init
    if not isinstance(schedule, LogitProbabilities):
        on = dict(t0=grid["t0"], t1=grid["t1"], num_steps=grid["num_steps"])
        schedule = LogitProbabilities.from_schedule(init, times=times, **on)
    if budget is None:
        return schedule
    floor = float(expected_cost(levels, _shift_learned(schedule, -jnp.inf), **grid))
    if not budget > floor:
        what = f"above {floor:.6g}, the cost of the levels that fire at every step"
        raise checks.fail("learn_schedule", "budget", what, budget)
    return jax.jit(lambda s: _project_to_budget(levels, s, budget, grid))(schedule)


def _added_error(levels, diffusion, y0, path_key, checkpoint, solve):
    """`loss(schedule, key)`: the mean squared distance of the ML-EM solve with
    `key`'s draws to Euler–Maruyama with the top level, both on `path_key`'s
    Brownian path (`solve`: the grid and `args`)."""
    dw = None
    if diffusion is not None:
        grid = dict(t0=solve["t0"], t1=solve["t1"], num_steps=solve["num_steps"])
        dw = brownian_increments(path_key, y0.shape, dtype=y0.dtype, **grid)
    kw: dict[str, Any] = dict(solve, brownian=dw)
    target, _ = em_solve(levels.top, diffusion, y0, key=path_key, **kw)

    def loss(s, k):
        y, _ = mlem_solve(levels, s, diffusion, y0, key=k, checkpoint=checkpoint, **kw)
        d = (y - target).reshape(y.shape[0], -1) if y.ndim > 1 else (y - target)[None]
        return jnp.mean(jnp.sum(d**2, axis=-1))

    return loss
