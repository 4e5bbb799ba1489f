"""Seconds, not FLOPs: ML-EM against the best Euler–Maruyama at matched strong error,
with cost measured both ways in one run.

For each problem (the shipped digits ladder's reverse SDE at batch 16, 64 and 256; the
synthetic γ = 3 random-feature hierarchy):

* every level's seconds per evaluation inside a compiled loop (`mj.time_in_scan`) on
  the batch being sampled, and the per-step floor every solver pays (a solve with a
  zero drift);
* Euler–Maruyama with each level at several step counts, and ML-EM at several step
  counts and budgets (a fraction of the same-step EM's cost) with rates from
  `calibrate` that minimise either measured seconds (`cost="seconds"`) or FLOPs, each
  over several level keys; all on one Brownian path per sample shared with a
  fine-step reference solve (top level), error = RMS pathwise distance to it;
* every run timed after compilation, the runs interleaved over `--repeats` passes
  (median per run), so a slow spell of the machine hits every method alike;
* ML-EM's engine check: measured seconds over `Σ_l evaluations_l · seconds_l +
  num_steps · floor` (per-level timings × realised evaluations), next to the same
  ratio for Euler–Maruyama (whose engine is a plain scan);
* at each ML-EM point, the cost the best EM (frontier over levels and step counts,
  interpolated log–log) needs to reach the same error, over ML-EM's cost: the
  matched-error speedup, in seconds and in FLOPs.

ML-EM runs three ways: rates by seconds over every level, rates and levels
(`Calibration.choose_levels`) by seconds, rates by FLOPs over every level.

Writes `benchmarks/results/wall_clock_<problem>_b<batch>.json` and the docs/results.md table
between the `wall_clock` markers. Run (about 40 minutes on one core of this project's
CPU): `python benchmarks/wall_clock.py`; `--quick` for a smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import statistics
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_PAGE, environment, replace_results_block, write_json  # noqa: E402
from _harness import (  # noqa: E402
    Problem,
    ladder_problem,
    pareto_frontier,
    synthetic_problem,
)

import mlem_jax as mj  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

SETTINGS = {
    "ladder": dict(
        fine_steps=256,
        em_levels=None,  # every level
        em_steps=(8, 16, 32, 64),
        # 16 steps with the 2% probability floor blow up (weights 1/p up to 50 on
        # a stiff drift: RMS errors 25-44 at batch 16 in the first run), so the
        # ladder's ML-EM runs start at 32 steps.
        mlem_steps=(32, 64),
        fractions=(0.3, 0.5, 0.8),
        level_keys=8,
        repeats=3,
        min_probability=0.02,
    ),
    "synthetic": dict(
        fine_steps=1024,
        em_levels=None,
        em_steps=(16, 32, 64, 128, 256),
        mlem_steps=(64, 128, 256),
        fractions=(0.1, 0.2, 0.4),
        level_keys=8,
        repeats=5,
        min_probability=0.0,
    ),
}
# Larger batches run longer (about 4x per 4x batch on this CPU): fewer runs.
LADDER_64 = dict(SETTINGS["ladder"], level_keys=6, repeats=2)
LADDER_256 = dict(
    SETTINGS["ladder"],
    em_levels=(0, 1, 4),
    em_steps=(16, 32, 64),
    mlem_steps=(64,),
    fractions=(0.5, 0.8),
    level_keys=4,
    repeats=1,
)
QUICK = dict(
    fine_steps=32,
    em_levels=None,
    em_steps=(8, 16),
    mlem_steps=(16,),
    fractions=(0.5,),
    level_keys=2,
    repeats=1,
)


def _rms(y, ref) -> float:
    d = np.asarray(y - ref).reshape(y.shape[0], -1)
    return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))


def _interpolate_cost(frontier: list[dict], error: float, key: str) -> float | None:
    """Cost (`key`) at which the frontier reaches `error`, interpolated log–log
    between its points; `None` outside its range of errors."""
    pts = sorted(frontier, key=lambda p: p["error"])
    for lo, hi in zip(pts, pts[1:]):
        if lo["error"] <= error <= hi["error"]:
            x0, x1 = math.log(lo["error"]), math.log(hi["error"])
            y0, y1 = math.log(lo[key]), math.log(hi[key])
            w = 0.0 if x1 == x0 else (math.log(error) - x0) / (x1 - x0)
            return math.exp(y0 + w * (y1 - y0))
    if pts and math.isclose(error, pts[0]["error"]):
        return pts[0][key]
    return None


def measure(problem: Problem, cal: mj.Calibration, settings: dict, seed: int) -> dict:
    levels, y0 = problem.levels, problem.y0
    k = levels.num_levels
    t0, t1 = problem.t0, problem.t1
    diffusion = problem.diffusion
    key = jax.random.key(seed)
    path_key, level_key = jax.random.split(key)
    fine = settings["fine_steps"]
    dw_fine = mj.brownian_increments(path_key, y0.shape, t0=t0, t1=t1, num_steps=fine)

    @eqx.filter_jit
    def em(fn, y0, dw, key):
        return mj.em_solve(
            fn, diffusion, y0, t0=t0, t1=t1, num_steps=dw.shape[0], key=key, brownian=dw
        )

    @eqx.filter_jit
    def mlem(levels, schedule, y0, dw, key):
        return mj.mlem_solve(
            levels,
            schedule,
            diffusion,
            y0,
            t0=t0,
            t1=t1,
            num_steps=dw.shape[0],
            key=key,
            brownian=dw,
        )

    def dw(n):
        return mj.coarsen_increments(dw_fine, fine // n)

    reference, _ = em(problem.reference, y0, dw_fine, level_key)
    t_mid = jnp.asarray((t0 + t1) / 2, y0.dtype)
    seconds = tuple(mj.time_in_scan(f, t_mid, y0) for f in levels.fns)
    zero = lambda t, y, args: jnp.zeros_like(y)
    floor_steps = 64
    floor_dw = (
        mj.coarsen_increments(dw_fine, fine // floor_steps) if fine >= 64 else dw(fine)
    )
    floor_steps = floor_dw.shape[0]
    jax.block_until_ready(em(zero, y0, floor_dw, level_key))
    start = time.perf_counter()
    for _ in range(5):
        jax.block_until_ready(em(zero, y0, floor_dw, level_key))
    floor = (time.perf_counter() - start) / 5 / floor_steps
    cal = cal.with_seconds(seconds)
    flops = np.asarray(levels.costs, np.float64)

    jobs = []  # (record, thunk)
    em_levels = settings["em_levels"] or tuple(range(k))
    for level in em_levels:
        for n in settings["em_steps"]:
            record = dict(method="EM", level=level + 1, steps=n, key=0)
            jobs.append(
                (record, functools.partial(em, levels.fns[level], y0, dw(n), level_key))
            )
    mlem_configs = []
    p_min = settings["min_probability"]
    everything = tuple(range(k))
    for n in settings["mlem_steps"]:
        # Rates by seconds over every level, rates and levels (`choose_levels`) by
        # seconds, rates by FLOPs over every level.
        for cost, choose in (("seconds", False), ("seconds", True), ("flops", False)):
            for fraction in settings["fractions"]:
                budget = fraction * n * cal.level_costs(cost)[-1]
                idx = everything
                if choose:
                    try:
                        idx = cal.choose_levels(
                            budget=budget, num_steps=n, min_probability=p_min, cost=cost
                        )
                    except ValueError:
                        continue
                    if len(idx) == 1 or idx == everything:  # EM, or already run
                        continue
                sub = cal.restrict(idx)
                if budget < 1.1 * sub.min_cost(n, p_min, cost):
                    continue
                schedule = sub.schedule(
                    budget=budget, num_steps=n, min_probability=p_min, cost=cost
                )
                config = dict(
                    method="ML-EM",
                    steps=n,
                    cost=cost,
                    chosen_levels=choose,
                    levels=[i + 1 for i in idx],
                    fraction=fraction,
                )
                mlem_configs.append(config)
                sub_levels = mj.Levels(
                    tuple(levels.fns[i] for i in idx),
                    tuple(levels.costs[i] for i in idx),
                )
                for j in range(settings["level_keys"]):
                    record = dict(config, key=j)
                    key_j = jax.random.fold_in(level_key, j)
                    thunk = functools.partial(
                        mlem, sub_levels, schedule, y0, dw(n), key_j
                    )
                    jobs.append((record, thunk))

    outputs = [jax.block_until_ready(thunk()) for _, thunk in jobs]  # compiles
    times = [[] for _ in jobs]
    for _ in range(settings["repeats"]):
        for i, (_, thunk) in enumerate(jobs):
            start = time.perf_counter()
            jax.block_until_ready(thunk())
            times[i].append(time.perf_counter() - start)

    runs = []
    for (record, _), (y1, info), ts in zip(jobs, outputs, times):
        if record["method"] == "EM":
            evaluations = np.zeros(k)
            evaluations[record["level"] - 1] = record["steps"]
        else:
            evaluations = np.zeros(k)
            evaluations[[i - 1 for i in record["levels"]]] = np.asarray(
                info.evaluations, np.float64
            )
        predicted = float(evaluations @ np.asarray(seconds)) + record["steps"] * floor
        runs.append(
            dict(
                record,
                evaluations=evaluations.tolist(),
                flops=float(evaluations @ flops),
                seconds=statistics.median(ts),
                predicted_seconds=predicted,
                error=_rms(y1, reference),
            )
        )

    points = [dict(r, error=r["error"]) for r in runs if r["method"] == "EM"]
    for config in mlem_configs:
        mine = [
            r
            for r in runs
            if r["method"] == "ML-EM" and all(r[k_] == v for k_, v in config.items())
        ]
        points.append(
            dict(
                config,
                keys=len(mine),
                evaluations=np.mean([r["evaluations"] for r in mine], axis=0).tolist(),
                flops=float(np.mean([r["flops"] for r in mine])),
                seconds=float(np.mean([r["seconds"] for r in mine])),
                predicted_seconds=float(
                    np.mean([r["predicted_seconds"] for r in mine])
                ),
                error=float(np.sqrt(np.mean([r["error"] ** 2 for r in mine]))),
                median_error=float(np.median([r["error"] for r in mine])),
            )
        )
    em_points = [p for p in points if p["method"] == "EM"]
    frontier = {
        unit: pareto_frontier([dict(p, cost=p[unit]) for p in em_points])
        for unit in ("seconds", "flops")
    }
    for p in points:
        p["measured_over_predicted"] = p["seconds"] / p["predicted_seconds"]
        if p["method"] != "ML-EM":
            continue
        for unit in ("seconds", "flops"):
            em_cost = _interpolate_cost(frontier[unit], p["error"], unit)
            p[f"speedup_{unit}"] = None if em_cost is None else em_cost / p[unit]
    return dict(
        problem=problem.name,
        batch=int(y0.shape[0]),
        settings=settings,
        level_seconds=list(seconds),
        level_flops=flops.tolist(),
        step_floor_seconds=floor,
        seconds_share=(np.asarray(seconds) / seconds[-1]).tolist(),
        flops_share=(flops / flops[-1]).tolist(),
        points=points,
        em_frontier={u: [(p["error"], p[u]) for p in f] for u, f in frontier.items()},
        runs=runs,
    )


def summarise(result: dict) -> dict:
    mlem = [p for p in result["points"] if p["method"] == "ML-EM"]
    engine = [p["measured_over_predicted"] for p in mlem]
    em_engine = [
        p["measured_over_predicted"] for p in result["points"] if p["method"] == "EM"
    ]
    matched = [p for p in mlem if p.get("speedup_seconds") and p.get("speedup_flops")]
    wins = [p for p in matched if p["speedup_flops"] > 1]
    best = {
        (unit, choose): max(
            (p for p in matched if p["cost"] == unit and p["chosen_levels"] == choose),
            key=lambda p: p["speedup_seconds"],
            default=None,
        )
        for unit, choose in (("seconds", False), ("seconds", True), ("flops", False))
    }
    return dict(
        engine_median=statistics.median(engine) if engine else None,
        engine_range=(min(engine), max(engine)) if engine else None,
        em_engine_median=statistics.median(em_engine) if em_engine else None,
        flops_wins=len(wins),
        matched=len(matched),
        seconds_at_least_80pct_of_flops=sum(
            p["speedup_seconds"] >= 0.8 * p["speedup_flops"] for p in wins
        ),
        best=best,
    )


def table(results: list[dict]) -> str:
    lines = [
        "| problem | batch | seconds/FLOPs share of the base level | measured/predicted s: ML-EM median (range); EM median | best matched-error speedup, rates by seconds: s (FLOPs) | rates and levels by seconds: s (FLOPs) | rates by FLOPs: s (FLOPs) | points where ML-EM wins on FLOPs: also ≥ 0.8× of it on seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = summarise(r)
        cells = []
        for choice in (("seconds", False), ("seconds", True), ("flops", False)):
            p = s["best"][choice]
            levels = ",".join(map(str, p["levels"])) if p else ""
            cells.append(
                "—"
                if p is None
                else f"{p['speedup_seconds']:.2f}× ({p['speedup_flops']:.2f}×) at error "
                f"{p['error']:.3g}, {p['steps']} steps, levels {levels}"
            )
        lo, hi = s["engine_range"] or (math.nan, math.nan)
        lines.append(
            f"| {r['problem']} | {r['batch']} | {r['seconds_share'][0]:.3f} / {r['flops_share'][0]:.3f} "
            f"| {s['engine_median']:.2f} ({lo:.2f}–{hi:.2f}); {s['em_engine_median']:.2f} "
            f"| {cells[0]} | {cells[1]} | {cells[2]} "
            f"| {s['seconds_at_least_80pct_of_flops']} of {s['flops_wins']} |"
        )
    return "\n".join(lines)


def _ladder_calibration(problem: Problem) -> mj.Calibration:
    from mlem_jax.pretrained import CALIBRATION, load_calibration, pretrained_path

    cal = load_calibration(os.path.join(pretrained_path(), CALIBRATION))
    # The shipped calibration stores per-image FLOPs; this batch's FLOPs are the
    # problem's level costs.
    costs = tuple(problem.levels.costs)
    return dataclasses.replace(cal, costs=costs, flops=costs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="16,64,256")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run, not a measurement"
    )
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    env = environment(args.seed)
    results = []
    for batch in (int(b) for b in args.batches.split(",") if b):
        problem = ladder_problem(None, batch=batch, seed=args.seed)
        settings = (
            SETTINGS["ladder"]
            if batch < 64
            else LADDER_64
            if batch < 256
            else LADDER_256
        )
        if args.quick:
            settings = dict(settings, **QUICK)
        print(f"{problem.name} batch {batch} ...", flush=True)
        result = measure(problem, _ladder_calibration(problem), settings, args.seed)
        result["environment"] = env
        results.append(result)
        write_json(
            os.path.join(args.out, f"wall_clock_{problem.name}_b{batch}.json"), result
        )
        print(table([result]), flush=True)
    if not args.no_synthetic:
        problem = synthetic_problem(3.0, seed=args.seed)
        cal = mj.calibrate(
            problem.levels,
            problem.diffusion,
            problem.y0,
            t0=problem.t0,
            t1=problem.t1,
            num_steps=64,
            key=jax.random.key(args.seed + 1),
            num_bins=8,
            reference=problem.reference,
            pilot_keys=2 if args.quick else 16,
        )
        settings = (
            dict(SETTINGS["synthetic"], **QUICK)
            if args.quick
            else SETTINGS["synthetic"]
        )
        print(f"{problem.name} batch {problem.y0.shape[0]} ...", flush=True)
        result = measure(problem, cal, settings, args.seed)
        result["environment"] = env
        results.append(result)
        write_json(
            os.path.join(
                args.out, f"wall_clock_{problem.name}_b{problem.y0.shape[0]}.json"
            ),
            result,
        )
        print(table([result]), flush=True)
    if not args.quick and args.out == RESULTS:
        replace_results_block(RESULTS_PAGE, "wall_clock", table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
