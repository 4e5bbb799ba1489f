"""Calibration: measure a ladder along trajectories and choose ML-EM's rates.

`calibrate` runs pilot solves and estimates, on a grid of time bins,

* `V_l(t) = E‖f^l − f^{l−1}‖²` along trajectories (the variance ML-EM adds per unit
  time at rate `λ_l` is about `V_l/λ_l`),
* each level's cost (the `Levels` costs, XLA's FLOP count, measured wall-clock),
* each level's drift error, and the exponent `γ` of `cost ∝ error^{−γ}`,

* the sensitivity `a(t)` of the final state to a perturbation at time `t`
  (`E‖∂Y_T/∂Y_t · δ‖² / E‖δ‖²`, by one reverse-mode pass along the pilot trajectory):
  noise injected where the dynamics contract matters less than where they expand,
* per level, the amplification `A_l`: measured over predicted added mean-square
  error of pilot ML-EM solves in which only level `l` is randomised (probability
  1/2 at every step). `a(t)` is the growth of an *isotropic* perturbation; a level's
  corrections point in particular directions, which the dynamics may amplify more
  or less (on the shipped digits ladder's reverse SDE, 3–5× more),

then builds time-dependent `Rates` with `λ_l(t) ∝ sqrt(A_l a(t) V_l(t)/C_l)`,
`C_l = c_l + c_{l−1}` (Giles's multilevel allocation, weighted by the sensitivity),
scaled to a target added error or a budget.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from ._brownian import brownian_increments, coarsen_increments
from ._cost import count_flops, fit_cost_exponent, time_in_scan
from ._levels import Levels, Refinement
from ._misc import check_num_steps, concrete_or_none
from ._schedules import AbstractSchedule, FixedProbabilities, Rates, Stitch
from ._solve import em_solve, mlem_solve
from ._step import check_drift_output, expected_evaluations, probabilities_on_grid

COSTS = ("costs", "flops", "seconds")
"""What `Calibration.schedule(cost=...)` can minimise."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A schedule's expected cost and added error (`Calibration.predict`).

    **Fields:**

    - `evaluations`: expected evaluations of each level over the solve, shape `(k,)`.
    - `cost`: expected cost, in the units `Calibration.predict(cost=...)` names.
    - `error`: predicted RMS pathwise distance to Euler–Maruyama with the top level
        (dropped corrections priced as bias, randomised ones as variance).

    Indexing by field name (`prediction["cost"]`), the dict this used to be, still
    works and warns: use the attributes.
    """

    evaluations: np.ndarray
    cost: float
    error: float

    def __getitem__(self, name: str):
        warnings.warn(
            "Calibration.predict now returns a Prediction record: use "
            f"`prediction.{name}` instead of `prediction[{name!r}]`.",
            DeprecationWarning,
            stacklevel=2,
        )
        if name not in ("evaluations", "cost", "error"):
            raise KeyError(name)
        return getattr(self, name)


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
        (Euler–Maruyama) or the best T-Stitch schedule (`Calibration.stitches`)
        — and, for the deciding cost, which one it is, in words.
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
                f"predicted to cost more {unit[self.cost]} than the best of the top "
                "level alone and stitching at every error from "
                f"{self.errors[0]:.3g} to {self.errors[-1]:.3g}."
            )
        else:
            text = f"Worth it at errors above {worth:.3g}."
        text += (
            f" At error {self.errors[q]:.3g} ({where(q)}): expected gain of "
            f"{self._method(q)} {gain(q)}; ML-EM's speedup over Euler–Maruyama "
            f"with the top level {self.speedups[self.cost][q]:.2f}×."
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


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What `calibrate` measured, and the schedules it implies.

    **Fields:**

    - `times`: bin edges, shape `(m + 1,)`, increasing.
    - `variances`: `V_l` per bin, shape `(m, k)`; column 0 is `E‖f^1‖²`.
    - `sensitivity`: `a(t)` per bin, shape `(m,)`: the mean-square growth, from
        time `t` to the end of the solve, of a small isotropic perturbation.
    - `costs`: per-evaluation cost of each level used for the rate rule (the
        `Levels` costs).
    - `flops`, `seconds`: measured FLOPs and wall-clock of one batched evaluation per
        level (`None` if not measured); `seconds` as a solver pays it, inside a
        compiled loop (`mlem_jax.time_in_scan`). Re-measure them on the batch and
        device you sample with (`with_seconds`).
    - `drift_errors`: RMS `‖f^l − f_ref‖` along trajectories (`f_ref` the reference
        drift if given, else the top level, whose own error is then 0).
    - `gamma`, `gamma_stderr`: fitted `γ` in `log c_l = −γ log e_l + b` (FLOPs if
        measured, else `costs`) and its standard error (`nan` with < 3 points).
    - `amplification`: `A_l` per level, shape `(k,)`: measured / predicted added
        mean-square error of pilot ML-EM runs randomising level `l` alone, with
        probability 1/2 at every step (entry 0, and every entry without pilots, is
        1): the correction of the isotropic sensitivity model for the directions
        of that level's corrections. A scalar is broadcast to every level.
    - `t0`, `t1`, `num_steps`: the grid of the pilot solves.
    - `warnings`: diagnostics in words.
    - `pair_variances`: `E‖f^j − f^i‖²` per bin for every pair of levels, shape
        `(m, k + 1, k + 1)` with index 0 for `f^0 = 0` (so `variances[:, l]` is
        `pair_variances[:, l, l + 1]`), or `None` (older stored calibrations): what
        `restrict` and `choose_levels` need to price a ladder that skips levels.
    - `grid`: the pilot's `num_steps + 1` step times, from `t0` to `t1`, when the
        steps are not uniform in `t` (a diffusion sampler's grid, see
        `mlem_jax.diffusion.calibrate_sampler`), else `None`. `predict`, `schedule`
        and `choose_levels` then price the schedule on this grid (at another
        `num_steps`, on the grid interpolated linearly in the step index).
    - `em_error`, `em_order`: the RMS pathwise error of Euler–Maruyama with the top
        level at the pilot's `num_steps` (against the exact solution of the top
        level's equation on the same Brownian path) and its strong order `q`, so
        that at `n` steps it is about `em_error · (num_steps / n)^q`; measured by
        `calibrate` against a 16×-finer solve on the same path (see its
        `pilot_keys`), `None` if not measured. What `verdict` compares ML-EM with.
    """

    times: np.ndarray
    variances: np.ndarray
    sensitivity: np.ndarray
    costs: tuple[float, ...]
    flops: tuple[float, ...] | None
    seconds: tuple[float, ...] | None
    drift_errors: np.ndarray
    gamma: float
    gamma_stderr: float
    amplification: np.ndarray
    t0: float
    t1: float
    num_steps: int
    warnings: tuple[str, ...]
    pair_variances: np.ndarray | None = None
    grid: np.ndarray | None = None
    em_error: float | None = None
    em_order: float | None = None

    def __post_init__(self):
        amplification = np.broadcast_to(
            np.asarray(self.amplification, np.float64), (self.num_levels,)
        ).copy()
        object.__setattr__(self, "amplification", amplification)
        if self.grid is not None:
            grid = np.asarray(self.grid, np.float64)
            if grid.shape != (self.num_steps + 1,):
                raise ValueError(
                    f"Calibration: `grid` must have shape (num_steps + 1,) = "
                    f"({self.num_steps + 1},); got {grid.shape}."
                )
            object.__setattr__(self, "grid", grid)

    def steps(self, num_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`(starts, lengths)`: the start time and signed length of each of the
        `num_steps` steps (default: the pilot's) that `predict` prices a schedule
        on: uniform from `t0` to `t1`, or `grid` (interpolated linearly in the step
        index when `num_steps` differs from the pilot's)."""
        num_steps = self.num_steps if num_steps is None else num_steps
        if self.grid is None:
            ts, h = _grid(self.t0, self.t1, num_steps)
            return ts, np.full(num_steps, h)
        grid = self.grid
        if num_steps != len(grid) - 1:
            u = np.linspace(0.0, 1.0, len(grid))
            grid = np.interp(np.linspace(0.0, 1.0, num_steps + 1), u, grid)
        return grid[:-1], np.diff(grid)

    @property
    def num_levels(self) -> int:
        return self.variances.shape[1]

    def _weighted_variances(self) -> np.ndarray:
        """`A_l a(t) V_l(t)` per bin, shape `(m, k)`: the added mean-square error per
        unit `(1/p − 1) h²` that a correction of level `l` in that bin leaves in
        the final state."""
        return (
            np.maximum(self.variances, 0.0)
            * self.sensitivity[:, None]
            * self.amplification[None, :]
        )

    def _weighted_own(self) -> np.ndarray | None:
        """`A_l a(t) E‖f^l‖²` per bin, shape `(m, k)`: the weighted variance of level
        `l`'s increment when it is the step's base level (`f^l` itself), or `None`
        without `pair_variances`."""
        if self.pair_variances is None:
            return None
        own = np.maximum(self.pair_variances[:, 0, 1:], 0.0)
        return own * self.sensitivity[:, None] * self.amplification[None, :]

    def _weighted_pairs(self) -> np.ndarray | None:
        """`a(t) E‖f^j − f^i‖²` per bin, shape `(m, k + 1, k + 1)`: what a dropped
        block of corrections moves the final state by (see `_price_steps`), or
        `None` without `pair_variances`."""
        if self.pair_variances is None:
            return None
        return np.maximum(self.pair_variances, 0.0) * self.sensitivity[:, None, None]

    def _pricing(self, bins):
        """`_price`'s `(weighted, own, pairs)` for steps in calibration bins `bins`."""
        own, pairs = self._weighted_own(), self._weighted_pairs()
        return (
            self._weighted_variances()[bins],
            None if own is None else own[bins],
            None if pairs is None else pairs[bins],
        )

    def level_costs(self, cost: str = "costs") -> np.ndarray:
        """Cost of one evaluation of each level, shape `(k,)`, in the units `cost`
        names: `"costs"` (the `Levels` costs), `"flops"` (measured FLOPs) or
        `"seconds"` (measured wall-clock inside a compiled loop)."""
        if cost not in COSTS:
            raise ValueError(
                f"Calibration: `cost` must be one of {', '.join(map(repr, COSTS))}; "
                f"got {cost!r}."
            )
        values = getattr(self, cost)
        if values is None:
            fix = (
                "measure them on your sampling batch: `calibration.with_seconds("
                "[mlem_jax.time_in_scan(f, t, y) for f in levels.fns])`"
                if cost == "seconds"
                else "calibrate with `measure_costs=True`"
            )
            raise ValueError(
                f"Calibration: `cost={cost!r}` needs measured {cost}, and this "
                "calibration has none (it was made with `measure_costs=False` or "
                f"loaded from a file); {fix}."
            )
        return np.asarray(values, np.float64)

    def with_seconds(self, seconds) -> Calibration:
        """This calibration with each level's wall-clock replaced by `seconds` (one
        positive number per level, e.g. `mlem_jax.time_in_scan` of each level on the
        batch and device you will sample with). Seconds-optimal rates then follow
        from `schedule(..., cost="seconds")`."""
        try:
            values = tuple(float(x) for x in seconds)
        except (TypeError, ValueError) as e:
            raise TypeError(
                "Calibration.with_seconds: `seconds` must be a sequence of numbers, "
                "one per level."
            ) from e
        if len(values) != self.num_levels or not all(
            math.isfinite(x) and x > 0 for x in values
        ):
            raise ValueError(
                f"Calibration.with_seconds: `seconds` must hold {self.num_levels} "
                f"positive finite numbers (one per level); got {list(values)}."
            )
        return dataclasses.replace(self, seconds=values)

    def restrict(self, levels: Sequence[int]) -> Calibration:
        """The calibration of the ladder made of `levels` alone (0-based indices,
        increasing): its increments are `f^{levels[n]} − f^{levels[n−1]}`, their
        variances read from `pair_variances`. Each increment keeps the
        amplification measured for its finer level's own increment (an
        approximation: the pilots randomised adjacent increments only).

        Skipping a level keeps the telescope unbiased (its increment merges into
        the next one's), unlike a rate of zero, which drops it. On the shipped
        digits ladder the neighbouring levels' increments partly cancel
        (`E‖f^5 − f^1‖²` is half of `Σ_l V_l`), so fewer levels can add less
        variance for the same cost: see `choose_levels`.
        """
        k = self.num_levels
        idx = [int(i) for i in levels]
        if not idx or idx != sorted(set(idx)) or idx[0] < 0 or idx[-1] >= k:
            raise ValueError(
                "Calibration.restrict: `levels` must be increasing level indices in "
                f"[0, {k}); got {list(levels)}."
            )
        if self.pair_variances is None:
            if idx == list(range(idx[0], idx[-1] + 1)) and idx[0] == 0:
                pairs = None
            else:
                raise ValueError(
                    "Calibration.restrict: this calibration has no `pair_variances` "
                    "(a stored one from before they were measured); run `calibrate` "
                    "again to price a ladder that skips levels."
                )
        else:
            pairs = self.pair_variances[:, [0] + [i + 1 for i in idx]][
                :, :, [0] + [i + 1 for i in idx]
            ]
        if pairs is not None:
            variances = np.stack([pairs[:, n, n + 1] for n in range(len(idx))], axis=1)
        else:
            variances = self.variances[:, idx]

        def pick(values):
            return None if values is None else tuple(values[i] for i in idx)

        return dataclasses.replace(
            self,
            variances=variances,
            costs=pick(self.costs),
            flops=pick(self.flops),
            seconds=pick(self.seconds),
            drift_errors=self.drift_errors[idx],
            amplification=self.amplification[idx],
            pair_variances=pairs,
        )

    def choose_levels(
        self,
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
        if (target_error is None) == (budget is None):
            raise ValueError(
                "Calibration.choose_levels: give exactly one of `target_error` or "
                "`budget`."
            )
        if self.pair_variances is None:
            raise ValueError(
                "Calibration.choose_levels: this calibration has no `pair_variances` "
                "(a stored one from before they were measured); run `calibrate` "
                "again to price ladders that skip levels."
            )
        num_steps = self.num_steps if num_steps is None else num_steps
        self.level_costs(cost)
        k = self.num_levels
        best, best_value = None, math.inf
        for idx in _sub_ladders(k):
            sub = self.restrict(idx)
            if len(idx) == 1:
                schedule = FixedProbabilities(np.ones(1, np.float32))
            else:
                try:
                    schedule = sub.schedule(
                        target_error=target_error,
                        budget=budget,
                        num_steps=num_steps,
                        min_probability=min_probability,
                        cost=cost,
                    )
                except ValueError:  # infeasible for this sub-ladder
                    continue
            pred = sub.predict(schedule, num_steps, cost)
            if target_error is not None:
                ok = pred.error <= target_error * (1 + 1e-6)
                value = pred.cost if ok else math.inf
            else:
                assert budget is not None
                ok = pred.cost <= budget * (1 + 1e-6)
                value = pred.error if ok else math.inf
            if value < best_value:
                best, best_value = idx, value
        if best is None:
            raise ValueError(
                "Calibration.choose_levels: no sub-ladder meets the "
                + ("target error" if target_error is not None else "budget")
                + f" at {num_steps} steps."
            )
        return best

    def rate_shape(self, cost: str = "costs") -> np.ndarray:
        """Unscaled rates `sqrt(A_l a(t) V_l(t)/C_l)`, shape `(m, k)`, with `C_l` in
        the units `cost` names (see `level_costs`); level 1 is `inf`."""
        c = self.level_costs(cost)
        increment_cost = c + np.concatenate([[0.0], c[:-1]])
        weighted = self._weighted_variances()
        shape = np.sqrt(weighted / increment_cost)
        shape[:, 0] = np.inf
        return shape

    def schedule(
        self,
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
        self.level_costs(cost)  # an unknown `cost` or missing timings fail here
        if (target_error is None) == (budget is None):
            raise ValueError(
                "Calibration.schedule: give exactly one of `target_error` or `budget`."
            )
        num_steps = self.num_steps if num_steps is None else num_steps
        if not 0.0 <= min_probability <= 1.0:
            raise ValueError(
                "Calibration.schedule: `min_probability` must lie in [0, 1]; got "
                f"{min_probability}."
            )
        floor_rate = self._floor_rate(num_steps, min_probability)

        def scaled(scale):
            return self._scaled(scale, floor_rate, cost)

        if target_error is not None:
            if not target_error > 0:
                raise ValueError(
                    "Calibration.schedule: `target_error` must be > 0; got "
                    f"{target_error}."
                )

            # Added error falls with the scale: find where it meets the target.
            def miss_error(log_s):
                err = self.predict(scaled(math.exp(log_s)), num_steps).error
                return _log(err) - math.log(target_error)

            miss, sign = miss_error, -1.0
        else:
            assert budget is not None
            floor = self.min_cost(num_steps, min_probability, cost)
            if not budget > floor:
                raise ValueError(
                    f"Calibration.schedule: `budget` must exceed {floor:.6g}, the cost "
                    "of running level 1 alone at every step"
                    + (
                        f" and every other level with probability {min_probability}"
                        if min_probability > 0
                        else ""
                    )
                    + f"; got {budget}."
                )

            assert budget is not None

            def miss_cost(log_s, budget: float = budget):
                spent = self.predict(scaled(math.exp(log_s)), num_steps, cost).cost
                return _log(spent) - math.log(budget)

            miss, sign = miss_cost, 1.0
        log_s = _bisect(miss, sign)
        return scaled(math.exp(log_s))

    def hybrid(
        self,
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
        self.level_costs(cost)
        if (target_error is None) == (budget is None):
            raise ValueError(
                "Calibration.hybrid: give exactly one of `target_error` or `budget`."
            )
        value = target_error if target_error is not None else budget
        if not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(
                "Calibration.hybrid: `"
                + ("target_error" if target_error is not None else "budget")
                + f"` must be a positive number; got {value!r}."
            )
        if not 0.0 <= min_probability <= 1.0:
            raise ValueError(
                "Calibration.hybrid: `min_probability` must lie in [0, 1]; got "
                f"{min_probability}."
            )
        num_steps = self.num_steps if num_steps is None else num_steps
        candidates = self._hybrid_candidates(num_steps, cost, min_probability)
        candidates += [
            (sched, self.predict(sched, num_steps, cost))
            for sched in self.stitches(num_steps)
        ]
        try:
            telescope = self.schedule(
                target_error=target_error,
                budget=budget,
                num_steps=num_steps,
                min_probability=min_probability,
                cost=cost,
            )
            candidates.append((telescope, self.predict(telescope, num_steps, cost)))
        except ValueError:  # the plain telescope cannot meet it
            pass
        if target_error is not None:
            ok = [c for c in candidates if c[1].error <= target_error * (1 + 1e-9)]
            key = "cost"
        else:
            assert budget is not None
            ok = [c for c in candidates if c[1].cost <= budget * (1 + 1e-9)]
            key = "error"
        if not ok:
            raise ValueError(
                "Calibration.hybrid: no schedule is predicted to meet the "
                + ("target error" if target_error is not None else "budget")
                + f" at {num_steps} steps (not even the top level alone)."
            )
        best = min(ok, key=lambda c: getattr(c[1], key))[0]
        if isinstance(best, Rates):
            best = self._rescaled(best, target_error, budget, num_steps, cost)
        return best

    def _rescaled(self, sched, target_error, budget, num_steps, cost) -> Rates:
        """`sched` with its randomised rates (finite and non-zero) scaled by one
        factor so that it meets `target_error` or `budget` exactly: the
        candidates of `hybrid` are a discrete set, usually more accurate (or
        cheaper) than asked."""
        table = np.asarray(sched.rates, np.float64)
        random = np.isfinite(table) & (table > 0)
        if not random.any():
            return sched

        def scaled(log_s):
            out = np.where(random, table * math.exp(log_s), table)
            return Rates(jnp.asarray(out, jnp.float32), sched.times)

        if target_error is not None:

            def miss(log_s):
                err = self.predict(scaled(log_s), num_steps, cost).error
                return _log(err) - math.log(target_error)

            sign = -1.0
        else:

            def miss(log_s):
                spent = self.predict(scaled(log_s), num_steps, cost).cost
                return _log(spent) - math.log(budget)

            sign = 1.0
        try:
            log_s = _bisect(miss, sign, lo=-10.0, hi=10.0, iters=40)
        except ValueError:  # already at the target (or cannot move): keep it
            return sched
        return scaled(log_s)

    def stitches(self, num_steps: int | None = None) -> list[Stitch]:
        """The T-Stitch schedules `hybrid` and `verdict` compare with, on the grid
        of `num_steps` steps: the top level alone, and every cheaper level `j`
        with the top level, in both orders, switching after 5%, 10%, …, 95% of
        the steps (`Stitch.from_fractions`)."""
        num_steps = self.num_steps if num_steps is None else num_steps
        k = self.num_levels
        starts, lengths = self.steps(num_steps)
        grid = np.append(starts, starts[-1] + lengths[-1])
        return [
            Stitch(k, order, t0=float(grid[0]), t1=float(grid[-1]))
            if len(order) == 1
            else Stitch.from_fractions(k, order, (f,), grid=grid)
            for order, f in _stitch_configs(k)
        ]

    def _hybrid_options(self, num_steps, cost, min_probability, grouped=False):
        """The per-step options of `hybrid`, priced: `(rates, spent, bias,
        variance, midpoints)`. Options are level `b` alone, or level `b` with the
        corrections above it randomised at rates `scale · rate_shape` (floored at
        `min_probability`); `rates` has shape `(options, rows, k)` and the prices
        `(options, rows)`, a row per step of the grid (`midpoints`: each row's
        `t + h/2`), or with `grouped` per group of steps of one bin and one
        length, priced for the whole group (`_step_groups`)."""
        ts, hs = self.steps(num_steps)
        bins = _bin_index(self.times, ts + hs / 2)
        counts = np.ones(num_steps)
        if grouped:
            first, counts = _step_groups(bins, hs)
            ts, hs, bins = ts[first], hs[first], bins[first]
        k = self.num_levels
        shape = self.rate_shape(cost)[bins]  # (rows, k)
        shape[:, 0] = 0.0  # the base is set per option
        floor = self._floor_rate(num_steps, min_probability)
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
        weighted, own, pairs = self._pricing(bins)
        evaluations, variance, bias = _price_steps(probs, hs, weighted, own, pairs)
        spent = evaluations @ self.level_costs(cost)
        return rates, spent * counts, bias * counts, variance * counts, ts + hs / 2

    @staticmethod
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

    def _hybrid_candidates(self, num_steps, cost, min_probability):
        """`[(Rates, Prediction)]`: `hybrid`'s per-step choices, one per pair of
        multipliers, each a `Rates` table with one bin per step of the grid."""
        rates, spent, bias, variance, mids = self._hybrid_options(
            num_steps, cost, min_probability
        )
        choices = self._lagrangian_choices(
            spent, bias, variance, num_steps, self.level_costs(cost)[-1]
        )
        # Rates read a step's bin at its midpoint: one bin per step, edges
        # increasing (reversed for a reverse-time grid).
        ts, hs = self.steps(num_steps)
        edges = np.sort(np.append(ts, ts[-1] + hs[-1]))
        order = np.argsort(mids)
        steps = np.arange(num_steps)
        out = []
        for choice in choices:
            table = rates[choice, steps][order]
            sched = Rates(
                jnp.asarray(table, jnp.float32), jnp.asarray(edges, jnp.float32)
            )
            out.append((sched, self.predict(sched, num_steps, cost)))
        return out

    def _stitch_prices(self, num_steps, cost):
        """`(labels, cost, bias)` of `stitches(num_steps)` (the same schedules, in
        the same order), priced as `predict` prices them, vectorised: a stitch
        adds no variance, only the bias of the corrections it drops."""
        k = self.num_levels
        ts, hs = self.steps(num_steps)
        bins = _bin_index(self.times, ts + hs / 2)
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
        weighted, own, pairs = self._pricing(bins)
        evaluations, _, bias = _price_steps(probs, hs, weighted, own, pairs)
        spent = (evaluations @ self.level_costs(cost)).sum(-1)
        return labels, spent, bias.sum(-1)

    def _hybrid_frontier(self, num_steps, cost, min_probability):
        """`(cost, error)` of `hybrid`'s choices made per group of steps (one bin,
        one length) rather than per step, as `_price` prices them: for the
        verdict."""
        _, spent, bias, variance, _ = self._hybrid_options(
            num_steps, cost, min_probability, grouped=True
        )
        choices = self._lagrangian_choices(
            spent, bias, variance, num_steps, self.level_costs(cost)[-1], size=17
        )
        rows = np.arange(spent.shape[1])
        total = spent[choices, rows].sum(-1)
        error = np.sqrt(
            bias[choices, rows].sum(-1) ** 2 + variance[choices, rows].sum(-1)
        )
        return total, error

    def min_cost(
        self,
        num_steps: int | None = None,
        min_probability: float = 0.0,
        cost: str = "costs",
    ):
        """Expected cost (in the units `cost` names) of the cheapest schedule
        `schedule` can return: level 1 at every step, every other level with
        probability `min_probability`."""
        num_steps = self.num_steps if num_steps is None else num_steps
        floor_rate = self._floor_rate(num_steps, min_probability)
        return self.predict(self._scaled(0.0, floor_rate, cost), num_steps, cost).cost

    def _floor_rate(self, num_steps: int, min_probability: float) -> float:
        # p = λ |h| with |h| = |t1 − t0| / num_steps (on a non-uniform `grid`, the
        # probability at a step of the average length).
        return min_probability * num_steps / abs(self.t1 - self.t0)

    def _scaled(
        self, scale: float, floor_rate: float = 0.0, cost: str = "costs"
    ) -> Rates:
        rates = self.rate_shape(cost)
        rates[:, 1:] = np.maximum(rates[:, 1:] * scale, floor_rate)
        return Rates(
            jnp.asarray(rates, jnp.float32), jnp.asarray(self.times, jnp.float32)
        )

    def predict(
        self,
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
        num_steps = self.num_steps if num_steps is None else num_steps
        if (
            isinstance(schedule, AbstractSchedule)
            and schedule.num_levels != self.num_levels
        ):
            raise ValueError(
                f"Calibration.predict: `schedule` has {schedule.num_levels} levels but this "
                f"calibration has {self.num_levels}; expected one probability or rate "
                "per level (use `restrict` for a sub-ladder)."
            )
        ts, hs = self.steps(num_steps)
        probs = np.asarray(
            probabilities_on_grid(schedule, jnp.asarray(ts), jnp.asarray(hs))
        )
        bins = _bin_index(self.times, ts + hs / 2)
        weighted, own, pairs = self._pricing(bins)
        evaluations, mse = _price(
            probs.astype(np.float64), hs, weighted, own=own, pairs=pairs
        )
        return Prediction(
            evaluations=evaluations,
            cost=float(np.dot(evaluations, self.level_costs(cost))),
            error=float(np.sqrt(mse)) if np.isfinite(mse) else math.inf,
        )

    def em_error_at(self, num_steps) -> np.ndarray:
        """The RMS error of Euler–Maruyama with the top level at `num_steps` steps
        (array-like), from `em_error` and `em_order`."""
        if self.em_error is None or self.em_order is None:
            raise ValueError(
                "Calibration: this calibration has no `em_error` (Euler–Maruyama's "
                "own error, measured by `calibrate` with `pilot_keys > 0`; "
                "`calibrate_sampler` and stored calibrations from before it was "
                "measured have none); run `mlem_jax.calibrate` with `pilot_keys > 0`."
            )
        n = np.asarray(num_steps, np.float64)
        return self.em_error * (self.num_steps / n) ** self.em_order

    def _frontier(self, num_steps, cost, min_probability):
        """`(cost, error, evaluations)` over a grid of rate scales: the expected
        cost, added RMS error and per-level evaluations of this calibration's
        schedule at `num_steps` steps, as `predict(schedule(...))` prices it
        (`_price`), vectorised over the scale, in float64."""
        ts, hs = self.steps(num_steps)
        bins = _bin_index(self.times, ts + hs / 2)
        rate_shape = self.rate_shape(cost)  # (bins, k)
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
        floor = self._floor_rate(num_steps, min_probability)
        rates = np.maximum(shape[None] * scales[:, None, None], floor)
        rates[..., 0] = np.inf
        probs = np.minimum(1.0, rates * h[None])
        weighted, own, pairs = self._pricing(bins)
        evaluations, mse = _price(probs, hs, weighted, counts, own=own, pairs=pairs)
        return evaluations @ self.level_costs(cost), np.sqrt(mse), evaluations

    def verdict(
        self,
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
        units = [u for u in ("flops", "seconds") if getattr(self, u) is not None]
        if cost is None:
            cost = "seconds" if "seconds" in units else (units[0] if units else "costs")
        self.level_costs(cost)
        units = list(dict.fromkeys([cost] + units))
        if not 0.0 <= min_probability < 1.0:
            raise ValueError(
                "Calibration.verdict: `min_probability` must lie in [0, 1); got "
                f"{min_probability}."
            )
        n0 = self.num_steps
        em_e0 = float(self.em_error_at(n0))  # raises if not measured
        em_order = float(self.em_order or 1.0)
        if errors is None:
            errors = np.geomspace(
                float(self.em_error_at(16 * n0)), float(self.em_error_at(n0 / 4)), 25
            ).tolist()
        assert errors is not None
        error = em_e0 if error is None else float(error)
        if not error > 0:
            raise ValueError(f"Calibration.verdict: `error` must be > 0; got {error}.")
        judged = np.asarray(errors, np.float64)
        if judged.ndim != 1 or judged.size == 0 or not np.all(judged > 0):
            raise ValueError(
                "Calibration.verdict: `errors` must be a non-empty list of positive "
                f"numbers; got {list(errors)}."
            )
        judged = np.unique(np.append(judged, error))
        if steps is None:
            top = int(np.ceil(np.log2(64 * n0) * 2))
            steps = sorted({int(round(2 ** (j / 2))) for j in range(4, top + 1)})
        counts = [int(n) for n in steps]
        if not counts or min(counts) < 1:
            raise ValueError(
                "Calibration.verdict: `steps` must be positive step counts; got "
                f"{counts}."
            )
        if self.pair_variances is None:
            raise ValueError(
                "Calibration.verdict: this calibration has no `pair_variances`; run "
                "`calibrate` again."
            )
        k = self.num_levels
        ladders = [(idx, self.restrict(idx)) for idx in _sub_ladders(k)[1:]]
        n_em = n0 * (em_e0 / judged) ** (1 / em_order)
        out: dict[str, dict] = {}
        for unit in units:
            c_top = self.level_costs(unit)[-1]
            best_cost = np.full(judged.shape, np.inf)
            best_at: list = [None] * judged.size
            for n in counts:
                e_n = float(self.em_error_at(n))
                budget = judged**2 - e_n**2  # δ² left for the telescope
                if not np.any(budget > 0):
                    continue
                for idx, sub in ladders:
                    spent, added, evaluations = sub._frontier(n, unit, min_probability)
                    for j in np.flatnonzero(budget > 0):
                        ok = np.flatnonzero(added <= np.sqrt(budget[j]))
                        if ok.size == 0:
                            continue
                        i = ok[0]
                        value = spent[i]
                        if i > 0 and added[i] > 0:
                            # log–log interpolation to the exact δ
                            a0, a1 = math.log(added[i - 1]), math.log(added[i])
                            w = (math.log(math.sqrt(budget[j])) - a0) / (a1 - a0)
                            value = math.exp(
                                math.log(spent[i - 1])
                                + w * (math.log(spent[i]) - math.log(spent[i - 1]))
                            )
                        elif i > 0:
                            # the last scale fires every level at every step (no
                            # added error): near p = 1 both the added mean square
                            # and the cost are linear in p
                            w = 1 - budget[j] / added[i - 1] ** 2
                            value = spent[i - 1] + w * (spent[i] - spent[i - 1])
                        if value < best_cost[j]:
                            best_cost[j] = value
                            full = np.zeros(k)
                            full[list(idx)] = evaluations[i]
                            best_at[j] = (n, idx, full)
            # The alternatives a user has without randomisation: the top level
            # alone (Euler–Maruyama) and every stitch, whose error at n steps is
            # sqrt(e(n)² + bias²) with the bias priced at the pilot's steps.
            labels, stitch_cost, stitch_bias = self._stitch_prices(n0, unit)
            with np.errstate(divide="ignore", invalid="ignore"):
                left = judged[:, None] ** 2 - stitch_bias[None, :] ** 2
                steps_needed = n0 * (em_e0 / np.sqrt(left)) ** (1 / em_order)
                alt = np.where(left > 0, steps_needed * stitch_cost / n0, np.inf)
            pick = np.argmin(alt, axis=1)
            alt_cost = alt[np.arange(judged.size), pick]
            # The hybrid (per bin: stitch, telescope or both) at every step count.
            hybrid_cost = np.full(judged.shape, np.inf)
            for n in counts:
                budget = judged**2 - float(self.em_error_at(n)) ** 2
                if not np.any(budget > 0):
                    continue
                spent, added = self._hybrid_frontier(n, unit, min_probability)
                for j in np.flatnonzero(budget > 0):
                    ok = added <= np.sqrt(budget[j])
                    if ok.any():
                        hybrid_cost[j] = min(hybrid_cost[j], spent[ok].min())
            multilevel = np.minimum(best_cost, hybrid_cost)
            out[unit] = dict(
                em_cost=n_em * c_top,
                mlem_cost=best_cost,
                speedup=n_em * c_top / best_cost,
                at=best_at,
                alt_cost=alt_cost,
                alternative=tuple(labels[i] for i in pick),
                hybrid_cost=hybrid_cost,
                gain=alt_cost / multilevel,
            )
        return Verdict(
            cost=cost,
            errors=judged,
            em_steps=n_em,
            speedups={u: out[u]["speedup"] for u in units},
            mlem_costs={u: out[u]["mlem_cost"] for u in units},
            em_costs={u: out[u]["em_cost"] for u in units},
            mlem_steps=tuple(None if a is None else a[0] for a in out[cost]["at"]),
            mlem_levels=tuple(
                None if a is None else tuple(i + 1 for i in a[1])
                for a in out[cost]["at"]
            ),
            evaluations=tuple(None if a is None else a[2] for a in out[cost]["at"]),
            level_costs=self.level_costs(cost),
            min_probability=min_probability,
            quoted=int(np.flatnonzero(judged == error)[0]),
            alternative_costs={u: out[u]["alt_cost"] for u in units},
            alternatives=out[cost]["alternative"],
            hybrid_costs={u: out[u]["hybrid_cost"] for u in units},
            gains={u: out[u]["gain"] for u in units},
        )

    def table(self) -> str:
        """A per-level diagnostic table, in the spirit of Giles's `mlmc_test`."""
        k = self.num_levels
        shape = self.rate_shape()
        lines = [
            f"ML-EM calibration: {k} levels, t from {self.t0:g} to {self.t1:g}, "
            f"{self.num_steps} pilot steps, {len(self.times) - 1} time bins",
            f"{'level':>5} {'cost':>10} {'FLOPs':>10} {'ms/eval':>9} "
            f"{'drift err':>10} {'mean V_l':>10} {'rate shape':>11}",
        ]
        for l in range(k):
            flops = f"{self.flops[l]:10.3g}" if self.flops else f"{'-':>10}"
            ms = f"{1e3 * self.seconds[l]:9.3f}" if self.seconds else f"{'-':>9}"
            lines.append(
                f"{l + 1:>5} {self.costs[l]:10.3g} {flops} {ms} "
                f"{self.drift_errors[l]:10.4g} {self.variances[:, l].mean():10.4g} "
                f"{shape[:, l].mean():11.4g}"
            )
        lines.append(
            "sensitivity a(t) per bin: "
            + " ".join(f"{a:.3g}" for a in self.sensitivity)
        )
        lines.append("V_l per time bin (rows: levels; columns: bins, in time order):")
        for l in range(k):
            row = " ".join(f"{v:9.3g}" for v in self.variances[:, l])
            lines.append(f"{l + 1:>5} {row}")
        err = "" if math.isnan(self.gamma_stderr) else f" ± {self.gamma_stderr:.2f}"
        lines.append(
            f"fitted gamma = {self.gamma:.2f}{err}; amplification per level = "
            + " ".join(f"{a:.3g}" for a in self.amplification)
        )
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_json(self) -> str:
        """This calibration as JSON text: every field by name, arrays as nested
        lists, `None` as `null`. `Calibration.from_json` reads it back equal.

        Costs are stored as they are; a ladder's stored calibration keeps costs per
        image (`mlem_jax.pretrained.save_calibration`), so that it applies at any
        batch size (rates depend only on cost ratios).
        """
        fields = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, tuple):
                value = list(value)
            fields[field.name] = value
        return json.dumps(fields, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        """The `Calibration` of a JSON text written by `to_json` (`pair_variances`,
        `grid`, `em_error` and `em_order` may be missing: older calibrations have
        none of them).

        **Raises:** `ValueError` naming what is wrong, for text that is not JSON or
        lacks a field or holds one of the wrong type.
        """
        try:
            fields = json.loads(text)
            if not isinstance(fields, dict):
                raise TypeError(f"expected a JSON object, got {type(fields).__name__}")
            for name in ("times", "variances", "sensitivity", "drift_errors"):
                fields[name] = np.asarray(fields[name], np.float64)
            for name in ("pair_variances", "grid"):
                if fields.get(name) is not None:
                    fields[name] = np.asarray(fields[name], np.float64)
            for name in ("costs", "warnings"):
                fields[name] = tuple(fields[name])
            for name in ("flops", "seconds"):
                if fields.get(name) is not None:
                    fields[name] = tuple(fields[name])
            _check_finite_fields(fields)
            return cls(**fields)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(
                f"not a valid calibration ({type(e).__name__}: {e})"
            ) from None


def _check_finite_fields(fields: dict) -> None:
    """Refuse a stored calibration with non-finite or negative measurements: a NaN
    variance would otherwise price every schedule at NaN and `verdict` would read
    it as a confident "worth it"."""
    names = ("times", "variances", "sensitivity", "drift_errors", "pair_variances")
    for name in (*names, "grid", "amplification", "costs"):
        value = fields.get(name)
        if value is None:
            continue
        array = np.asarray(value, np.float64)
        if not np.all(np.isfinite(array)):
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise ValueError(
                f"`{name}` holds {bad} non-finite value(s) (NaN or inf); a "
                "calibration must be finite"
            )
        if name in names[1:] and np.any(array < 0):
            raise ValueError(f"`{name}` holds negative values; they must be >= 0")
    if any(c <= 0 for c in fields.get("costs", ())):
        raise ValueError(f"`costs` must be positive; got {fields['costs']}")


def calibrate(
    levels: Levels,
    diffusion,
    y0,
    *,
    t0: float,
    t1: float,
    num_steps: int,
    key: PRNGKeyArray,
    args=None,
    num_bins: int = 8,
    reference=None,
    pilot_keys: int = 8,
    measure_costs: bool = True,
) -> Calibration:
    """Measure a ladder along its trajectories and fit ML-EM's optimal rates.

    Pilot solves: one Euler–Maruyama solve with the top level, saving every state,
    on which every level (and `reference`) is evaluated; then, for each level
    `l ≥ 2`, `pilot_keys` ML-EM solves on the same Brownian path randomising level
    `l` alone (probability 1/2 at every step, every other level firing), to measure
    how the dynamics amplify that level's corrections. These cost about
    `(k − 1) · pilot_keys` Euler–Maruyama solves with every level; probability 1/2
    keeps the estimate's variance low (a pilot at small probabilities is dominated
    by a few rare corrections, and 8–32 of them scattered by 10× on the digits
    ladder). Keys: with `path_key, level_key = jax.random.split(key)`, the pilots'
    Brownian path is `path_key`'s, the sensitivity's random probes come from
    `jax.random.fold_in(path_key, 7)` and the ML-EM pilots' level keys from
    `jax.random.split(level_key, pilot_keys)`.

    **Arguments:**

    - `levels`, `diffusion`, `y0`, `t0`, `t1`, `num_steps`, `key`, `args`: as in
        `mlem_solve`; `y0` should be a representative batch (leading axis), its
        first axis is averaged over.
    - `num_bins`: number of equal time bins for `V_l(t)`.
    - `reference`: an optional more accurate drift `f(t, y, args)` for the drift
        errors and `γ` (default: errors against the top level).
    - `pilot_keys`: number of ML-EM pilot runs per level for the amplification (0
        skips them, taking amplification 1). With pilots, Euler–Maruyama's own
        error and order with the top level are measured too (`em_error`,
        `em_order`: solves at `num_steps`, `2·num_steps` and `16·num_steps` on the
        Brownian path of `jax.random.fold_in(key, 2)`, the finest standing for the
        exact solution; about `19·num_steps` evaluations of the top level), which
        `Calibration.verdict` needs.
    - `measure_costs`: measure FLOPs and wall-clock of each level on `y0`.

    **Returns:** a `Calibration`; `print` it for the diagnostic table, call
    `.schedule(target_error=...)` or `.schedule(budget=...)` for rates, and
    `.predict(schedule)` for a schedule's expected cost and added error.
    """
    if not isinstance(levels, Levels):
        raise TypeError(
            f"calibrate: `levels` must be a mlem_jax.Levels; got {type(levels).__name__}."
        )
    if not (isinstance(num_bins, int) and num_bins >= 1):
        raise ValueError(
            f"calibrate: `num_bins` must be a positive int; got {num_bins!r}."
        )
    num_steps = check_num_steps("calibrate", num_steps)
    if num_steps < num_bins:
        raise ValueError(
            "calibrate: `num_steps` must be an int at least `num_bins` "
            f"({num_bins}); got {num_steps!r}."
        )
    if not (isinstance(pilot_keys, int) and pilot_keys >= 0):
        raise ValueError(
            f"calibrate: `pilot_keys` must be a non-negative int; got {pilot_keys!r}."
        )
    y0 = jnp.asarray(y0)
    y0c = concrete_or_none(y0)
    if (
        y0c is not None
        and np.issubdtype(y0c.dtype, np.inexact)
        and not np.all(np.isfinite(y0c))
    ):
        raise ValueError(
            f"calibrate: `y0` contains {np.sum(~np.isfinite(y0c))} NaN or infinite "
            "values; expected a finite batch of initial states."
        )
    if reference is not None:
        if not callable(reference):
            raise TypeError(
                "calibrate: `reference` must be a drift f(t, y, args) or None; got "
                f"{type(reference).__name__}."
            )
        out = eqx.filter_eval_shape(reference, jnp.asarray(t0, y0.dtype), y0, args)
        try:
            check_drift_output(out, y0, "`reference`")
        except (TypeError, ValueError) as e:
            raise type(e)(str(e).replace("mlem_jax:", "calibrate:", 1)) from None
    t0, t1 = float(t0), float(t1)
    k = levels.num_levels
    pilot_key, level_key = jax.random.split(key)
    states, info = em_solve(
        levels.top,
        diffusion,
        y0,
        t0=t0,
        t1=t1,
        num_steps=num_steps,
        key=pilot_key,
        args=args,
        saveat=diffrax.SaveAt(t0=True, steps=True),
    )
    ts, h = _grid(t0, t1, num_steps)
    fns = levels.fns + ((reference,) if reference is not None else ())
    per_step = trajectory_statistics(
        fns, jnp.asarray(ts, y0.dtype), states[:-1], args, k
    )
    if not np.all(np.isfinite(np.asarray(states))):
        raise ValueError(
            "calibrate: the pilot Euler-Maruyama solve with the top level produced NaN "
            "or infinite states from a finite `y0`: the top level's drift or the "
            "diffusion returns NaN/inf on the pilot trajectory (or the solve blows up "
            "at `num_steps` steps)."
        )
    lo, hi = min(t0, t1), max(t0, t1)
    edges = np.linspace(lo, hi, num_bins + 1)
    calibration = assemble_calibration(
        "calibrate",
        levels,
        per_step,
        _sensitivity(levels.top, diffusion, y0, t0, t1, num_steps, pilot_key, args),
        edges,
        ts + h / 2,
        t0=t0,
        t1=t1,
        num_steps=num_steps,
        grid=None,
        top_is_reference=reference is None,
        costs_at=(jnp.asarray((t0 + t1) / 2, y0.dtype), y0, args)
        if measure_costs
        else None,
    )
    if pilot_keys > 0 and k > 1:
        mean_added = _em_added_error(
            calibration, levels, diffusion, y0, states[-1], pilot_key, args
        )
        calibration = with_amplification(calibration, mean_added, level_key, pilot_keys)
    if pilot_keys > 0 and diffusion is not None:
        em_error, em_order = _em_convergence(
            levels.top,
            diffusion,
            y0,
            t0,
            t1,
            num_steps,
            jax.random.fold_in(key, 2),
            args,
        )
        calibration = dataclasses.replace(
            calibration, em_error=em_error, em_order=em_order
        )
    return calibration


def _em_convergence(top, diffusion, y0, t0, t1, num_steps, key, args):
    """`(em_error, em_order)`: Euler–Maruyama with `top` at `num_steps`,
    `2·num_steps` and `16·num_steps` steps on one Brownian path (drawn at the finest
    and coarsened). The 16×-finer solve stands for the exact solution: the error at
    `n` steps is the RMS distance to it, `e(n)`, and the strong order
    `q = log2(e(num_steps) / e(2·num_steps))` (clipped to [1/4, 2]).

    Not Richardson extrapolation from consecutive distances: a stochastic solve's
    error at `2n` steps is only partly aligned with its error at `n` (refining the
    path adds independent terms), which biases `‖y_n − y_2n‖ / (1 − 2^−q)` upward
    (by 25% on a test SDE). The finer solve's own error biases `e(n)` by at most
    `e(16n) / e(n)`, about 1/16 for a strong order-1 method."""
    fine = 16 * num_steps
    dw = brownian_increments(
        key, y0.shape, t0=t0, t1=t1, num_steps=fine, dtype=y0.dtype
    )

    @eqx.filter_jit
    def solve(top, y0, dw):
        return em_solve(
            top,
            diffusion,
            y0,
            t0=t0,
            t1=t1,
            num_steps=dw.shape[0],
            key=key,
            args=args,
            brownian=dw,
        )[0]

    y1, y2, y16 = (
        np.asarray(solve(top, y0, coarsen_increments(dw, fine // n)), np.float64)
        for n in (num_steps, 2 * num_steps, fine)
    )

    def rms(a, b):
        d = (a - b).reshape(a.shape[0], -1)
        return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))

    e1, e2 = rms(y1, y16), rms(y2, y16)
    order = 1.0 if not (e1 > 0 and e2 > 0) else math.log2(e1 / e2)
    return e1, min(max(order, 0.25), 2.0)


def level_statistics(values, k: int):
    """From the `k` level values at one state (and optionally a reference value
    after them), each of shape `(batch, ...)`: `(increments, errors, pairs)`, the
    batch means of `‖f^l − f^{l−1}‖²` (shape `(k,)`), of `‖f^l − f_ref‖²` (`f_ref`
    the last value) and of `‖f^j − f^i‖²` for every pair with `f^0 = 0` (shape
    `(k + 1, k + 1)`)."""

    def sq(v):
        return jnp.mean(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1))

    zero = jnp.zeros_like(values[0])
    with_zero = [zero] + list(values[:k])
    increments = jnp.stack([sq(with_zero[l + 1] - with_zero[l]) for l in range(k)])
    ref = values[-1]
    errors = jnp.stack([sq(v - ref) for v in values[:k]])
    pairs = jnp.stack([jnp.stack([sq(a - b) for b in with_zero]) for a in with_zero])
    return increments, errors, pairs


@eqx.filter_jit
def trajectory_statistics(fns, ts, ys, args, k: int, scales=None):
    """The `level_statistics` at every visited state, stacked along a leading time
    axis: `fns` the `k` level functions (optionally a reference after them), each
    evaluated at `(ts[n], ys[n], args)`, cast to the state's dtype and, with
    `scales`, multiplied by `scales[n]`. What `calibrate`, `calibrate_sampler` and
    `diffusion.drift_errors` measure along a trajectory. The functions (and their
    weights) are arguments of the compiled program, never closed-over constants:
    XLA constant-folds captured network weights very slowly."""

    def measure(carry, x):
        t, y, scale = x
        values = [jnp.asarray(f(t, y, args)).astype(y.dtype) for f in fns]
        if scale is not None:
            values = [scale * v for v in values]
        return carry, level_statistics(values, k)

    return jax.lax.scan(measure, None, (ts, ys, scales))[1]


class _RefineAt(eqx.Module):
    """A refinement's own part as a level function, at a fixed coarse value."""

    refine: Callable
    coarse: Any

    def __call__(self, t, y, args):
        return self.refine(t, y, args, self.coarse)


def assemble_calibration(
    name: str,
    levels: Levels,
    per_step,
    per_step_sensitivity,
    edges: np.ndarray,
    midpoints: np.ndarray,
    *,
    t0: float,
    t1: float,
    num_steps: int,
    grid: np.ndarray | None,
    top_is_reference: bool,
    costs_at,
    what: str = "drift",
) -> Calibration:
    """A `Calibration` (amplification 1) from per-step measurements along a pilot
    trajectory: `per_step` the `level_statistics` of each step (stacked), the
    sensitivity of each step, the bin `edges` and the steps' `midpoints` (which bin
    each step falls in). `costs_at = (t, y, args)` measures FLOPs and wall-clock of
    each level there (`None`: not measured). `name` prefixes error messages, `what`
    names a level's function in them."""
    per_step_v, per_step_e, per_step_pairs = (
        np.asarray(x, np.float64) for x in per_step
    )
    bad = ~np.all(np.isfinite(per_step_v), axis=0)
    if np.any(bad):
        first = int(np.flatnonzero(bad)[0]) + 1
        raise ValueError(
            f"{name}: the {what} of level {first} returns NaN or inf on the pilot "
            "trajectory (from a finite `y0`)."
        )
    num_bins = len(edges) - 1
    bins = _bin_index(edges, np.asarray(midpoints, np.float64))

    def binned(values):
        return np.stack([values[bins == b].mean(axis=0) for b in range(num_bins)])

    variances = binned(per_step_v)
    pair_variances = binned(per_step_pairs)
    sensitivity = binned(np.asarray(per_step_sensitivity, np.float64))
    drift_errors = np.sqrt(per_step_e.mean(axis=0))

    flops = seconds = None
    if costs_at is not None:
        t_mid, y, args = costs_at
        call = lambda f, t, y, a: f(t, y, a)
        # What the step pays for each level: a Refinement's own part, given the
        # value of the level below (which is paid for as its own level).
        own = tuple(
            _RefineAt(f.refine, f.coarse(t_mid, y, args))
            if isinstance(f, Refinement) and f.coarse is not None
            else f
            for f in levels.fns
        )
        flops = tuple(count_flops(call, f, t_mid, y, args) for f in own)
        seconds = tuple(time_in_scan(f, t_mid, y, args) for f in own)
    gamma_costs = flops if flops is not None else levels.costs
    gamma, gamma_stderr = _fit_gamma(gamma_costs, drift_errors, top_is_reference)
    warnings = _warnings(levels, variances, gamma, gamma_stderr)
    for w in warnings:
        if "do not differ" in w:
            _warn(f"{name}: {w}")
    return Calibration(
        times=edges,
        variances=variances,
        sensitivity=sensitivity,
        costs=levels.costs,
        flops=flops,
        seconds=seconds,
        drift_errors=drift_errors,
        gamma=gamma,
        gamma_stderr=gamma_stderr,
        amplification=np.ones(levels.num_levels),
        t0=t0,
        t1=t1,
        num_steps=num_steps,
        warnings=warnings,
        pair_variances=pair_variances,
        grid=grid,
    )


def perturbation_growth(final, num_steps: int, y0, key, probes: int = 4):
    """Per step `n`, `E‖J_n v‖²/d`: `J_n` the Jacobian of `final(zs)` (the final
    state of a pilot solve in which `zs[n]`, shaped like `y0`, is added at step `n`)
    with respect to `zs[n]` at `zs = 0`, `d` the state size per sample. One reverse
    pass gives `J_nᵀ v` for every step at once; Hutchinson's estimator with `probes`
    random `v` gives the norm. Traceable (a JAX array of shape `(num_steps,)`)."""
    dtype = y0.dtype
    _, vjp = jax.vjp(final, jnp.zeros((num_steps, *y0.shape), dtype))

    def one(vk):
        # Rademacher probes: exact for Jacobians that are multiples of I.
        v = jax.random.rademacher(vk, y0.shape, dtype)
        (g,) = vjp(v)
        return jnp.mean(jnp.sum(g.reshape(num_steps, y0.shape[0], -1) ** 2, -1), -1)

    d = int(np.prod(y0.shape[1:])) if y0.ndim > 1 else 1
    keys = jax.random.split(jax.random.fold_in(key, 7), probes)
    return jnp.mean(jax.lax.map(one, keys), axis=0) / d


def _sensitivity(top, diffusion, y0, t0, t1, num_steps, key, args, probes: int = 4):
    """Per step `n`, how much a perturbation added to the state at the end of step
    `n` of the pilot Euler–Maruyama solve grows by its end (`perturbation_growth`).

    The pilot is `em_solve` itself on `key`'s Brownian path, the perturbation `z_n`
    entering step `n` as the extra drift `z_n / h` (so the step adds `z_n`)."""
    dtype = y0.dtype
    h = (t1 - t0) / num_steps
    dw = None
    if diffusion is not None:
        dw = brownian_increments(
            key, y0.shape, t0=t0, t1=t1, num_steps=num_steps, dtype=dtype
        )
        diffusion_of_zs = lambda t, y, zs: diffusion(t, y, args)
    else:
        diffusion_of_zs = None

    def perturbed(t, y, zs):
        n = jnp.rint((t - t0) / h).astype(jnp.int32)  # t = t0 + n·h on the grid
        return jnp.asarray(top(t, y, args)).astype(dtype) + zs[n] / jnp.asarray(
            h, dtype
        )

    def final(zs):
        return em_solve(
            perturbed,
            diffusion_of_zs,
            y0,
            t0=t0,
            t1=t1,
            num_steps=num_steps,
            key=key,
            args=zs,
            brownian=dw,
        )[0]

    growth = jax.jit(lambda k: perturbation_growth(final, num_steps, y0, k, probes))
    return np.asarray(growth(key), np.float64)


def _em_added_error(cal, levels, diffusion, y0, y_em, pilot_key, args):
    """`mean_added(probs, keys)` for `with_amplification`: the mean over `keys` of
    the mean-square distance of ML-EM at `FixedProbabilities(probs)` to `y_em`, the
    pilot Euler–Maruyama solve's final state (top level, `pilot_key`'s path), which
    the ML-EM pilots rerun on that same path."""
    kw = dict(t0=cal.t0, t1=cal.t1, num_steps=cal.num_steps, args=args)
    dw = None
    if diffusion is not None:
        from ._brownian import brownian_increments

        dw = brownian_increments(
            pilot_key,
            y0.shape,
            t0=cal.t0,
            t1=cal.t1,
            num_steps=cal.num_steps,
            dtype=y0.dtype,
        )

    def run(operands, probs, key):
        levels, y0, dw = operands
        schedule = FixedProbabilities(probs)
        y, _ = mlem_solve(levels, schedule, diffusion, y0, key=key, brownian=dw, **kw)
        return y

    return mean_added_error(run, (levels, y0, dw), y_em)


def mean_added_error(run, operands, reference):
    """`mean_added(probs, keys)` for `with_amplification`: the mean over `keys` of
    the batch's mean-square distance of `run(operands, probs, key)` (a pilot
    multilevel solve's final state at `FixedProbabilities(probs)`) to `reference`.
    Compiled once: the probabilities are traced, and `operands` (the levels, their
    weights) are arguments of the compiled program, not constants folded into it."""

    def mean_added(probs, keys):
        return _mean_added(run, operands, reference, probs, keys)

    return mean_added


@eqx.filter_jit
def _mean_added(run, operands, reference, probs, keys):
    def added(key):
        d = (run(operands, probs, key) - reference).reshape(reference.shape[0], -1)
        return jnp.mean(jnp.sum(d**2, axis=1))

    return jnp.mean(jax.lax.map(added, keys))


def with_amplification(cal: Calibration, mean_added, level_key, n: int) -> Calibration:
    """`cal` with `A_l` measured: for each `l ≥ 2`, `mean_added(probs, keys)` (the
    mean over `n` level keys of the added mean-square error of pilot multilevel
    solves at `FixedProbabilities(probs)`, randomising level `l` alone with
    probability 1/2) over its prediction from the isotropic sensitivity (entry 0 is
    1; a level whose prediction is 0 or whose measurement is not positive keeps 1)."""
    k = cal.num_levels
    amplification = np.ones(k)
    keys = jax.random.split(level_key, n)
    for l in range(1, k):
        probs = np.ones(k, np.float32)
        probs[l] = 0.5
        one_level = dataclasses.replace(
            cal, amplification=np.eye(k)[l], warnings=()
        )  # A_l = 1 for level l, 0 for the others: the prediction for level l alone
        predicted = one_level.predict(FixedProbabilities(probs)).error ** 2
        measured = float(mean_added(jnp.asarray(probs), keys))
        if predicted > 0 and np.isfinite(predicted) and measured > 0:
            amplification[l] = measured / predicted
    return dataclasses.replace(cal, amplification=amplification)


def _fit_gamma(costs, errors, top_is_reference):
    costs = np.asarray(costs, np.float64)
    errors = np.asarray(errors, np.float64)
    if top_is_reference:
        costs, errors = costs[:-1], errors[:-1]
    keep = errors > 0
    fit = fit_cost_exponent(errors[keep], costs[keep])
    return fit.exponent, fit.stderr


def _warnings(levels, variances, gamma, gamma_stderr):
    out = []
    if not math.isnan(gamma):
        if gamma <= 2:
            out.append(
                f"gamma = {gamma:.2f} <= 2: outside the HTMC regime, expect at most a "
                "constant-factor gain over Euler-Maruyama."
            )
        elif not math.isnan(gamma_stderr) and gamma - 2 * gamma_stderr <= 2:
            out.append(
                f"gamma = {gamma:.2f} ± {gamma_stderr:.2f} is not clearly above 2."
            )
    if math.isnan(gamma) and len(levels.costs) >= 3:
        out.append(
            "gamma could not be fitted: fewer than two levels differ from the "
            "reference in drift."
        )
    mean_v = variances.mean(axis=0)
    same = [l for l in range(1, len(mean_v)) if not mean_v[l] > 0]
    if same:
        pairs = ", ".join(f"{l} and {l + 1}" for l in same)
        out.append(
            f"levels {pairs} do not differ on the pilot trajectory (V = 0): their "
            "corrections are zero, so no rate can be fitted for them and "
            "`schedule(...)` cannot meet a target by scaling their rates; drop the "
            "duplicate levels."
        )
    costs = np.asarray(levels.costs)
    if np.any(np.diff(costs) <= 0):
        out.append("costs do not increase along the ladder.")
    mean_v = variances.mean(axis=0)
    for l in range(1, len(mean_v) - 1):
        if mean_v[l + 1] > mean_v[l]:
            out.append(
                f"V_{l + 2} > V_{l + 1}: level {l + 2} does not refine level {l + 1}; "
                "its corrections cost more than they save."
            )
    return tuple(out)


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, UserWarning, stacklevel=3)


def _sub_ladders(k: int) -> list[tuple[int, ...]]:
    """Every sub-ladder of `k` levels that keeps the top one (0-based indices,
    increasing), the top level alone first."""
    return [
        tuple(i for i in range(k - 1) if mask >> i & 1) + (k - 1,)
        for mask in range(2 ** (k - 1))
    ]


def _price(probs, hs, weighted, counts=None, own=None, pairs=None):
    """`(evaluations, mse)` of firing probabilities `probs` (`(..., n, k)`, any
    leading axes) on steps of lengths `hs`: expected evaluations per level
    (`expected_evaluations` summed over the steps) and the added mean square
    `bias² + variance` (see `_price_steps`); `counts` (`(n,)`): how many steps each
    row stands for (default one each)."""
    if counts is None:
        counts = np.ones(np.shape(hs))
    evaluations, variance, bias = _price_steps(probs, hs, weighted, own, pairs)
    evaluations = (evaluations * counts[:, None]).sum(axis=-2)
    variance = np.sum(counts * variance, axis=-1)
    bias = np.sum(counts * bias, axis=-1)
    return evaluations, bias**2 + variance


def _price_steps(probs, hs, weighted, own=None, pairs=None):
    """Per step: `(evaluations, variance, bias)` of firing probabilities `probs`
    (`(..., n, k)`) on steps of signed lengths `hs` (`(n,)`).

    - `evaluations` (`(..., n, k)`): `expected_evaluations`, which knows the step's
        base level (the lowest with `p > 0`; the levels below it are out).
    - `variance` (`(..., n)`): `h² Σ_l (1/p_l − 1) W_l` over the randomised levels
        at or above the base, with `W_l = weighted[:, l]` (`A_l a(t) V_l(t)`) and,
        for the base `b`, whose increment is `f^b` itself, `own[:, b]`
        (`A_b a(t) E‖f^b‖²`; `own[:, 0] = weighted[:, 0]`).
    - `bias` (`(..., n)`): what the dropped corrections (`p_l = 0` above the base)
        move the final state by, `|h| sqrt(Ā a(t) E‖Σ_dropped Δ_l‖²)`, one
        contiguous block of dropped levels `i+1..j` at a time (`E‖f^j − f^i‖²`,
        summed as norms), with `Ā` the block's amplification: its levels' `A_l`
        weighted by their `a(t) V_l(t)` (the pilots' correction of the isotropic
        sensitivity for the directions of those levels' corrections, which a
        dropped correction points in as a randomised one does). A dropped correction
        is the same at every step of a solve, not an independent draw, so the
        bias of the steps adds up as norms (`Σ_n`), not as variances: the total
        mean square is `(Σ_n bias_n)² + Σ_n variance_n`.

    `pairs` (`(n, k + 1, k + 1)`, index 0 for `f^0 = 0`): `a(t) E‖f^j − f^i‖²` per
    step; without `own` and `pairs` (a calibration without `pair_variances`) a
    dropped correction with `W_l > 0`, or a randomised base above level 1, is
    priced `inf`. A level with `W_l = 0` adds nothing, even at `p = 0`.
    """
    probs = np.asarray(probs, np.float64)
    k = probs.shape[-1]
    active = probs > 0
    in_ladder = np.cumsum(active, axis=-1) > 0
    base = in_ladder & ~np.concatenate(
        [np.zeros_like(in_ladder[..., :1]), in_ladder[..., :-1]], axis=-1
    )
    dropped = in_ladder & ~active
    h2 = np.asarray(hs, np.float64) ** 2
    w = np.broadcast_to(weighted, probs.shape)
    if own is None:  # only level 1's own variance is known: V_1 = E‖f^1‖²
        own = np.where(np.arange(k) == 0, weighted, np.inf)
    w = np.where(base, np.broadcast_to(own, probs.shape), w)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(active & (w > 0), w * (1 / probs - 1), 0.0)
    variance = h2 * per.sum(axis=-1)
    bias = np.zeros(probs.shape[:-1])
    if np.any(dropped):
        if pairs is None:
            lost = np.any(dropped & (w > 0), axis=-1)
            bias = np.where(lost, np.inf, 0.0)
        else:
            for i in range(k):  # dropped block i..j (0-based levels), maximal
                starts = dropped[..., i] & (
                    ~dropped[..., i - 1] if i > 0 else np.ones_like(dropped[..., i])
                )
                inside = starts
                for j in range(i, k):
                    if j > i:
                        inside = inside & dropped[..., j]
                    ends = inside & (
                        ~dropped[..., j + 1] if j + 1 < k else np.ones_like(inside)
                    )
                    # The block's amplification: its increments' A_l, weighted
                    # by their (sensitivity-weighted) variances.
                    adjacent = sum(pairs[:, l, l + 1] for l in range(i, j + 1))
                    amplified = sum(weighted[:, l] for l in range(i, j + 1))
                    with np.errstate(divide="ignore", invalid="ignore"):
                        gain = np.where(adjacent > 0, amplified / adjacent, 1.0)
                    block = np.sqrt(np.maximum(pairs[:, i, j + 1] * gain, 0.0))
                    bias = bias + np.where(ends, block, 0.0)
            bias = np.sqrt(h2) * bias
    return expected_evaluations(probs), variance, bias


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


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _grid(t0: float, t1: float, num_steps: int):
    h = (t1 - t0) / num_steps
    return t0 + h * np.arange(num_steps), h


def _bin_index(edges: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)


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
