"""`mlem-jax demo`: ML-EM against Euler–Maruyama and a single-network sampler on
one ladder, all on the same prior draws and Brownian paths."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import brownian_increments, coarsen_increments
from .._io import write_json
from .._misc import missing_extra
from ..pretrained import MIN_PROBABILITY, T0, T1, Ladder
from ._budget import (
    COSTS,
    cost_unit,
    describe_cost,
    feasible_budget,
    ladder_calibration,
    level_schedule,
    priced_calibration,
)
from ._common import (
    add_calibration_options,
    add_command,
    add_ladder_option,
    check_ladder,
    check_memory,
    check_output_dir,
    check_pilot_steps,
    comma_list,
    interruptible,
    load_ladder,
    positive_float,
    positive_int,
    raise_if_interrupted,
    seed,
    unit_interval,
    warn,
)
from ._demo_report import format_table, matched_cost_lines, plot_demo
from ._solves import SINGLE_SAMPLER, run_em, run_mlem, run_sampler


@jax.jit
def _sw_distance(x, y, key):
    from ..diffusion import sliced_wasserstein

    return sliced_wasserstein(x, y, key)


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "demo",
        run,
        summary="ML-EM vs Euler–Maruyama on the shipped digits diffusion model",
        description=(
            "Load a UNet ladder (default: the shipped digits ladder), draw a "
            "fine-step reference solve, then run Euler–Maruyama with the top level "
            "at several step counts and ML-EM with calibrated rates at several "
            "scales, all on the same Brownian paths. Prints a table and writes a "
            "sample grid and a log–log cost–error plot."
        ),
    )
    add_ladder_option(p)
    p.add_argument("--out", default="mlem-jax-demo", help="output folder")
    p.add_argument("--batch", type=positive_int, default=16, help="images per solve")
    p.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="PRNG seed of the prior draws, the Brownian paths and the level draws",
    )
    p.add_argument(
        "--ref-steps", type=positive_int, default=128, help="reference solve steps"
    )
    _add_run_options(p)
    _add_rate_options(p)
    add_calibration_options(p)


def _add_run_options(p: Any) -> None:
    """The runs compared: step counts and ML-EM's budgets."""
    p.add_argument(
        "--em-steps",
        type=comma_list(positive_int),
        default=(8, 16, 32, 64),
        help="step counts of Euler–Maruyama and of the single-network sampler "
        "(each must divide --ref-steps)",
    )
    p.add_argument(
        "--mlem-steps",
        type=comma_list(positive_int),
        default=(64,),
        help="ML-EM step counts (each with every scale)",
    )
    p.add_argument(
        "--scales",
        type=comma_list(positive_float),
        default=(1.0, 1.5, 2.0),
        help="ML-EM budgets, as multiples of --budget",
    )
    p.add_argument(
        "--budget",
        type=positive_float,
        default=22.0,
        help="cost of the scale-1 ML-EM schedule, in top-level evaluations (of "
        "FLOPs or seconds, as --cost says)",
    )


def _add_rate_options(p: Any) -> None:
    """How ML-EM's rates are calibrated, and how many level keys each runs."""
    p.add_argument(
        "--cost",
        choices=COSTS,
        default="flops",
        help="what ML-EM's calibrated rates minimise and its budgets count: the "
        "ladder's FLOPs (the default: the same rates, levels and table on every "
        "run and machine), or seconds measured here per level on this batch at "
        "start-up (rates, levels and errors then vary from run to run)",
    )
    p.add_argument(
        "--levels",
        choices=("auto", "all"),
        default="auto",
        help="ML-EM over every level, or over the sub-ladder "
        "`Calibration.choose_levels` picks for each budget",
    )
    p.add_argument(
        "--level-keys",
        type=positive_int,
        default=4,
        help="ML-EM solves per budget (level draws are shared by the batch, so one "
        "solve's error varies a lot): errors are RMS over them, costs means",
    )
    p.add_argument(
        "--min-probability",
        type=unit_interval,
        default=MIN_PROBABILITY,
        help="floor on every level's firing probability per step (guards the "
        "stiff end of the reverse SDE against blown-up corrections)",
    )


