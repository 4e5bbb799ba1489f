"""T-Stitch, the randomized multilevel sampler and the calibrated hybrid on a shipped
ladder, at matched pathwise error and matched sample quality (issue 25, item 5).

    taskset -c 0 nice python benchmarks/stitch.py --ladder digits_wide --equation sde

For one ladder (`mlem_jax.pretrained`: `digits_wide`, the 123× ladder, or `digits`)
and one equation, the reverse SDE with SDE-DPM-Solver++(1) on the uniform grid or
the probability-flow ODE with DPM-Solver++(2M) on the log-SNR grid (the grids
`samplers.py` uses), every run starts from the same `samples` prior draws and (SDE)
one Brownian path per sample, coarsened from `fine_steps` (`samplers.Bench`):

* **Single networks:** every level alone (`md.sample`) at `single_steps`.
* **T-Stitch:** `mj.Stitch.from_fractions(k, (j, k-1), (f,), grid=ts)` for every
  cheaper level `j` and fraction `f` of `fractions`, at `stitch_steps`, and the
  reversed order `(k-1, j)` at `reversed_fractions`.
* **Periodic:** `md.Periodic((1, m))` on the sub-ladder `(j, top)` of
  `periodic_levels`, `m` in `periodic_periods`.
* **Randomized multilevel** (as the README and docs/sampling.md use it): `md.calibrate_sampler` at the
  step count sampled with (its grid the sampler's), `choose_levels` and
  `restrict(...).schedule` at budgets `ml_fractions` of the same-step top-level
  cost, the 2% floor.
* **Hybrid:** `Calibration.hybrid` on the same calibration, at budgets
  `hybrid_fractions` of the same-step top-level cost and at target errors
  `hybrid_targets` (fractions of the top network's own RMS error at that step
  count), 2% floor on the randomised corrections, cost in FLOPs.

Probability schedules (stitches, hybrids, the top level through the ladder) run as
`mlem_sample` with their per-step probability table (`step_table`: the schedule's
own `probabilities_on_grid`, as a `Rates` table with one bin per step), so every
such run at one step count shares one compiled solve; `stitch_check` records that a
`Stitch` solve and its table's solve agree. Randomised schedules run `level_keys`
level keys, key `i` on block `i` of the samples (so the RMS and KID average over
the keys at the cost of one pass); deterministic ones run every block too.

Error: RMS pathwise distance to SDE-DPM-Solver++(1) (ODE: DPM-Solver++(2M)) with
the top network at `fine_steps` steps, same draws and paths. Quality: KID in the
digits classifier's features (`md.digits_quality`), paired against the same
reference run (`SampleQuality.difference`). Cost: FLOPs from the manifest times the
realised evaluations (as top-level-equivalent evaluations) and wall seconds of the
same runs (each compiled solve warmed up once, then timed block by block).
Predicted (`Calibration.predict`) against realised error (RMS distance to the top
network alone at the same step count) and cost, for every hybrid and stitch run.

"Matched": for a hybrid run, the cheapest run of a competing family whose mean
squared error (or KID) is not significantly worse (paired over the same samples:
difference below two standard errors). Writes
`benchmarks/results/stitch_<ladder>_<equation>.json` and prints the markdown
summary. `--quick`: a smoke run (tiny sizes, `_quick` file).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, write_json  # noqa: E402
from samplers import ODE_SAMPLERS, RESULTS, SDE_SAMPLERS, Bench, _per_sample  # noqa: E402

import mlem_jax as mj  # noqa: E402
from mlem_jax import diffusion as md  # noqa: E402
from mlem_jax._step import probabilities_on_grid  # noqa: E402

SAMPLER = {"sde": "SDE-DPM++(1)", "ode": "DPM++(2M)"}

SETTINGS = dict(
    samples=512,
    level_keys=4,
    fine_steps=256,
    single_steps=(8, 16, 32, 64),
    stitch_steps=(16, 32, 64),
    fractions=(0.2, 0.4, 0.6, 0.8),
    reversed_fractions=(0.5,),
    reversed_steps=(32,),
    periodic_levels=(3,),
    periodic_periods=(2, 4),
    periodic_steps=(32, 64),
    ml_steps=(16, 32, 64),
    ml_fractions=(0.3, 0.5, 0.8),
    hybrid_steps=(16, 32, 64),
    hybrid_fractions=(0.3, 0.5, 0.8),
    hybrid_targets=(1.0, 0.5),
    min_probability=0.02,
    calibration_batch=64,
    pilot_keys=4,
    num_bins=8,
    range_top_equivalent=(8.0, 40.0),
)
QUICK = dict(
    SETTINGS,
    samples=16,
    level_keys=2,
    fine_steps=8,
    single_steps=(4, 8),
    stitch_steps=(8,),
    fractions=(0.5,),
    reversed_fractions=(0.5,),
    reversed_steps=(8,),
    periodic_levels=(0,),
    periodic_periods=(2,),
    periodic_steps=(8,),
    ml_steps=(8,),
    ml_fractions=(0.6,),
    hybrid_steps=(8,),
    hybrid_fractions=(0.6,),
    hybrid_targets=(1.0,),
    calibration_batch=4,
    pilot_keys=1,
    num_bins=2,
    range_top_equivalent=(0.0, 1e9),
)


def step_table(schedule, ts) -> mj.Rates:
    """`schedule` as a `Rates` table with one bin per step of the grid `ts` (its own
    probabilities there: rate `inf` where `p = 1`, `p/|h|` elsewhere), so that every
    probability schedule at one step count runs through one compiled solve."""
    ts = np.asarray(ts, np.float64)
    hs = np.diff(ts)
    p = np.asarray(
        probabilities_on_grid(schedule, jnp.asarray(ts[:-1]), jnp.asarray(hs)),
        np.float64,
    )
    rates = np.where(p >= 1, np.inf, p / np.abs(hs)[:, None])
    order = np.argsort(ts[:-1] + hs / 2)
    return mj.Rates(
        jnp.asarray(rates[order], jnp.float32), jnp.asarray(np.sort(ts), jnp.float32)
    )


def is_deterministic(schedule, ts) -> bool:
    ts = np.asarray(ts, np.float64)
    p = np.asarray(
        probabilities_on_grid(schedule, jnp.asarray(ts[:-1]), jnp.asarray(np.diff(ts)))
    )
    return bool(np.all((p == 0) | (p == 1)))


class Runner:
    """The bench, its blocks of samples, and timed runs."""

    def __init__(self, settings, seed, ladder, equation):
        self.s = settings
        self.ode = equation == "ode"
        self.name = SAMPLER[equation]
        self.bench = Bench(
            dict(settings, batch=settings["samples"]), seed, self.ode, ladder
        )
        b = self.bench
        self.k = len(b.nets)
        self.sampler, self.grid = (ODE_SAMPLERS if self.ode else SDE_SAMPLERS)[
            self.name
        ]
        self.blocks = [
            slice(i * (settings["samples"] // settings["level_keys"]), None)
            for i in range(settings["level_keys"])
        ]
        n_blk = settings["samples"] // settings["level_keys"]
        self.blocks = [
            slice(i * n_blk, (i + 1) * n_blk) for i in range(settings["level_keys"])
        ]
        self.warm: set = set()

    def ts(self, n):
        return np.asarray(
            md.time_grid(
                self.bench.param, n, t0=self.bench.t0, t1=self.bench.t1, kind=self.grid
            ),
            np.float64,
        )

    def _blocks(self, make, compile_key, keys: bool, warm: bool = True):
        """Run `make(rows, key) -> thunk` on every block: warm up once per
        `compile_key`, then time each block; `(y, evaluations, seconds)`."""
        b = self.bench
        if warm and compile_key not in self.warm:
            jax.block_until_ready(
                make(self.blocks[0], jax.random.fold_in(b.level_key, 0))()
            )
            self.warm.add(compile_key)
        ys, evs, secs, cpu = [], [], 0.0, 0.0
        for i, rows in enumerate(self.blocks):
            key = jax.random.fold_in(b.level_key, i if keys else 0)
            thunk = make(rows, key)
            start, c = time.perf_counter(), time.process_time()
            out = jax.block_until_ready(thunk())
            secs += time.perf_counter() - start
            cpu += time.process_time() - c
            ys.append(np.asarray(out[0]))
            evs.append(out[1])
        return np.concatenate(ys), evs, (secs, cpu)

    def single(self, level, n, warm: bool = True):
        b = self.bench
        per = self.sampler.evaluations_per_step

        def make(rows, key):
            return b.single(
                self.name,
                level,
                n * per,
                y0=b.y0[rows],
                dw_fine=None if b.dw_fine is None else b.dw_fine[:, rows],
            )[1]

        y, _, secs = self._blocks(make, ("single", level, n), keys=False, warm=warm)
        ev = np.zeros(self.k)
        ev[level] = n * per
        return y, ev, secs

    def multilevel(self, idx, schedule, n, keys, compile_key):
        b = self.bench

        def make(rows, key):
            return b.multilevel(
                self.name,
                idx,
                schedule,
                n,
                key,
                y0=b.y0[rows],
                dw_fine=None if b.dw_fine is None else b.dw_fine[:, rows],
            )

        y, infos, secs = self._blocks(make, compile_key, keys)
        ev = np.zeros(self.k)
        ev[list(idx)] = np.mean([np.asarray(i.evaluations) for i in infos], axis=0)
        return y, ev, secs


def measure(settings, seed, ladder, equation, log=print, checkpoint=None) -> dict:
    """Every run on one ladder and equation; `checkpoint(result)`, if given, gets
    the analysed result so far after each step count (a partial file on disk if
    the run is cut short)."""
    run = Runner(settings, seed, ladder, equation)
    b, k = run.bench, run.k
    flops = b.flops
    top_flops = float(flops[-1])
    t_start = time.perf_counter()
    log(
        f"[{equation}] {k} levels, FLOPs/top "
        + ", ".join(f"{f / top_flops:.4f}" for f in flops)
        + f"; level seconds (batch {settings['samples']}) "
        + ", ".join(f"{1e3 * s:.1f} ms" for s in b.level_seconds)
    )
    fine = settings["fine_steps"]
    y_ref, _, _ = run.single(k - 1, fine, warm=False)  # not timed
    log(f"reference x{fine} ({time.perf_counter() - t_start:.0f} s)")
    runs: list[dict] = []
    outputs: dict[int, np.ndarray] = {}

    def record(y, ev, secs, **fields):
        errors = _per_sample(y, y_ref)
        r = dict(
            fields,
            evaluations=ev.tolist(),
            flops=float(ev @ flops),
            top_equivalent=float(ev @ flops / top_flops),
            seconds=secs[0],
            cpu_seconds=secs[1],
            error=float(np.sqrt(np.mean(errors**2))),
            median_error=float(np.median(errors)),
            blowups=b.blowups(y),
            _sq=errors**2,
        )
        outputs[len(runs)] = y
        runs.append(r)
        log(
            f"  {describe(r):<44} top-eq {r['top_equivalent']:6.2f}  s {secs[0]:7.2f}  "
            f"rms {r['error']:.4f}"
            + (
                f"  pred/real err {r['predicted_error']:.3f}/{r['realised_error']:.3f}"
                f"  cost {r['predicted_top_equivalent']:.2f}/{r['top_equivalent']:.2f}"
                if r.get("predicted_error") is not None
                else ""
            )
            + f"  ({time.perf_counter() - t_start:.0f} s)"
        )
        return r

    # Single networks.
    top_at = {}
    for n in sorted(set(settings["single_steps"]) | set(settings["stitch_steps"])):
        for level in range(k - 1, -1, -1):
            if level < k - 1 and n not in settings["single_steps"]:
                continue
            y, ev, secs = run.single(level, n)
            record(y, ev, secs, kind="single", level=level + 1, steps=n)
            if level == k - 1:
                top_at[n] = y

    quality = md.digits_quality(num_blocks=min(8, settings["samples"] // 2))
    ref_features = quality.features(jnp.asarray(y_ref))
    kid_ref = quality(jnp.asarray(y_ref))
    features: dict = {}

    def analyse(partial: bool) -> dict:
        """KID of every run (paired against the reference run), seconds per
        top-level evaluation, the matched comparisons."""
        for i, r in enumerate(runs):
            if i in features:
                continue
            features[i] = quality.features(jnp.asarray(outputs[i]))
            r["kid_minus_reference"], r["kid_minus_reference_stderr"] = (
                md.kernel_distance_difference(
                    features[i],
                    ref_features,
                    quality.reference,
                    num_blocks=quality.num_blocks,
                )
            )
        top_seconds = float(
            np.median(
                [
                    r["seconds"] / sum(r["evaluations"])
                    for r in runs
                    if r["kind"] == "single" and r["level"] == k
                ]
            )
        )
        top_cpu = float(
            np.median(
                [
                    r["cpu_seconds"] / sum(r["evaluations"])
                    for r in runs
                    if r["kind"] == "single" and r["level"] == k
                ]
            )
        )
        for r in runs:
            r["top_equivalent_seconds"] = r["seconds"] / top_seconds
            r["top_equivalent_cpu_seconds"] = r["cpu_seconds"] / top_cpu
        result = dict(
            ladder=ladder,
            equation="probability-flow ODE" if run.ode else "reverse SDE",
            sampler=run.name,
            grid=run.grid,
            samples=settings["samples"],
            settings={
                a: (list(v) if isinstance(v, tuple) else v) for a, v in settings.items()
            },
            level_flops=flops.tolist(),
            level_seconds=b.level_seconds.tolist(),
            top_seconds_per_evaluation=top_seconds,
            reference=dict(sampler=run.name, steps=fine, level=k, kid=list(kid_ref)),
            stitch_check=stitch_check_box[0],
            runs=runs,
        )
        result["matched"] = matched(result, runs, features, quality)
        result["runs"] = [
            dict(
                {a: v for a, v in r.items() if a != "_sq"},
                sq_errors=np.asarray(r["_sq"], np.float32).tolist(),
            )
            for r in runs
        ]
        result["partial"] = partial
        result["wall_seconds"] = time.perf_counter() - t_start
        return result

    everything = tuple(range(k))
    p_min = settings["min_probability"]
    stitch_check_box: list = [None]
    order = list(
        dict.fromkeys(
            (
                *settings["stitch_steps"],
                *settings["hybrid_steps"],
                *settings["ml_steps"],
            )
        )
    )
    for n in order:  # in the settings' order: the decisive step counts first
        ts = run.ts(n)
        top_y = top_at.get(n)
        if top_y is None:
            top_y, ev, secs = run.single(k - 1, n)
            top_at[n] = top_y
        c0 = time.perf_counter()
        cal_y0, _ = _prior(b, seed, settings["calibration_batch"], n)
        levels = mj.Levels(tuple(b.nets), tuple(float(c) for c in flops))
        cal = md.calibrate_sampler(
            levels,
            b.param,
            run.sampler,
            cal_y0,
            t0=b.t0,
            t1=b.t1,
            num_steps=n,
            key=jax.random.fold_in(jax.random.key(seed), 500 + n),
            grid=run.grid,
            num_bins=min(settings["num_bins"], n),
            pilot_keys=settings["pilot_keys"],
            measure_costs=False,
        )
        log(f"[x{n}] calibrate_sampler {time.perf_counter() - c0:.0f} s")
        top_cost = n * top_flops

        def prob_run(schedule, kind, ts=ts, cal=cal, n=n, top_y=top_y, **fields):
            table = step_table(schedule, ts)
            det = is_deterministic(table, ts)
            pred = cal.predict(schedule, n)
            y, ev, secs = run.multilevel(
                everything, table, n, keys=not det, compile_key=("table", n)
            )
            realised = float(np.sqrt(np.mean(_per_sample(y, top_y) ** 2)))
            return record(
                y,
                ev,
                secs,
                kind=kind,
                steps=n,
                deterministic=det,
                predicted_error=pred.error,
                predicted_top_equivalent=pred.cost / top_flops,
                realised_error=realised,
                **fields,
            )

        # T-Stitch.
        if n in settings["stitch_steps"] or n in settings["reversed_steps"]:
            for j in range(k - 1):
                orders = []
                if n in settings["stitch_steps"]:
                    orders += [((j, k - 1), f) for f in settings["fractions"]]
                if n in settings["reversed_steps"]:
                    orders += [((k - 1, j), f) for f in settings["reversed_fractions"]]
                for order, f in orders:
                    st = mj.Stitch.from_fractions(k, order, (f,), grid=ts)
                    r = prob_run(
                        st,
                        "stitch",
                        order=[o + 1 for o in order],
                        fraction=f,
                    )
                    if stitch_check_box[0] is None:
                        # The Stitch itself against its table (first block).
                        rows = run.blocks[0]
                        y_st, _ = b.multilevel(
                            run.name,
                            everything,
                            st,
                            n,
                            b.level_key,
                            y0=b.y0[rows],
                            dw_fine=None if b.dw_fine is None else b.dw_fine[:, rows],
                        )()
                        diff = float(
                            np.max(
                                np.abs(
                                    np.asarray(y_st)
                                    - outputs[len(runs) - 1][: len(np.asarray(y_st))]
                                )
                            )
                        )
                        stitch_check_box[0] = dict(
                            steps=n, order=r["order"], fraction=f, max_abs_diff=diff
                        )
                        log(f"  Stitch vs its table: max |diff| {diff:.3g}")
        # Hybrid.
        if n in settings["hybrid_steps"]:
            goals = [("budget", f * top_cost, f) for f in settings["hybrid_fractions"]]
            top_rms = next(
                r["error"]
                for r in runs
                if r["kind"] == "single" and r["level"] == k and r["steps"] == n
            )
            goals += [
                ("target_error", f * top_rms, f) for f in settings["hybrid_targets"]
            ]
            for what, value, f in goals:
                try:
                    h = cal.hybrid(
                        **{what: value},
                        num_steps=n,
                        min_probability=p_min,
                        cost="costs",
                    )
                except ValueError as e:
                    log(f"  hybrid {what}={value:.3g}: {e}")
                    continue
                prob_run(
                    h,
                    "hybrid",
                    goal=what,
                    goal_fraction=f,
                    goal_value=value,
                    returned=type(h).__name__,
                    **(
                        dict(
                            stitch_levels=[i + 1 for i in h.levels],
                            switch_times=np.asarray(h.switch_times).tolist(),
                        )
                        if isinstance(h, mj.Stitch)
                        else {}
                    ),
                )
        # Randomized multilevel, as the README and docs/sampling.md use it.
        if n in settings["ml_steps"]:
            for f in settings["ml_fractions"]:
                budget = f * top_cost
                try:
                    idx = cal.choose_levels(
                        budget=budget, num_steps=n, min_probability=p_min
                    )
                except ValueError as e:
                    log(f"  ML f{f}: {e}")
                    continue
                if len(idx) == 1:
                    log(f"  ML f{f}: choose_levels picks the top level alone")
                    continue
                sub = cal.restrict(idx)
                try:
                    sched = sub.schedule(
                        budget=budget, num_steps=n, min_probability=p_min
                    )
                except ValueError as e:
                    log(f"  ML f{f}: {e}")
                    continue
                pred = sub.predict(sched, n)
                y, ev, secs = run.multilevel(
                    idx, sched, n, keys=True, compile_key=("ml", idx, n)
                )
                record(
                    y,
                    ev,
                    secs,
                    kind="multilevel",
                    steps=n,
                    levels=[i + 1 for i in idx],
                    fraction=f,
                    predicted_error=pred.error,
                    predicted_top_equivalent=pred.cost / top_flops,
                    realised_error=float(np.sqrt(np.mean(_per_sample(y, top_y) ** 2))),
                )
        # Periodic (correction caching) on (j, top).
        if n in settings["periodic_steps"]:
            for j in settings["periodic_levels"]:
                for m in settings["periodic_periods"]:
                    y, ev, secs = run.multilevel(
                        (j, k - 1),
                        md.Periodic((1, m)),
                        n,
                        keys=False,
                        compile_key=("periodic", j, m, n),
                    )
                    record(
                        y,
                        ev,
                        secs,
                        kind="periodic",
                        steps=n,
                        levels=[j + 1, k],
                        period=m,
                    )

        if checkpoint is not None:
            checkpoint(analyse(partial=True))
    return analyse(partial=False)


def _prior(bench, seed, samples, n):
    """Calibration draws, apart from the benchmark's."""
    sde = md.VPSDE(beta_min=bench.param.beta_min, beta_max=bench.param.beta_max)
    key = jax.random.fold_in(jax.random.key(seed), 303)
    return sde.prior_sample(key, (samples, *bench.y0.shape[1:])), None


