"""Cost–error benchmarks: ML-EM against Euler–Maruyama and diffrax's SDE solvers.

Every run of a benchmark shares one Brownian path per sample with a reference solve
(the most accurate drift, fine steps), so errors are strong (pathwise) errors: the
RMS over the batch of the distance between final states. Costs are FLOPs (XLA's cost
analysis of one batched drift evaluation, times the realised number of evaluations)
and wall-clock. The "best EM" frontier is the cheapest Euler–Maruyama run, over every
level and step count, reaching each error; ML-EM's frontier likewise over truncated
ladders (levels 1..j), calibrated targets and step counts.

The benchmark scripts' harness (`cost_error.py`, `wall_clock.py`, `samplers.py`, ...);
it sits beside them, outside the installed package, and imports `mlem_jax` like any
user would.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import lineax
import numpy as np

from mlem_jax import (
    Levels,
    calibrate,
    coarsen_increments,
    count_flops,
    em_solve,
    mlem_solve,
    time_in_scan,
)
from mlem_jax._cost import fit_cost_exponent, timed_run as _timed
from mlem_jax.diffusion import strong_error
from mlem_jax.pretrained import MIN_PROBABILITY


@dataclasses.dataclass(frozen=True)
class Problem:
    """An SDE `dY = f dt + σ(t) dW` with a ladder of drifts and a reference drift.

    **Fields:**

    - `name`: a label for results.
    - `levels`: the ladder, cheapest first; its `costs` are FLOPs per batched
        evaluation on `y0`.
    - `reference`: the most accurate drift (the reference solve uses it).
    - `sigma`: `σ(t)`, a scalar function of time (additive noise), or `None` for
        an ODE.
    - `y0`, `t0`, `t1`: the batch of initial states and the time interval.
    - `gamma`: the cost–accuracy exponent by construction, if known.
    """

    name: str
    levels: Levels
    reference: Callable
    sigma: Callable[[Any], Any] | None
    y0: jax.Array
    t0: float
    t1: float
    gamma: float | None = None

    def diffusion(self, t, y, args):
        if self.sigma is None:
            raise ValueError(f"problem {self.name!r} is an ODE: it has no diffusion.")
        return jnp.asarray(self.sigma(t), y.dtype)


def synthetic_problem(
    gamma: float,
    *,
    num_levels: int = 4,
    growth: int = 16,
    base_features: int = 4,
    dim: int = 8,
    batch: int = 32,
    sigma: float = 1.0,
    damping: float = 4.0,
    seed: int = 0,
) -> Problem:
    """The random-feature hierarchy of `mlem_jax.synthetic` with cost `∝ ε^{−γ}`, as a
    `Problem` on `[0, 1]` with additive noise `σ`; the reference drift stands for the
    infinite series (4× the top level's features, half of them carrying the series'
    tail), so every level's drift error is the design one; level costs are measured
    FLOPs.

    The damping `κ = 4` (shared by every level) makes the SDE stiff enough that
    Euler–Maruyama needs tens to hundreds of steps at the errors the ladder reaches:
    the regime diffusion-model samplers live in, where the paper's speedup comes
    from. With `κ = 1` the same ladder needs so few steps that no method can gain
    much over the others at the errors reachable on a CPU."""
    from mlem_jax.synthetic import random_feature_hierarchy

    key = jax.random.key(seed)
    levels, reference = random_feature_hierarchy(
        key,
        dim=dim,
        gamma=gamma,
        num_levels=num_levels,
        base_features=base_features,
        growth=growth,
        scale=3.0,
        damping=damping,
    )
    y0 = jax.random.normal(jax.random.fold_in(key, 1), (batch, dim))
    flops = [count_flops(f, 0.0, y0, None) for f in levels.fns]
    return Problem(
        name=f"synthetic_gamma{gamma:g}",
        levels=Levels(levels.fns, flops),
        reference=reference,
        sigma=lambda t: sigma,
        y0=y0,
        t0=0.0,
        t1=1.0,
        gamma=gamma,
    )


def _rms(y, ref) -> float:
    return float(strong_error(y, ref))


def pareto_frontier(points: Sequence[dict]) -> list[dict]:
    """The runs not beaten by a cheaper run with a smaller error, by increasing cost."""
    frontier = []
    best = math.inf
    for p in sorted(points, key=lambda p: (p["cost"], p["error"])):
        if p["error"] < best:
            frontier.append(p)
            best = p["error"]
    return frontier


def fit_exponent(points: Sequence[dict]) -> tuple[float, float]:
    """`(exponent, stderr)` of `cost ∝ error^{−exponent}` by least squares in log–log
    (`nan` with too few points)."""
    fit = fit_cost_exponent([p["error"] for p in points], [p["cost"] for p in points])
    return fit.exponent, fit.stderr


def cost_to_reach(points: Sequence[dict], error: float) -> float:
    """The smallest cost among runs whose error is at most `error` (`inf` if none)."""
    costs = [p["cost"] for p in points if p["error"] <= error * (1 + 1e-9)]
    return min(costs) if costs else math.inf


def _evaluations_per_step(solver, sde: bool) -> float:
    """Drift evaluations per step of a diffrax solver, counted with a host callback
    on a 4-step solve (with additive noise and a Lévy-area path if `sde`)."""
    count = [0]

    def drift(t, y, args):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        return -y

    terms = diffrax.ODETerm(drift)
    if sde:
        path = diffrax.VirtualBrownianTree(
            0.0,
            1.0,
            tol=1e-2,
            shape=(2,),
            key=jax.random.key(0),
            levy_area=diffrax.SpaceTimeLevyArea,
        )
        noise = diffrax.ControlTerm(
            lambda t, y, a: lineax.DiagonalLinearOperator(jnp.ones_like(y)), path
        )
        terms = diffrax.MultiTerm(terms, noise)
    sol = diffrax.diffeqsolve(terms, solver, 0.0, 1.0, 0.25, jnp.ones(2))
    jax.block_until_ready(sol.ys)
    return count[0] / 4


QUICK_SETTINGS: dict[str, Any] = dict(
    fine_steps=64,
    em_steps=(8, 16, 32),
    mlem_steps=(16, 64),
    targets=(1.0,),
    level_keys=2,
    pilot_steps=16,
    pilot_keys=2,
    srk_solvers=("SRA1",),
    srk_steps=(8, 16),
)
"""`run_cost_error` settings for a smoke test (seconds, not a measurement)."""


LADDER_SETTINGS: dict[str, Any] = dict(
    fine_steps=256,
    em_steps=(8, 16, 32, 64, 128),
    mlem_steps=(32, 64, 128),
    targets=(1.0, 0.5),
    match_em_steps=(16, 32, 64),
    min_probability=MIN_PROBABILITY,
    level_keys=16,
    pilot_steps=32,
    pilot_keys=32,
    srk_solvers=(),
    srk_steps=(),
)
"""`run_cost_error` settings for a trained UNet ladder (`ladder_problem`) on a CPU.
No SRK baseline (SRA1/ShARK spend two or more network evaluations a step; a later
run can add them), and a 2% floor on every level's firing probability: without it
the calibrated rates near t = 0 are so small that rare corrections blow up."""

QUICK_LADDER_SETTINGS: dict[str, Any] = dict(
    QUICK_SETTINGS, srk_solvers=(), srk_steps=(), min_probability=MIN_PROBABILITY
)
"""`QUICK_SETTINGS` for a trained ladder: no SRK baseline, the probability floor."""


def ladder_problem(
    path: str | None = None, batch: int = 16, seed: int = 0, *, ode: bool = False
) -> Problem:
    """A `Problem` from a ladder directory (`None`: the shipped digits ladder),
    named `ladder_<dataset>[_distilled][_ode]`.

    The reverse SDE (or, with `ode=True`, the probability-flow ODE) of the ladder's
    VP-SDE from `t = 1` to `1e-3`, the top level as the reference drift, level costs
    the networks' FLOPs for one batch, prior samples (`seed`) as `y0`.
    """
    from mlem_jax.diffusion import ProbabilityFlowDrift, ReverseDrift
    from mlem_jax.pretrained import T0, T1, load_ladder_levels

    ladder = load_ladder_levels(
        path, batch, ProbabilityFlowDrift if ode else ReverseDrift
    )
    sde, levels = ladder.sde, ladder.levels
    y0 = sde.prior_sample(jax.random.key(seed), (batch, *ladder.shape))
    name = ladder.dataset.get("name", "ladder")
    return Problem(
        name=f"ladder_{name}"
        + ("_distilled" if ladder.distilled else "")
        + ("_ode" if ode else ""),
        levels=levels,
        reference=levels.fns[-1],
        sigma=None if ode else (lambda t: jnp.sqrt(sde.beta(t))),
        y0=y0,
        t0=T0,
        t1=T1,
    )


def run_cost_error(
    problem: Problem,
    *,
    fine_steps: int = 1024,
    em_steps: Sequence[int] = (8, 16, 32, 64, 128, 256),
    mlem_steps: Sequence[int] = (32, 128, 256, 512),
    targets: Sequence[float] = (2.0, 1.4, 1.0, 0.7, 0.5, 0.35),
    level_keys: int = 16,
    pilot_steps: int = 128,
    pilot_keys: int = 32,
    srk_solvers: Sequence[str] = ("SRA1", "ShARK"),
    srk_steps: Sequence[int] = (8, 16, 32, 64),
    ode_solvers: Sequence[str] = ("Heun",),
    match_em_steps: Sequence[int] = (),
    min_probability: float = 0.0,
    cost: str = "costs",
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the cost–error benchmark on `problem`; returns a JSON-ready dict.

    **Arguments:**

    - `fine_steps`: steps of the reference solve (every other step count divides it).
    - `em_steps`: Euler–Maruyama step counts, run with every level.
    - `mlem_steps`, `targets`: ML-EM step counts, and added-error targets as fractions
        of each truncated ladder's bias, for `Calibration.schedule(target_error=...)`.
    - `match_em_steps`: for the whole ladder, also aim the ML-EM added error at the
        error of Euler–Maruyama with the top level at each of these step counts (for
        a trained ladder whose reference is its own top level, where fractions of
        the whole ladder's bias, only a discretisation error, mean little).
    - `min_probability`: floor on every level's firing probability in the
        calibrated schedules (`Calibration.schedule`); use a few percent on stiff
        problems such as a diffusion model's reverse SDE.
    - `cost`: what the calibrated rates minimise (`Calibration.schedule`'s
        `cost`): `"costs"` (the levels' FLOPs here) or `"seconds"` (each level's
        wall-clock inside a compiled loop on `problem.y0`, measured once here).
    - `level_keys`: ML-EM runs per configuration (level draws are shared by the batch,
        so errors and costs are averaged over this many level keys). The squared
        added error of one run is dominated by a few rare corrections; measured on
        the γ = 3 problem, the RMS over 4 keys scatters by ±40% around its mean (so
        over 16, by about ±20%).
    - `pilot_steps`, `pilot_keys`: steps and ML-EM runs of the calibration pilots
        (`calibrate`'s `num_steps` and `pilot_keys`).
    - `srk_solvers`, `srk_steps`: diffrax stochastic Runge–Kutta solvers for additive
        noise (names of `diffrax` classes), run with the top level at these steps.
    - `ode_solvers`: for an ODE problem (`sigma=None`, e.g. the probability-flow
        ODE), diffrax solvers run with the top level at `em_steps`.
    - `seed`: seeds the Brownian path and the level keys.
    """
    missing = [m for m in match_em_steps if m not in em_steps]
    if missing:
        raise ValueError(
            f"run_cost_error: `match_em_steps` must be among `em_steps` "
            f"{tuple(em_steps)}; {missing} are not."
        )
    for n in (*em_steps, *mlem_steps, *srk_steps, pilot_steps):
        if fine_steps % n:
            raise ValueError(
                f"run_cost_error: every step count must divide `fine_steps` "
                f"({fine_steps}); {n} does not."
            )
    levels, y0, t0, t1 = problem.levels, problem.y0, problem.t0, problem.t1
    diffusion = problem.diffusion if problem.sigma is not None else None
    key = jax.random.key(seed)
    path_key, level_key = jax.random.split(key)
    path = diffrax.VirtualBrownianTree(
        min(t0, t1),
        max(t0, t1),
        tol=abs(t1 - t0) / fine_steps / 8,
        shape=y0.shape,
        key=path_key,
        levy_area=diffrax.SpaceTimeLevyArea,
    )
    grid = jnp.linspace(t0, t1, fine_steps + 1)
    w = jax.vmap(lambda t: path.evaluate(min(t0, t1), t))(grid)
    fine_dw = jnp.diff(jnp.asarray(w), axis=0)

    def dw(n):  # the shared path seen with n steps (an ODE takes none)
        if diffusion is None:
            return None
        return coarsen_increments(fine_dw, fine_steps // n)

    log(f"[{problem.name}] reference solve ({fine_steps} steps)")
    y_ref, _ = em_solve(
        problem.reference,
        diffusion,
        y0,
        t0=t0,
        t1=t1,
        num_steps=fine_steps,
        key=key,
        brownian=dw(fine_steps),
    )
    runs: list[dict] = []

    em_out = {}
    for l, fn in enumerate(levels.fns):
        for n in em_steps:
            solve = jax.jit(
                lambda y, b, fn=fn, n=n: em_solve(
                    fn,
                    diffusion,
                    y,
                    t0=t0,
                    t1=t1,
                    num_steps=n,
                    key=key,
                    brownian=b,
                    cost=levels.costs[l],  # noqa: B023
                )[0]
            )
            y, secs = _timed(lambda solve=solve, n=n: solve(y0, dw(n)))
            em_out[(l, n)] = y
            runs.append(
                dict(
                    method="em",
                    level=l + 1,
                    steps=n,
                    error=_rms(y, y_ref),
                    cost=n * levels.costs[l],
                    seconds=secs,
                    evaluations=[n if i == l else 0 for i in range(levels.num_levels)],
                )
            )
        log(
            f"  EM level {l + 1}: errors "
            + " ".join(f"{r['error']:.3g}" for r in runs[-len(em_steps) :])
        )

    def diffrax_runs(name, terms, steps, sde):
        solver = getattr(diffrax, name)()
        per_step = _evaluations_per_step(solver, sde)
        for n in steps:
            solve = jax.jit(
                lambda y, n=n: diffrax.diffeqsolve(
                    terms,
                    solver,
                    t0,
                    t1,
                    (t1 - t0) / n,
                    y,
                    max_steps=n + 1,
                    saveat=diffrax.SaveAt(t1=True),
                ).ys[0]  # type: ignore[index]
            )
            y, secs = _timed(lambda solve=solve: solve(y0))
            runs.append(
                dict(
                    method=name,
                    level=levels.num_levels,
                    steps=n,
                    error=_rms(y, y_ref),
                    cost=per_step * n * levels.costs[-1],
                    seconds=secs,
                    evaluations_per_step=per_step,
                )
            )
        log(
            f"  {name}: errors "
            + " ".join(f"{r['error']:.3g}" for r in runs[-len(steps) :])
        )

    sigma = problem.sigma
    if sigma is not None:
        # Stochastic Runge–Kutta for additive noise, on the same (Lévy-area) path.
        noise = diffrax.ControlTerm(
            lambda t, y, a: lineax.DiagonalLinearOperator(
                jnp.broadcast_to(jnp.asarray(sigma(t), y.dtype), y.shape)
            ),
            path,
        )
        terms = diffrax.MultiTerm(diffrax.ODETerm(levels.top), noise)
        for name in srk_solvers:
            diffrax_runs(name, terms, srk_steps, sde=True)
    else:
        # The ODE baselines, e.g. diffrax's Heun (second order).
        for name in ode_solvers:
            diffrax_runs(name, diffrax.ODETerm(levels.top), em_steps, sde=False)

    em_top_error = {
        r["steps"]: r["error"]
        for r in runs
        if r["method"] == "em" and r["level"] == levels.num_levels
    }
    calibrations = []
    level_seconds = None
    if cost == "seconds":
        t_mid = jnp.asarray((t0 + t1) / 2, y0.dtype)
        level_seconds = [time_in_scan(f, t_mid, y0) for f in levels.fns]
    for j in range(2, levels.num_levels + 1):
        ladder = Levels(levels.fns[:j], levels.costs[:j])
        bias = min(r["error"] for r in runs if r["method"] == "em" and r["level"] == j)
        cal = calibrate(
            ladder,
            diffusion,
            y0,
            t0=t0,
            t1=t1,
            num_steps=pilot_steps,
            key=jax.random.fold_in(key, j),
            num_bins=4,
            reference=problem.reference,
            pilot_keys=pilot_keys,
            measure_costs=False,
        )
        if level_seconds is not None:
            cal = cal.with_seconds(level_seconds[:j])
        calibrations.append(
            dict(
                levels=j,
                gamma=cal.gamma,
                gamma_stderr=cal.gamma_stderr,
                amplification=cal.amplification.tolist(),
                warnings=list(cal.warnings),
            )
        )
        for n in mlem_steps:
            em_j = em_out.get((j - 1, n))
            if em_j is None:
                em_j, _ = em_solve(
                    ladder.top,
                    diffusion,
                    y0,
                    t0=t0,
                    t1=t1,
                    num_steps=n,
                    key=key,
                    brownian=dw(n),
                )
            solve = jax.jit(
                lambda y, k, b, sched, n=n, ladder=ladder: mlem_solve(
                    ladder,
                    sched,
                    diffusion,
                    y,
                    t0=t0,
                    t1=t1,
                    num_steps=n,
                    key=k,
                    brownian=b,
                )
            )
            goals = [(frac * bias, frac, None) for frac in targets]
            if j == levels.num_levels:
                goals += [(em_top_error[m], None, m) for m in match_em_steps]
            for target, frac, matched in goals:
                try:
                    schedule = cal.schedule(
                        target_error=target,
                        num_steps=n,
                        min_probability=min_probability,
                        cost=cost,
                    )
                except ValueError:
                    continue
                pred = cal.predict(schedule, n)  # cost in FLOPs, as the runs'

                keys = jax.random.split(_run_key(level_key, j, n), level_keys)
                (y, info), secs = _timed(lambda: solve(y0, keys[0], dw(n), schedule))  # noqa: B023
                outs = [(y, info)] + [solve(y0, k, dw(n), schedule) for k in keys[1:]]
                mse = np.mean([_rms(o[0], y_ref) ** 2 for o in outs])
                added = np.mean([_rms(o[0], em_j) ** 2 for o in outs])
                evals = np.mean([np.asarray(o[1].evaluations) for o in outs], axis=0)
                mean_cost = float(np.mean([float(o[1].cost) for o in outs]))
                runs.append(
                    dict(
                        method="mlem",
                        levels=j,
                        steps=n,
                        target_fraction=frac,
                        matched_em_steps=matched,
                        target_added_error=target,
                        error=float(np.sqrt(mse)),
                        cost=mean_cost,
                        seconds=secs,
                        evaluations=evals.tolist(),
                        predicted_cost=pred.cost,
                        predicted_added_error=pred.error,
                        measured_added_error=float(np.sqrt(added)),
                    )
                )
        log(
            f"  ML-EM levels 1..{j}: errors "
            + " ".join(
                f"{r['error']:.3g}"
                for r in runs
                if r["method"] == "mlem" and r["levels"] == j
            )
        )

    # A run whose error is not finite, or ten times the size of the solution itself,
    # has diverged (too few steps for a stiff drift, or a randomised level term
    # blown up by the dynamics): it is kept in the record, flagged, and left out of
    # the frontiers, fits and ratios.
    scale = _rms(y_ref, jnp.zeros_like(y_ref))
    for r in runs:
        r["diverged"] = not (math.isfinite(r["error"]) and r["error"] <= 10 * scale)
    diverged = [r for r in runs if r["diverged"]]
    if diverged:
        log(
            f"  {len(diverged)} diverged run(s), left out of the fits: "
            + ", ".join(
                f"{r['method']} {r.get('levels', r.get('level'))} levels/level, "
                f"{r['steps']} steps"
                for r in diverged
            )
        )
    return summarise(
        problem,
        runs,
        calibrations,
        dict(
            reference_rms=scale,
            fine_steps=fine_steps,
            em_steps=list(em_steps),
            mlem_steps=list(mlem_steps),
            targets=list(targets),
            match_em_steps=list(match_em_steps),
            min_probability=min_probability,
            level_keys=level_keys,
            pilot_steps=pilot_steps,
            pilot_keys=pilot_keys,
            seed=seed,
            batch=int(y0.shape[0]),
            state_shape=list(y0.shape[1:]),
            level_flops=list(levels.costs),
            cost=cost,
            level_seconds=level_seconds,
        ),
    )


def summarise(
    problem: Problem, runs: list[dict], calibrations: list[dict], config: dict
) -> dict:
    """Frontiers, fitted exponents and speedups at matched error (runs flagged
    `diverged` are kept in `runs` and left out of everything else)."""
    all_runs, runs = runs, [r for r in runs if not r.get("diverged", False)]
    methods = sorted({r["method"] for r in runs})
    frontiers = {
        m: pareto_frontier([r for r in runs if r["method"] == m]) for m in methods
    }
    # The ladder's floor: the top level's own error (its best run, any method). Near
    # it every method's cost diverges whatever it does, so matched-error speedups are
    # also read at the tightest error at least sqrt(2) times the floor, where the
    # error is still the method's and not the ladder's, and the exponents are also
    # fitted on the frontier points at or above that error: the theory's exponents
    # (γ + 1, γ) are those of a ladder that grows with the accuracy asked for.
    top = max(r.get("level", 0) for r in runs)
    floor = min(r["error"] for r in runs if r.get("level") == top)
    exponents = {}
    for m, front in frontiers.items():
        e, s = fit_exponent(front)
        above = [p for p in front if p["error"] >= math.sqrt(2) * floor]
        e_above, s_above = fit_exponent(above)
        exponents[m] = dict(
            exponent=e,
            stderr=s,
            points=len(front),
            above_floor=dict(exponent=e_above, stderr=s_above, points=len(above)),
        )
    speedups = _matched_speedups(runs, "cost")
    above_floor = [s for s in speedups if s["error"] >= math.sqrt(2) * floor]
    # The same in wall-clock seconds (each run timed once after compilation).
    timed = [r for r in runs if r.get("seconds")]
    seconds = _matched_speedups(timed, "seconds") if timed else []
    seconds_above = [s for s in seconds if s["error"] >= math.sqrt(2) * floor]
    calibrated = [
        dict(
            levels=r["levels"],
            steps=r["steps"],
            target=r["target_added_error"],
            measured_added_error=r["measured_added_error"],
            predicted_added_error=r["predicted_added_error"],
            predicted_cost=r["predicted_cost"],
            measured_cost=r["cost"],
            cost_ratio=r["cost"] / r["predicted_cost"],
            error_ratio=r["measured_added_error"] / r["target_added_error"],
        )
        for r in runs
        if r["method"] == "mlem"
    ]
    return dict(
        problem=problem.name,
        gamma_design=problem.gamma,
        config=config,
        runs=all_runs,
        diverged_runs=len(all_runs) - len(runs),
        frontiers=frontiers,
        exponents=exponents,
        speedup_at_matched_error=speedups,
        speedup_at_tightest_matched_error=speedups[0] if speedups else None,
        ladder_floor_error=floor,
        speedup_at_tightest_error_above_floor=above_floor[0] if above_floor else None,
        seconds_speedup_at_tightest_matched_error=seconds[0] if seconds else None,
        seconds_speedup_at_tightest_error_above_floor=(
            seconds_above[0] if seconds_above else None
        ),
        calibrations=calibrations,
        calibrated_schedules=calibrated,
    )


def _matched_speedups(runs: Sequence[dict], unit: str) -> list[dict]:
    """ML-EM's speedup over the best EM (cost to reach each error on the frontiers,
    with cost = `runs[i][unit]`), at every frontier error both methods reach,
    tightest first."""
    priced = [dict(r, cost=r[unit]) for r in runs]
    em_front = pareto_frontier([r for r in priced if r["method"] == "em"])
    ml_front = pareto_frontier([r for r in priced if r["method"] == "mlem"])
    if not (em_front and ml_front):
        return []
    tightest = max(min(p["error"] for p in em_front), min(p["error"] for p in ml_front))
    speedups = []
    for err in sorted(
        {p["error"] for p in em_front + ml_front if p["error"] >= tightest}
    ):
        c_em, c_ml = cost_to_reach(em_front, err), cost_to_reach(ml_front, err)
        if math.isfinite(c_em) and math.isfinite(c_ml):
            speedups.append(
                dict(error=err, em_cost=c_em, mlem_cost=c_ml, speedup=c_em / c_ml)
            )
    return speedups


def speedup_lines(result: dict) -> list[str]:
    """ML-EM's matched-error speedups over the best Euler–Maruyama, each line saying
    its criterion (which error, which cost): what `cost_error.py` prints and its
    plot's title shows."""
    lines = []
    for key, where in (
        ("speedup_at_tightest_error_above_floor", "tightest error ≥ √2 × ladder floor"),
        ("speedup_at_tightest_matched_error", "tightest error both reach"),
    ):
        for prefix, unit in (("", "FLOPs"), ("seconds_", "seconds")):
            best = result.get(prefix + key)
            if best:
                lines.append(
                    f"ML-EM speedup over best EM in {unit} at error {best['error']:.3g} "
                    f"({where}): {best['speedup']:.2f}×"
                )
    return lines


def plot_cost_error(result: dict, path: str) -> None:
    """A log–log cost–error plot of `result` (from `run_cost_error`) as a PNG."""
    # A bare `Figure` renders to files with no pyplot state and no GUI backend.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), dpi=120)
    ax = fig.subplots()
    runs = result["runs"]
    styles = {
        "em": ("tab:blue", "o", "Euler–Maruyama (best over levels)"),
        "mlem": ("tab:red", "s", "ML-EM (calibrated rates)"),
        "SRA1": ("tab:green", "^", "diffrax SRA1, top level"),
        "ShARK": ("tab:purple", "v", "diffrax ShARK, top level"),
        "Heun": ("tab:green", "^", "diffrax Heun, top level"),
    }
    for method, (color, marker, label) in styles.items():
        points = [r for r in runs if r["method"] == method]
        if not points:
            continue
        ax.scatter(
            [p["error"] for p in points],
            [p["cost"] for p in points],
            color=color,
            marker=marker,
            alpha=0.25,
            s=14,
        )
        front = result["frontiers"][method]
        fit = result["exponents"][method]["exponent"]
        ax.plot(
            [p["error"] for p in front],
            [p["cost"] for p in front],
            color=color,
            marker=marker,
            label=f"{label}: cost ∝ error^-{fit:.2f}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("strong error (RMS distance to the reference solve)")
    ax.set_ylabel("cost (FLOPs)")
    title = result["problem"]
    if result.get("gamma_design"):
        title += f" (γ = {result['gamma_design']:g} by construction)"
    for line in speedup_lines(result):
        title += "\n" + line
    ax.axvline(result["ladder_floor_error"], color="grey", ls=":", lw=1)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _run_key(level_key, levels: int, steps: int):
    """The level key of the ML-EM runs on `levels` levels at `steps` steps: distinct
    for every pair. `fold_in(level_key, levels * 1000 + steps)` below 1000 steps, the
    layout every stored result under `benchmarks/results/` was made with (all at
    most 512 steps); from 1000 steps on, where that number would repeat across
    levels (1 level at 1024 steps and 2 at 24), a second fold-in per argument."""
    if steps < 1000:
        return jax.random.fold_in(level_key, levels * 1000 + steps)
    return jax.random.fold_in(jax.random.fold_in(level_key, levels), steps)
