"""The verdict: is a calibrated ladder worth multilevel sampling, against the best
a user has without it (the top level alone, or T-Stitch), at equal predicted error."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._optimise import _floor_rate, _hybrid_frontier
from ._pricing import (
    _bin_index,
    _price,
    _price_steps,
    _step_groups,
    _stitch_configs,
    _sub_ladders,
)

if TYPE_CHECKING:
    from ._calibration import Calibration


SAMPLER_BASELINE = "the sampler with the top level alone"
"""`Verdict.baseline` of a sampler calibration (one with a `grid`)."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a calibrated ladder is worth multilevel sampling
    (`Calibration.verdict`), against the best a user has without it.

    **Fields:** (arrays over `errors`)

    - `cost`: the cost that decides (`"flops"`, `"seconds"` or `"costs"`).
    - `errors`: RMS pathwise errors judged at (against the exact solution of the
        top level's equation).
    - `gains`: per cost unit, the best alternative's cost over the multilevel
        method's (the least of ML-EM's and the hybrid's predicted costs): what
        `worth_above`, `best` and the sentence read.
    - `alternative_costs`, `alternatives`: per cost unit, the cost of the best
        alternative without randomisation — the top level alone
        (Euler–Maruyama) or the best T-Stitch schedule (`Calibration.stitches`),
        and for a guided ladder (`refinements[-1]`) also the best guidance
        interval at tenths of the steps — and, for the deciding cost, which one it
        is, in words.
    - `hybrid_costs`: per cost unit, the least predicted cost of the hybrid
        (stitching and telescoping chosen per time bin, `Calibration.hybrid`).
    - `em_steps`: Euler–Maruyama steps with the top level to reach each error.
    - `speedups`, `mlem_costs`, `em_costs`: per cost unit, Euler–Maruyama's cost
        over ML-EM's (the randomised telescope alone) least predicted cost, and
        both costs.
    - `mlem_steps`, `mlem_levels`, `evaluations`: for the deciding cost, the ML-EM
        steps, sub-ladder (1-based levels) and expected evaluations per level at
        each error (`None` where ML-EM cannot reach it).
    - `level_costs`: cost of one evaluation per level, in the deciding unit.
    - `min_probability`: the floor the prediction assumed.
    - `quoted`: index of the error `str(verdict)` quotes speedups at.
    - `baseline`: the solve without randomisation the speedups are over, in words:
        Euler–Maruyama with the top level for a `calibrate` calibration, the
        sampler with the top level on its own grid for a `calibrate_sampler` one.

    `worth_above`, `best`, `limiting_level` and `str(verdict)` read it.
    """

    cost: str
    errors: np.ndarray
    em_steps: np.ndarray
    speedups: dict[str, np.ndarray]
    mlem_costs: dict[str, np.ndarray]
    em_costs: dict[str, np.ndarray]
    mlem_steps: tuple[int | None, ...]
    mlem_levels: tuple[tuple[int, ...] | None, ...]
    evaluations: tuple[np.ndarray | None, ...]
    level_costs: np.ndarray
    min_probability: float
    quoted: int
    alternative_costs: dict[str, np.ndarray]
    alternatives: tuple[str, ...]
    hybrid_costs: dict[str, np.ndarray]
    gains: dict[str, np.ndarray]
    baseline: str = "Euler–Maruyama with the top level"

    @property
    def worth_above(self) -> float | None:
        """The least judged error from which, at every larger judged error, the
        multilevel method is predicted cheaper than the best alternative in the
        deciding cost (`None` if not even at the largest)."""
        gain = self.gains[self.cost]
        good = np.nan_to_num(gain, nan=0.0) > 1.0
        if not good[-1]:
            return None
        j = len(good) - 1
        while j > 0 and good[j - 1]:
            j -= 1
        return float(self.errors[j])

    @property
    def best(self) -> int:
        """Index (into `errors`) of the largest predicted gain over the best
        alternative in the deciding cost."""
        return int(np.nanargmax(np.nan_to_num(self.gains[self.cost], nan=0.0)))

    def limiting_level(self, index: int | None = None) -> tuple[int, float]:
        """`(level, share)`: at `errors[index]` (default `quoted`), the level (1-based)
        whose expected evaluations take the largest share of ML-EM's predicted
        cost, and that share. With optimal rates a randomised level's share is
        proportional to `sqrt(V_l C_l)` (its variance times its cost), and the
        base level's to its cost times the steps: the level to make cheaper, or
        whose correction to make smaller, to gain more."""
        j = self.quoted if index is None else index
        evaluations = self.evaluations[j]
        if evaluations is None:
            raise ValueError(f"Verdict: ML-EM reaches no error at index {j}.")
        spent = evaluations * self.level_costs
        level = int(np.argmax(spent))
        return level + 1, float(spent[level] / spent.sum())

    def _method(self, j: int) -> str:
        """Which multilevel method is the cheaper at error `j`."""
        c = self.cost
        return (
            "the hybrid" if self.hybrid_costs[c][j] < self.mlem_costs[c][j] else "ML-EM"
        )

    def __str__(self) -> str:
        unit = {"flops": "FLOPs", "seconds": "seconds", "costs": "cost units"}
        g = self.gains

        def gain(j):
            return f"{g[self.cost][j]:.2f}× in {unit[self.cost]}" + "".join(
                f" and {g[u][j]:.2f}× in {unit[u]}" for u in g if u != self.cost
            )

        def where(j):
            text = f"the best alternative: {self.alternatives[j]}"
            if self.mlem_steps[j] is not None:
                text += (
                    f"; ML-EM {self.mlem_steps[j]} steps, levels "
                    f"{','.join(map(str, self.mlem_levels[j] or ()))}"
                )
            return text

        q, b = self.quoted, self.best
        worth = self.worth_above
        if worth is None:
            text = (
                f"Not worth it: multilevel sampling (ML-EM or the hybrid) is "
                f"predicted to cost more {unit[self.cost]} than the best "
                "alternative without randomisation (the top level alone, stitching "
                "or, for a guided ladder, a guidance interval) at every error from "
                f"{self.errors[0]:.3g} to {self.errors[-1]:.3g}."
            )
        else:
            text = f"Worth it at errors above {worth:.3g}."
        text += (
            f" At error {self.errors[q]:.3g} ({where(q)}): expected gain of "
            f"{self._method(q)} {gain(q)}; ML-EM's speedup over "
            f"{self.baseline} {self.speedups[self.cost][q]:.2f}×."
        )
        if self.evaluations[q] is not None:
            level, share = self.limiting_level(q)
            text += (
                f" The level that limits ML-EM is {level} ({100 * share:.0f}% of "
                f"its {unit[self.cost]}"
                + (", evaluated at every step)." if level == 1 else ").")
            )
        if b != q:
            text += f" Largest at error {self.errors[b]:.3g}: {gain(b)} ({where(b)})."
        return text

    def table(self) -> str:
        """Per judged error: Euler–Maruyama's steps, ML-EM's steps and levels, the
        gains over the best alternative and which alternative that is."""
        units = list(self.gains)
        lines = [
            f"{'error':>9} {'EM steps':>9} {'ML steps':>9} {'levels':>10} "
            + " ".join(f"{'x ' + u:>10}" for u in units)
            + "  best alternative"
        ]
        for j, e in enumerate(self.errors):
            levels = self.mlem_levels[j]
            lines.append(
                f"{e:9.4g} {self.em_steps[j]:9.1f} "
                f"{self.mlem_steps[j] if self.mlem_steps[j] is not None else '-':>9} "
                f"{','.join(map(str, levels)) if levels else '-':>10} "
                + " ".join(f"{self.gains[u][j]:10.3g}" for u in units)
                + f"  {self.alternatives[j]}"
            )
        return "\n".join(lines)


def verdict(
    cal: Calibration,
    *,
    cost: str | None = None,
    min_probability: float = 0.0,
    errors: Sequence[float] | None = None,
    steps: Sequence[int] | None = None,
    error: float | None = None,
) -> Verdict:
    """Is this ladder worth ML-EM, and where? A prediction from this calibration
    alone (no new solves): ML-EM against Euler–Maruyama with the top level, at
    equal RMS pathwise error (against the exact solution of the top level's
    equation).

    Euler–Maruyama at `n` steps has error `e(n) = em_error·(num_steps/n)^q` and
    costs `n·c_k`: reaching `ε` takes `n_EM(ε) = num_steps·(em_error/ε)^{1/q}`
    steps. ML-EM at `n ≥ n_EM` steps spends the rest of the error budget,
    `δ² = ε² − e(n)²`, on its telescope: the least expected cost of a calibrated
    schedule adding `δ` (as `schedule(target_error=δ)` and `predict` price it,
    with the `min_probability` floor), minimised over `n` in `steps` and over
    every sub-ladder that keeps the top level (as `choose_levels`). The ratio
    of the two costs is the predicted speedup, in FLOPs and, if measured, in
    seconds (each with rates that minimise it).

    **Arguments:**

    - `cost`: the cost that decides (`"flops"`, `"seconds"` or `"costs"`;
        default: seconds if measured, else FLOPs if measured, else costs).
    - `min_probability`: the floor on every level's probability, as in
        `schedule` (the CLI uses 0.02).
    - `errors`: the errors to judge at (default: 25 from `e(16·num_steps)` to
        `e(num_steps/4)`, the range in which Euler–Maruyama takes
        `num_steps/4` to `16·num_steps` steps).
    - `error`: the error the sentence quotes the speedups at (default
        `e(num_steps)`, Euler–Maruyama's at the pilot's step count: calibrate
        at the resolution you sample at).
    - `steps`: ML-EM step counts tried (default: about 2^(j/2) from 4 to
        `64·num_steps`).

    **Returns:** a `Verdict`; `print` it for one sentence and the table.
    """
    units = [u for u in ("flops", "seconds") if getattr(cal, u) is not None]
    if cost is None:
        cost = "seconds" if "seconds" in units else (units[0] if units else "costs")
    cal.level_costs(cost)
    units = list(dict.fromkeys([cost] + units))
    if not 0.0 <= min_probability < 1.0:
        raise ValueError(
            "Calibration.verdict: `min_probability` must lie in [0, 1); got "
            f"{min_probability}."
        )
    judged, error, counts = _judged(cal, errors, error, steps)
    n0 = cal.num_steps
    n_em = n0 * (float(cal.em_error_at(n0)) / judged) ** (1 / float(cal.em_order or 1))
    ladders = [(idx, cal.restrict(idx)) for idx in _sub_ladders(cal.num_levels)[1:]]
    out = {
        unit: _unit_costs(cal, ladders, counts, judged, n_em, unit, min_probability)
        for unit in units
    }
    at = out[cost]["at"]
    return Verdict(
        cost=cost,
        errors=judged,
        em_steps=n_em,
        speedups={u: out[u]["speedup"] for u in units},
        mlem_costs={u: out[u]["mlem_cost"] for u in units},
        em_costs={u: out[u]["em_cost"] for u in units},
        mlem_steps=tuple(None if a is None else a[0] for a in at),
        mlem_levels=tuple(
            None if a is None else tuple(i + 1 for i in a[1]) for a in at
        ),
        evaluations=tuple(None if a is None else a[2] for a in at),
        level_costs=cal.level_costs(cost),
        min_probability=min_probability,
        quoted=int(np.flatnonzero(judged == error)[0]),
        alternative_costs={u: out[u]["alt_cost"] for u in units},
        alternatives=out[cost]["alternative"],
        hybrid_costs={u: out[u]["hybrid_cost"] for u in units},
        gains={u: out[u]["gain"] for u in units},
        **({} if cal.grid is None else {"baseline": SAMPLER_BASELINE}),
    )


def _unit_costs(
    cal, ladders, counts, judged, n_em, unit, min_probability
) -> dict[str, Any]:
    """Per judged error, in `unit`: Euler–Maruyama's cost at `n_em` steps, ML-EM's
    least cost and where it is reached, the best alternative's and the hybrid's,
    and the speedup and gain they make."""
    em_cost = n_em * cal.level_costs(unit)[-1]
    mlem_cost, at = _mlem_costs(cal, ladders, counts, judged, unit, min_probability)
    alt_cost, alternative = _alternative_costs(cal, judged, unit)
    hybrid_cost = _hybrid_costs(cal, counts, judged, unit, min_probability)
    return dict(
        em_cost=em_cost,
        mlem_cost=mlem_cost,
        speedup=em_cost / mlem_cost,
        at=at,
        alt_cost=alt_cost,
        alternative=alternative,
        hybrid_cost=hybrid_cost,
        gain=alt_cost / np.minimum(mlem_cost, hybrid_cost),
    )


def _judged(cal, errors, error, steps):
    """`(judged, error, counts)`: `verdict`'s errors to judge (with the quoted
    `error` among them), the quoted error and the ML-EM step counts tried, the
    defaults filled in and checked."""
    n0 = cal.num_steps
    em_e0 = float(cal.em_error_at(n0))  # raises if not measured
    if errors is None:
        errors = np.geomspace(
            float(cal.em_error_at(16 * n0)), float(cal.em_error_at(n0 / 4)), 25
        ).tolist()
    error = em_e0 if error is None else float(error)
    if not error > 0:
        raise ValueError(f"Calibration.verdict: `error` must be > 0; got {error}.")
    judged = np.asarray(errors, np.float64)
    if judged.ndim != 1 or judged.size == 0 or not np.all(judged > 0):
        raise ValueError(
            "Calibration.verdict: `errors` must be a non-empty list of positive "
            f"numbers; got {list(errors)}."
        )
    if steps is None:
        top = int(np.ceil(np.log2(64 * n0) * 2))
        steps = sorted({int(round(2 ** (j / 2))) for j in range(4, top + 1)})
    counts = [int(n) for n in steps]
    if not counts or min(counts) < 1:
        raise ValueError(
            f"Calibration.verdict: `steps` must be positive step counts; got {counts}."
        )
    # The quoted error once, not beside a default error a rounding away from it.
    judged = judged[~np.isclose(judged, error, rtol=1e-9, atol=0.0)]
    return np.unique(np.append(judged, error)), error, counts


def _mlem_costs(cal, ladders, counts, judged, unit, min_probability):
    """`(cost, at)` per judged error: the least predicted cost in `unit` of a
    calibrated ML-EM schedule reaching it, over the step counts `counts` and the
    sub-ladders `ladders` (`[(levels, calibration)]`), the telescope spending what
    Euler–Maruyama's error at that step count leaves, `δ² = ε² − e(n)²`; and where
    it is reached, `(steps, levels, evaluations per level)` (`None` if nowhere)."""
    best_cost = np.full(judged.shape, np.inf)
    best_at: list = [None] * judged.size
    for n in counts:
        budget = judged**2 - float(cal.em_error_at(n)) ** 2  # δ² for the telescope
        if not np.any(budget > 0):
            continue
        for idx, sub in ladders:
            spent, added, evaluations = _frontier(sub, n, unit, min_probability)
            for j in np.flatnonzero(budget > 0):
                i, value = _cost_at(spent, added, float(budget[j]))
                if i is not None and value < best_cost[j]:
                    best_cost[j] = value
                    full = np.zeros(cal.num_levels)
                    full[list(idx)] = evaluations[i]
                    best_at[j] = (n, idx, full)
    return best_cost, best_at


def _cost_at(spent, added, budget):
    """`(i, cost)`: on a frontier of increasing cost `spent` and falling added
    error `added`, the first point `i` adding at most `δ = sqrt(budget)` and the
    cost of adding exactly `δ`, interpolated from the point before (`(None, inf)`
    if no point reaches it)."""
    delta = math.sqrt(budget)
    ok = np.flatnonzero(added <= delta)
    if ok.size == 0:
        return None, math.inf
    i = int(ok[0])
    if i == 0:
        return i, float(spent[0])
    if added[i] > 0:  # log–log interpolation to the exact δ
        a0, a1 = math.log(added[i - 1]), math.log(added[i])
        w = (math.log(delta) - a0) / (a1 - a0)
        log_spent = math.log(spent[i - 1])
        return i, math.exp(log_spent + w * (math.log(spent[i]) - log_spent))
    # The last scale fires every level at every step (no added error): near p = 1
    # both the added mean square and the cost are linear in p.
    w = 1 - budget / added[i - 1] ** 2
    return i, float(spent[i - 1] + w * (spent[i] - spent[i - 1]))


def _alternative_costs(cal, judged, unit):
    """`(cost, labels)` per judged error: the cheapest alternative a user has
    without randomisation, the top level alone (Euler–Maruyama) or a stitch, whose
    error at `n` steps is `sqrt(e(n)² + bias²)` with the bias priced at the pilot's
    steps, and which one it is, in words."""
    n0 = cal.num_steps
    em_e0, em_order = float(cal.em_error_at(n0)), float(cal.em_order or 1.0)
    labels, stitch_cost, stitch_bias = _stitch_prices(cal, n0, unit)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = judged[:, None] ** 2 - stitch_bias[None, :] ** 2
        steps_needed = n0 * (em_e0 / np.sqrt(left)) ** (1 / em_order)
        alt = np.where(left > 0, steps_needed * stitch_cost / n0, np.inf)
    pick = np.argmin(alt, axis=1)
    return alt[np.arange(judged.size), pick], tuple(labels[i] for i in pick)


def _hybrid_costs(cal, counts, judged, unit, min_probability):
    """Per judged error, the least predicted cost in `unit` of the hybrid (per bin:
    stitch, telescope or both) over the step counts `counts`."""
    hybrid_cost = np.full(judged.shape, np.inf)
    for n in counts:
        budget = judged**2 - float(cal.em_error_at(n)) ** 2
        if not np.any(budget > 0):
            continue
        spent, added = _hybrid_frontier(cal, n, unit, min_probability)
        for j in np.flatnonzero(budget > 0):
            ok = added <= np.sqrt(budget[j])
            if ok.any():
                hybrid_cost[j] = min(hybrid_cost[j], spent[ok].min())
    return hybrid_cost


def _frontier(cal, num_steps, cost, min_probability):
    """`(cost, error, evaluations)` over a grid of rate scales: the expected
    cost, added RMS error and per-level evaluations of this calibration's
    schedule at `num_steps` steps, as `predict(schedule(...))` prices it
    (`_price`), vectorised over the scale, in float64."""
    ts, hs = cal.steps(num_steps)
    bins = _bin_index(cal.times, ts + hs / 2)
    rate_shape = cal.rate_shape(cost)  # (bins, k)
    inner = rate_shape[bins][:, 1:] * np.abs(hs)[:, None]
    positive = inner[np.isfinite(inner) & (inner > 0)]  # probabilities at scale 1
    if positive.size == 0:  # one level, or nothing to randomise
        scales = np.ones(1)
    else:
        scales = np.logspace(-6, 3, 241) / np.median(positive)
    first, counts = _step_groups(bins, hs)
    bins, hs = bins[first], hs[first]
    shape = rate_shape[bins]  # (groups, k)
    h = np.abs(hs)[:, None]
    floor = _floor_rate(cal, num_steps, min_probability)
    rates = np.maximum(shape[None] * scales[:, None, None], floor)
    rates[..., 0] = np.inf
    probs = np.minimum(1.0, rates * h[None])
    weighted, own, pairs = cal._pricing_weights(bins)
    evaluations, mse = _price(
        probs, hs, weighted, own, pairs, counts, refines=cal.refinements
    )
    return evaluations @ cal.level_costs(cost), np.sqrt(mse), evaluations


def _guidance_windows(k: int, num_steps: int, num_fractions: int = 11):
    """The guidance intervals a user of a guided ladder would try instead of
    randomising: `(windows, probs)`, the step ranges `[a, b)` with `a < b` at
    tenths of the steps (all but the whole solve, which is full guidance, "the
    top level alone"), and their firing probabilities `(windows, steps, k)`: the
    conditional level `k − 1` (the base) at every step, the guided level `k` at
    every step of the window and never outside it."""
    cuts = np.unique(np.rint(np.linspace(0, num_steps, num_fractions)).astype(int))
    windows = [
        (int(a), int(b))
        for a in cuts
        for b in cuts
        if a < b and (a, b) != (0, num_steps)
    ]
    steps = np.arange(num_steps)
    probs = np.zeros((len(windows), num_steps, k))
    probs[:, :, k - 2] = 1.0
    for w, (a, b) in enumerate(windows):
        probs[w, (steps >= a) & (steps < b), k - 1] = 1.0
    return windows, probs


def _stitch_prices(cal, num_steps, cost):
    """`(labels, cost, bias)` of `stitches(num_steps)` (the same schedules, in
    the same order), priced as `predict` prices them, vectorised: a stitch
    adds no variance, only the bias of the corrections it drops. For a guided
    ladder (the top level a `mlem_jax.Refinement`), the guidance intervals of
    `_guidance_windows` follow them."""
    k = cal.num_levels
    ts, hs = cal.steps(num_steps)
    bins = _bin_index(cal.times, ts + hs / 2)
    labels, rows = [], []
    steps = np.arange(num_steps)
    for order, f in _stitch_configs(k):
        switch = int(np.rint(f * num_steps))
        rows.append(np.where(steps < switch, order[0], order[-1]))
        labels.append(
            "the top level alone"
            if len(order) == 1
            else f"stitching level {order[0] + 1} for the first {100 * f:.0f}% "
            f"of the steps, then level {order[1] + 1}"
        )
    probs = np.eye(k)[np.stack(rows)]  # (stitches, steps, k)
    if cal.refinements is not None and cal.refinements[-1] and k >= 2:
        windows, guided = _guidance_windows(k, num_steps)
        probs = np.concatenate([probs, guided])
        ends = np.append(ts, ts[-1] + hs[-1])
        for a, b in windows:
            lo, hi = sorted((float(ends[a]), float(ends[b])))
            labels.append(
                f"guidance (level {k}) only on steps {a}–{b} of {num_steps} "
                f"(t in [{lo:.3g}, {hi:.3g}]), level {k - 1} alone elsewhere: a "
                "guidance interval"
            )
    weighted, own, pairs = cal._pricing_weights(bins)
    evaluations, _, bias = _price_steps(
        probs, hs, weighted, own, pairs, cal.refinements
    )
    spent = (evaluations @ cal.level_costs(cost)).sum(-1)
    return labels, spent, bias.sum(-1)