def describe(r: dict) -> str:
    kind = r["kind"]
    if kind == "single":
        return f"level {r['level']} x{r['steps']}"
    if kind == "stitch":
        return (
            f"stitch {'->'.join(map(str, r['order']))} f{r['fraction']} x{r['steps']}"
        )
    if kind == "hybrid":
        what = r["returned"]
        if r.get("stitch_levels"):
            what += " " + "->".join(map(str, r["stitch_levels"]))
        return f"hybrid {r['goal']} {r['goal_fraction']:g} x{r['steps']} ({what})"
    if kind == "multilevel":
        return (
            f"ML levels {','.join(map(str, r['levels']))} f{r['fraction']} "
            f"x{r['steps']}"
        )
    return f"periodic {r['levels']} m{r['period']} x{r['steps']}"


# ----------------------------------------------------------------------- analysis

FAMILIES = {
    "top network": lambda r, k: r["kind"] == "single" and r["level"] == k,
    "best single network": lambda r, k: r["kind"] == "single",
    "best T-Stitch": lambda r, k: r["kind"] == "stitch",
    "Periodic": lambda r, k: r["kind"] == "periodic",
    "randomized ML": lambda r, k: r["kind"] == "multilevel",
    "hybrid": lambda r, k: r["kind"] == "hybrid",
}


