"""`mlem-jax sample`: draw samples from a ladder with ML-EM or Euler–Maruyama."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import FixedProbabilities, Stitch, brownian_increments
from ..diffusion import (
    GRIDS,
    SAMPLERS,
    VPLinear,
    calibrate_sampler,
    sampler as diffusion_sampler,
    time_grid,
)
from ..pretrained import T0, T1, Ladder
from ._budget import (
    COSTS,
    describe_cost,
    feasible_budget,
    hybrid_schedule,
    ladder_calibration,
    ladder_verdict,
    level_schedule,
    priced_calibration,
)
from ._common import (
    add_calibration_options,
    add_command,
    add_ladder_option,
    check_ladder,
    check_memory,
    check_output_file,
    check_pilot_steps,
    comma_list,
    interruptible,
    load_ladder,
    positive_float,
    positive_int,
    probability,
    progress_bar,
    raise_if_interrupted,
    seed,
    stitch_spec,
    warn,
)
from ._distributed import Distributed, add_options as add_distributed_options, join
from ._guided import (
    add_options as add_guidance_options,
    check_guided_args,
    guided,
    run_guided,
)
from ._images import npz_path, write_samples
from ._solves import eps_networks, run_diffusion, run_em, run_mlem, run_sharded


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "sample",
        run,
        summary="sample a trained ladder with ML-EM or Euler–Maruyama",
        description=(
            "Draw samples from a UNet ladder by solving the reverse VP-SDE from t=1 "
            "to t=1e-3, with ML-EM over every level or Euler–Maruyama with the top "
            "level. Writes a PNG grid and an .npz of the arrays; prints evaluations "
            "per level, FLOPs and wall-clock."
        ),
    )
    add_ladder_option(p)
    _add_method_options(p)
    _add_rate_options(p)
    add_calibration_options(p)
    p.add_argument(
        "--devices",
        type=parse_devices,
        default="all",
        help="split the batch over this many local devices (`all`: every local "
        "device, or the most that divide --num; with --coordinator, every device of "
        "every process); with more than one, each device draws its own levels "
        "(mlem_jax.mlem_solve_sharded, --draws independent), which lowers the ML-EM "
        "noise of the batch at the same cost",
    )
    add_distributed_options(p)
    add_guidance_options(p)


def _add_method_options(p: Any) -> None:
    """What runs: the sampler, its multilevel method, the grid, steps, samples,
    seed and output."""
    p.add_argument(
        "--sampler",
        choices=("em", *SAMPLERS),
        default=None,
        help="(default: em; sde-dpm++1 with --class/--guidance) em: Euler–Maruyama on the reverse VP-SDE; the others are the samplers "
        "of mlem_jax.diffusion by name (mlem_jax.diffusion.SAMPLERS: ddim, "
        "dpm++2m and the probability-flow ODE's euler and heun are deterministic, "
        "sde-dpm++1 and sde-dpm++2m stochastic)",
    )
    p.add_argument(
        "--method",
        choices=("mlem", "hybrid", "stitch", "single", "em"),
        default="mlem",
        help="mlem: the multilevel version of --sampler over the ladder (ML-EM for "
        "--sampler em; every sampler but heun has one); hybrid: the calibrated "
        "hybrid of stitching and the telescope (Calibration.hybrid) at --budget; "
        "stitch: T-Stitch, one level for the first part of the steps and the top "
        "level after (--stitch); single: --sampler with the top network alone "
        "(`em` is its old name, kept)",
    )
    p.add_argument(
        "--stitch",
        type=stitch_spec,
        default=(1, 0.5),
        help="stitch: LEVEL,FRACTION, the level (1-based) that runs the first "
        "FRACTION of the steps, the top level running the rest (mlem_jax.Stitch)",
    )
    p.add_argument(
        "--grid",
        choices=GRIDS,
        default="uniform",
        help="time grid of a mlem_jax.diffusion sampler (--sampler em: uniform only)",
    )
    p.add_argument("--steps", type=positive_int, default=128, help="solver steps")
    p.add_argument("--num", type=positive_int, default=64, help="number of samples")
    p.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="PRNG seed of the prior draws, the Brownian path, the calibration "
        "pilots and the level draws (same seed, same samples)",
    )
    p.add_argument(
        "--out", default="samples.png", help="PNG grid; the .npz goes next to it"
    )


def _add_rate_options(p: Any) -> None:
    """How a multilevel method's rates are set: fixed, or calibrated for a budget
    in a cost."""
    p.add_argument(
        "--probs",
        type=comma_list(probability),
        help="mlem: fixed per-level probabilities in (0, 1], e.g. 1,0.5,0.3,0.2,0.1 "
        "(default: rates from `calibrate`)",
    )
    p.add_argument(
        "--budget",
        type=positive_float,
        help="mlem with calibrated rates: expected cost in top-level evaluations, "
        "of seconds or FLOPs as --cost says (default: steps / 4)",
    )
    p.add_argument(
        "--cost",
        choices=COSTS,
        default=None,
        help="(default: seconds; flops with guidance) mlem with calibrated rates: "
        "what the rates minimise; seconds are "
        "measured here, per level, on this batch (a few seconds before the solve; "
        "the rates then vary with the timings: --level-ms fixes them)",
    )
    p.add_argument(
        "--levels",
        choices=("auto", "all"),
        default="auto",
        help="mlem with calibrated rates: every level of the ladder, or the levels "
        "`Calibration.choose_levels` predicts to add the least error for the "
        "budget (a sub-ladder; skipping a level keeps the estimate unbiased)",
    )
    p.add_argument(
        "--level-ms",
        type=comma_list(positive_float),
        help="with --cost seconds: milliseconds per evaluation of each level, "
        "instead of measuring them (the values a previous run printed reproduce it "
        "exactly)",
    )


def activation_bytes(ladder: Ladder) -> float:
    """A conservative estimate of the bytes of activations one image costs while
    the widest network runs: 8 float32 feature maps of its widest layer at full
    resolution (XLA's memory analysis of the shipped digits ladder's top network
    measures about 3.5 of them, 55 kB per image)."""
    from ..diffusion import EpsilonScore, ProbabilityFlowDrift, ReverseDrift
    from ..nn import UNet

    widest = 0.0
    for fn in ladder.levels.fns:
        if isinstance(fn, (ReverseDrift, ProbabilityFlowDrift)) and isinstance(
            fn.score, EpsilonScore
        ):
            model = fn.score.model
            if isinstance(model, UNet):
                widest = max(widest, float(model.base_width * max(model.channel_mults)))
    if widest == 0.0:  # not a UNet ladder: count the image itself
        widest = float(ladder.shape[0])
    return 8.0 * 4.0 * widest * math.prod(ladder.shape[1:])


def sampler_calibration(ladder: Ladder, param, sampler, y0, key, pilot_steps, grid):
    """`calibrate_sampler` on the ladder's ε-networks along `sampler`'s own grid
    (FLOP costs; no amplification pilots, as `ladder_calibration` without a stored
    calibration)."""
    return calibrate_sampler(
        eps_networks(ladder),
        param,
        sampler,
        y0,
        t0=T0,
        t1=T1,
        num_steps=pilot_steps,
        key=key,
        grid=grid,
        num_bins=min(8, pilot_steps),
        pilot_keys=0,
        measure_costs=False,
    )


def parse_devices(text: str) -> int | str:
    if text.strip().lower() == "all":
        return "all"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"expected `all` or {e}") from None


def sample_devices(parser: argparse.ArgumentParser, devices: int | str, num: int):
    """`(devices to split the --num samples over, a note or None)`: `all` takes the
    most local devices that divide `num`; a number must be available and divide it."""
    local = jax.local_device_count()
    if devices == "all":
        n = max(d for d in range(1, local + 1) if num % d == 0)
        note = None
        if n < local:
            note = (
                f"--devices all: using {n} of the {local} local devices, the most that "
                f"divide --num {num}"
            )
        return n, note
    assert isinstance(devices, int)
    if devices > local:
        parser.error(
            f"--devices {devices}: only {local} local device(s); on a CPU, set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before "
            "starting for host devices"
        )
    if num % devices:
        parser.error(f"--devices {devices} must divide --num ({num})")
    return devices, None


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    dist = join(parser, args)  # None unless --coordinator: before any device work
    if dist is not None:
        return dist.guarded(lambda: _run(args, parser, dist))
    return _run(args, parser, None)


def _run(
    args: argparse.Namespace, parser: argparse.ArgumentParser, dist: Distributed | None
) -> int:
    check_ladder(parser, args.ladder)
    if not args.out.lower().endswith(".png"):
        parser.error(f"--out must name a .png file, got {args.out!r}")
    npz = npz_path(args.out)
    check_output_file(parser, "--out", args.out)
    check_output_file(parser, "--out (its .npz)", npz)
    check_pilot_steps(parser, args.pilot_steps)
    if args.method == "em":
        args.method = "single"
    if guided(args):
        if dist is not None:
            parser.error(
                "--class/--guidance run on one process; --coordinator (sampling "
                "across processes) supports the unguided samplers only"
            )
        check_guided_args(args, parser)
        if args.steps >= 2**31:
            parser.error(f"--steps must be below 2**31, got {args.steps}")
        return interruptible(
            "sample", lambda: run_guided(args, parser), f"{args.out} and {npz}"
        )
    if args.sampler is None:
        args.sampler = "em"
    if args.cost is None:
        args.cost = "seconds"
    if args.probs is not None and args.method != "mlem":
        parser.error("--probs only applies to --method mlem")
    for flag, value in (("--budget", args.budget), ("--level-ms", args.level_ms)):
        if value is None:
            continue
        if args.method not in ("mlem", "hybrid"):
            parser.error(
                f"{flag} only applies to --method mlem or hybrid (calibrated rates)"
            )
        if args.probs is not None:
            parser.error(
                f"{flag} applies to calibrated rates, --probs fixes the probabilities "
                "instead; give one of them"
            )
    if args.sampler == "em" and args.grid != "uniform":
        parser.error(
            "--grid applies to the mlem_jax.diffusion samplers; --sampler em steps "
            "on the uniform grid"
        )
    if args.sampler != "em":
        sampler = diffusion_sampler(args.sampler)
        if args.method in ("mlem", "hybrid", "stitch") and not sampler.affine:
            parser.error(
                f"--sampler {args.sampler} has no multilevel version (its step is not "
                "affine in the network's prediction, so the randomized telescope "
                "would bias it); use --method single, or another --sampler"
            )
        if isinstance(args.devices, int) and args.devices > 1:
            parser.error(
                "--devices above 1 applies to --sampler em only (ML-EM split over "
                "devices); use --devices 1 with a mlem_jax.diffusion sampler"
            )
    if args.steps >= 2**31:
        parser.error(f"--steps must be below 2**31, got {args.steps}")
    return interruptible(
        "sample", lambda: _sample(args, parser, dist), f"{args.out} and {npz}"
    )


@dataclasses.dataclass
class _Run:
    """One `sample` run: its arguments, the loaded ladder and the seed's draws (the
    prior draws `y0`, and the keys of the Brownian path, the calibration pilots and
    the level draws)."""

    args: argparse.Namespace
    parser: argparse.ArgumentParser
    dist: Distributed | None
    ladder: Ladder
    param: VPLinear
    sampler: Any  # a `mlem_jax.diffusion` sampler, or None for --sampler em
    y0: Any
    k_path: Any
    k_cal: Any
    k_level: Any
    bar: Any

    @property
    def num_levels(self) -> int:
        return self.ladder.levels.num_levels


@dataclasses.dataclass
class _Plan:
    """The schedule a run solves with (None: the top level alone), the 0-based
    levels it runs (None: every level), the level seconds it priced, the devices."""

    schedule: Any = None
    used: tuple[int, ...] | None = None
    level_seconds: list[float] | None = None
    devices: int = 1


@dataclasses.dataclass
class _Solved:
    """What a solve returned: the rows this process holds (global indices `rows`),
    the evaluations of every level, per device when split, and the seconds."""

    x: np.ndarray
    rows: np.ndarray
    evaluations: np.ndarray
    per_device: Any
    secs: float
    flops: float


def _sample(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    dist: Distributed | None = None,
) -> int:
    run = _load(args, parser, dist)
    plan = _plan(run)
    run.bar.update()
    _choose_devices(run, plan)
    run.bar.set_postfix_str("compile and solve")
    solved = _solve(run, plan)
    run.bar.update()
    run.bar.set_postfix_str("write")
    if not _check_samples(run, plan, solved):
        return 1
    raise_if_interrupted()
    if dist is not None and not dist.writes:
        run.bar.close()
        return 0
    _write(run, plan, solved)
    run.bar.update()
    run.bar.close()
    _report(run, plan, solved)
    return 0


def _load(
    args: argparse.Namespace, parser: argparse.ArgumentParser, dist: Distributed | None
) -> _Run:
    """Load the ladder, refuse per-level options of another length and a run too
    large for the memory, and draw the seed's prior draws."""
    ladder = load_ladder(parser, args.ladder, args.num)
    k = ladder.levels.num_levels
    if args.probs is not None and len(args.probs) != k:
        parser.error(f"--probs needs {k} values (one per level), got {len(args.probs)}")
    if args.level_ms is not None:
        if args.cost != "seconds":
            parser.error("--level-ms only applies to --cost seconds")
        if len(args.level_ms) != k:
            parser.error(
                f"--level-ms needs {k} values (one per level), got {len(args.level_ms)}"
            )
    size = args.num * math.prod(ladder.shape)
    # The Brownian increments of every step are drawn up front and kept (4 bytes
    # each), plus XLA's copy of them as the scan's input; and the networks'
    # activations on the whole batch (`activation_bytes`).
    check_memory(
        parser,
        f"--steps {args.steps} with --num {args.num}",
        2.0 * 4 * size * args.steps + args.num * activation_bytes(ladder),
        "lower --num (or --steps).",
    )
    k_y0, k_path, k_cal, k_level = jax.random.split(jax.random.key(args.seed), 4)
    y0 = ladder.sde.prior_sample(k_y0, (args.num, *ladder.shape))
    if dist is not None:
        dist.agree(args, ladder, y0)
    return _Run(
        args=args,
        parser=parser,
        dist=dist,
        ladder=ladder,
        param=VPLinear(beta_min=ladder.sde.beta_min, beta_max=ladder.sde.beta_max),
        sampler=None if args.sampler == "em" else diffusion_sampler(args.sampler),
        y0=y0,
        k_path=k_path,
        k_cal=k_cal,
        k_level=k_level,
        bar=progress_bar(3, "mlem-jax sample", not args.no_progress),
    )