def _distance_data(ladder: Ladder, limit: int = 512):
    from ..data import load_dataset

    spec = ladder.dataset
    try:
        data = load_dataset(spec["name"], split="test", **spec.get("kwargs", {}))
    except Exception:  # a folder dataset that moved, say: no distance column
        return None
    return jnp.asarray(data[:limit])


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """What `run_demo` measures, each field as the `mlem-jax demo` option of its
    name (`path`: `--ladder`).

    `cost`: what ML-EM's rates minimise and its budgets count, `"flops"` (the
    default: deterministic) or `"seconds"` (measured at start-up). `levels`:
    `"auto"` (each budget on the sub-ladder `Calibration.choose_levels` picks) or
    `"all"`.
    """

    batch: int
    seed: int
    ref_steps: int
    em_steps: Sequence[int]
    mlem_steps: Sequence[int]
    scales: Sequence[float]
    budget: float
    pilot_steps: int
    min_probability: float = MIN_PROBABILITY
    level_keys: int = 4
    path: str | None = None
    cost: str = "flops"
    levels: str = "auto"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"path"}
        return cls(path=args.ladder, **{n: getattr(args, n) for n in names})


class _Draws(NamedTuple):
    """The demo's prior draws and the keys of its path, pilots, levels and
    distance (one split of the seed)."""

    y0: Any
    k_path: Any
    k_cal: Any
    k_level: Any
    k_sw: Any

    @classmethod
    def of(cls, ladder: Ladder, config: DemoConfig) -> _Draws:
        k_y0, k_path, k_cal, k_level, k_sw = jax.random.split(
            jax.random.key(config.seed), 5
        )
        y0 = ladder.sde.prior_sample(k_y0, (config.batch, *ladder.shape))
        return cls(y0, k_path, k_cal, k_level, k_sw)


class _Record:
    """The demo's runs, each measured against the reference `y_ref` and the
    held-out data, and their samples by label."""

    def __init__(self, ladder: Ladder, k_sw):
        self.ladder = ladder
        self.k_sw = k_sw
        self.held_out = _distance_data(ladder)
        self.y_ref: Any = None
        self.runs: list[dict] = []
        self.samples: dict[str, np.ndarray] = {}

    def add(self, method, steps, x, evaluations, secs, label, repeats=(), **extra):
        """One run; `repeats`: more solves of the same configuration (other level
        keys), the error then the RMS over all of them, evaluations, cost and
        seconds their means."""
        from ..diffusion import strong_error

        xs = [x] + [r[0] for r in repeats]
        evaluations = np.asarray(  # one mean count per level
            np.mean([evaluations] + [r[1] for r in repeats], axis=0, dtype=np.float64)
        )
        secs = float(np.mean([secs] + [r[2] for r in repeats]))
        flops = float(np.dot(evaluations, self.ladder.levels.costs))
        err = (
            math.sqrt(np.mean([float(strong_error(z, self.y_ref)) ** 2 for z in xs]))
            if method != "reference"
            else 0.0
        )
        sw = (
            float(_sw_distance(x, self.held_out, self.k_sw))
            if self.held_out is not None
            else math.nan
        )
        self.runs.append(
            dict(
                method=method,
                label=label,
                steps=steps,
                evaluations=[
                    int(e) if float(e).is_integer() else round(float(e), 2)
                    for e in evaluations
                ],
                level_keys=len(xs),
                top_equivalent=flops / self.ladder.levels.costs[-1],
                flops=flops,
                seconds=secs,
                strong_error=err,
                distance=sw,
                **extra,
            )
        )
        self.samples[label] = np.asarray(x)