def _not_worse(sq_a, sq_b) -> bool:
    """Run a's mean squared error not significantly above run b's (paired, 2 SE)."""
    d = np.asarray(sq_a) - np.asarray(sq_b)
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    return bool(d.mean() <= 2 * se)


def _curve(q: dict) -> tuple:
    """The cost–error curve a run lies on (for interpolating between its points):
    a network alone over step counts, a stitch (order, steps) over fractions, a
    Periodic over step counts, a randomized ML or hybrid run over its budgets."""
    kind = q["kind"]
    if kind == "single":
        return (kind, q["level"])
    if kind == "stitch":
        return (kind, tuple(q["order"]), q["steps"])
    if kind == "periodic":
        return (kind, tuple(q["levels"]), q["period"])
    return (kind, q["steps"])


def interpolated_cost(pool: list[dict], error: float, unit: str):
    """`(cost, curve)`: the least cost (in `unit`) at which a curve of `pool`
    reaches `error`, each curve interpolated log–log between its two points
    bracketing `error` (its cheapest point if that is already as accurate), as
    `samplers._best_single_cost` does per sampler; `(None, None)` if none does."""
    best, where = None, None
    for key in {_curve(q) for q in pool}:
        pts = sorted((q for q in pool if _curve(q) == key), key=lambda q: q[unit])
        i = next((i for i, q in enumerate(pts) if q["error"] <= error), None)
        if i is None:
            continue
        if i == 0:
            cost = pts[0][unit]
        else:
            a, b = pts[i - 1], pts[i]
            x0, x1 = math.log(a["error"]), math.log(b["error"])
            w = 1.0 if x1 == x0 else (math.log(error) - x0) / (x1 - x0)
            cost = math.exp(
                math.log(a[unit]) + w * (math.log(b[unit]) - math.log(a[unit]))
            )
        if best is None or cost < best:
            best, where = (
                cost,
                " / ".join(describe(q) for q in pts[max(0, i - 1) : i + 1]),
            )
    return best, where