def _plan(run: _Run) -> _Plan:
    """The schedule of `--method`: none (single), T-Stitch, fixed `--probs`, or
    calibrated rates (mlem, hybrid)."""
    args, k = run.args, run.num_levels
    if args.method == "stitch":
        level, fraction = args.stitch
        if level > k:
            run.bar.close()
            run.parser.error(
                f"--stitch: level {level} is not in a ladder of {k} levels"
            )
        grid = (
            np.linspace(T0, T1, args.steps + 1)
            if run.sampler is None
            else time_grid(run.param, args.steps, t0=T0, t1=T1, kind=args.grid)
        )
        steps = Stitch.from_fractions(k, (level - 1, k - 1), (fraction,), grid=grid)
        return _Plan(schedule=steps)
    if args.method not in ("mlem", "hybrid"):
        return _Plan()
    run.bar.set_postfix_str("calibrate")
    if args.probs is not None:
        return _Plan(schedule=FixedProbabilities(jnp.asarray(args.probs, jnp.float32)))
    return _calibrated(run)


def _calibration(run: _Run):
    """The ladder's calibration (along the sampler's grid for a named sampler),
    priced in `--cost`; `(calibration, level seconds or None)`."""
    args = run.args
    pilots = run.y0[: min(args.num, 32)]
    if run.sampler is None:
        cal = ladder_calibration(
            run.ladder,
            pilots,
            run.k_cal,
            pilot_steps=args.pilot_steps,
            path=args.ladder,
        )
    else:
        # The hybrid's table has a bin per step: calibrate on its grid.
        pilot_steps = args.steps if args.method == "hybrid" else args.pilot_steps
        cal = sampler_calibration(
            run.ladder,
            run.param,
            run.sampler,
            pilots,
            run.k_cal,
            pilot_steps,
            args.grid,
        )
    level_seconds = None
    if args.level_ms is not None:
        level_seconds = [ms / 1e3 for ms in args.level_ms]
    elif run.dist is not None and args.cost == "seconds":
        level_seconds = run.dist.seconds(  # measured on process 0 only
            lambda: priced_calibration(cal, run.ladder, run.y0, "seconds").level_costs(
                "seconds"
            ),
            run.num_levels,
        )
    cal = priced_calibration(cal, run.ladder, run.y0, args.cost, level_seconds)
    if args.cost == "seconds":
        level_seconds = list(cal.level_costs("seconds"))
    return cal, level_seconds


