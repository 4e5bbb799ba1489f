"""Pricing a schedule from a calibration: expected evaluations per level, and the
error it adds to Euler–Maruyama with the top level (`bias² + variance`, the bias of
dropped corrections added up as norms over the steps, the variance of randomised
ones weighted by the sensitivity and the amplification)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np

from ._schedules import AbstractSchedule
from ._step import expected_evaluations, probabilities_on_grid

if TYPE_CHECKING:
    from ._calibration import Calibration


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A schedule's expected cost and added error (`Calibration.predict`).

    **Fields:**

    - `evaluations`: expected evaluations of each level over the solve, shape `(k,)`.
    - `cost`: expected cost, in the units `Calibration.predict(cost=...)` names.
    - `error`: predicted RMS pathwise distance to Euler–Maruyama with the top level
        (dropped corrections priced as bias, randomised ones as variance).
    """

    evaluations: np.ndarray
    cost: float
    error: float


def predict(
    cal: Calibration,
    schedule: AbstractSchedule,
    num_steps: int | None = None,
    cost: str = "costs",
) -> Prediction:
    """Predicted cost and added error of `schedule` on this calibration's interval.

    **Returns:** a `Prediction` with `evaluations` (expected per level), `cost`
    (expected, in the units `cost` names: see `level_costs`) and `error`: the
    predicted RMS pathwise distance to Euler–Maruyama with the top level,
    `sqrt(bias² + Σ_n h_n² Σ_l (1/p_l − 1) A_l a(t_n) V_l(t_n))` with `a` the
    sensitivity and `A_l` the pilots' correction. Levels below a step's base
    level (the lowest with `p > 0`) are out of its ladder; a correction with
    `p_l = 0` above the base is dropped, and `bias = Σ_n |h_n| sqrt(a(t_n)
    E‖dropped‖²)` adds up what the dropped corrections move the final state
    by, as norms (they are the same at every step, not independent draws),
    amplified as the levels' corrections are (`A_l`). `Stitch` and the
    `hybrid` schedules are priced so.
    """
    num_steps = cal.num_steps if num_steps is None else num_steps
    if isinstance(schedule, AbstractSchedule) and schedule.num_levels != cal.num_levels:
        raise ValueError(
            f"Calibration.predict: `schedule` has {schedule.num_levels} levels but this "
            f"calibration has {cal.num_levels}; expected one probability or rate "
            "per level (use `restrict` for a sub-ladder)."
        )
    ts, hs = cal.steps(num_steps)
    probs = np.asarray(
        probabilities_on_grid(schedule, jnp.asarray(ts), jnp.asarray(hs))
    )
    bins = _bin_index(cal.times, ts + hs / 2)
    weighted, own, pairs = cal._pricing_weights(bins)
    evaluations, mse = _price(
        probs.astype(np.float64),
        hs,
        weighted,
        own=own,
        pairs=pairs,
        refines=cal.refinements,
    )
    return Prediction(
        evaluations=evaluations,
        cost=float(np.dot(evaluations, cal.level_costs(cost))),
        error=float(np.sqrt(mse)) if np.isfinite(mse) else math.inf,
    )


def _sub_ladders(k: int) -> list[tuple[int, ...]]:
    """Every sub-ladder of `k` levels that keeps the top one (0-based indices,
    increasing), the top level alone first."""
    return [
        tuple(i for i in range(k - 1) if mask >> i & 1) + (k - 1,)
        for mask in range(2 ** (k - 1))
    ]


def _price(probs, hs, weighted, own, pairs, counts=None, refines=None):
    """`(evaluations, mse)` of firing probabilities `probs` (`(..., n, k)`, any
    leading axes) on steps of lengths `hs`: expected evaluations per level
    (`expected_evaluations` summed over the steps) and the added mean square
    `bias² + variance` (see `_price_steps`); `counts` (`(n,)`): how many steps each
    row stands for (default one each); `refines` as `expected_evaluations`."""
    if counts is None:
        counts = np.ones(np.shape(hs))
    evaluations, variance, bias = _price_steps(probs, hs, weighted, own, pairs, refines)
    evaluations = (evaluations * counts[:, None]).sum(axis=-2)
    variance = np.sum(counts * variance, axis=-1)
    bias = np.sum(counts * bias, axis=-1)
    return evaluations, bias**2 + variance