def matched(result, runs, features, quality) -> list[dict]:
    """For each hybrid and randomized ML run in `range_top_equivalent`, per
    competing family, the cost (FLOPs and seconds) over the run's of:

    - `rms_interp_*`: the family's cost to reach the run's RMS error, each of its
        curves interpolated log–log (`interpolated_cost`);
    - `rms_strict_*`: its cheapest run with RMS at most the run's;
    - `rms_*`: its cheapest run whose mean squared error is not significantly
        worse (paired over the same samples, 2 standard errors; needs the
        per-sample errors);
    - `kid_*`: its cheapest run whose KID is not significantly worse (paired;
        needs the samples' features).

    Runs with blown-up samples never match (their heavy tails make a paired test
    pass at any error)."""
    k = len(result["level_flops"])
    lo, hi = result["settings"]["range_top_equivalent"]
    out = []
    for i, r in enumerate(runs):
        if r["kind"] not in ("hybrid", "multilevel"):
            continue
        if not lo <= r["top_equivalent"] <= hi:
            continue
        entry = dict(run=i, describe=describe(r), error=r["error"])
        entry["top_equivalent"] = r["top_equivalent"]
        entry["top_equivalent_seconds"] = r["top_equivalent_seconds"]
        for fam, pick in FAMILIES.items():
            pool = [
                (j, q)
                for j, q in enumerate(runs)
                if pick(q, k) and j != i and not q.get("blowups", 0)
            ]
            rows = {}
            for crit in ("rms", "kid"):
                if crit == "rms" and r.get("_sq") is None:
                    continue
                paired = features.get(i) is not None
                if crit == "kid" and not paired and "kid_minus_reference" not in r:
                    continue
                ok = []
                for j, q in pool:
                    if crit == "rms":
                        good = _not_worse(q["_sq"], r["_sq"])
                    elif not paired:
                        # From the stored KIDs (each paired with the reference
                        # run): the difference within two combined errors.
                        d = q["kid_minus_reference"] - r["kid_minus_reference"]
                        se = math.hypot(
                            q["kid_minus_reference_stderr"],
                            r["kid_minus_reference_stderr"],
                        )
                        good = d <= 2 * se
                    else:
                        d, se = md.kernel_distance_difference(
                            features[j],
                            features[i],
                            quality.reference,
                            num_blocks=quality.num_blocks,
                        )
                        good = d <= 2 * se
                    if good:
                        ok.append((j, q))
                for unit in ("flops", "seconds"):
                    best = min(ok, key=lambda x: x[1][unit], default=None)
                    rows[f"{crit}_{unit}"] = (
                        None
                        if best is None
                        else dict(
                            run=best[0],
                            describe=describe(best[1]),
                            error=best[1]["error"],
                            cost=best[1][unit],
                            ratio=best[1][unit] / r[unit],
                        )
                    )
            members = [q for _, q in pool]
            strict = [q for q in members if q["error"] <= r["error"]]
            units = ("flops", "seconds")
            if all("cpu_seconds" in q for q in [r, *members]):
                units += ("cpu_seconds",)
            for unit in units:
                best = min(strict, key=lambda q: q[unit], default=None)
                rows[f"rms_strict_{unit}"] = (
                    None
                    if best is None
                    else dict(describe=describe(best), ratio=best[unit] / r[unit])
                )
                cost, where = interpolated_cost(members, r["error"], unit)
                rows[f"rms_interp_{unit}"] = (
                    None
                    if cost is None
                    else dict(describe=where, cost=cost, ratio=cost / r[unit])
                )
            entry[fam] = rows
        out.append(entry)
    return out