def _calibrated(run: _Run) -> _Plan:
    """Calibrated rates at `--budget` (raised to the feasible range, with a
    warning), over the levels `--levels` picks or as the hybrid; prints what they
    minimise, the levels used and the verdict."""
    args = run.args
    cal, level_seconds = _calibration(run)
    run.bar.clear()
    print(describe_cost(cal, args.cost, args.num))
    budget = args.budget or args.steps / 4
    try:
        budget, note = feasible_budget(cal, args.steps, budget, cost=args.cost)
    except ValueError as e:
        run.bar.close()
        run.parser.error(f"--budget: {str(e).replace('`budget` ', '', 1)}")
    if note:
        given = "--budget" if args.budget else "--budget (default steps/4)"
        warn(note.replace("`budget`", given, 1))
    plan = _Plan(level_seconds=level_seconds)
    if args.method == "hybrid":
        plan.schedule = hybrid_schedule(cal, args.steps, budget, cost=args.cost)
        print(f"hybrid schedule: {type(plan.schedule).__name__}, every level")
    else:
        plan.used, plan.schedule = level_schedule(
            cal, args.steps, budget, cost=args.cost, levels=args.levels
        )
        print(
            "levels used: "
            + ",".join(str(i + 1) for i in plan.used)
            + " (1-based, cheapest = 1; Calibration.choose_levels returns "
            "0-based indices)"
        )
    verdict = ladder_verdict(cal, args.cost, args.steps)
    if verdict is not None:
        print(f"verdict: {verdict}")
    return plan


