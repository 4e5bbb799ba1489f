"""The samplers users pick, against their multilevel versions, on the shipped digits
ladder: cost (FLOPs and seconds, measured in one run) against pathwise error and
distribution distance.

For the reverse SDE and the probability-flow ODE of the shipped ladder (5 UNet
ε-predictors of the VP-SDE, `VPLinear` in `mlem_jax.diffusion`):

* **Single network.** Every sampler at step counts giving 4–64 evaluations of the
  top network. Reverse SDE: Euler–Maruyama (`mlem_jax.em_solve` on the reverse
  drift), SDE-DPM-Solver++(1), SDE-DPM-Solver++(2M), all on a uniform time grid;
  SDE-DPM-Solver++(1) also with the two cheapest networks (4–32 evaluations); DDIM
  η = 1 at 8 steps (it is SDE-DPM-Solver++(1) written another way; the run shows
  it). Probability-flow ODE (top network, 8–64 evaluations): Euler and Heun on the
  EDM (ρ = 7) grid, DDIM η = 0 on the uniform grid, DPM-Solver++(2M) on the uniform
  log-SNR grid (each on the grid its authors recommend). The grid is reduced from
  "every sampler with every network" to fit the run on one shared core: see
  `SETTINGS`.
* **Multilevel.** `mlem_jax.mlem_solve` (ML-EM) and `mlem_jax.diffusion.mlem_sample`
  with the affine samplers, rates from the shipped ladder's `calibrate`-ion (reverse
  SDE; for the ODE, `mlem_jax.calibrate` on the probability-flow drifts, pilots of
  Euler on a uniform grid), priced in seconds measured here per level
  (`mlem_jax.time_in_scan`), at budgets that are fractions of the same-step top-level
  cost, over every level and over the sub-ladder `Calibration.choose_levels` picks,
  with a 2% floor on every firing probability (as the CLI). The calibration is
  Euler–Maruyama's, measured in drift units on a uniform grid: to first order in the
  step, an exponential-integrator step moves the state by `h·Δf` for a drift change
  `Δf`, as an Euler step does, so the same rates are right to leading order; they
  are not re-measured along each sampler's own grid and prediction.
* **Error.** Every SDE run uses the same prior draws and one Brownian path per
  sample (a fine path coarsened, `mlem_jax.coarsen_increments`); the reference is
  SDE-DPM-Solver++(1) with the top network at `fine_steps` steps on that path (the
  fine Euler–Maruyama solve is recorded beside it: their distance bounds the
  reference's own error). The ODE reference is DPM-Solver++(2M) with the top
  network at `fine_steps` log-SNR steps (fine Heun recorded beside it). Per run:
  RMS and median pathwise error over the samples (and the level keys of a
  multilevel run), blow-ups (samples with a pixel farther from the data's midpoint
  than 3× its half-range), sliced-Wasserstein distance to held-out test digits
  (`mlem_jax.diffusion.sliced_wasserstein`, fixed directions; mean over level keys).
* **Cost.** FLOPs from the ladder's manifest (XLA cost analysis) times the realised
  evaluations; seconds of each compiled solve (compiled outside timing), median of
  `repeats` interleaved passes (multilevel: one timed pass per level key, mean over
  keys), all in this one process.
* **Matched error.** For each multilevel variant, at each of its points spending
  4–32 top-level evaluations: the least cost at which a single-network sampler of
  the same equation reaches the point's RMS error (each sampler-network curve
  interpolated log–log between its step counts, then the best), over the point's
  cost, in FLOPs, CPU seconds and wall-clock seconds; beside it the step-function
  speedup of ``benchmarks/_harness.py`'s `_matched_speedups`` (which overstates it just
  below a single run's error, the step counts being 2× apart).

Writes `benchmarks/results/samplers_<problem>_b<batch>.json` and the docs/results.md table
between the `samplers` markers (from both equations' stored results). Run pinned to
one core: `taskset -c 1 python benchmarks/samplers.py` (about 30 minutes for the
SDE and 10 for the ODE on one core of this project's CPU shared with other jobs;
`--equations sde` or `ode` runs one); `--reanalyse` recomputes the analysis and the
table from the stored results; `--quick` for a smoke run (no table update).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import sys
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_PAGE, environment, replace_results_block, write_json  # noqa: E402
from _harness import (  # noqa: E402
    _matched_speedups,
    ladder_problem,
    pareto_frontier,
)

import mlem_jax as mj  # noqa: E402
from mlem_jax import diffusion as md  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

SETTINGS = dict(
    batch=16,
    fine_steps=512,
    # Evaluations per solve (Heun: half the steps): the top network's, the cheaper
    # networks' (with the samplers in `cheap_samplers` only) and the ODE's.
    steps=(4, 8, 16, 32, 64),
    cheap_steps=(4, 8, 16, 32),
    ode_steps=(8, 16, 32, 64),
    sde_networks=(1, 2, 5),
    cheap_samplers=("SDE-DPM++(1)",),
    ode_networks=(5,),
    top_only_steps=(8,),
    sde_mlem_steps=(16, 32, 64),
    ode_mlem_steps=(32,),
    sde_fractions=(0.3, 0.5, 0.8),
    ode_fractions=(0.5, 0.8),
    # Multilevel variants over every level (with `all_levels_steps`; the others
    # run on the sub-ladder `choose_levels` picks).
    all_levels=("SDE-DPM++(1)",),
    all_levels_steps=(32, 64),
    sde_level_keys=4,
    ode_level_keys=3,
    repeats=3,
    min_probability=0.02,
    ode_pilot_steps=32,
    range_top_equivalent=(4.0, 32.0),
)
QUICK = dict(
    SETTINGS,
    batch=8,
    fine_steps=32,
    steps=(4, 8),
    cheap_steps=(4, 8),
    ode_steps=(4, 8),
    sde_networks=(1, 5),
    ode_networks=(5,),
    all_levels_steps=(8,),
    top_only_steps=(8,),
    sde_mlem_steps=(8,),
    ode_mlem_steps=(8,),
    sde_fractions=(0.6,),
    ode_fractions=(0.6,),
    sde_level_keys=2,
    ode_level_keys=2,
    repeats=1,
    ode_pilot_steps=8,
)

# name -> (sampler, grid); None = Euler–Maruyama on the reverse drift (em_solve).
SDE_SAMPLERS = {
    "EM": (None, "uniform"),
    "SDE-DPM++(1)": (md.SDEDPMSolverPP1(), "uniform"),
    "SDE-DPM++(2M)": (md.SDEDPMSolverPP2M(), "uniform"),
    "DDIM(eta=1)": (md.DDIM(eta=1.0), "uniform"),
}
ODE_SAMPLERS = {
    "Euler": (md.Euler(), "edm"),
    "Heun": (md.Heun(), "edm"),
    "DDIM(eta=0)": (md.DDIM(eta=0.0), "uniform"),
    "DPM++(2M)": (md.DPMSolverPP2M(), "logsnr"),
}
SDE_MULTILEVEL = ("EM", "SDE-DPM++(1)", "SDE-DPM++(2M)")
ODE_MULTILEVEL = ("DDIM(eta=0)", "DPM++(2M)")
TOP_ONLY = ("DDIM(eta=1)",)


class Eps(eqx.Module):
    """A per-image ε-network as a batched `f(t, y, args)`."""

    model: Any

    def __call__(self, t, y, args):
        del args
        return jax.vmap(self.model, in_axes=(None, 0))(t, y)


def _per_sample(y, ref) -> np.ndarray:
    d = np.asarray(y, np.float64) - np.asarray(ref, np.float64)
    return np.sqrt(np.sum(d.reshape(d.shape[0], -1) ** 2, axis=1))


class Bench:
    """The problem (ladder, prior draws, path, references) and compiled solves."""

    def __init__(self, settings: dict, seed: int, ode: bool, ladder: str | None = None):
        self.settings = settings
        self.ode = ode
        problem = ladder_problem(ladder, batch=settings["batch"], seed=seed, ode=ode)
        from mlem_jax.pretrained import load_ladder

        models, manifest = load_ladder(ladder)
        from mlem_jax.training import sde_from_manifest

        sde = manifest["spec"]["sde"]
        self.param = md.VPLinear(beta_min=sde["beta_min"], beta_max=sde["beta_max"])
        # A pytree (equinox bound method), so compiled solves take it as an argument.
        self.diffusion = sde_from_manifest(manifest).diffusion
        self.problem = problem
        self.nets = tuple(Eps(m) for m in models)
        self.drifts = problem.levels.fns
        self.flops = np.asarray(problem.levels.costs, np.float64)
        self.y0 = problem.y0
        self.t0, self.t1 = problem.t0, problem.t1
        key = jax.random.key(seed)
        path_key, self.level_key, sw_key = jax.random.split(key, 3)
        self.sw_key = sw_key
        fine = settings["fine_steps"]
        self.fine = fine
        self.dw_fine = (
            None
            if ode
            else mj.brownian_increments(
                path_key, self.y0.shape, t0=self.t0, t1=self.t1, num_steps=fine
            )
        )
        t_mid = jnp.asarray((self.t0 + self.t1) / 2, self.y0.dtype)
        self.level_seconds = np.asarray(
            [mj.time_in_scan(f, t_mid, self.y0) for f in self.drifts]
        )
        self.held_out, self.data_mid, self.data_half = _held_out(ladder=ladder)

    def dw(self, n: int, fine=None):
        """The Brownian path (`fine`: increments at any multiple of `n` steps;
        default this bench's fine path) coarsened to `n` steps."""
        fine = self.dw_fine if fine is None else fine
        if fine is None:
            return None
        return mj.coarsen_increments(fine, fine.shape[0] // n)

    def calibrate_truncation(
        self, m: int, seed: int, *, measure_costs: bool = True
    ) -> mj.Calibration:
        """`calibrate` on the ladder's `m` cheapest levels (FLOPs as costs), with
        the pilots of `settings` and the key `fold_in(key(seed), 7 + m)`: the one
        calibration of a truncation that `ladder_span.py` and `ladder_quality.py`
        both use. Seconds are the caller's to set (`with_seconds`)."""
        levels = mj.Levels(
            tuple(self.drifts[:m]), tuple(float(c) for c in self.flops[:m])
        )
        return mj.calibrate(
            levels,
            self.diffusion,
            self.y0,
            t0=self.t0,
            t1=self.t1,
            num_steps=self.settings["pilot_steps"],
            key=jax.random.fold_in(jax.random.key(seed), 7 + m),
            pilot_keys=self.settings["pilot_keys"],
            measure_costs=measure_costs,
        )

    # ----------------------------------------------------------- compiled solves
    @staticmethod
    @eqx.filter_jit
    def _em(drift, diffusion, y0, dw, key, t0, t1):
        return mj.em_solve(
            drift,
            diffusion,
            y0,
            t0=t0,
            t1=t1,
            num_steps=dw.shape[0],
            key=key,
            brownian=dw,
        )

    @staticmethod
    @eqx.filter_jit
    def _sample(net, param, sampler, grid, y0, dw, n, t0, t1):
        return md.sample(
            net, param, sampler, y0, t0=t0, t1=t1, num_steps=n, grid=grid, brownian=dw
        )

    @staticmethod
    @eqx.filter_jit
    def _mlem_em(levels, schedule, diffusion, y0, dw, key, t0, t1):
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

    @staticmethod
    @eqx.filter_jit
    def _mlem_sample(levels, schedule, param, sampler, grid, y0, dw, key, n, t0, t1):
        return md.mlem_sample(
            levels,
            schedule,
            param,
            sampler,
            y0,
            t0=t0,
            t1=t1,
            num_steps=n,
            key=key,
            grid=grid,
            brownian=dw,
        )

    def single(self, name: str, level: int, evaluations: int, y0=None, dw_fine=None):
        """A thunk for one single-network solve (`level` 0-based), from this
        bench's prior draws and path or from `y0` and the fine increments
        `dw_fine`."""
        samplers = ODE_SAMPLERS if self.ode else SDE_SAMPLERS
        sampler, grid = samplers[name]
        y0 = self.y0 if y0 is None else y0
        if sampler is None:
            dw = self.dw(evaluations, dw_fine)
            return evaluations, functools.partial(
                self._em,
                self.drifts[level],
                self.diffusion,
                y0,
                dw,
                self.level_key,
                self.t0,
                self.t1,
            )
        n = evaluations // sampler.evaluations_per_step
        return n, functools.partial(
            self._sample,
            self.nets[level],
            self.param,
            sampler,
            grid,
            y0,
            self.dw(n, dw_fine) if sampler.stochastic else None,
            n,
            self.t0,
            self.t1,
        )

    def multilevel(self, name: str, idx, schedule, n: int, key, y0=None, dw_fine=None):
        """A thunk for one multilevel solve on the levels `idx` (0-based); `y0`
        and `dw_fine` as in `single`."""
        samplers = ODE_SAMPLERS if self.ode else SDE_SAMPLERS
        sampler, grid = samplers[name]
        costs = tuple(float(self.flops[i]) for i in idx)
        y0 = self.y0 if y0 is None else y0
        if sampler is None:
            levels = mj.Levels(tuple(self.drifts[i] for i in idx), costs)
            return functools.partial(
                self._mlem_em,
                levels,
                schedule,
                self.diffusion,
                y0,
                self.dw(n, dw_fine),
                key,
                self.t0,
                self.t1,
            )
        levels = mj.Levels(tuple(self.nets[i] for i in idx), costs)
        return functools.partial(
            self._mlem_sample,
            levels,
            schedule,
            self.param,
            sampler,
            grid,
            y0,
            self.dw(n, dw_fine) if sampler.stochastic else None,
            key,
            n,
            self.t0,
            self.t1,
        )

    # ------------------------------------------------------------------ metrics
    def blowups(self, y) -> int:
        d = np.abs(np.asarray(y, np.float64) - self.data_mid)
        far = d.reshape(d.shape[0], -1).max(axis=1) > 3 * self.data_half
        return int(far.sum())

    def distance(self, y) -> float:
        if self.held_out is None:
            return math.nan
        y = jnp.where(jnp.isfinite(y), y, 1e6)
        return float(md.sliced_wasserstein(y, self.held_out, self.sw_key))


def _held_out(limit: int = 512, ladder: str | None = None):
    """Held-out test images of the ladder's dataset (for the distance) and the
    data's midpoint and half-range (for blow-ups)."""
    from mlem_jax.data import load_dataset
    from mlem_jax.pretrained import load_ladder

    _, manifest = load_ladder(ladder)
    spec = manifest["spec"].get("dataset", {})
    try:
        data = np.asarray(
            load_dataset(spec["name"], split="test", **spec.get("kwargs", {}))
        )
    except Exception as e:  # noqa: BLE001 - a missing dataset: no distance column
        print(f"no held-out data ({e}); distances skipped", flush=True)
        return None, 0.0, 1.0
    lo, hi = float(data.min()), float(data.max())
    return jnp.asarray(data[:limit]), (lo + hi) / 2, (hi - lo) / 2


def _ladder_calibration(bench: Bench, seed: int) -> mj.Calibration:
    """The reverse SDE: the shipped calibration (with this batch's FLOPs). The ODE:
    `calibrate` on the probability-flow drifts (no amplification pilots)."""
    if not bench.ode:
        from mlem_jax.pretrained import CALIBRATION, load_calibration, pretrained_path

        cal = load_calibration(os.path.join(pretrained_path(), CALIBRATION))
        if cal is None:
            raise FileNotFoundError("the shipped ladder has no calibration.json")
        costs = tuple(float(c) for c in bench.flops)
        cal = dataclasses.replace(cal, costs=costs, flops=costs)
    else:
        p = bench.problem
        cal = mj.calibrate(
            p.levels,
            None,
            bench.y0,
            t0=p.t0,
            t1=p.t1,
            num_steps=bench.settings["ode_pilot_steps"],
            key=jax.random.key(seed + 1),
            num_bins=8,
            pilot_keys=0,
            measure_costs=False,
        )
    return cal.with_seconds(tuple(float(s) for s in bench.level_seconds))


def measure(settings: dict, seed: int, ode: bool) -> dict:
    bench = Bench(settings, seed, ode)
    k = len(bench.nets)
    top_flops = float(bench.flops[-1])
    top_seconds = float(bench.level_seconds[-1])
    label = "ode" if ode else "sde"
    print(
        f"[{label}] level seconds per evaluation (batch {settings['batch']}): "
        + ", ".join(f"{1e3 * s:.2f} ms" for s in bench.level_seconds),
        flush=True,
    )

    # References: the fine solves with the top network.
    fine = settings["fine_steps"]
    if ode:
        names = ("DPM++(2M)", "Heun")
    else:
        names = ("SDE-DPM++(1)", "EM")
    refs = {}
    for name in names:
        samplers = ODE_SAMPLERS if ode else SDE_SAMPLERS
        per_step = (
            1 if samplers[name][0] is None else samplers[name][0].evaluations_per_step
        )
        _, thunk = bench.single(name, k - 1, fine * per_step)
        out = thunk()
        refs[name] = np.asarray(out[0])
    reference = refs[names[0]]
    reference_spread = dict(
        against=names[1],
        rms=float(np.sqrt(np.mean(_per_sample(refs[names[1]], reference) ** 2))),
    )
    print(f"[{label}] reference {names[0]} x{fine}; {reference_spread}", flush=True)

    # Single-network jobs.
    samplers = ODE_SAMPLERS if ode else SDE_SAMPLERS
    networks = settings["ode_networks"] if ode else settings["sde_networks"]
    jobs = []  # (record, thunk)
    pairs = [
        (name, level)
        for name in samplers
        for level in networks
        if level == k or (name not in TOP_ONLY and name in settings["cheap_samplers"])
    ]
    for name, level in pairs:
        sampler, grid = samplers[name]
        per_step = 1 if sampler is None else sampler.evaluations_per_step
        if name in TOP_ONLY:
            counts = settings["top_only_steps"]
        elif ode:
            counts = settings["ode_steps"]
        else:
            counts = settings["steps"] if level == k else settings["cheap_steps"]
        for evaluations in counts:
            if evaluations % per_step:
                continue
            n, thunk = bench.single(name, level - 1, evaluations)
            record = dict(
                kind="single",
                sampler=name,
                grid=grid,
                level=level,
                steps=n,
                evaluations=[0] * (level - 1) + [evaluations] + [0] * (k - level),
            )
            jobs.append((record, thunk))

    # Multilevel jobs.
    cal = _ladder_calibration(bench, seed)
    p_min = settings["min_probability"]
    everything = tuple(range(k))
    ml_names = ODE_MULTILEVEL if ode else SDE_MULTILEVEL
    fractions = settings["ode_fractions"] if ode else settings["sde_fractions"]
    mlem_steps = settings["ode_mlem_steps"] if ode else settings["sde_mlem_steps"]
    keys = settings["ode_level_keys"] if ode else settings["sde_level_keys"]
    ml_jobs = []
    for n in mlem_steps:
        for choose in (False, True):
            for fraction in fractions:
                budget = fraction * n * cal.level_costs("seconds")[-1]
                idx = everything
                if choose:
                    try:
                        idx = cal.choose_levels(
                            budget=budget,
                            num_steps=n,
                            min_probability=p_min,
                            cost="seconds",
                        )
                    except ValueError:
                        continue
                    if len(idx) == 1 or idx == everything:
                        continue
                sub = cal.restrict(idx)
                if budget < 1.1 * sub.min_cost(n, p_min, "seconds"):
                    continue
                schedule = sub.schedule(
                    budget=budget, num_steps=n, min_probability=p_min, cost="seconds"
                )
                for name in ml_names:
                    if not choose and (
                        name not in settings["all_levels"]
                        or n not in settings["all_levels_steps"]
                    ):
                        continue
                    config = dict(
                        kind="multilevel",
                        sampler=name,
                        grid=samplers[name][1],
                        steps=n,
                        chosen_levels=choose,
                        levels=[i + 1 for i in idx],
                        fraction=fraction,
                    )
                    for j in range(keys):
                        key_j = jax.random.fold_in(bench.level_key, j)
                        thunk = bench.multilevel(name, idx, schedule, n, key_j)
                        ml_jobs.append((dict(config, key=j), thunk))

    start = time.perf_counter()
    outputs = []
    for i, (_, thunk) in enumerate(jobs + ml_jobs):
        outputs.append(jax.block_until_ready(thunk()))  # compiles
        if i % 10 == 0:
            print(
                f"[{label}] compiled and ran {i + 1}/{len(jobs) + len(ml_jobs)} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    # Wall-clock and this process's CPU time of each run: the machine is shared, and
    # CPU time is what contention leaves least changed.
    times: list[list[float]] = [[] for _ in jobs + ml_jobs]
    cpu_times: list[list[float]] = [[] for _ in jobs + ml_jobs]
    for r in range(settings["repeats"]):
        for i, (_, thunk) in enumerate(jobs + (ml_jobs if r == 0 else [])):
            c, t = time.process_time(), time.perf_counter()
            jax.block_until_ready(thunk())
            times[i].append(time.perf_counter() - t)
            cpu_times[i].append(time.process_time() - c)
    print(f"[{label}] timed ({time.perf_counter() - start:.0f} s)", flush=True)

    runs = []
    for (record, _), (y1, info), ts, cs in zip(
        jobs + ml_jobs, outputs, times, cpu_times
    ):
        if record["kind"] == "single":
            evaluations = np.asarray(record["evaluations"], np.float64)
        else:
            evaluations = np.zeros(k)
            evaluations[[i - 1 for i in record["levels"]]] = np.asarray(
                info.evaluations, np.float64
            )
        errors = _per_sample(y1, reference)
        runs.append(
            dict(
                record,
                evaluations=evaluations.tolist(),
                flops=float(evaluations @ bench.flops),
                seconds=statistics.median(ts),
                cpu_seconds=statistics.median(cs),
                errors=errors.tolist(),
                blowups=bench.blowups(y1),
                distance=bench.distance(y1),
                _y=np.asarray(y1),
            )
        )

    # Same-sampler top-network solve at each multilevel step count: the error the
    # telescope adds on top of the sampler's own discretisation.
    top_at = {
        (r["sampler"], r["steps"]): r["_y"]
        for r in runs
        if r["kind"] == "single" and r["level"] == k
    }
    points = []
    for r in runs:
        if r["kind"] != "single":
            continue
        errors = np.asarray(r["errors"])
        points.append(
            dict(
                {a: b for a, b in r.items() if a not in ("_y", "errors")},
                error=float(np.sqrt(np.mean(errors**2))),
                median_error=float(np.median(errors)),
                max_error=float(errors.max()),
            )
        )
    configs = {}
    for r in runs:
        if r["kind"] == "multilevel":
            c = tuple(
                (a, tuple(b) if isinstance(b, list) else b)
                for a, b in r.items()
                if a
                in ("sampler", "grid", "steps", "chosen_levels", "levels", "fraction")
            )
            configs.setdefault(c, []).append(r)
    for c, mine in configs.items():
        errors = np.concatenate([np.asarray(r["errors"]) for r in mine])
        top = top_at.get((mine[0]["sampler"], mine[0]["steps"]))
        added = (
            None
            if top is None
            else float(
                np.sqrt(
                    np.mean(
                        np.concatenate([_per_sample(r["_y"], top) for r in mine]) ** 2
                    )
                )
            )
        )
        points.append(
            dict(
                {a: (list(b) if isinstance(b, tuple) else b) for a, b in c},
                kind="multilevel",
                keys=len(mine),
                evaluations=np.mean([r["evaluations"] for r in mine], axis=0).tolist(),
                flops=float(np.mean([r["flops"] for r in mine])),
                seconds=float(np.mean([r["seconds"] for r in mine])),
                cpu_seconds=float(np.mean([r["cpu_seconds"] for r in mine])),
                error=float(np.sqrt(np.mean(errors**2))),
                median_error=float(np.median(errors)),
                max_error=float(errors.max()),
                added_error=added,
                blowups=int(sum(r["blowups"] for r in mine)),
                distance=float(np.mean([r["distance"] for r in mine])),
            )
        )
    for p in points:
        p["top_equivalent_flops"] = p["flops"] / top_flops
        p["top_equivalent_seconds"] = p["seconds"] / top_seconds

    result = dict(
        problem=bench.problem.name,
        equation="probability-flow ODE" if ode else "reverse SDE",
        batch=settings["batch"],
        settings={
            a: (list(b) if isinstance(b, tuple) else b) for a, b in settings.items()
        },
        reference=dict(sampler=names[0], steps=fine, level=k, spread=reference_spread),
        reference_distance=bench.distance(jnp.asarray(reference)),
        level_flops=bench.flops.tolist(),
        level_seconds=bench.level_seconds.tolist(),
        calibration=dict(
            source="shipped (reverse SDE, Euler-Maruyama pilots)"
            if not ode
            else f"calibrate on the probability-flow drifts, Euler pilots, "
            f"{settings['ode_pilot_steps']} uniform steps, no amplification pilots",
            gamma=float(cal.gamma),
            rates_minimise="seconds",
            min_probability=p_min,
        ),
        points=points,
    )
    result["matched"] = matched(result)
    return result


# ----------------------------------------------------------------------- analysis


UNITS = ("flops", "cpu_seconds", "seconds")


def _which(frontier: list[dict], error: float) -> dict | None:
    """The cheapest frontier point with error at most `error` (what
    `cost_to_reach` prices)."""
    ok = [p for p in frontier if p["error"] <= error * (1 + 1e-9)]
    return min(ok, key=lambda p: p["cost"]) if ok else None


def _describe(p: dict) -> str:
    return f"{p['sampler']} level {p['level']} x{p['steps']}"


def _best_single_cost(pool: list[dict], error: float, unit: str):
    """`(cost, runs)`: the least cost (in `unit`) at which a single-network sampler
    of `pool` reaches `error`, each (sampler, network)'s cost–error curve
    interpolated log–log between its two step counts bracketing `error` (its
    cheapest run, if that is already as accurate); `(None, [])` if none reaches it.
    Per curve, not across the frontier: two runs of different samplers at nearly
    the same cost would otherwise make the frontier flat between them."""
    best, runs = None, []
    for key in {(p["sampler"], p["level"]) for p in pool}:
        pts = sorted(
            (p for p in pool if (p["sampler"], p["level"]) == key),
            key=lambda p: p[unit],
        )
        i = next((i for i, p in enumerate(pts) if p["error"] <= error), None)
        if i is None:
            continue
        if i == 0:
            cost, used = pts[0][unit], [pts[0]]
        else:
            a, b = pts[i - 1], pts[i]
            x0, x1 = math.log(a["error"]), math.log(b["error"])
            w = (math.log(error) - x0) / (x1 - x0)
            cost = math.exp(
                math.log(a[unit]) + w * (math.log(b[unit]) - math.log(a[unit]))
            )
            used = [a, b]
        if best is None or cost < best:
            best, runs = cost, used
    return best, [_describe(p) for p in runs]


def _top_unit_cost(result: dict, unit: str) -> float:
    """One top-level evaluation in `unit`: FLOPs from the manifest; seconds (wall or
    CPU) as the median, over this run's single-network solves with the top network,
    of their measured seconds per evaluation (the same clock and the same machine
    load as the runs it prices)."""
    if unit == "flops":
        return result["level_flops"][-1]
    k = len(result["level_flops"])
    return statistics.median(
        p[unit] / sum(p["evaluations"])
        for p in result["points"]
        if p["kind"] == "single" and p["level"] == k
    )


def matched(result: dict) -> list[dict]:
    """Per multilevel variant (sampler, levels chosen or all): its speedups over the
    best single-network sampler of the same equation (frontier over every sampler,
    network and step count run) and over the same sampler's single-network runs, in
    FLOPs, wall-clock seconds and CPU seconds, at the variant's points that spend
    `range_top_equivalent` top-level evaluations (in the unit of the speedup).

    `interpolated_*`: at each such point, the least cost at which a single-network
    sampler reaches the point's error (`_best_single_cost`: each sampler's curve
    interpolated log–log between its step counts), over the point's cost; `None`
    if no single-network run is that accurate. `step_*`: ``benchmarks/_harness.py`'s `_matched_speedups``, the
    cheapest single run at least as accurate over the cheapest multilevel run at
    least as accurate, at every frontier error; with step counts a factor 2 apart
    it overstates the speedup just below a single-network point's error."""
    lo, hi = result["settings"]["range_top_equivalent"]
    singles = [p for p in result["points"] if p["kind"] == "single"]
    variants = sorted(
        {
            (p["sampler"], p["chosen_levels"])
            for p in result["points"]
            if p["kind"] == "multilevel"
        }
    )
    out = []
    for sampler, choose in variants:
        mine = [
            p
            for p in result["points"]
            if p["kind"] == "multilevel"
            and p["sampler"] == sampler
            and p["chosen_levels"] == choose
        ]
        entry = dict(sampler=sampler, chosen_levels=choose)
        for against, pool in (
            ("best_single", singles),
            ("same_sampler", [p for p in singles if p["sampler"] == sampler]),
        ):
            for unit in UNITS:
                top = _top_unit_cost(result, unit)
                front = pareto_frontier([dict(p, cost=p[unit]) for p in pool])
                interpolated = []
                for p in mine:
                    if not lo <= p[unit] / top <= hi:
                        continue
                    cost, between = _best_single_cost(pool, p["error"], unit)
                    interpolated.append(
                        dict(
                            error=p["error"],
                            steps=p["steps"],
                            fraction=p["fraction"],
                            levels=p["levels"],
                            mlem_cost=p[unit],
                            mlem_top_equivalent=p[unit] / top,
                            single_cost=cost,
                            speedup=None if cost is None else cost / p[unit],
                            between=between,
                        )
                    )
                entry[f"interpolated_{against}_{unit}"] = interpolated
                entry[f"interpolated_{against}_{unit}_max"] = max(
                    (s["speedup"] for s in interpolated if s["speedup"] is not None),
                    default=None,
                )
                runs = [dict(p, method="em") for p in pool] + [
                    dict(p, method="mlem") for p in mine
                ]
                step = [
                    dict(s, mlem_top_equivalent=s["mlem_cost"] / top)
                    for s in _matched_speedups(runs, unit)
                    if lo <= s["mlem_cost"] / top <= hi
                ]
                for s in step:
                    best = _which(front, s["error"])
                    s["single"] = None if best is None else _describe(best)
                entry[f"step_{against}_{unit}"] = step
                entry[f"step_{against}_{unit}_max"] = max(
                    (s["speedup"] for s in step), default=None
                )
        out.append(entry)
    return out


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def table(results: list[dict]) -> str:
    lines = [
        "| equation | multilevel variant | levels | speedup over the best single-network sampler at matched RMS error (interpolated): FLOPs / CPU s / wall s | at the FLOPs best: error, top-level evaluations, single-network runs bracketing it | over the same sampler's single networks: FLOPs / CPU s | step-function speedup (`_matched_speedups`): FLOPs / CPU s | blow-ups |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for m in r["matched"]:
            best = max(
                (
                    s
                    for s in m["interpolated_best_single_flops"]
                    if s["speedup"] is not None
                ),
                key=lambda s: s["speedup"],
                default=None,
            )
            mine = [
                p
                for p in r["points"]
                if p["kind"] == "multilevel"
                and p["sampler"] == m["sampler"]
                and p["chosen_levels"] == m["chosen_levels"]
            ]
            blow = sum(p["blowups"] for p in mine)
            samples = sum(p["keys"] for p in mine) * r["batch"]
            where = (
                "—"
                if best is None
                else f"{best['error']:.3g}, {best['mlem_top_equivalent']:.1f} "
                f"({best['steps']} steps), " + " / ".join(best["between"])
            )
            lines.append(
                f"| {r['equation']} | ML-{m['sampler']} | "
                f"{'chosen' if m['chosen_levels'] else 'all'} | "
                + " / ".join(
                    _fmt(m[f"interpolated_best_single_{u}_max"]) for u in UNITS
                )
                + f" | {where} | "
                + " / ".join(
                    _fmt(m[f"interpolated_same_sampler_{u}_max"])
                    for u in ("flops", "cpu_seconds")
                )
                + " | "
                + " / ".join(
                    _fmt(m[f"step_best_single_{u}_max"])
                    for u in ("flops", "cpu_seconds")
                )
                + f" | {blow} of {samples} |"
            )
    return "\n".join(lines)


def frontier_table(result: dict) -> str:
    """The single-network frontier (FLOPs) and every multilevel point, for the
    console."""
    singles = [p for p in result["points"] if p["kind"] == "single"]
    front = pareto_frontier([dict(p, cost=p["flops"]) for p in singles])
    lines = [f"{result['equation']}: single-network frontier (FLOPs)"]
    for p in front:
        lines.append(
            f"  {_describe(p):<28} top-eq {p['top_equivalent_flops']:6.2f}  "
            f"s {p['seconds']:.3f}  rms {p['error']:.3f}  median "
            f"{p['median_error']:.3f}  SW {p['distance']:.3f}  blow-ups {p['blowups']}"
        )
    lines.append("multilevel")
    for p in result["points"]:
        if p["kind"] != "multilevel":
            continue
        lines.append(
            f"  ML-{p['sampler']:<14} x{p['steps']:<3} f{p['fraction']} "
            f"levels {','.join(map(str, p['levels'])):<10} top-eq "
            f"{p['top_equivalent_flops']:6.2f}  s {p['seconds']:.3f}  rms "
            f"{p['error']:.3f}  added {p['added_error'] or math.nan:.3f}  median "
            f"{p['median_error']:.3f}  SW {p['distance']:.3f}  blow-ups {p['blowups']}"
        )
    return "\n".join(lines)


def _problem_name(ode: bool) -> str:
    from mlem_jax.pretrained import load_ladder

    _, manifest = load_ladder(None)
    name = manifest["spec"].get("dataset", {}).get("name", "ladder")
    return (
        f"ladder_{name}"
        + ("_distilled" if "distillation" in manifest else "")
        + ("_ode" if ode else "")
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--equations", default="sde,ode", help="sde, ode or both")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run, not a measurement"
    )
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument(
        "--reanalyse",
        action="store_true",
        help="recompute the matched-error analysis and the docs/results.md table from the "
        "stored results, without running anything",
    )
    args = parser.parse_args(argv)
    equations = [e for e in args.equations.split(",") if e]
    if not equations or any(e not in ("sde", "ode") for e in equations):
        parser.error(
            f"--equations: expected sde, ode or sde,ode; got {args.equations!r}"
        )
    settings = QUICK if args.quick else SETTINGS
    if args.reanalyse:
        stored = []
        for eq in equations:
            name = f"samplers_{_problem_name(eq == 'ode')}_b{settings['batch']}"
            path = os.path.join(
                args.out, name + ("_quick" if args.quick else "") + ".json"
            )
            with open(path) as f:
                result = json.load(f)
            result["matched"] = matched(result)
            write_json(path, result)
            stored.append(result)
            print(table([result]), flush=True)
        if not args.quick and args.out == RESULTS:
            replace_results_block(RESULTS_PAGE, "samplers", table(stored))
        return 0
    env = environment(args.seed)
    results = []
    for eq in equations:
        start = time.perf_counter()
        result = measure(settings, args.seed, ode=eq == "ode")
        result["environment"] = env
        result["wall_seconds"] = time.perf_counter() - start
        results.append(result)
        name = f"samplers_{result['problem']}_b{settings['batch']}"
        if args.quick:
            name += "_quick"
        write_json(os.path.join(args.out, name + ".json"), result)
        print(frontier_table(result), flush=True)
        print(table([result]), flush=True)
    if not args.quick and args.out == RESULTS:
        # The docs/results.md table: this run's equations and the other's stored result.
        stored = []
        for eq in ("sde", "ode"):
            mine = [
                r for r in results if (r["equation"] == "reverse SDE") == (eq == "sde")
            ]
            if mine:
                stored += mine
                continue
            name = f"samplers_{_problem_name(eq == 'ode')}_b{settings['batch']}.json"
            path = os.path.join(args.out, name)
            if os.path.exists(path):
                with open(path) as f:
                    stored.append(json.load(f))
        replace_results_block(RESULTS_PAGE, "samplers", table(stored))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
