"""`mlem-jax sample --class C --guidance W`: classifier-free guidance on a
class-conditional ladder, with the top network alone (full CFG, or CFG on a
guidance interval) or as the multilevel guided sampler (the size ladder with the
guidance correction as its top level, both randomised with calibrated rates).

Everything here goes through the library's public guidance API
(`mlem_jax.diffusion.cfg_levels`, `guidance_interval`, `calibrate_sampler`,
`mlem_sample`, `sample`), as a user's script would.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import FixedProbabilities, Levels, brownian_increments
from .._cost import timed_run
from ..diffusion import (
    VPLinear,
    calibrate_sampler,
    cfg_levels,
    guidance_interval,
    mlem_sample,
    sample,
    sampler as diffusion_sampler,
)
from ..pretrained import T0, T1, resolve_ladder
from ..training import num_classes_from_manifest, read_manifest
from ._budget import budget_schedule, feasible_budget
from ._common import load_ladder, warn
from ._images import npz_path, write_samples
from ._solves import eps_networks

DEFAULT_SAMPLER = "sde-dpm++1"
"""The sampler guided sampling uses when `--sampler` is not given (`em`, the
unguided default, integrates the reverse SDE's drift, not a prediction that
guidance can combine)."""


def finite_float(text: str) -> float:
    """An argparse type: a finite number (the guidance scale)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"expected a finite number (the guidance scale w: 1 is the conditional "
            f"network alone, 0 the unconditional one), got {text!r}"
        )
    return value


def interval_spec(text: str) -> tuple[float, float]:
    """An argparse type: `a,b`, two finite times with a < b."""
    parts = text.split(",")
    try:
        a, b = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two times a,b (e.g. 0.2,0.7), got {text!r}"
        ) from None
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise argparse.ArgumentTypeError(
            f"expected two finite times a < b, got {text!r}"
        )
    return a, b


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "guidance (class-conditional ladders: mlem-jax train --conditional)"
    )
    g.add_argument(
        "--class",
        dest="class_",
        type=int,
        default=None,
        metavar="C",
        help="conditioning class in [0, num_classes) (default with --guidance: the "
        "samples cycle through every class, sample i of class i mod num_classes)",
    )
    g.add_argument(
        "--guidance",
        type=finite_float,
        default=None,
        metavar="W",
        help="classifier-free guidance scale w: x_u + w (x_c - x_u) on the "
        "network's prediction (1: the conditional network alone, 0: the "
        "unconditional one; default 1 with --class). --method single: full CFG "
        "with the top network; --method mlem: the size ladder with the guidance "
        "correction as its top level, rates calibrated (or --probs, one per level "
        "plus one for the guidance)",
    )
    g.add_argument(
        "--guidance-interval",
        type=interval_spec,
        default=None,
        metavar="A,B",
        help="--method single: apply guidance only at the steps whose midpoint "
        f"time lies in [A, B] (within [{T1:g}, {T0:g}]), the conditional network "
        "alone elsewhere (Kynkaanniemi et al. 2024)",
    )


def guided(args: argparse.Namespace) -> bool:
    return (
        args.class_ is not None
        or args.guidance is not None
        or args.guidance_interval is not None
    )