def _choose_devices(run: _Run, plan: _Plan) -> None:
    """The devices the batch is split over (every device of a distributed run,
    whose processes must have made the same schedule)."""
    note = None
    if run.dist is not None:
        run.dist.check_same("schedule", plan.schedule, plan.used)
        plan.devices = run.dist.devices(run.args.devices, run.args.num)
    elif run.sampler is None:
        plan.devices, note = sample_devices(run.parser, run.args.devices, run.args.num)
    if note:
        warn(note)


def _solve(run: _Run, plan: _Plan) -> _Solved:
    """The timed solve: a named sampler, ML-EM split over devices, Euler–Maruyama,
    or ML-EM on one device."""
    args, ladder, dist = run.args, run.ladder, run.dist
    dw = brownian_increments(
        run.k_path, run.y0.shape, t0=T0, t1=T1, num_steps=args.steps
    )
    per_device = None
    if run.sampler is not None:
        x, evaluations, secs = run_diffusion(
            ladder,
            run.param,
            run.sampler,
            plan.schedule,
            run.y0,
            dw,
            run.k_level,
            args.steps,
            args.grid,
            plan.used,
        )
    elif plan.devices > 1 or dist is not None:
        x, evaluations, per_device, secs = run_sharded(
            ladder,
            plan.schedule,
            run.y0,
            dw,
            run.k_level,
            args.steps,
            plan.used,
            plan.devices,
            None if dist is None else dist.mesh(plan.devices),
            args.draws,
        )
    elif plan.schedule is None:
        x, info, secs = run_em(ladder, run.y0, dw, run.k_level, args.steps)
        evaluations = np.zeros(run.num_levels, np.int64)
        evaluations[-1] = int(info.evaluations[0])
    else:
        x, evaluations, secs = run_mlem(
            ladder, plan.schedule, run.y0, dw, run.k_level, args.steps, plan.used
        )
    flops = float(np.dot(evaluations, ladder.levels.costs))
    rows, x = (np.arange(args.num), np.asarray(x)) if dist is None else dist.rows(x)
    return _Solved(x, rows, evaluations, per_device, secs, flops)


