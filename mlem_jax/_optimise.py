"""Choosing schedules from a calibration: Giles's rates scaled to a target error or
a budget (`schedule`), the sub-ladder that costs least (`choose_levels`), the
T-Stitch schedules (`stitches`) and the hybrid of stitching and the telescope
(`hybrid`). What each is predicted to cost and add is `_pricing`'s."""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, NamedTuple

import jax.numpy as jnp
import numpy as np

from . import _checks as checks
from ._pricing import (
    _bin_index,
    _price_steps,
    _step_groups,
    _stitch_configs,
    _sub_ladders,
)
from ._schedules import AbstractSchedule, FixedProbabilities, Rates, Stitch

if TYPE_CHECKING:
    from ._calibration import Calibration


def rate_shape(cal: Calibration, cost: str = "costs") -> np.ndarray:
    """Unscaled rates `sqrt(A_l a(t) V_l(t)/C_l)`, shape `(m, k)`, with `C_l` in
    the units `cost` names (see `level_costs`); level 1 is `inf`."""
    c = cal.level_costs(cost)
    increment_cost = c + np.concatenate([[0.0], c[:-1]])
    weighted = cal._weighted_variances()
    shape = np.sqrt(weighted / increment_cost)
    shape[:, 0] = np.inf
    return shape


def schedule(
    cal: Calibration,
    *,
    target_error: float | None = None,
    budget: float | None = None,
    num_steps: int | None = None,
    min_probability: float = 0.0,
    cost: str = "costs",
) -> Rates:
    """Time-dependent `Rates` with `λ_l(t) ∝ sqrt(V_l(t)/C_l)`.

    **Arguments:** exactly one of

    - `target_error`: the RMS pathwise distance to Euler–Maruyama with the top
        level on the same Brownian path (the error ML-EM adds);
    - `budget`: the expected total cost of the solve, in the units `cost`
        names.

    and `num_steps`, the steps the schedule will be used with (default: the
    pilot's).

    - `min_probability`: every level fires with at least this probability at
        every step (its rate is at least `min_probability / |h|`), which caps the
        weight `1/p` of a randomised correction. The rule's rates follow the
        *linearised* effect of a correction on the final state; on a stiff
        drift, such as a diffusion model's reverse SDE near `t = 0`, they become
        so small that a rare correction, weighted by `1/p`, throws the state
        where the networks were never trained and the solve blows up. A floor
        of a few percent prevents that at a small cost (measured on the shipped
        digits ladder: see docs/calibration.md).

    - `cost`: what the rates minimise, per level: `"costs"` (default: the
        `Levels` costs), `"flops"` (measured FLOPs) or `"seconds"` (measured
        wall-clock, what a user pays; small networks are latency-bound, so on a
        CPU or GPU their share of the seconds is several times their share of
        the FLOPs). The rule is the same with `C_l` in those units.

    **Returns:** a `mlem_jax.Rates` on this calibration's time bins.
    """
    cal.level_costs(cost)  # an unknown `cost` or missing timings fail here
    # A budget too small is refused by _check_budget, which says the least one.
    where = "Calibration.schedule"
    target = _check_target(where, target_error, budget, min_probability, True)
    num_steps = cal.num_steps if num_steps is None else num_steps
    floor_rate = _floor_rate(cal, num_steps, min_probability)
    if budget is not None:
        _check_budget(cal, budget, num_steps, min_probability, cost)

    def scaled(log_s):
        return _scaled(cal, math.exp(log_s), floor_rate, cost)

    # Added error falls with the scale, cost rises: find where it meets the target.
    def miss(log_s):
        return target.miss(cal.predict(scaled(log_s), num_steps, cost))

    return scaled(_bisect(miss, target.sign))