def _x(v) -> str:
    return "—" if v is None else f"{v['ratio']:.2f}×"


def _get(m, fam, key):
    return (m.get(fam) or {}).get(key)


def table(result: dict) -> str:
    """The markdown summary: for each hybrid and randomized ML run, each family's
    cost at the run's RMS error over the run's (interpolated on the family's
    curves; strict and paired variants beside), and the predictions."""
    runs = result["runs"]
    fams = ("top network", "best single network", "best T-Stitch", "Periodic")
    fams += ("randomized ML", "hybrid")
    lines = [
        f"**{result['ladder']}, {result['equation']} ({result['sampler']}, "
        f"{result['grid']} grid), {result['samples']} samples**",
        "",
        "Each cell: the family's cost to reach the run's RMS error over the run's "
        "cost, FLOPs / process CPU s / wall s (interpolated log–log on the family's curves; "
        "> 1: the run is cheaper). Runs spending "
        f"{result['settings']['range_top_equivalent'][0]:g}–"
        f"{result['settings']['range_top_equivalent'][1]:g} top-level evaluations.",
        "",
        "| run | RMS | top-eq FLOPs / s | "
        + " | ".join(fams)
        + " | best T-Stitch: strict RMS ≤ / paired not worse (FLOPs) | matched "
        "KID (FLOPs): best T-Stitch / top network |",
        "|---|---|---|" + "---|" * (len(fams) + 2),
    ]
    for m in result["matched"]:
        r = runs[m["run"]]
        cells = [
            " / ".join(
                _x(_get(m, f, f"rms_interp_{u}"))
                for u in ("flops", "cpu_seconds", "seconds")
            )
            for f in fams
        ]
        lines.append(
            f"| {m['describe']} | {r['error']:.3f} | {r['top_equivalent']:.1f} / "
            f"{r['top_equivalent_seconds']:.1f} | "
            + " | ".join(cells)
            + f" | {_x(_get(m, 'best T-Stitch', 'rms_strict_flops'))} / "
            f"{_x(_get(m, 'best T-Stitch', 'rms_flops'))}"
            + f" | {_x(_get(m, 'best T-Stitch', 'kid_flops'))} / "
            f"{_x(_get(m, 'top network', 'kid_flops'))} |"
        )
    lines.append("")
    for kind in ("hybrid", "multilevel"):
        pts = [m for m in result["matched"] if runs[m["run"]]["kind"] == kind]
        scored = [
            (v["ratio"], m)
            for m in pts
            if (v := _get(m, "best T-Stitch", "rms_interp_flops")) is not None
        ]
        if not scored:
            continue
        ratio, m = max(scored, key=lambda x: x[0])
        name = "hybrid" if kind == "hybrid" else "randomized ML"
        lines.append(
            f"Best {name} against the best T-Stitch at matched RMS "
            f"(interpolated): {ratio:.2f}× in FLOPs, "
            f"{_x(_get(m, 'best T-Stitch', 'rms_interp_cpu_seconds'))} in CPU "
            f"seconds, {_x(_get(m, 'best T-Stitch', 'rms_interp_seconds'))} in wall "
            "seconds "
            f"({m['describe']}, RMS {m['error']:.3f}; stitches "
            f"{_get(m, 'best T-Stitch', 'rms_interp_flops')['describe']}); against "
            f"the top network alone {_x(_get(m, 'top network', 'rms_interp_flops'))}"
            f" / {_x(_get(m, 'top network', 'rms_interp_seconds'))}."
        )
    lines.append("")
    lines.append(
        "| run | predicted / realised error (vs top network, same steps) | "
        "predicted / realised top-eq FLOPs |"
    )
    lines.append("|---|---|---|")
    for r in runs:
        if r.get("predicted_error") is None or r["kind"] == "stitch":
            continue
        lines.append(
            f"| {describe(r)} | {r['predicted_error']:.3f} / {r['realised_error']:.3f}"
            f" ({r['predicted_error'] / max(r['realised_error'], 1e-12):.2f}) | "
            f"{r['predicted_top_equivalent']:.2f} / {r['top_equivalent']:.2f} |"
        )
    st = [r for r in runs if r["kind"] == "stitch"]
    if st:
        ratios = np.array(
            [r["predicted_error"] / max(r["realised_error"], 1e-12) for r in st]
        )
        lines.append(
            f"| all {len(st)} stitches: predicted/realised error | median "
            f"{np.median(ratios):.2f}, range {ratios.min():.2f}–{ratios.max():.2f} | "
            "(cost exact) |"
        )
    return "\n".join(lines)