def _price_steps(probs, hs, weighted, own, pairs, refines=None):
    """Per step: `(evaluations, variance, bias)` of firing probabilities `probs`
    (`(..., n, k)`) on steps of signed lengths `hs` (`(n,)`).

    - `evaluations` (`(..., n, k)`): `expected_evaluations`, which knows the step's
        base level (the lowest with `p > 0`; the levels below it are out) and,
        with `refines`, that a refinement needs the level below it.
    - `variance` (`(..., n)`): `h² Σ_l (1/p_l − 1) W_l` over the randomised levels
        at or above the base, with `W_l = weighted[:, l]` (`A_l a(t) V_l(t)`) and,
        for the base `b`, whose increment is `f^b` itself, `own[:, b]`
        (`A_b a(t) E‖f^b‖²`; `own[:, 0] = weighted[:, 0]`).
    - `bias` (`(..., n)`): what the dropped corrections (`p_l = 0` above the base)
        move the final state by (`_dropped_bias`, from `pairs`, shape
        `(n, k + 1, k + 1)`: `a(t) E‖f^j − f^i‖²` per step, index 0 for `f^0 = 0`).

    A level with `W_l = 0` adds nothing, even at `p = 0`.
    """
    probs = np.asarray(probs, np.float64)
    active = probs > 0
    in_ladder = np.cumsum(active, axis=-1) > 0
    base = in_ladder & ~np.concatenate(
        [np.zeros_like(in_ladder[..., :1]), in_ladder[..., :-1]], axis=-1
    )
    h2 = np.asarray(hs, np.float64) ** 2
    w = np.where(
        base,
        np.broadcast_to(own, probs.shape),
        np.broadcast_to(weighted, probs.shape),
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(active & (w > 0), w * (1 / probs - 1), 0.0)
    variance = h2 * per.sum(axis=-1)
    bias = np.sqrt(h2) * _dropped_bias(in_ladder & ~active, weighted, pairs)
    return np.asarray(expected_evaluations(probs, refines)), variance, bias


def _dropped_bias(dropped, weighted, pairs):
    """Per step (`(..., n)`), per unit `|h|`: what the dropped corrections move the
    final state by, `sqrt(Ā a(t) E‖Σ_dropped Δ_l‖²)`, one maximal contiguous block
    of dropped levels `i+1..j` at a time (`E‖f^j − f^i‖²`), summed as norms, with
    `Ā` the block's amplification: its levels' `A_l` weighted by their
    `a(t) V_l(t)` (the pilots' correction of the isotropic sensitivity for the
    directions of those levels' corrections, which a dropped correction points in
    as a randomised one does). A dropped correction is the same at every step of a
    solve, not an independent draw, so the bias of the steps adds up as norms
    (`Σ_n`), not as variances: the total mean square is
    `(Σ_n bias_n)² + Σ_n variance_n`."""
    k = dropped.shape[-1]
    bias = np.zeros(dropped.shape[:-1])
    if not np.any(dropped):
        return bias
    everywhere = np.ones_like(dropped[..., 0])
    for i in range(k):  # dropped block i..j (0-based levels), maximal
        inside = dropped[..., i] & (~dropped[..., i - 1] if i > 0 else everywhere)
        for j in range(i, k):
            if j > i:
                inside = inside & dropped[..., j]
            ends = inside & (~dropped[..., j + 1] if j + 1 < k else everywhere)
            # The block's amplification: its increments' A_l, weighted by their
            # (sensitivity-weighted) variances.
            adjacent = sum(pairs[:, l, l + 1] for l in range(i, j + 1))
            amplified = sum(weighted[:, l] for l in range(i, j + 1))
            with np.errstate(divide="ignore", invalid="ignore"):
                gain = np.where(adjacent > 0, amplified / adjacent, 1.0)
            block = np.sqrt(np.maximum(pairs[:, i, j + 1] * gain, 0.0))
            bias = bias + np.where(ends, block, 0.0)
    return bias


def _step_groups(bins, hs):
    """`(first, counts)`: the first step of each group of steps with one bin and
    one length, and the group's size (float). Such steps are priced alike: price
    each group once, weighted by its size (8 groups instead of thousands of steps
    on a uniform grid; the verdict prices hundreds of frontiers)."""
    _, first, counts = np.unique(
        np.stack([bins.astype(np.float64), hs]),
        axis=1,
        return_index=True,
        return_counts=True,
    )
    return first, counts.astype(np.float64)


def _stitch_configs(k: int) -> list[tuple[tuple[int, ...], float]]:
    """`(levels, fraction)` of the T-Stitch schedules `Calibration.stitches` lists:
    the top level alone, then every cheaper level `j` with the top one in both
    orders, switching after 5%, 10%, …, 95% of the steps."""
    out: list[tuple[tuple[int, ...], float]] = [((k - 1,), 1.0)]
    for j in range(k - 1):
        for order in ((j, k - 1), (k - 1, j)):
            out += [(order, float(f)) for f in np.round(np.arange(1, 20) / 20, 2)]
    return out


def _grid(t0: float, t1: float, num_steps: int):
    h = (t1 - t0) / num_steps
    return t0 + h * np.arange(num_steps), h


def _bin_index(edges: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
