"""The `Calibration` record: what `calibrate` (or `calibrate_sampler`) measured along
a ladder's pilot trajectories, its JSON form, and the schedules and verdict it
implies (computed in `_optimise`, `_pricing` and `_verdict`)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence

import numpy as np

from . import _checks as checks, _optimise, _pricing, _verdict
from ._pricing import _grid

COSTS = ("costs", "flops", "seconds")
"""What `Calibration.schedule(cost=...)` can minimise."""


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
        `pair_variances[:, l, l + 1]`): what `restrict` and `choose_levels` need to
        price a ladder that skips levels.
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
        `pilot_keys`; `calibrate_sampler` measures the sampler's with the top
        network the same way), `None` if not measured. What `verdict` compares
        ML-EM with.
    - `refinements`: per level, whether it is a `mlem_jax.Refinement` (a guided
        level, which needs the level below it at every step it runs), or `None`
        for none: pricing then counts the level below a guided base level too.
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
    pair_variances: np.ndarray
    grid: np.ndarray | None = None
    em_error: float | None = None
    em_order: float | None = None
    refinements: tuple[bool, ...] | None = None

    def __post_init__(self):
        amplification = np.broadcast_to(
            np.asarray(self.amplification, np.float64), (self.num_levels,)
        ).copy()
        object.__setattr__(self, "amplification", amplification)
        if self.grid is not None:
            grid = np.asarray(self.grid, np.float64)
            if grid.shape != (self.num_steps + 1,):
                got = grid.shape
                what = f"shape (num_steps + 1,) = ({self.num_steps + 1},)"
                raise ValueError(f"Calibration: `grid` must have {what}; got {got}.")
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

    def _weighted_own(self) -> np.ndarray:
        """`A_l a(t) E‖f^l‖²` per bin, shape `(m, k)`: the weighted variance of level
        `l`'s increment when it is the step's base level (`f^l` itself)."""
        own = np.maximum(self.pair_variances[:, 0, 1:], 0.0)
        return own * self.sensitivity[:, None] * self.amplification[None, :]

    def _weighted_pairs(self) -> np.ndarray:
        """`a(t) E‖f^j − f^i‖²` per bin, shape `(m, k + 1, k + 1)`: what a dropped
        block of corrections moves the final state by (see `_price_steps`)."""
        return np.maximum(self.pair_variances, 0.0) * self.sensitivity[:, None, None]

    def _pricing_weights(self, bins):
        """`_price`'s `(weighted, own, pairs)` for steps in calibration bins `bins`."""
        return (
            self._weighted_variances()[bins],
            self._weighted_own()[bins],
            self._weighted_pairs()[bins],
        )

    def level_costs(self, cost: str = "costs") -> np.ndarray:
        """Cost of one evaluation of each level, shape `(k,)`, in the units `cost`
        names: `"costs"` (the `Levels` costs), `"flops"` (measured FLOPs) or
        `"seconds"` (measured wall-clock inside a compiled loop)."""
        checks.choice("Calibration", "cost", cost, COSTS)
        values = getattr(self, cost)
        if values is None:
            fix = (
                "measure them on your sampling batch: `calibration.with_seconds("
                "[mlem_jax.time_in_scan(f, t, y) for f in levels.fns])`"
                if cost == "seconds"
                else "calibrate with `measure_costs=True`"
            )
            why = f"has no {cost} (made with `measure_costs=False` or read from a file)"
            need = f"`cost={cost!r}` needs measured {cost}"
            raise ValueError(f"Calibration: {need}, and this calibration {why}; {fix}.")
        return np.asarray(values, np.float64)

    def with_seconds(self, seconds) -> Calibration:
        """This calibration with each level's wall-clock replaced by `seconds` (one
        positive number per level, e.g. `mlem_jax.time_in_scan` of each level on the
        batch and device you will sample with). Seconds-optimal rates then follow
        from `schedule(..., cost="seconds")`."""
        where, k = "Calibration.with_seconds", self.num_levels
        what = f"{k} positive finite numbers (one per level)"
        try:
            values = tuple(float(x) for x in seconds)
        except (TypeError, ValueError) as e:
            what = "a sequence of numbers, one per level"
            raise checks.fail(where, "seconds", what, seconds, TypeError) from e
        if len(values) != k or not all(math.isfinite(x) and x > 0 for x in values):
            raise checks.fail(where, "seconds", what, list(values))
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
            what = f"increasing level indices in [0, {k})"
            raise checks.fail("Calibration.restrict", "levels", what, list(levels))
        kept = [0] + [i + 1 for i in idx]  # index 0 is f^0 = 0
        pairs = self.pair_variances[:, kept][:, :, kept]
        variances = np.stack([pairs[:, n, n + 1] for n in range(len(idx))], axis=1)

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
            refinements=pick(self.refinements),
        )

    # What a calibration implies, each computed in the module of its concept (the
    # functions take the calibration first, as a method takes `self`): the price of
    # a schedule, the schedules chosen for a target or a budget, and the verdict.
    predict = _pricing.predict
    rate_shape = _optimise.rate_shape
    schedule = _optimise.schedule
    choose_levels = _optimise.choose_levels
    hybrid = _optimise.hybrid
    stitches = _optimise.stitches
    min_cost = _optimise.min_cost
    verdict = _verdict.verdict

    def em_error_at(self, num_steps) -> np.ndarray:
        """The RMS error of Euler–Maruyama (or, for a `calibrate_sampler`
        calibration, the sampler) with the top level at `num_steps` steps
        (array-like), from `em_error` and `em_order`."""
        if self.em_error is None or self.em_order is None:
            why = "no `em_error` (the top level's own error: run `calibrate` or"
            raise ValueError(
                f"Calibration: this calibration has {why} `calibrate_sampler` with "
                "pilot_keys > 0)."
            )
        n = np.asarray(num_steps, np.float64)
        return self.em_error * (self.num_steps / n) ** self.em_order

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
        """The `Calibration` of a JSON text written by `to_json`.

        **Raises:** `ValueError` naming what is wrong, for text that is not JSON or
        lacks a field or holds one of the wrong type.
        """
        try:
            fields = json.loads(text)
            if not isinstance(fields, dict):
                raise TypeError(f"expected a JSON object, got {type(fields).__name__}")
            arrays = ("times", "variances", "sensitivity", "drift_errors")
            for name in (*arrays, "pair_variances"):
                fields[name] = np.asarray(fields[name], np.float64)
            if fields.get("grid") is not None:
                fields["grid"] = np.asarray(fields["grid"], np.float64)
            for name in ("costs", "warnings"):
                fields[name] = tuple(fields[name])
            for name in ("flops", "seconds", "refinements"):
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
            raise ValueError(f"`{name}` holds {bad} non-finite value(s) (NaN or inf)")
        if name in names[1:] and np.any(array < 0):
            raise ValueError(f"`{name}` holds negative values; they must be >= 0")
    if any(c <= 0 for c in fields.get("costs", ())):
        raise ValueError(f"`costs` must be positive; got {fields['costs']}")