def reanalyse(result: dict) -> dict:
    """Recompute the matched comparisons of a stored result from its runs (the
    paired MSE test where per-sample errors were stored; KID from each run's
    stored difference to the reference run, the samples being gone)."""
    runs = [
        dict(r, _sq=None if "sq_errors" not in r else np.asarray(r["sq_errors"]))
        for r in result["runs"]
    ]
    new = matched(result, runs, {}, None)
    out = dict(result, matched=new)
    if any("sq_errors" not in r for r in result["runs"]) or new:
        out["matched_note"] = (
            "reanalysed from the stored runs: KID matches from each run's stored "
            "KID difference to the reference run (combined standard errors, not "
            "paired between the two runs)"
            + (
                "; no per-sample errors stored, so no paired MSE matches"
                if any("sq_errors" not in r for r in result["runs"])
                else ""
            )
        )
    out["table"] = table(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--ladder", default="digits_wide")
    parser.add_argument("--equation", default="sde", choices=("sde", "ode"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="override a setting, e.g. --set stitch_steps=16,32 (ints/floats)",
    )
    parser.add_argument(
        "--reanalyse",
        action="store_true",
        help="recompute the matched comparisons and the table of the stored result",
    )
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else SETTINGS)
    if args.samples:
        settings["samples"] = args.samples
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in settings:
            parser.error(f"--set: unknown setting {name!r}")
        old = settings[name]
        parse = float if "." in value or isinstance(old, float) else int
        settings[name] = (
            tuple(parse(v) for v in value.split(",") if v)
            if isinstance(old, tuple)
            else parse(value)
        )
    env = environment(args.seed)
    name = f"stitch_{args.ladder}_{args.equation}" + ("_quick" if args.quick else "")
    path = os.path.join(args.out, name + ".json")

    if args.reanalyse:
        with open(path) as f:
            result = reanalyse(json.load(f))
        write_json(path, result)
        print(result["table"], flush=True)
        return 0

    def save(result):
        result["environment"] = env
        result["seed"] = args.seed
        result["table"] = table(result)
        write_json(path, result)
        print(result["table"], flush=True)

    save(measure(settings, args.seed, args.ladder, args.equation, checkpoint=save))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