def choose_levels(
    cal: Calibration,
    *,
    target_error: float | None = None,
    budget: float | None = None,
    num_steps: int | None = None,
    min_probability: float = 0.0,
    cost: str = "costs",
) -> tuple[int, ...]:
    """The sub-ladder (0-based level indices, always ending with the top level)
    whose calibrated schedule is predicted to meet `target_error` at the least
    cost, or to add the least error for `budget`; arguments as `schedule`.

    Every subset of the cheaper levels is tried (`2^(k−1)` ladders), the top
    level alone (Euler–Maruyama) included when it meets the target or the
    budget. Which levels pay off depends on the cost: priced in seconds, a
    latency-bound small network costs more relative to the top one than its
    FLOPs say, and levels whose seconds barely differ from the next one's add
    variance for little saving.
    """
    target = _check_target("Calibration.choose_levels", target_error, budget)
    num_steps = cal.num_steps if num_steps is None else num_steps
    cal.level_costs(cost)
    k = cal.num_levels
    best, best_value = None, math.inf
    for idx in _sub_ladders(k):
        sub = cal.restrict(idx)
        if len(idx) == 1:
            schedule = FixedProbabilities(np.ones(1, np.float32))
        else:
            schedule = _telescope(sub, target, num_steps, min_probability, cost)
            if schedule is None:  # infeasible for this sub-ladder
                continue
        pred = sub.predict(schedule, num_steps, cost)
        value = target.measure(pred) if target.meets(pred, 1e-6) else math.inf
        if value < best_value:
            best, best_value = idx, value
    if best is None:
        what = f"no sub-ladder meets the {target.words} at {num_steps} steps"
        raise ValueError(f"Calibration.choose_levels: {what}.")
    return best


def hybrid(
    cal: Calibration,
    *,
    target_error: float | None = None,
    budget: float | None = None,
    num_steps: int | None = None,
    min_probability: float = 0.0,
    cost: str = "costs",
) -> AbstractSchedule:
    """The cheapest schedule for `target_error` (or the most accurate for
    `budget`) over stitching, telescoping and their mixtures, as this
    calibration prices them.

    At each step the base level `b` (see `mlem_jax.Stitch` and the step's
    draws) and what happens above it are chosen: either every
    correction above `b` is dropped (level `b` alone, a bias: what T-Stitch
    does, and with `b` the top level the top level alone), or they are
    randomised with Giles's rates `λ_l ∝ sqrt(A_l a(t) V_l(t)/C_l)` at a
    per-step scale (unbiased, a variance). The error model is `bias² +
    variance` (`_price_steps`): a dropped correction adds up coherently over
    the steps, weighted by the sensitivity, a randomised one as a variance.
    The choice per step minimises `cost + μ_b·bias + μ_v·variance` for each
    pair of multipliers on a grid, the randomised rates of the best are then
    scaled to meet the target exactly; the T-Stitch schedules (every cheaper level, both orders,
    switching after 5%, 10%, …, 95% of the steps), the top level alone and
    `schedule`'s ML-EM rates are priced beside it, and the best of all is
    returned: so the result is never predicted worse than the best stitch or
    the top level alone.

    **Arguments:** as `schedule` (`min_probability` floors the randomised
    corrections only: a dropped one has `p = 0`).

    **Returns:** a `Rates` table with one bin per step of the `num_steps` grid
    (rate `inf` at the base, `0` below it and for dropped corrections; use it
    at that step count and grid) or a `Stitch`.
    """
    cal.level_costs(cost)
    where = "Calibration.hybrid"
    target = _check_target(where, target_error, budget, min_probability)
    num_steps = cal.num_steps if num_steps is None else num_steps
    candidates = _hybrid_pool(cal, target, num_steps, min_probability, cost)
    ok = [c for c in candidates if target.meets(c[1], 1e-9)]
    if not ok:
        what = f"no schedule is predicted to meet the {target.words} at {num_steps}"
        raise ValueError(f"{where}: {what} steps (not even the top level alone).")
    best = min(ok, key=lambda c: target.measure(c[1]))[0]
    if isinstance(best, Rates):
        best = _rescaled(cal, best, target, num_steps, cost)
    return best