def check_guided_args(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """Refuse what guided sampling does not take, before anything is loaded."""
    if args.sampler is None:
        args.sampler = DEFAULT_SAMPLER
    if args.sampler == "em":
        parser.error(
            "--sampler em does not take guidance (it integrates the reverse SDE's "
            "drift); use a mlem_jax.diffusion sampler, e.g. --sampler "
            f"{DEFAULT_SAMPLER} (the default with --class/--guidance), ddim or dpm++2m"
        )
    if args.method not in ("single", "mlem"):
        parser.error(
            f"--method {args.method} does not take guidance; use --method single "
            "(full CFG with the top network) or --method mlem (the multilevel "
            "guided sampler)"
        )
    if args.guidance is None:
        args.guidance = 1.0
    if args.guidance_interval is not None and args.method != "single":
        parser.error(
            "--guidance-interval applies to --method single; --method mlem "
            "calibrates the guidance's rate p(t) instead (an interval is p in {0, 1})"
        )
    if args.guidance_interval is not None and args.guidance == 1.0:
        warn("--guidance-interval with --guidance 1 changes nothing (no guidance)")
    if isinstance(args.devices, int) and args.devices > 1:
        parser.error("--devices above 1 does not apply to guided sampling")
    if args.level_ms is not None:
        parser.error("--level-ms does not apply to guided sampling (FLOP costs)")
    if args.cost not in (None, "flops"):
        parser.error(
            "guided sampling prices levels by FLOPs (--cost flops); --cost "
            f"{args.cost} is not supported with --guidance"
        )
    sampler = diffusion_sampler(args.sampler)
    if not sampler.affine:
        parser.error(
            f"--sampler {args.sampler} is not affine in the network's prediction, so "
            "guidance as a telescope level would bias it; use another --sampler"
        )
    return sampler


def ladder_classes(parser: argparse.ArgumentParser, ladder: str | None) -> int:
    """The ladder's number of classes; a usage error for an unconditional one."""
    path, _ = resolve_ladder(ladder)
    try:
        manifest = read_manifest(path)
    except (ValueError, FileNotFoundError) as e:
        parser.error(f"--ladder: {str(e).replace('`path`: ', '')}")
    k = num_classes_from_manifest(manifest)
    if k is None:
        parser.error(
            f"--class/--guidance need a class-conditional ladder (trained with "
            f"`mlem-jax train --conditional`); --ladder {ladder or 'digits'} is "
            "unconditional"
        )
    return k


@eqx.filter_jit
def _solve(levels, schedule, param, sampler, y0, labels, key, steps, grid, dw):
    kw: dict[str, Any] = dict(
        t0=T0, t1=T1, num_steps=steps, grid=grid, brownian=dw, args=labels
    )
    if schedule is None:  # the conditional network alone
        return sample(levels.top, param, sampler, y0, key=key, **kw)
    return mlem_sample(levels, schedule, param, sampler, y0, key=key, **kw)


@dataclasses.dataclass
class _Run:
    """One guided `sample` run: its arguments, the ladder's ε-networks, the seed's
    draws (prior draws `y0` and the keys of the path, the pilots and the levels)
    and the labels each sample is conditioned on."""

    args: argparse.Namespace
    parser: argparse.ArgumentParser
    sampler: Any
    nets: Levels
    param: VPLinear
    num_classes: int
    y0: Any
    labels: Any
    k_path: Any
    k_cal: Any
    k_level: Any


def run_guided(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`mlem-jax sample` with guidance; `args` checked by `check_guided_args`."""
    run = _load(args, parser)
    if args.method == "single":
        levels, schedule, cost_note = _single(run), _single_schedule(run), None
    else:
        levels = cfg_levels(
            run.nets.fns,
            run.nets.costs,
            scale=args.guidance,
            num_classes=run.num_classes,
        )
        schedule, cost_note = _multilevel_schedule(run, levels)
    x, evaluations, secs = _solve_guided(run, levels, schedule)
    flops = float(np.dot(evaluations, np.asarray(levels.costs, np.float64)))
    if not np.all(np.isfinite(x)):
        print(
            "mlem-jax: error: the guided solve returned non-finite values; nothing "
            "written. Raise --steps or lower --guidance."
        )
        return 1
    interval = args.guidance_interval
    method = f"{args.sampler} {args.method} guided"
    write_samples(
        args,
        x,
        labels=np.asarray(run.labels),
        y0=np.asarray(run.y0),
        guidance=args.guidance,
        guidance_interval=np.asarray(interval if interval else [], np.float64),
        evaluations=evaluations,
        flops=flops,
        seconds=secs,
        method=method,
        cost="flops",
    )
    what = f"class {args.class_}" if args.class_ is not None else "every class"
    print(
        f"{method}: {args.steps} steps, {args.num} samples ({what}), guidance "
        f"{args.guidance:g}"
        + (f" on [{interval[0]:g}, {interval[1]:g}]" if interval else "")
        + f", seed {args.seed}"
    )
    if cost_note:
        print(cost_note)
    print(
        "evaluations per level (the last: the unconditional prediction): "
        + " ".join(str(int(e)) for e in evaluations)
    )
    top = run.nets.costs[-1]
    print(f"top-level-equivalent evaluations (by FLOPs): {flops / top:.1f}")
    print(f"FLOPs: {flops:.3g}")
    print(f"wall-clock: {secs:.2f} s (one solve, after compilation)")
    print(f"wrote {args.out} and {npz_path(args.out)}")
    return 0


def _load(args: argparse.Namespace, parser: argparse.ArgumentParser) -> _Run:
    """Refuse a class the ladder lacks, load it, draw the seed's prior draws and
    the labels (`--class`, else sample i of class i mod num_classes)."""
    num_classes = ladder_classes(parser, args.ladder)
    if args.class_ is not None and not 0 <= args.class_ < num_classes:
        parser.error(
            f"--class {args.class_} is not a class of this ladder: expected an int "
            f"in [0, {num_classes})"
        )
    ladder = load_ladder(parser, args.ladder, args.num)
    k_y0, k_path, k_cal, k_level = jax.random.split(jax.random.key(args.seed), 4)
    if args.class_ is not None:
        labels = jnp.full((args.num,), args.class_, jnp.int32)
    else:
        labels = jnp.arange(args.num, dtype=jnp.int32) % num_classes
    return _Run(
        args=args,
        parser=parser,
        sampler=diffusion_sampler(args.sampler),
        nets=eps_networks(ladder),
        param=VPLinear(beta_min=ladder.sde.beta_min, beta_max=ladder.sde.beta_max),
        num_classes=num_classes,
        y0=ladder.sde.prior_sample(k_y0, (args.num, *ladder.shape)),
        labels=labels,
        k_path=k_path,
        k_cal=k_cal,
        k_level=k_level,
    )


def _single(run: _Run) -> Levels:
    """Full CFG with the top network: its conditional prediction and the guidance
    correction as two levels."""
    return cfg_levels(
        run.nets.fns[-1],
        run.nets.costs[-1],
        scale=run.args.guidance,
        num_classes=run.num_classes,
    )


def _single_schedule(run: _Run):
    """`--method single`: the conditional network alone (None) at guidance 1,
    guidance on `--guidance-interval`, or at every step."""
    args = run.args
    if args.guidance == 1.0 and args.guidance_interval is None:
        schedule = None  # x_u + 1 (x_c - x_u) = x_c: the conditional network
    elif args.guidance_interval is not None:
        try:
            schedule = guidance_interval(2, args.guidance_interval, t0=T0, t1=T1)
        except ValueError as e:
            run.parser.error(
                "--guidance-interval: "
                + str(e).replace("guidance_interval: `interval` ", "")
            )
    else:
        schedule = FixedProbabilities(jnp.ones(2, jnp.float32))
    if args.probs is not None:
        run.parser.error("--probs only applies to --method mlem")
    return schedule


def _multilevel_schedule(run: _Run, levels: Levels):
    """`--method mlem`: `--probs`, or rates calibrated along the sampler's grid for
    `--budget` FLOPs (default: steps); `(schedule, the line saying so or None)`."""
    args, k = run.args, levels.num_levels
    if args.probs is not None:
        if len(args.probs) != k:
            run.parser.error(
                f"--probs needs {k} values with guidance (one per level, then "
                f"the guidance correction), got {len(args.probs)}"
            )
        return FixedProbabilities(jnp.asarray(args.probs, jnp.float32)), None
    pilots = run.y0[: min(args.num, 32)]
    cal = calibrate_sampler(
        levels,
        run.param,
        run.sampler,
        pilots,
        t0=T0,
        t1=T1,
        num_steps=args.pilot_steps,
        key=run.k_cal,
        grid=args.grid,
        args=run.labels[: pilots.shape[0]],
        num_bins=min(8, args.pilot_steps),
        pilot_keys=0,
        measure_costs=False,
    )
    budget = args.budget or float(args.steps)
    try:
        budget, note = feasible_budget(cal, args.steps, budget, cost="flops")
    except ValueError as e:
        run.parser.error(f"--budget: {str(e).replace('`budget` ', '', 1)}")
    if note:
        given = "--budget" if args.budget else "--budget (default: steps)"
        warn(note.replace("`budget`", given, 1))
    return budget_schedule(cal, args.steps, budget, cost="flops"), (
        f"rates calibrated for {budget:g} top-level evaluations of FLOPs "
        f"(full CFG: {2 * args.steps})"
    )


def _solve_guided(run: _Run, levels: Levels, schedule):
    """The timed solve; `(samples, evaluations of every level of `levels`,
    seconds)`."""
    args = run.args
    dw = None
    if run.sampler.stochastic and args.grid == "uniform":
        dw = brownian_increments(
            run.k_path, run.y0.shape, t0=T0, t1=T1, num_steps=args.steps
        )
    solve_levels = (
        Levels((levels.fns[0],), (levels.costs[0],)) if schedule is None else levels
    )
    (x, info), secs = timed_run(
        lambda: _solve(
            solve_levels,
            schedule,
            run.param,
            run.sampler,
            run.y0,
            run.labels,
            run.k_level,
            args.steps,
            args.grid,
            dw,
        )
    )
    evaluations = np.asarray(info.evaluations, np.int64).reshape(-1)
    if schedule is None:  # the conditional network alone: no guidance level
        evaluations = np.array([int(evaluations[0]), 0], np.int64)
    return np.asarray(x), evaluations, secs
