"""Matched sample quality on a ladder, with enough samples to tell: KID of selected
single-network and multilevel runs from `ladder_span.py`, 1024 samples each.

    taskset -c 1 python benchmarks/ladder_quality.py --ladder mlem_jax/pretrained/digits_wide

`ladder_span.py` scores every run on its own batch (32 samples, 96 for a multilevel
run over its level keys): far too few for KID (about ±0.2 there, against
differences of 0.01–0.04 between the networks). This script reruns the points
that matter on the whole ladder with `samples` prior draws and Brownian paths,
shared by every run (multilevel runs: `keys` level keys, each on its own block of
`samples / keys` draws, so KID's blocks are the level keys), and reports each
run's KID and its paired difference from SDE-DPM-Solver++(1) with the top network
at 64 steps (same draws, paths and reference blocks;
`mlem_jax.diffusion.SampleQuality.difference`). Schedules are rebuilt exactly as
`ladder_span.py` built them (same calibration key, the stored level seconds).
Cost per sample (FLOPs, top-level evaluations) is the runs' own. Writes
`benchmarks/results/ladder_quality_<name>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, write_json  # noqa: E402
from ladder_span import prior_and_path  # noqa: E402
from samplers import RESULTS, SDE_SAMPLERS, Bench  # noqa: E402

from mlem_jax import diffusion as md  # noqa: E402

SINGLES = (("SDE-DPM++(1)", 5, 16), ("SDE-DPM++(1)", 5, 32), ("SDE-DPM++(1)", 5, 64))
SINGLES += (("SDE-DPM++(1)", 4, 32), ("SDE-DPM++(1)", 4, 64), ("EM", 5, 64))
MULTILEVEL = (("SDE-DPM++(1)", 32, 0.8), ("SDE-DPM++(1)", 64, 0.5), ("EM", 64, 0.5))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--ladder", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--keys", type=int, default=8)
    args = parser.parse_args(argv)
    name = os.path.basename(os.path.normpath(args.ladder))
    with open(os.path.join(RESULTS, f"ladder_span_{name}.json")) as f:
        span = json.load(f)
    settings = span["settings"]
    start = time.perf_counter()
    bench = Bench(dict(settings, sde_level_keys=1), args.seed, False, args.ladder)
    k = len(bench.nets)
    seconds = tuple(span["level_seconds"])
    cal = bench.calibrate_truncation(k, args.seed, measure_costs=False).with_seconds(
        seconds
    )
    quality = md.digits_quality(num_blocks=args.keys)
    n_blk = args.samples // args.keys
    key = jax.random.fold_in(jax.random.key(args.seed), 202)
    prior, dw = prior_and_path(bench, key, args.samples, 64)
    per_image = np.asarray(bench.flops) / settings["batch"]
    top = per_image[-1]

    runs = []
    for sampler_name, level, n in SINGLES:
        per_step = SDE_SAMPLERS[sampler_name][0]
        per_step = 1 if per_step is None else per_step.evaluations_per_step
        _, thunk = bench.single(
            sampler_name, level - 1, n * per_step, y0=prior, dw_fine=dw
        )
        y = thunk()[0]
        runs.append(
            dict(
                kind="single",
                sampler=sampler_name,
                level=level,
                steps=n,
                top_equivalent=n * per_image[level - 1] / top,
                _y=np.asarray(y),
            )
        )
        print(f"{sampler_name} level {level} x{n}", flush=True)
    p_min = settings["min_probability"]
    for sampler_name, n, fraction in MULTILEVEL:
        budget = fraction * n * cal.level_costs("seconds")[-1]
        idx = cal.choose_levels(
            budget=budget, num_steps=n, min_probability=p_min, cost="seconds"
        )
        schedule = cal.restrict(idx).schedule(
            budget=budget, num_steps=n, min_probability=p_min, cost="seconds"
        )
        ys, evaluations = [], np.zeros(k)
        for j in range(args.keys):
            rows = slice(j * n_blk, (j + 1) * n_blk)
            key_j = jax.random.fold_in(bench.level_key, j)
            thunk = bench.multilevel(
                sampler_name,
                idx,
                schedule,
                n,
                key_j,
                y0=prior[rows],
                dw_fine=dw[:, rows],
            )
            y, info = thunk()
            ys.append(np.asarray(y))
            evaluations[list(idx)] += np.asarray(info.evaluations) / args.keys
        runs.append(
            dict(
                kind="multilevel",
                sampler=sampler_name,
                steps=n,
                fraction=fraction,
                levels=[i + 1 for i in idx],
                evaluations=evaluations.tolist(),
                top_equivalent=float(evaluations @ per_image / top),
                _y=np.concatenate(ys),
            )
        )
        print(f"ML-{sampler_name} x{n} f{fraction}", flush=True)
    best = next(
        r
        for r in runs
        if r["kind"] == "single"
        and r["sampler"] == "SDE-DPM++(1)"
        and r["level"] == k
        and r["steps"] == 64
    )
    for r in runs:
        r["kid"], r["kid_stderr"] = quality(r["_y"])
        r["minus_best"], r["minus_best_stderr"] = quality.difference(
            r["_y"], best["_y"]
        )
    out = dict(
        ladder=args.ladder,
        samples=args.samples,
        keys=args.keys,
        reference_run="SDE-DPM++(1) top level x64",
        runs=[{a: b for a, b in r.items() if a != "_y"} for r in runs],
        environment=environment(args.seed),
        wall_seconds=time.perf_counter() - start,
    )
    write_json(os.path.join(RESULTS, f"ladder_quality_{name}.json"), out)
    for r in out["runs"]:
        what = (
            f"{r['sampler']} level {r['level']} x{r['steps']}"
            if r["kind"] == "single"
            else f"ML-{r['sampler']} x{r['steps']} f{r['fraction']} levels "
            f"{','.join(map(str, r['levels']))}"
        )
        print(
            f"{what:<40} top-eq {r['top_equivalent']:6.1f}  KID {r['kid']:.4f} ± "
            f"{r['kid_stderr']:.4f}  minus best {r['minus_best']:+.4f} ± "
            f"{r['minus_best_stderr']:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