class _Target(NamedTuple):
    """What a schedule chooser is asked for: a `target_error` or a `budget` (the
    other `None`)."""

    target_error: float | None
    budget: float | None

    @property
    def words(self) -> str:
        return "target error" if self.target_error is not None else "budget"

    @property
    def sign(self) -> float:
        """How `miss` moves as the rates grow: an error falls, a cost rises."""
        return -1.0 if self.target_error is not None else 1.0

    def measure(self, pred) -> float:
        """What the choosers minimise among the schedules that meet the target:
        the cost for a target error, the error for a budget."""
        return pred.cost if self.target_error is not None else pred.error

    def meets(self, pred, rtol: float) -> bool:
        if self.target_error is not None:
            return pred.error <= self.target_error * (1 + rtol)
        assert self.budget is not None
        return pred.cost <= self.budget * (1 + rtol)

    def miss(self, pred) -> float:
        """`log` of what `pred` gives over what is asked."""
        if self.target_error is not None:
            return _log(pred.error) - math.log(self.target_error)
        assert self.budget is not None
        return _log(pred.cost) - math.log(self.budget)


def _check_target(
    where, target_error, budget, min_probability=0.0, budget_ok=False
) -> _Target:
    """The one check of what the schedule choosers are asked for: exactly one of
    `target_error` and `budget`, a positive finite number, and `min_probability` a
    probability (`budget_ok`: the caller checks the budget itself)."""
    if (target_error is None) == (budget is None):
        raise ValueError(f"{where}: give exactly one of `target_error` or `budget`.")
    if target_error is not None:
        checks.number(where, "target_error", target_error)
    elif not budget_ok:
        checks.number(where, "budget", budget)
    if not (isinstance(min_probability, numbers.Real) and 0 <= min_probability <= 1):
        raise checks.fail(where, "min_probability", "in [0, 1]", min_probability)
    return _Target(target_error, budget)


def _check_budget(cal, budget, num_steps, min_probability, cost):
    """Refuse a `budget` that not even `schedule`'s cheapest rates meet."""
    floor = cal.min_cost(num_steps, min_probability, cost)
    if not budget > floor:
        what = f"above {floor:.6g}, the cost of running level 1 alone at every step"
        if min_probability > 0:
            what += f" and every other level with probability {min_probability}"
        raise checks.fail("Calibration.schedule", "budget", what, budget)


def _hybrid_pool(cal, target: _Target, num_steps, min_probability, cost):
    """`[(schedule, Prediction)]`: every schedule `hybrid` chooses from, the
    per-step choices, the stitches and, where it meets the target or the budget,
    `schedule`'s ML-EM rates."""
    candidates = _hybrid_candidates(cal, num_steps, cost, min_probability)
    candidates += [
        (sched, cal.predict(sched, num_steps, cost))
        for sched in cal.stitches(num_steps)
    ]
    telescope = _telescope(cal, target, num_steps, min_probability, cost)
    if telescope is not None:  # the plain telescope can meet it
        candidates.append((telescope, cal.predict(telescope, num_steps, cost)))
    return candidates


def _telescope(cal, target: _Target, num_steps, min_probability, cost) -> Rates | None:
    """`schedule`'s rates for `target` on `cal`, or `None` where no scale of them
    meets it."""
    try:
        return cal.schedule(
            target_error=target.target_error,
            budget=target.budget,
            num_steps=num_steps,
            min_probability=min_probability,
            cost=cost,
        )
    except ValueError:
        return None