def _check_samples(run: _Run, plan: _Plan, solved: _Solved) -> bool:
    """Whether the samples can be written: warnings for a top level never evaluated
    and for samples far off the data range; an error for non-finite values."""
    x = solved.x
    if plan.schedule is not None and solved.evaluations[-1] == 0:
        warn(
            "the top level was never evaluated in this solve (0 evaluations): "
            "the samples carry the cheaper levels' error and ML-EM's noise; "
            "raise --steps or --budget."
        )
    if not np.all(np.isfinite(x)):
        run.bar.close()
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        print(
            f"mlem-jax: error: the solve returned {bad} non-finite value(s) (NaN or "
            f"inf) of {x.size}; nothing written. Raise --steps (or --budget, or drop "
            "--probs below the floor), or try another --sampler.",
            file=sys.stderr,
        )
        return False
    peak = float(np.max(np.abs(x)))
    if peak > 2.0:
        warn(
            f"the samples leave the data range [-1, 1] by far (max |x| = {peak:.3g}): "
            "too few --steps (or too small a --budget) for this ladder; they are "
            "likely noise."
        )
    return True


def _method(args: argparse.Namespace) -> str:
    """The run's name in the `.npz` and the report."""
    if args.sampler == "em":
        return "em" if args.method == "single" else args.method
    return f"{args.sampler} {args.method}"


