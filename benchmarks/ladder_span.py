"""Does ML-EM's gain grow with the ladder? The cost–error and cost–quality benchmark
on a ladder spanning over 100× in FLOPs, and on its truncations.

    taskset -c 1 python benchmarks/ladder_span.py --ladder ladders/digits-wide

The ladder (`--ladder`, default the shipped `digits-wide`: five UNets of widths 4,
8, 16, 24, 48 on the 8×8 digits, 123× from the cheapest to the top in FLOPs, the
cheaper four distilled from the top; docs/results.md gives the commands that
train it) is run whole and truncated to its first `m` levels (`truncations`: top
level about 14×, 31× and 123× the base's FLOPs). On each:

* **Calibration and verdict.** `mlem_jax.calibrate` on the truncated ladder's
  reverse-SDE drifts (pilots at `pilot_steps`, `pilot_keys` amplification pilots,
  Euler–Maruyama's own error and order), priced in the seconds measured here
  (`time_in_scan` per level at this batch); `Calibration.verdict` at the 2% floor
  (the CLI's), in seconds and FLOPs; `γ` from the calibration (FLOPs against the
  drift error along the top level's trajectories).
* **Single-network samplers** (over every level of the truncation and every step
  count run): SDE-DPM-Solver++(1) with every network at 4–64 steps, Euler–Maruyama
  with the truncation's top network at 8–64 steps, SDE-DPM-Solver++(2M) with the
  whole ladder's top network at 8–64 steps.
* **Multilevel:** ML-EM (`mlem_solve`) and multilevel SDE-DPM-Solver++(1)
  (`mlem_sample`), on the sub-ladder `Calibration.choose_levels` picks for seconds,
  at fractions of the same-step top-level cost, `level_keys` level keys each.
* **Error:** RMS pathwise error against SDE-DPM-Solver++(1) with the truncation's
  top network at `fine_steps` steps on the same Brownian path (one path per sample).
* **Quality:** KID in the features of a digits classifier
  (`mlem_jax.diffusion.digits_quality`, reference the training split) with its
  standard error; per level alone (SDE-DPM-Solver++(1), `quality_steps` steps,
  `quality_samples` samples), the held-out split (the metric's floor), and every
  run's samples (batch × keys: far too few for KID to compare runs, about ±0.2;
  `ladder_quality.py` compares the runs that matter at matched quality).
* **Cost:** FLOPs from the manifest; wall-clock and process CPU seconds of each
  compiled solve, median of `repeats` interleaved passes, in this process.
* **Matched:** `samplers.matched` — at each multilevel point spending 4–32
  top-level evaluations, the cheapest single-network cost reaching its RMS error
  (each sampler–network curve interpolated log–log), in FLOPs, CPU s and wall s;
  ML-EM against Euler–Maruyama with the top network, measured, beside the
  verdict's prediction at the same error (`verdict_comparison`).

Writes `benchmarks/results/ladder_span_<name>.json` and the docs/results.md table between
the `ladder_span` markers. `--quick`: a smoke run (small sizes, no table update).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_PAGE, environment, replace_results_block, write_json  # noqa: E402
from samplers import (  # noqa: E402
    RESULTS,
    SDE_SAMPLERS,
    Bench,
    _best_single_cost,
    _per_sample,
    matched,
)

import mlem_jax as mj  # noqa: E402
from mlem_jax import diffusion as md  # noqa: E402

SETTINGS = dict(
    batch=32,
    fine_steps=256,
    steps=(4, 8, 16, 32, 64),
    top_steps=(8, 16, 32, 64),
    top_samplers=("EM", "SDE-DPM++(2M)"),
    all_levels_sampler="SDE-DPM++(1)",
    mlem_samplers=("EM", "SDE-DPM++(1)"),
    mlem_steps=(16, 32, 64),
    fractions=(0.3, 0.5, 0.8),
    level_keys=3,
    repeats=3,
    min_probability=0.02,
    pilot_steps=64,
    pilot_keys=4,
    truncations=(3, 4, 5),
    quality_samples=1024,
    quality_steps=64,
    range_top_equivalent=(4.0, 32.0),
)
QUICK = dict(
    SETTINGS,
    batch=8,
    fine_steps=32,
    steps=(4, 8),
    top_steps=(8,),
    mlem_steps=(8,),
    fractions=(0.6,),
    level_keys=2,
    repeats=1,
    pilot_steps=8,
    pilot_keys=1,
    truncations=(2, 5),
    quality_samples=64,
    quality_steps=8,
)


def _kid(quality, y) -> tuple[float, float]:
    """KID ± standard error, NaN when too few samples for the blocks (--quick)."""
    if len(y) < 2 * quality.num_blocks:
        return float("nan"), float("nan")
    return quality(y)


def _timed(thunks, repeats):
    """Run each thunk once (compiling), then `repeats` interleaved timed passes:
    outputs, median wall seconds, median process CPU seconds."""
    outputs = [jax.block_until_ready(t()) for t in thunks]
    wall: list[list[float]] = [[] for _ in thunks]
    cpu: list[list[float]] = [[] for _ in thunks]
    for _ in range(repeats):
        for i, t in enumerate(thunks):
            c, w = time.process_time(), time.perf_counter()
            jax.block_until_ready(t())
            wall[i].append(time.perf_counter() - w)
            cpu[i].append(time.process_time() - c)
    return (
        outputs,
        [statistics.median(x) for x in wall],
        [statistics.median(x) for x in cpu],
    )


def prior_and_path(bench: Bench, key, samples: int, num_steps: int):
    """`samples` prior draws of the bench's VP-SDE (`key`) and their Brownian
    increments on `num_steps` steps (`fold_in(key, 1)`), for quality runs larger
    than the bench's batch."""
    sde = md.VPSDE(beta_min=bench.param.beta_min, beta_max=bench.param.beta_max)
    prior = sde.prior_sample(key, (samples, *bench.y0.shape[1:]))
    dw = mj.brownian_increments(
        jax.random.fold_in(key, 1),
        prior.shape,
        t0=bench.t0,
        t1=bench.t1,
        num_steps=num_steps,
    )
    return prior, dw