def run_demo(
    ladder: Ladder, config: DemoConfig, *, progress: bool = True, calibration=None
) -> dict:
    """The demo's measurements: one dict per run (method, steps, evaluations, cost,
    FLOPs, seconds, strong error, sliced-Wasserstein distance) plus the samples.

    All runs share one Brownian path per image (coarsened from the reference's
    increments) and the same prior draws `y0`. `calibration`: the ladder's
    calibration if already made (`demo_calibration`, priced for `config.cost`),
    else it is made here.
    """
    try:
        from tqdm.auto import tqdm
    except ModuleNotFoundError as e:
        raise missing_extra(e, "diffusion", "mlem-jax demo") from e

    draws = _Draws.of(ladder, config)
    fine = brownian_increments(
        draws.k_path, draws.y0.shape, t0=T0, t1=T1, num_steps=config.ref_steps
    )
    total = 2 + 2 * len(config.em_steps) + len(config.scales) * len(config.mlem_steps)
    bar = tqdm(total=total, desc="mlem-jax demo", disable=not progress, unit="solve")
    record = _Record(ladder, draws.k_sw)
    _single_network_runs(record, config, draws, fine, bar)
    bar.set_postfix_str("calibrate")
    cal = calibration
    if cal is None:
        cal = _calibration(ladder, config, draws)
    bar.update()
    _mlem_runs(record, config, draws, fine, cal, bar)
    bar.close()
    return dict(
        runs=record.runs,
        samples=record.samples,
        calibration=dict(
            gamma=float(cal.gamma),
            drift_errors=[float(e) for e in cal.drift_errors],
            warnings=list(cal.warnings),
        ),
        config=dict(
            batch=config.batch,
            seed=config.seed,
            ref_steps=config.ref_steps,
            em_steps=list(config.em_steps),
            mlem_steps=list(config.mlem_steps),
            cost=config.cost,
            levels=config.levels,
            scales=list(config.scales),
            budget=config.budget,
            min_probability=config.min_probability,
            level_keys=config.level_keys,
            pilot_steps=config.pilot_steps,
            level_flops_per_image=list(ladder.flops_per_image),
            t0=T0,
            t1=T1,
        ),
    )