def _rescaled(cal, sched, target: _Target, num_steps, cost) -> Rates:
    """`sched` with its randomised rates (finite and non-zero) scaled by one
    factor so that it meets the target error or the budget exactly: the
    candidates of `hybrid` are a discrete set, usually more accurate (or
    cheaper) than asked."""
    table = np.asarray(sched.rates, np.float64)
    random = np.isfinite(table) & (table > 0)
    if not random.any():
        return sched

    def scaled(log_s):
        out = np.where(random, table * math.exp(log_s), table)
        return Rates(jnp.asarray(out, jnp.float32), sched.times)

    def miss(log_s):
        return target.miss(cal.predict(scaled(log_s), num_steps, cost))

    try:
        log_s = _bisect(miss, target.sign, lo=-10.0, hi=10.0, iters=40)
    except ValueError:  # already at the target (or cannot move): keep it
        return sched
    return scaled(log_s)


def stitches(cal: Calibration, num_steps: int | None = None) -> list[Stitch]:
    """The T-Stitch schedules `hybrid` and `verdict` compare with, on the grid
    of `num_steps` steps: the top level alone, and every cheaper level `j`
    with the top level, in both orders, switching after 5%, 10%, …, 95% of
    the steps (`Stitch.from_fractions`)."""
    num_steps = cal.num_steps if num_steps is None else num_steps
    k = cal.num_levels
    starts, lengths = cal.steps(num_steps)
    grid = np.append(starts, starts[-1] + lengths[-1])
    return [
        Stitch(k, order, t0=float(grid[0]), t1=float(grid[-1]))
        if len(order) == 1
        else Stitch.from_fractions(k, order, (f,), grid=grid)
        for order, f in _stitch_configs(k)
    ]


def _hybrid_options(cal, num_steps, cost, min_probability, grouped=False):
    """The per-step options of `hybrid`, priced: `(rates, spent, bias,
    variance, midpoints)`. Options are level `b` alone, or level `b` with the
    corrections above it randomised at rates `scale · rate_shape` (floored at
    `min_probability`); `rates` has shape `(options, rows, k)` and the prices
    `(options, rows)`, a row per step of the grid (`midpoints`: each row's
    `t + h/2`), or with `grouped` per group of steps of one bin and one
    length, priced for the whole group (`_step_groups`)."""
    ts, hs = cal.steps(num_steps)
    bins = _bin_index(cal.times, ts + hs / 2)
    counts = np.ones(num_steps)
    if grouped:
        first, counts = _step_groups(bins, hs)
        ts, hs, bins = ts[first], hs[first], bins[first]
    k = cal.num_levels
    shape = cal.rate_shape(cost)[bins]  # (rows, k)
    shape[:, 0] = 0.0  # the base is set per option
    floor = _floor_rate(cal, num_steps, min_probability)
    h = np.abs(hs)
    positive = (shape * h[:, None])[shape > 0]
    ref = np.median(positive) if positive.size else 1.0
    scales = np.logspace(-3, 4, 36) / ref
    options = []  # (base, scale or None)
    for b in range(k):
        options.append((b, None))
        if b < k - 1:
            options += [(b, float(sc)) for sc in scales]
    rates = np.zeros((len(options), len(hs), k))
    for o, (b, sc) in enumerate(options):
        rates[o, :, b] = np.inf
        if sc is not None:
            rates[o, :, b + 1 :] = np.maximum(shape[:, b + 1 :] * sc, floor)
    probs = np.minimum(1.0, rates * h[None, :, None])
    weighted, own, pairs = cal._pricing_weights(bins)
    evaluations, variance, bias = _price_steps(
        probs, hs, weighted, own, pairs, cal.refinements
    )
    spent = evaluations @ cal.level_costs(cost)
    return rates, spent * counts, bias * counts, variance * counts, ts + hs / 2


def _lagrangian_choices(spent, bias, variance, num_steps, top_cost, size=33):
    """Per row, the option minimising `cost + μ_b·bias + μ_v·variance` for every
    pair of multipliers on a grid: shape `(pairs, rows)`, duplicates removed.
    Costs are normalised by the top level at every step and errors by the
    largest bias (the cheapest level alone), so the grid is scale-free."""
    c_ref = num_steps * top_cost
    e_ref = max(float(bias.sum(-1).max()), 1e-30)
    grid = np.logspace(-4, 4, size)
    mu_b, mu_v = np.meshgrid(grid, grid, indexing="ij")
    score = (
        spent[None] / c_ref
        + mu_b.reshape(-1, 1, 1) * bias[None] / e_ref
        + mu_v.reshape(-1, 1, 1) * variance[None] / e_ref**2
    )
    return np.unique(np.argmin(score, axis=1), axis=0)