def _level_quality(bench: Bench, quality, settings, seed):
    """KID of each level alone (SDE-DPM-Solver++(1)), with its standard error."""
    steps = settings["quality_steps"]
    key = jax.random.fold_in(jax.random.key(seed), 101)
    prior, dw = prior_and_path(bench, key, settings["quality_samples"], steps)
    out, ys = [], []
    for level in range(len(bench.nets)):
        _, thunk = bench.single("SDE-DPM++(1)", level, steps, y0=prior, dw_fine=dw)
        y = thunk()[0]
        kid, se = _kid(quality, y)
        ys.append(y)
        out.append(dict(level=level + 1, kid=kid, stderr=se))
    for entry, y in zip(out, ys):
        # Paired with the top level's samples (same prior draws and paths, same
        # reference blocks): the difference's own standard error.
        diff, diff_se = (
            quality.difference(y, ys[-1])
            if len(y) >= 2 * quality.num_blocks
            else (float("nan"), float("nan"))
        )
        entry.update(minus_top=diff, minus_top_stderr=diff_se)
        print(
            f"level {entry['level']}: KID {entry['kid']:.4f} ± {entry['stderr']:.4f}; "
            f"minus the top level's {diff:.4f} ± {diff_se:.4f}",
            flush=True,
        )
    return out


