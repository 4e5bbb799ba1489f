"""The paper's claim on the `digits_mixture` ladder: cost to reach a given exact
sample quality with the best single network, with T-Stitch, with the randomised
multilevel sampler and with the hybrid, and how the multilevel speedup grows along
the ladder's truncations, next to `calibrate_sampler`'s prediction.

    taskset -c 1 nice python benchmarks/mixture_claim.py [--samples 1024] [--quick]

Every run samples the probability-flow ODE with DPM-Solver++(2M) on the log-SNR
grid from t = 1 to 1e-3 (as `mixture_ladder.py`), from the same prior draws, in
`--blocks` blocks (the multilevel runs draw their levels with one key per block:
the draws are shared by a block's samples). Runs, for the ladder truncated to its
first m levels (`levels[:m]`, m in `--truncations`; "top" is level m − 1):

* single networks: every level at 8/16/32/64 steps (`md.sample`);
* T-Stitch: each smaller level for the first fraction f of the steps, then the top
  (`mj.Stitch.from_fractions`);
* ML: `calibrate_sampler` on `levels[:m]` at the N sampled with, then
  `cal.schedule(budget=b·N·C_top, min_probability=0.02)`, b in `--budgets`;
* hybrid: `cal.hybrid(budget=..., min_probability=0.02)`, same budgets.

Quality: `mlem_jax.pretrained.quality("digits_mixture")`, the log-density gap
against the exact mixture (nats), paired differences on the same prior draws.
Matched quality: for a target run (the top network of the truncation at 16/32/64
steps), the cheapest run of each family whose paired gap minus the target's is
below 2 standard errors. Cost: FLOPs as top-level-equivalent evaluations per sample
(the manifest's `flops_per_image`, in units of the full ladder's top) and seconds
per `--samples` samples (the blocks after the first, which compiles, scaled),
from the same run. Each stitch/ML/hybrid run also records `cal.predict`'s error
and the realised RMS distance `sqrt(mean ‖y − y_top‖²)` to the truncation's top
network at the same steps on the same draws.

Results are written after every run (atomically) to
`benchmarks/results/mixture_claim.json`, so a run cut short keeps what it did.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import equinox as eqx
import jax
import jax.random as jr
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, write_json  # noqa: E402

import mlem_jax as mj  # noqa: E402
import mlem_jax.diffusion as md  # noqa: E402
from mlem_jax import pretrained  # noqa: E402
from mlem_jax.training import load_ladder, sde_from_manifest  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
T0, T1 = 1.0, 1e-3
MIN_P = 0.02
PARAM = md.VPLinear()
SAMPLER = md.DPMSolverPP2M()


class BatchedEps(eqx.Module):
    """A one-image ε-network as the batched `f(t, y, args)` samplers take."""

    model: eqx.Module

    def __call__(self, t, y, args=None):
        return jax.vmap(self.model, in_axes=(None, 0))(t, y)


@eqx.filter_jit
def _single(fn, y0, num_steps):
    kw = dict(t0=T0, t1=T1, num_steps=num_steps, grid="logsnr")
    return md.sample(fn, PARAM, SAMPLER, y0, **kw)[0]


@eqx.filter_jit
def _multi(levels, schedule, y0, key, num_steps):
    kw = dict(t0=T0, t1=T1, num_steps=num_steps, grid="logsnr")
    y, info = md.mlem_sample(levels, schedule, PARAM, SAMPLER, y0, key=key, **kw)
    return y, info.evaluations


def paired(lp_a, lp_b):
    """`gap(a) − gap(b)` from per-sample log-densities, and its paired standard
    error (as `MixtureQuality.difference`)."""
    d = np.asarray(lp_b) - np.asarray(lp_a)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def matched(runs, target, lps, key="flops", z=2.0):
    """The cheapest (by `key`) of `runs` not significantly worse than `target`:
    paired gap difference below `z` standard errors. `lps` maps run ids to
    per-sample log-densities. `None` if none qualifies."""
    best = None
    for r in runs:
        d, se = paired(lps[r["id"]], lps[target["id"]])
        if d <= z * se and (best is None or r[key] < best[key]):
            best = dict(r, minus_target=d, minus_target_stderr=se)
    return best


FAMILIES = ("single", "stitch", "ml", "hybrid")


def summarise(runs, lps, truncations, target_steps):
    """Per truncation and target (its top network at each of `target_steps`): the
    cheapest run of each family at matched quality, in FLOPs and in seconds, and
    the speedups over the best single network."""
    out = []
    for m in truncations:
        mine = [r for r in runs if r["m"] == m]
        for n in target_steps:
            target = next(
                (
                    r
                    for r in mine
                    if r["family"] == "single"
                    and r["level"] == m - 1
                    and r["steps"] == n
                ),
                None,
            )
            if target is None:
                continue
            row = dict(m=m, target=target["name"], target_gap=target["gap"])
            for key in ("flops", "seconds"):
                for fam in FAMILIES:
                    best = matched(
                        [r for r in mine if r["family"] == fam], target, lps, key
                    )
                    row[f"{fam}_{key}"] = None if best is None else best[key]
                    row[f"{fam}_{key}_run"] = None if best is None else best["name"]
                base = row[f"single_{key}"]
                for fam in FAMILIES[1:]:
                    v = row[f"{fam}_{key}"]
                    row[f"{fam}_speedup_{key}"] = None if v is None else base / v
            out.append(row)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--ladder", default=None, help="default: shipped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--single-steps", default="8,16,32,64")
    parser.add_argument("--steps", default="32,64,16", help="stitch/ML steps, in order")
    parser.add_argument("--truncations", default="5,4,3")
    parser.add_argument("--fractions", default="0.2,0.4,0.6,0.8")
    parser.add_argument("--budgets", default="0.1,0.25,0.5")
    parser.add_argument("--cal-batch", type=int, default=32)
    parser.add_argument("--pilot-keys", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=None, help="unix time")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(RESULTS, "mixture_claim.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.blocks, args.cal_batch, args.pilot_keys = 8, 2, 4, 0
        args.single_steps, args.steps, args.truncations = "4", "4", "2"
        args.fractions, args.budgets = "0.5", "0.5"

    def ints(s):
        return [int(v) for v in s.split(",")]

    def floats(s):
        return [float(v) for v in s.split(",")]

    single_steps, steps, truncations = (
        ints(args.single_steps),
        ints(args.steps),
        ints(args.truncations),
    )
    fractions, budgets = floats(args.fractions), floats(args.budgets)
    if args.samples % args.blocks:
        parser.error("--samples must be a multiple of --blocks")
    start = time.perf_counter()
    path = args.ladder or pretrained.pretrained_path("digits_mixture")
    models, manifest = load_ladder(path)
    if args.quick:
        models = models[:2]
    sde = sde_from_manifest(manifest)
    quality = pretrained.quality("digits_mixture")
    k = len(models)
    flops = np.array([float(lv["flops_per_image"]) for lv in manifest["levels"]][:k])
    costs = flops / flops[-1]  # top-level-equivalent evaluations of the full ladder
    fns = [BatchedEps(m) for m in models]
    key = jr.key(args.seed)
    shape = quality.mixture.event_shape
    y0 = sde.prior_sample(jr.fold_in(key, 0), (args.samples, *shape))
    y0_cal = sde.prior_sample(jr.fold_in(key, 1), (args.cal_batch, *shape))
    nb = args.samples // args.blocks
    blocks = [y0[i * nb : (i + 1) * nb] for i in range(args.blocks)]

    runs, lps, ys, cals = [], {}, {}, []

    def timed(call):
        """Run `call(block, i)` on every block; seconds for all samples from the
        blocks after the first (which compiles)."""
        outs, walls = [], []
        for i, b in enumerate(blocks):
            t = time.perf_counter()
            o = jax.block_until_ready(call(b, i))
            walls.append(time.perf_counter() - t)
            outs.append(o)
        rest = walls[1:] or walls
        return outs, float(np.mean(rest)) * args.blocks, float(walls[0])

    def record(run, y):
        y = np.asarray(y)
        run["id"] = len(runs)
        run["finite"] = bool(np.all(np.isfinite(y)))
        lp = quality.log_probs(y) if run["finite"] else np.full(len(y), -np.inf)
        lps[run["id"]] = lp
        ys[run["id"]] = y
        run["gap"] = float(quality.neg_entropy - lp.mean())
        run["gap_stderr"] = float(lp.std(ddof=1) / math.sqrt(lp.size))
        runs.append(run)
        print(
            f"[{time.perf_counter() - start:7.1f}s] {run['name']}: gap {run['gap']:.2f}"
            f" ± {run['gap_stderr']:.2f}, {run['flops']:.2f} top-eq, "
            f"{run['seconds']:.2f} s"
            + (
                f", pred err {run['predicted_error']:.3g} "
                f"realised {run['realised_error']:.3g}"
                if "realised_error" in run
                else ""
            ),
            flush=True,
        )

    def top_single(m, n):
        return next(
            (
                r
                for r in runs
                if r["family"] == "single" and r["level"] == m - 1 and r["steps"] == n
            ),
            None,
        )

    def write(done):
        # Singles belong to every truncation containing their level.
        expanded = [
            dict(r, m=m)
            for m in truncations
            for r in runs
            if (r["family"] == "single" and r["level"] < m)
            or (r["family"] != "single" and r["m"] == m)
        ]
        for r in runs:
            ref = top_single(r.get("m", k), 64) or top_single(
                r.get("m", k), max(single_steps)
            )
            if ref is not None:
                r["minus_ref64"], r["minus_ref64_stderr"] = paired(
                    lps[r["id"]], lps[ref["id"]]
                )
        summary = summarise(
            expanded, lps, truncations, [16, 32, 64] if not args.quick else single_steps
        )
        out = dict(
            benchmark="mixture_claim",
            complete=done,
            environment=environment(args.seed),
            ladder=os.path.relpath(path),
            settings=dict(
                sampler="DPMSolverPP2M",
                grid="logsnr",
                t0=T0,
                t1=T1,
                samples=args.samples,
                blocks=args.blocks,
                single_steps=single_steps,
                steps=steps,
                truncations=truncations,
                fractions=fractions,
                budgets=budgets,
                min_probability=MIN_P,
                cal_batch=args.cal_batch,
                pilot_keys=args.pilot_keys,
                num_bins=min(8, n),
                quick=args.quick,
                matched="paired gap minus target's < 2 standard errors",
                cost_units="top-level-equivalent evaluations per sample "
                "(full ladder's top); seconds per `samples` samples, compile excluded",
            ),
            flops_per_image=flops.tolist(),
            neg_entropy=quality.neg_entropy,
            runs=[{a: b for a, b in r.items()} for r in runs],
            calibrations=cals,
            summary=summary,
            wall_s=round(time.perf_counter() - start, 1),
        )
        write_json(args.out, out)
        return out

    def out_of_time():
        return args.deadline is not None and time.time() > args.deadline

    # Single networks: every level, every step count (targets and references).
    for n in sorted(single_steps, reverse=True):
        for lvl in range(k - 1, -1, -1):
            outs, sec, first = timed(lambda b, i, lvl=lvl, n=n: _single(fns[lvl], b, n))
            run = dict(
                name=f"level {lvl} x{n}",
                family="single",
                level=lvl,
                steps=n,
                flops=float(n * costs[lvl]),
                seconds=sec,
                first_block_s=first,
            )
            record(run, np.concatenate(outs))
        write(False)
        if out_of_time():
            break

    def multi_run(name, fam, m, n, levels, schedule, cal, extra):
        if out_of_time():
            return
        outs, sec, first = timed(
            lambda b, i: _multi(levels, schedule, b, jr.fold_in(key, 1000 + i), n)
        )
        y = np.concatenate([o[0] for o in outs])
        evals = np.mean([np.asarray(o[1]) for o in outs], axis=0)
        pred = cal.predict(schedule, n, "costs")
        top = top_single(m, n)
        realised = (
            float(np.sqrt(np.mean(np.sum((y - ys[top["id"]]) ** 2, -1))))
            if top is not None
            else None
        )
        run = dict(
            name=name,
            family=fam,
            m=m,
            steps=n,
            evaluations=evals.tolist(),
            flops=float(evals @ costs[:m]),
            predicted_flops=pred.cost,
            predicted_error=pred.error,
            realised_error=realised,
            seconds=sec,
            first_block_s=first,
            **extra,
        )
        record(run, y)
        write(False)

    for n in steps:
        for m in truncations:
            if out_of_time():
                break
            levels = mj.Levels(fns[:m], costs=tuple(costs[:m]))
            t = time.perf_counter()
            cal = md.calibrate_sampler(
                levels,
                PARAM,
                SAMPLER,
                y0_cal,
                t0=T0,
                t1=T1,
                num_steps=n,
                key=jr.fold_in(key, 10 * n + m),
                grid="logsnr",
                pilot_keys=args.pilot_keys,
                num_bins=min(8, n),
                measure_costs=False,
            )
            cals.append(
                dict(
                    m=m,
                    steps=n,
                    seconds=time.perf_counter() - t,
                    gamma=getattr(cal, "gamma", None),
                    amplification=None
                    if getattr(cal, "amplification", None) is None
                    else np.asarray(cal.amplification).tolist(),
                )
            )
            print(f"calibrated m={m} N={n} in {cals[-1]['seconds']:.1f} s", flush=True)
            top_cost = n * costs[m - 1]
            for b in budgets:
                for fam in ("ml", "hybrid"):
                    try:
                        make = cal.schedule if fam == "ml" else cal.hybrid
                        sched = make(
                            budget=b * top_cost,
                            num_steps=n,
                            min_probability=MIN_P,
                            cost="costs",
                        )
                    except ValueError as e:
                        print(f"{fam} m={m} N={n} b={b}: {e}", flush=True)
                        continue
                    kind = type(sched).__name__
                    multi_run(
                        f"{fam} m={m} x{n} b{b}",
                        fam,
                        m,
                        n,
                        levels,
                        sched,
                        cal,
                        dict(budget_fraction=b, schedule_kind=kind),
                    )
            ts = np.asarray(md.time_grid(PARAM, n, t0=T0, t1=T1, kind="logsnr"))
            for j in range(m - 1):
                for f in fractions:
                    sched = mj.Stitch.from_fractions(m, (j, m - 1), (f,), grid=ts)
                    multi_run(
                        f"stitch {j}->{m - 1} f{f} x{n}",
                        "stitch",
                        m,
                        n,
                        levels,
                        sched,
                        cal,
                        dict(small_level=j, fraction=f),
                    )
    out = write(not out_of_time())
    for row in out["summary"]:
        print(
            f"m={row['m']} target {row['target']}: "
            + ", ".join(
                f"{fam} {row[f'{fam}_flops']} ({row[f'{fam}_flops_run']})"
                for fam in FAMILIES
            ),
            flush=True,
        )
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
