"""Wall-clock of `Calibration.verdict` on the shipped calibrations, grouped pricing
against pricing every step.

`verdict` prices hundreds of frontiers (every sub-ladder, step count and cost unit);
each frontier prices a grid of rate scales on every step. Steps of one bin and one
length price alike, so `_frontier` prices each such group once, weighted by its size.
This script times `verdict(min_probability=0.02)` (what `mlem-jax sample` prints)
both ways in one run, interleaved, and checks that the two verdicts agree. The work
is NumPy in float64, not an XLA program: there are no FLOPs to count.

    python benchmarks/verdict_time.py      # writes benchmarks/results/verdict_time.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from mlem_jax import _verdict, pretrained
from mlem_jax._env import environment
from mlem_jax._io import write_json
from mlem_jax._optimise import _floor_rate
from mlem_jax._pricing import _bin_index, _price

RESULTS = Path(__file__).parent / "results" / "verdict_time.json"


def _frontier_every_step(self, num_steps, cost, min_probability):
    """`mlem_jax._verdict._frontier` pricing every step on its own (the layout before the
    grouping), for the comparison."""
    ts, hs = self.steps(num_steps)
    bins = _bin_index(self.times, ts + hs / 2)
    shape = self.rate_shape(cost)[bins]
    h = np.abs(hs)[:, None]
    inner = shape[:, 1:] * h
    positive = inner[np.isfinite(inner) & (inner > 0)]
    if positive.size == 0:
        scales = np.ones(1)
    else:
        scales = np.logspace(-6, 3, 241) / np.median(positive)
    floor = _floor_rate(self, num_steps, min_probability)
    rates = np.maximum(shape[None] * scales[:, None, None], floor)
    rates[..., 0] = np.inf
    probs = np.minimum(1.0, rates * h[None])
    evaluations, mse = _price(probs, hs, *self._pricing_weights(bins))
    return evaluations @ self.level_costs(cost), np.sqrt(mse), evaluations


def _largest_difference(a, b) -> float:
    if isinstance(a, dict):
        return max((_largest_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)) and a and isinstance(a[0], (list, tuple, dict)):
        return max(_largest_difference(x, y) for x, y in zip(a, b, strict=True))
    try:
        x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    except (TypeError, ValueError):
        return 0.0 if a == b else float("inf")
    if x.size == 0:
        return 0.0
    both = np.isfinite(x) & np.isfinite(y)
    if not np.array_equal(np.isfinite(x), np.isfinite(y)):
        return float("inf")
    scale = np.maximum(np.abs(x[both]), 1e-300)
    return float(np.max(np.abs(x[both] - y[both]) / scale, initial=0.0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    grouped = _verdict._frontier
    result: dict = {"benchmark": "verdict_time", "repeats": args.repeats}
    for name in pretrained.NAMES:
        directory, _ = pretrained.resolve_ladder(name)
        cal = pretrained.load_calibration(
            os.path.join(directory, pretrained.CALIBRATION)
        )
        assert cal is not None
        seconds: dict[str, list[float]] = {"grouped": [], "every_step": []}
        verdicts = {}
        for _ in range(args.repeats):
            for how, frontier in (
                ("grouped", grouped),
                ("every_step", _frontier_every_step),
            ):
                _verdict._frontier = frontier
                start = time.perf_counter()
                verdicts[how] = cal.verdict(min_probability=0.02)
                seconds[how].append(time.perf_counter() - start)
        _verdict._frontier = grouped
        medians = {how: statistics.median(s) for how, s in seconds.items()}
        result[name] = dict(
            median_seconds=medians,
            speedup=medians["every_step"] / medians["grouped"],
            largest_relative_difference=_largest_difference(
                dataclasses.asdict(verdicts["grouped"]),
                dataclasses.asdict(verdicts["every_step"]),
            ),
            same_sentence=str(verdicts["grouped"]) == str(verdicts["every_step"]),
            all_seconds=seconds,
        )
        print(
            name,
            json.dumps({k: v for k, v in result[name].items() if k != "all_seconds"}),
        )
    result.update(environment(seed=None))
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