def _write(run: _Run, plan: _Plan, solved: _Solved) -> None:
    args, dist = run.args, run.dist
    write_samples(
        args,
        solved.x,
        rows=solved.rows,
        y0=np.asarray(run.y0)[solved.rows],
        evaluations=solved.evaluations,
        flops=solved.flops,
        seconds=solved.secs,
        method=_method(args),
        cost=args.cost,
        level_seconds=np.asarray(plan.level_seconds or [], np.float64),
        devices=plan.devices,
        draws=args.draws,
        processes=1 if dist is None else dist.count,
        device_evaluations=np.asarray(
            solved.per_device if solved.per_device is not None else [solved.evaluations]
        ),
    )


def _report(run: _Run, plan: _Plan, solved: _Solved) -> None:
    args, dist = run.args, run.dist
    print(f"{_method(args)}: {args.steps} steps, {args.num} samples, seed {args.seed}")
    if solved.per_device is None:
        print(f"devices: 1 of {jax.local_device_count()} local")
        print(
            "evaluations per level: "
            + " ".join(str(int(e)) for e in solved.evaluations)
        )
    else:
        _report_devices(run, plan, solved)
    top = run.ladder.levels.costs[-1]
    print(f"top-level-equivalent evaluations (by FLOPs): {solved.flops / top:.1f}")
    print(f"FLOPs: {solved.flops:.3g}")
    print(f"wall-clock: {solved.secs:.2f} s (one solve, after compilation)")
    print(f"wrote {args.out} and {npz_path(args.out)}")
    if dist is not None:
        print(dist.describe())


def _report_devices(run: _Run, plan: _Plan, solved: _Solved) -> None:
    args, dist = run.args, run.dist
    where = (
        f"{jax.local_device_count()} local"
        if dist is None
        else f"{jax.device_count()} on {dist.count} processes"
    )
    draws = {
        "independent": ", independent level draws (device d: key fold_in(level "
        "key, d))",
        "shared": ", shared level draws (the single-device ones)",
    }
    print(
        f"devices: {plan.devices} of {where}, {args.num // plan.devices} samples each"
        + (draws[args.draws] if args.method == "mlem" else "")
    )
    for d, counts in enumerate(solved.per_device):
        print(f"  device {d} evaluations: " + " ".join(str(int(e)) for e in counts))
    print(
        "evaluations per level (whole-batch equivalent, mean over devices): "
        + " ".join(f"{e:g}" for e in solved.evaluations)
    )
