"""How the `sample` and `demo` commands turn a ladder's calibration into a schedule:
the stored calibration of the shipped ladder (else pilots), priced in seconds or
FLOPs, a budget in top-level evaluations checked against what ML-EM can spend, and
the rates (over every level, or the sub-ladder `Calibration.choose_levels` picks)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import FixedProbabilities, pretrained, time_in_scan
from ..pretrained import MIN_PROBABILITY, T0, T1, Ladder
from ._common import warn


def calibrated_schedule(
    ladder: Ladder,
    y0,
    key,
    *,
    pilot_steps: int,
    num_steps: int,
    budget: float,
    path: str | None = None,
    min_probability: float | None = None,
):
    """Rates from `calibrate`, scaled so their expected cost is `budget` top-level
    evaluations at `num_steps` steps (see `budget_schedule`).

    For the shipped ladder (`path=None`) the calibration stored next to it
    (`calibration.json`, written by `mlem_jax.pretrained.calibrate_shipped`) is used;
    otherwise `calibrate` runs pilots on `y0` (`pilot_steps` steps).

    **Returns:** `(calibration, schedule)`.
    """
    cal = ladder_calibration(ladder, y0, key, pilot_steps=pilot_steps, path=path)
    return cal, budget_schedule(cal, num_steps, budget, min_probability)


def ladder_calibration(ladder: Ladder, y0, key, *, pilot_steps: int, path=None):
    """The calibration `calibrated_schedule` scales: the stored one of a shipped
    ladder (`path=None` or a shipped ladder's name), else `calibrate`'s pilots on
    `y0`."""
    cal = None
    directory, name = pretrained.resolve_ladder(path)
    if name is not None:
        try:
            cal = pretrained.load_calibration(
                os.path.join(directory, pretrained.CALIBRATION)
            )
        except ValueError as e:  # a damaged installation: calibrate here instead
            warn(f"{e} Running the calibration pilots instead.")
    if cal is None:
        cal = pretrained.calibrate_ladder(
            ladder,
            y0,
            key=key,
            pilot_steps=pilot_steps,
            num_bins=min(8, pilot_steps),
            pilot_keys=0,
        )
    return cal


COSTS = ("seconds", "flops")
"""What the CLI's calibrated rates minimise: measured wall-clock (default) or FLOPs."""


def cost_unit(cost: str) -> str:
    # The CLI's level costs are FLOPs, so "flops" is the calibration's `costs`.
    return "seconds" if cost == "seconds" else "costs"


def priced_calibration(cal, ladder: Ladder, y, cost: str, seconds=None):
    """`cal` ready to minimise `cost`: for `"seconds"`, with every level's seconds
    per evaluation (`seconds` if given, else measured here, inside a compiled loop
    on the batch `y` that will be sampled: `mlem_jax.time_in_scan`; small networks
    are latency-bound, so their share of the seconds depends on the batch and the
    device). Measured timings vary from run to run, and so do the rates they give:
    pass the printed `seconds` back to reproduce a run exactly."""
    if cost != "seconds":
        return cal
    if seconds is None:
        t = jnp.asarray((T0 + T1) / 2, y.dtype)
        seconds = [
            time_in_scan(f, t, y, num_steps=4, repeats=3) for f in ladder.levels.fns
        ]
    return cal.with_seconds(seconds)


def ladder_verdict(cal, cost: str, num_steps: int):
    """`Calibration.verdict` at Euler–Maruyama's error at `num_steps` steps, in the
    cost the rates minimise (and FLOPs), at the CLI's probability floor; `None`
    when the calibration has no measurement of Euler–Maruyama's own error (the
    CLI's pilots on a ladder without a stored calibration skip it)."""
    if cal.em_error is None:
        return None
    # The CLI's level costs are FLOPs: name them so.
    cal = dataclasses.replace(cal, flops=cal.costs)
    return cal.verdict(
        cost="seconds" if cost == "seconds" else "flops",
        min_probability=MIN_PROBABILITY,
        error=float(cal.em_error_at(num_steps)),
    )


def describe_cost(cal, cost: str, batch: int) -> str:
    """One line saying what the rates minimise, with the per-level costs."""
    if cost == "seconds":
        ms = ",".join(f"{1e3 * s:.4g}" for s in cal.level_costs("seconds"))
        return (
            f"rates minimise seconds (ms per evaluation at batch {batch} on "
            f"{jax.default_backend()}, levels 1..k: --level-ms {ms})"
        )
    share = cal.level_costs("costs") / cal.level_costs("costs")[-1]
    return "rates minimise FLOPs (per evaluation, relative to the top level: " + (
        " ".join(f"{x:.3g}" for x in share) + ")"
    )


def budget_range(
    cal, num_steps: int, min_probability=None, cost: str = "flops"
) -> tuple[float, float]:
    """The budgets, in top-level evaluations (of FLOPs or of seconds, as `cost`
    says), that `budget_schedule` can meet at `num_steps` steps: from 1.25 times the
    cheapest schedule the floor allows (level 1 at every step, the others at the
    floor) to just below every level at every step."""
    p_min = MIN_PROBABILITY if min_probability is None else min_probability
    unit = cost_unit(cost)
    top = cal.level_costs(unit)[-1]
    low = 1.25 * cal.min_cost(num_steps, p_min, unit) / top
    every = FixedProbabilities(np.ones(cal.num_levels, np.float32))
    high = 0.999 * cal.predict(every, num_steps, unit).cost / top
    return low, high


def feasible_budget(
    cal, num_steps: int, budget: float, min_probability=None, cost: str = "flops"
) -> tuple[float, str | None]:
    """`(budget to use, note)`: `budget` itself (note None) if `budget_schedule` can
    meet it, the lowest feasible budget with a note saying so if it is below; a
    `ValueError` naming the feasible range if it is above."""
    low, high = budget_range(cal, num_steps, min_probability, cost)
    if budget > high:
        raise ValueError(
            f"`budget` {budget:g} top-level evaluations is more than ML-EM can spend "
            f"in {num_steps} steps: feasible budgets lie between {low:.3g} and "
            f"{high:.3g} (every level at every step); use Euler-Maruyama for more."
        )
    if budget < low:
        return low, (
            f"`budget` {budget:g} top-level evaluations is below the cheapest "
            f"schedule at {num_steps} steps (level 1 at every step, the others at "
            f"the probability floor): raised to {low:.3g}; feasible budgets lie "
            f"between {low:.3g} and {high:.3g}."
        )
    return budget, None


def level_schedule(
    cal,
    num_steps: int,
    budget: float,
    min_probability=None,
    cost: str = "flops",
    levels: str = "all",
) -> tuple[tuple[int, ...], Any]:
    """`(levels used, schedule)`: `budget_schedule` over every level
    (`levels="all"`), or over the sub-ladder `Calibration.choose_levels` predicts
    to add the least error for the budget (`levels="auto"`)."""
    every = tuple(range(cal.num_levels))
    if levels == "all":
        return every, budget_schedule(cal, num_steps, budget, min_probability, cost)
    p_min = MIN_PROBABILITY if min_probability is None else min_probability
    target, unit = _budget_in_units(cal, num_steps, budget, p_min, cost)
    idx = cal.choose_levels(
        budget=target, num_steps=num_steps, min_probability=p_min, cost=unit
    )
    if len(idx) == 1:  # the top level alone, at every step: Euler-Maruyama
        return idx, FixedProbabilities(np.ones(1, np.float32))
    sub = cal.restrict(idx)
    return idx, sub.schedule(
        budget=target, num_steps=num_steps, min_probability=p_min, cost=unit
    )


def hybrid_schedule(cal, num_steps: int, budget: float, cost: str = "flops"):
    """`Calibration.hybrid` at `budget` top-level evaluations (stitching,
    telescoping or both, chosen per step; the CLI's probability floor on the
    randomised corrections), with the budget raised as `feasible_budget` does."""
    target, unit = _budget_in_units(cal, num_steps, budget, MIN_PROBABILITY, cost)
    return cal.hybrid(
        budget=target, num_steps=num_steps, min_probability=MIN_PROBABILITY, cost=unit
    )


def budget_schedule(
    cal, num_steps: int, budget: float, min_probability=None, cost: str = "flops"
):
    """`cal.schedule` at `budget` top-level evaluations (raised to 1.25 times the
    cheapest schedule the floor allows, if below: see `feasible_budget`), every level
    firing with probability at least `min_probability` (default `MIN_PROBABILITY`).
    A budget above every level at every step raises a `ValueError`. `cost`:
    `"flops"` or `"seconds"` (then `cal` needs measured seconds:
    `priced_calibration`), what the rates minimise and the budget counts."""
    p_min = MIN_PROBABILITY if min_probability is None else min_probability
    target, unit = _budget_in_units(cal, num_steps, budget, p_min, cost)
    return cal.schedule(
        budget=target, num_steps=num_steps, min_probability=p_min, cost=unit
    )


def _budget_in_units(cal, num_steps: int, budget: float, p_min: float, cost: str):
    """`(budget, unit)`: a budget in top-level evaluations, raised as
    `feasible_budget` does, in the calibration's units of `cost`."""
    budget, _ = feasible_budget(cal, num_steps, budget, p_min, cost)
    unit = cost_unit(cost)
    return budget * cal.level_costs(unit)[-1], unit