def measure(settings: dict, seed: int, ladder: str | None) -> dict:
    bench = Bench(dict(settings, sde_level_keys=1), seed, ode=False, ladder=ladder)
    k_all = len(bench.nets)
    quality = md.digits_quality()
    from mlem_jax.data import digits

    floor_kid, floor_se = quality(digits(split="test"))
    print(f"KID floor (held-out split): {floor_kid:.4f} ± {floor_se:.4f}", flush=True)
    per_level = _level_quality(bench, quality, settings, seed)

    # Single-network runs (independent of the truncation; errors are not).
    single_jobs = []
    name = settings["all_levels_sampler"]
    for level in range(1, k_all + 1):
        for ev in settings["steps"]:
            n, thunk = bench.single(name, level - 1, ev)
            single_jobs.append((dict(sampler=name, level=level, steps=n), thunk))
    tops = sorted({min(m, k_all) for m in settings["truncations"]})
    for level in tops:
        # SDE-DPM-Solver++(2M) with the whole ladder's top network only (it
        # trails SDE-DPM-Solver++(1) on these networks: see the samplers table).
        for name in settings["top_samplers"] if level == k_all else ("EM",):
            per_step = SDE_SAMPLERS[name][0]
            per_step = 1 if per_step is None else per_step.evaluations_per_step
            for ev in settings["top_steps"]:
                n, thunk = bench.single(name, level - 1, ev * per_step)
                single_jobs.append((dict(sampler=name, level=level, steps=n), thunk))
    start = time.perf_counter()
    outs, wall, cpu = _timed([t for _, t in single_jobs], settings["repeats"])
    print(f"singles timed ({time.perf_counter() - start:.0f} s)", flush=True)
    singles = []
    for (record, _), (y, _info), w, c in zip(single_jobs, outs, wall, cpu):
        ev = np.zeros(k_all)
        per_step = SDE_SAMPLERS[record["sampler"]][0]
        per_step = 1 if per_step is None else per_step.evaluations_per_step
        ev[record["level"] - 1] = record["steps"] * per_step
        kid, se = _kid(quality, y)
        singles.append(
            dict(
                record,
                kind="single",
                evaluations=ev.tolist(),
                flops=float(ev @ bench.flops),
                seconds=w,
                cpu_seconds=c,
                kid=kid,
                kid_stderr=se,
                _y=np.asarray(y),
            )
        )

    results = []
    for m in settings["truncations"]:
        m = min(m, k_all)
        t_start = time.perf_counter()
        idx_all = tuple(range(m))
        flops = bench.flops[:m]
        _, ref_thunk = bench.single("SDE-DPM++(1)", m - 1, settings["fine_steps"])
        reference = np.asarray(ref_thunk()[0])
        cal = bench.calibrate_truncation(m, seed).with_seconds(
            tuple(float(s) for s in bench.level_seconds[:m])
        )
        verdicts = {
            u: cal.verdict(cost=u, min_probability=settings["min_probability"])
            for u in ("seconds", "flops")
        }
        print(f"[m={m}] {verdicts['seconds']}", flush=True)

        # Multilevel runs on the sub-ladder chosen for seconds.
        p_min = settings["min_probability"]
        ml_jobs = []
        for n in settings["mlem_steps"]:
            for fraction in settings["fractions"]:
                budget = fraction * n * cal.level_costs("seconds")[-1]
                try:
                    idx = cal.choose_levels(
                        budget=budget,
                        num_steps=n,
                        min_probability=p_min,
                        cost="seconds",
                    )
                except ValueError:
                    continue
                if len(idx) == 1:
                    idx = idx_all
                sub = cal.restrict(idx)
                if budget < 1.1 * sub.min_cost(n, p_min, "seconds"):
                    continue
                schedule = sub.schedule(
                    budget=budget, num_steps=n, min_probability=p_min, cost="seconds"
                )
                for name in settings["mlem_samplers"]:
                    for j in range(settings["level_keys"]):
                        key_j = jax.random.fold_in(bench.level_key, j)
                        ml_jobs.append(
                            (
                                dict(
                                    sampler=name,
                                    steps=n,
                                    fraction=fraction,
                                    levels=[i + 1 for i in idx],
                                    key=j,
                                ),
                                bench.multilevel(name, idx, schedule, n, key_j),
                            )
                        )
        outs, wall, cpu = _timed([t for _, t in ml_jobs], 1)
        runs = {}
        for (record, _), (y, info), w, c in zip(ml_jobs, outs, wall, cpu):
            ev = np.zeros(k_all)
            ev[[i - 1 for i in record["levels"]]] = np.asarray(info.evaluations)
            cfg = (record["sampler"], record["steps"], record["fraction"])
            runs.setdefault(cfg, []).append(
                dict(record, ev=ev, w=w, c=c, y=np.asarray(y))
            )

        points = []
        for s in singles:
            if s["level"] > m:
                continue
            errors = _per_sample(s["_y"], reference)
            points.append(
                dict(
                    {a: b for a, b in s.items() if a != "_y"},
                    evaluations=s["evaluations"][:m],
                    error=float(np.sqrt(np.mean(errors**2))),
                    median_error=float(np.median(errors)),
                    max_error=float(errors.max()),
                )
            )
        for (name, n, fraction), mine in runs.items():
            errors = np.concatenate([_per_sample(r["y"], reference) for r in mine])
            ys = np.concatenate([r["y"] for r in mine])
            kid, se = _kid(quality, ys)
            ev = np.mean([r["ev"] for r in mine], axis=0)
            points.append(
                dict(
                    kind="multilevel",
                    sampler=name,
                    grid="uniform",
                    steps=n,
                    chosen_levels=True,
                    levels=mine[0]["levels"],
                    fraction=fraction,
                    keys=len(mine),
                    evaluations=ev[:m].tolist(),
                    flops=float(ev @ bench.flops),
                    seconds=float(np.mean([r["w"] for r in mine])),
                    cpu_seconds=float(np.mean([r["c"] for r in mine])),
                    error=float(np.sqrt(np.mean(errors**2))),
                    median_error=float(np.median(errors)),
                    max_error=float(errors.max()),
                    blowups=bench.blowups(ys),
                    kid=kid,
                    kid_stderr=se,
                )
            )
        for p in points:
            p.setdefault("blowups", 0)
        result = dict(
            truncation=m,
            levels=list(range(1, m + 1)),
            span_flops=float(flops[-1] / flops[0]),
            span_seconds=float(bench.level_seconds[m - 1] / bench.level_seconds[0]),
            batch=settings["batch"],
            settings={
                a: (list(b) if isinstance(b, tuple) else b) for a, b in settings.items()
            },
            level_flops=flops.tolist(),
            level_seconds=bench.level_seconds[:m].tolist(),
            gamma=float(cal.gamma),
            gamma_stderr=float(cal.gamma_stderr),
            em_error=cal.em_error,
            em_order=cal.em_order,
            calibration_table=cal.table(),
            points=points,
        )
        result["matched"] = matched(result)
        result["verdict"] = {
            u: dict(
                text=str(v),
                worth_above=v.worth_above,
                errors=v.errors.tolist(),
                speedups={a: b.tolist() for a, b in v.speedups.items()},
            )
            for u, v in verdicts.items()
        }
        result["verdict_vs_measured"] = verdict_comparison(result)
        result["wall_seconds"] = time.perf_counter() - t_start
        results.append(result)
        print(summary_line(result), flush=True)
    return dict(
        ladder=ladder or "shipped",
        floor=dict(kid=floor_kid, stderr=floor_se),
        per_level_quality=per_level,
        level_flops=bench.flops.tolist(),
        level_seconds=bench.level_seconds.tolist(),
        truncations=results,
    )