def _hybrid_candidates(cal, num_steps, cost, min_probability):
    """`[(Rates, Prediction)]`: `hybrid`'s per-step choices, one per pair of
    multipliers, each a `Rates` table with one bin per step of the grid."""
    rates, spent, bias, variance, mids = _hybrid_options(
        cal, num_steps, cost, min_probability
    )
    choices = _lagrangian_choices(
        spent, bias, variance, num_steps, cal.level_costs(cost)[-1]
    )
    # Rates read a step's bin at its midpoint: one bin per step, edges
    # increasing (reversed for a reverse-time grid).
    ts, hs = cal.steps(num_steps)
    edges = np.sort(np.append(ts, ts[-1] + hs[-1]))
    order = np.argsort(mids)
    steps = np.arange(num_steps)
    out = []
    for choice in choices:
        table = rates[choice, steps][order]
        sched = Rates(jnp.asarray(table, jnp.float32), jnp.asarray(edges, jnp.float32))
        out.append((sched, cal.predict(sched, num_steps, cost)))
    return out


def _hybrid_frontier(cal, num_steps, cost, min_probability):
    """`(cost, error)` of `hybrid`'s choices made per group of steps (one bin,
    one length) rather than per step, as `_price` prices them: for the
    verdict."""
    _, spent, bias, variance, _ = _hybrid_options(
        cal, num_steps, cost, min_probability, grouped=True
    )
    choices = _lagrangian_choices(
        spent, bias, variance, num_steps, cal.level_costs(cost)[-1], size=17
    )
    rows = np.arange(spent.shape[1])
    total = spent[choices, rows].sum(-1)
    error = np.sqrt(bias[choices, rows].sum(-1) ** 2 + variance[choices, rows].sum(-1))
    return total, error


def min_cost(
    cal: Calibration,
    num_steps: int | None = None,
    min_probability: float = 0.0,
    cost: str = "costs",
):
    """Expected cost (in the units `cost` names) of the cheapest schedule
    `schedule` can return: level 1 at every step, every other level with
    probability `min_probability`."""
    num_steps = cal.num_steps if num_steps is None else num_steps
    floor_rate = _floor_rate(cal, num_steps, min_probability)
    return cal.predict(_scaled(cal, 0.0, floor_rate, cost), num_steps, cost).cost


def _floor_rate(cal, num_steps: int, min_probability: float) -> float:
    # p = λ |h| with |h| = |t1 − t0| / num_steps (on a non-uniform `grid`, the
    # probability at a step of the average length).
    return min_probability * num_steps / abs(cal.t1 - cal.t0)


def _scaled(cal, scale: float, floor_rate: float = 0.0, cost: str = "costs") -> Rates:
    rates = cal.rate_shape(cost)
    rates[:, 1:] = np.maximum(rates[:, 1:] * scale, floor_rate)
    return Rates(jnp.asarray(rates, jnp.float32), jnp.asarray(cal.times, jnp.float32))


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _bisect(miss, sign: float, lo: float = -30.0, hi: float = 30.0, iters: int = 80):
    """Root of a monotone `miss(log_s)` (increasing if sign > 0) on [lo, hi]."""
    f_lo, f_hi = sign * miss(lo), sign * miss(hi)
    if f_lo > 0 or f_hi < 0:
        raise ValueError(
            "Calibration.schedule: the target cannot be met by scaling the rates (a "
            "budget above the cost of running every level at every step, or an error "
            "target below what the schedule's bins can reach)."
        )
    for _ in range(iters):
        mid = (lo + hi) / 2
        if sign * miss(mid) > 0:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2