def _single_network_runs(record: _Record, config: DemoConfig, draws: _Draws, fine, bar):
    """The fine-step reference, then Euler–Maruyama and the single-network sampler
    at every `--em-steps`, all with the top level on the same path."""
    ladder, ref_steps = record.ladder, config.ref_steps
    below = [0] * (ladder.levels.num_levels - 1)
    bar.set_postfix_str("reference")
    y_ref, info, secs = run_em(ladder, draws.y0, fine, draws.k_level, ref_steps)
    record.y_ref = y_ref
    evals = below + [int(info.evaluations[0])]
    record.add("reference", ref_steps, y_ref, evals, secs, "reference")
    bar.update()
    for n in config.em_steps:
        bar.set_postfix_str(f"EM {n} steps")
        dw = coarsen_increments(fine, ref_steps // n)
        x, info, secs = run_em(ladder, draws.y0, dw, draws.k_level, n)
        record.add("em", n, x, below + [int(info.evaluations[0])], secs, f"EM {n}")
        bar.update()
    for n in config.em_steps:
        # The single-network sampler a user would pick, on the same path.
        bar.set_postfix_str(f"{SINGLE_SAMPLER} {n} steps")
        dw = coarsen_increments(fine, ref_steps // n)
        x, info, secs = run_sampler(ladder, draws.y0, dw, n)
        evals = below + [int(info.evaluations[0])]
        record.add("sampler", n, x, evals, secs, f"SDE-DPM {n}", sampler=SINGLE_SAMPLER)
        bar.update()


def _mlem_runs(record: _Record, config: DemoConfig, draws: _Draws, fine, cal, bar):
    """ML-EM at every `--mlem-steps` and scale of `--budget`, each with
    `--level-keys` level keys."""
    ladder, unit = record.ladder, cost_unit(config.cost)
    for n in config.mlem_steps:
        dw = coarsen_increments(fine, config.ref_steps // n)
        for s in config.scales:
            bar.set_postfix_str(f"ML-EM {n} steps x{s:g}")
            used, schedule = level_schedule(
                cal,
                n,
                s * config.budget,
                config.min_probability,
                config.cost,
                config.levels,
            )
            x, evals, secs = run_mlem(
                ladder, schedule, draws.y0, dw, draws.k_level, n, used
            )
            repeats = [
                run_mlem(ladder, schedule, draws.y0, dw, extra_key, n, used)
                for extra_key in jax.random.split(
                    jax.random.fold_in(draws.k_level, 1), config.level_keys - 1
                )
            ]
            pred = cal.restrict(used).predict(schedule, n, unit)
            record.add(
                "mlem",
                n,
                x,
                evals,
                secs,
                f"ML-EM {n} x{s:g}",
                repeats=repeats,
                scale=s,
                cost=config.cost,
                levels=[i + 1 for i in used],
                predicted_top_equivalent=pred.cost / cal.level_costs(unit)[-1],
            )
            bar.update()


def _calibration(ladder: Ladder, config: DemoConfig, draws: _Draws):
    cal = ladder_calibration(
        ladder, draws.y0, draws.k_cal, pilot_steps=config.pilot_steps, path=config.path
    )
    return priced_calibration(cal, ladder, draws.y0, config.cost)


def demo_calibration(ladder: Ladder, config: DemoConfig):
    """The calibration `run_demo` uses for `config` (same draws), priced for
    `config.cost` (`priced_calibration`), so that a caller can check budgets
    against it first."""
    return _calibration(ladder, config, _Draws.of(ladder, config))


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    check_ladder(parser, args.ladder)
    for n in (*args.em_steps, *args.mlem_steps):
        if args.ref_steps % n:
            parser.error(
                f"--ref-steps ({args.ref_steps}) must be a multiple of every step count "
                f"in --em-steps and --mlem-steps; {n} does not divide it"
            )
    check_pilot_steps(parser, args.pilot_steps)
    check_output_dir(
        parser, "--out", args.out, ("cost_error.png", "samples.png", "results.json")
    )
    return interruptible(
        "demo", lambda: _demo(args, parser), f"the files of {args.out}"
    )


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    start = time.perf_counter()
    ladder = load_ladder(parser, args.ladder, args.batch)
    # The reference's increments, their coarsenings (together at most as large) and
    # the saved samples of every run.
    check_memory(
        parser,
        f"--ref-steps {args.ref_steps} with --batch {args.batch}",
        3.0 * 4 * args.batch * math.prod(ladder.shape) * args.ref_steps,
        "lower --ref-steps or --batch.",
    )
    config = DemoConfig.from_args(args)
    cal = demo_calibration(ladder, config)
    print(describe_cost(cal, args.cost, args.batch))
    for n in args.mlem_steps:
        for scale in args.scales:
            budget = scale * args.budget
            try:
                _, note = feasible_budget(
                    cal, n, budget, args.min_probability, args.cost
                )
            except ValueError as e:
                parser.error(
                    f"--budget x --scales: {e}".replace(
                        "`budget`", f"{args.budget:g} x {scale:g} =", 1
                    )
                )
            if note:
                warn(
                    f"ML-EM {n} steps x{scale:g}: "
                    + note.replace("`budget`", "budget", 1)
                )
    result = run_demo(ladder, config, progress=not args.no_progress, calibration=cal)
    raise_if_interrupted()
    os.makedirs(args.out, exist_ok=True)
    cost_path, samples_path = plot_demo(result, args.out)
    record = {k: v for k, v in result.items() if k != "samples"}
    record["total_seconds"] = time.perf_counter() - start
    json_path = os.path.join(args.out, "results.json")
    write_json(json_path, record)
    print(format_table(result["runs"]))
    print(
        f"SDE-DPM: {SINGLE_SAMPLER} with the top level (mlem_jax.diffusion.sample; "
        "the reference is Euler–Maruyama's, whose own discretisation error this "
        "distance counts against SDE-DPM only). "
        "top-eq: FLOPs, in evaluations of the top level; strong err: RMS distance to "
        f"the {args.ref_steps}-step reference on the same Brownian paths; SW dist: "
        "sliced Wasserstein distance to held-out data; wall s: one solve after "
        "compilation (ML-EM: the mean over its level keys)."
    )
    for line in matched_cost_lines(result["runs"]):
        print(line)
    print(f"wrote {cost_path}, {samples_path} and {json_path}")
    return 0