def verdict_comparison(result: dict) -> list[dict]:
    """At each ML-EM point spending `range_top_equivalent` top-level evaluations:
    the measured speedup over Euler–Maruyama with the truncation's *top* network
    (its cost–error curve interpolated log–log, as `samplers.matched` does), next
    to the verdict's predicted speedup at the point's RMS error (interpolated
    log–log on the verdict's errors; `None` outside them)."""
    m = result["truncation"]
    lo, hi = result["settings"]["range_top_equivalent"]
    em_top = [
        p
        for p in result["points"]
        if p["kind"] == "single" and p["sampler"] == "EM" and p["level"] == m
    ]
    top_flops = result["level_flops"][-1]
    top_seconds = statistics.median(
        p["seconds"] / sum(p["evaluations"]) for p in em_top
    )
    out = []
    for p in result["points"]:
        if p["kind"] != "multilevel" or p["sampler"] != "EM":
            continue
        for unit, top in (("flops", top_flops), ("seconds", top_seconds)):
            if not lo <= p[unit] / top <= hi:
                continue
            cost, _ = _best_single_cost(em_top, p["error"], unit)
            v = result["verdict"][unit]
            errors = np.asarray(v["errors"])
            inside = errors[0] <= p["error"] <= errors[-1]
            predicted = (
                float(
                    np.exp(
                        np.interp(
                            np.log(p["error"]),
                            np.log(errors),
                            np.log(np.maximum(v["speedups"][unit], 1e-12)),
                        )
                    )
                )
                if inside
                else None
            )
            out.append(
                dict(
                    unit=unit,
                    error=p["error"],
                    steps=p["steps"],
                    fraction=p["fraction"],
                    levels=p["levels"],
                    measured=None if cost is None else cost / p[unit],
                    predicted=predicted,
                )
            )
    return out


def _num(x):
    return "—" if x is None else f"{x:.2f}"


def _fmt(x):
    return "—" if x is None else f"{x:.2f}×"


def summary_line(r: dict) -> str:
    by = {m["sampler"]: m for m in r["matched"]}
    cells = []
    for name in ("SDE-DPM++(1)", "EM"):
        m = by.get(name)
        cells.append(
            "—"
            if m is None
            else " / ".join(
                _fmt(m[f"interpolated_best_single_{u}_max"])
                for u in ("flops", "cpu_seconds", "seconds")
            )
        )

    def pairs(unit):
        rows = [
            c
            for c in r["verdict_vs_measured"]
            if c["unit"] == unit and c["measured"] is not None
        ]
        if not rows:
            return "—"
        return ", ".join(
            f"{c['measured']:.2f}/{_num(c['predicted'])} ({c['steps']}, {c['error']:.2g})"
            for c in sorted(rows, key=lambda c: -c["error"])
        )

    return (
        f"| {r['truncation']} | {r['span_flops']:.0f}× / {r['span_seconds']:.1f}× | "
        f"{r['gamma']:.2f} | {cells[0]} | {cells[1]} | "
        f"{pairs('flops')} | {pairs('seconds')} |"
    )


def table(result: dict) -> str:
    lines = [
        "| levels | top/base: FLOPs / seconds | γ (FLOPs) | ML-SDE-DPM++(1) vs best single-network sampler, matched RMS: FLOPs / CPU s / wall s | ML-EM vs best single-network sampler: FLOPs / CPU s / wall s | ML-EM vs EM with the top network, FLOPs: measured/verdict (steps, RMS error) | same in wall seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [summary_line(r) for r in result["truncations"]]
    q = result["per_level_quality"]
    lines.append("")
    lines.append(
        "KID (digits-classifier features, ×1, ± standard error) of each level alone, "
        f"SDE-DPM-Solver++(1) {result['settings']['quality_steps']} steps, "
        f"{result['settings']['quality_samples']} samples: "
        + ", ".join(f"level {e['level']} {e['kid']:.3f} ± {e['stderr']:.3f}" for e in q)
        + "; paired difference from the top level (same prior draws and paths): "
        + ", ".join(
            f"level {e['level']} {e['minus_top']:+.3f} ± {e['minus_top_stderr']:.3f}"
            for e in q[:-1]
        )
        + f"; held-out digits {result['floor']['kid']:.3f} ± {result['floor']['stderr']:.3f}."
        + " Verdicts (seconds, 2% floor, at Euler–Maruyama's error at 64 steps): "
        + " ".join(
            f"{r['truncation']} levels: {r['verdict']['seconds']['text']}"
            for r in result["truncations"]
        )
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--ladder", default=None, help="ladder directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument(
        "--reanalyse",
        action="store_true",
        help="recompute the analysis and the docs/results.md table from the stored result",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else SETTINGS
    name = os.path.basename(os.path.normpath(args.ladder or "shipped"))
    path = os.path.join(
        args.out, f"ladder_span_{name}" + ("_quick" if args.quick else "") + ".json"
    )
    if args.reanalyse:
        with open(path) as f:
            result = json.load(f)
        for r in result["truncations"]:
            r.pop("quality_matched", None)  # from the first run's analysis
            r["matched"] = matched(r)
            r["verdict_vs_measured"] = verdict_comparison(r)
        write_json(path, result)
        print(table(result), flush=True)
        if not args.quick and args.out == RESULTS:
            replace_results_block(RESULTS_PAGE, "ladder_span", table(result))
        return 0
    env = environment(args.seed)
    start = time.perf_counter()
    result = measure(settings, args.seed, args.ladder)
    result["settings"] = {
        a: (list(b) if isinstance(b, tuple) else b) for a, b in settings.items()
    }
    result["environment"] = env
    result["wall_seconds"] = time.perf_counter() - start
    write_json(path, result)
    print(table(result), flush=True)
    if not args.quick and args.out == RESULTS:
        replace_results_block(RESULTS_PAGE, "ladder_span", table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
