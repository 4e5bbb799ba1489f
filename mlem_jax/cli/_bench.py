"""`mlem-jax bench`: the cost–error benchmark, ML-EM against Euler–Maruyama."""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from .._io import write_json
from ._budget import COSTS, cost_unit
from ._common import (
    check_ladder,
    check_memory,
    check_output_dir,
    positive_float,
    positive_int,
    seed,
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="cost–error benchmark: ML-EM against Euler–Maruyama",
        description=(
            "Run the cost–error benchmark of mlem_jax.benchmarking on a synthetic "
            "drift hierarchy with cost–accuracy exponent --gamma, or on a trained "
            "ladder (--ladder). Writes a JSON result and a log–log PNG plot."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--gamma", type=positive_float, default=3.0)
    p.add_argument(
        "--ladder",
        help="run on this ladder directory instead ('shipped' for the digits ladder)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: about 30 s on the synthetic problem; with --ladder "
        "several minutes on a CPU (mostly compiling the UNet solves at each step "
        "count), against about an hour without --quick",
    )
    p.add_argument(
        "--batch", type=positive_int, default=16, help="--ladder: images per solve"
    )
    p.add_argument(
        "--ode",
        action="store_true",
        help="--ladder: the probability-flow ODE (Euler, Heun, ML-EM) instead of "
        "the reverse SDE",
    )
    p.add_argument(
        "--cost",
        choices=COSTS,
        default="seconds",
        help="what ML-EM's calibrated rates minimise: seconds measured here per "
        "level on the batch, or FLOPs (the speedups are reported in both)",
    )
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", default="mlem-jax-bench", help="output folder")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..benchmarking import (
        LADDER_SETTINGS,
        QUICK_LADDER_SETTINGS,
        QUICK_SETTINGS,
        ladder_problem,
        plot_cost_error,
        run_cost_error,
        speedup_lines,
        synthetic_problem,
    )
    from ..pretrained import pretrained_path
    from ..training import read_manifest

    path = args.ladder
    directory = pretrained_path() if path == "shipped" else path
    check_ladder(parser, directory)
    check_output_dir(parser, "--out", args.out)
    if path is not None:
        spec = read_manifest(directory)["spec"]
        settings = QUICK_LADDER_SETTINGS if args.quick else LADDER_SETTINGS
        check_memory(
            parser,
            f"--batch {args.batch}",
            3.0
            * 4
            * math.prod(spec["image_shape"])
            * args.batch
            * settings["fine_steps"],
            "lower --batch.",
        )
    if path is None:
        if args.quick:
            problem = synthetic_problem(
                args.gamma, num_levels=3, growth=4, batch=8, seed=args.seed
            )
            kw = QUICK_SETTINGS
        else:
            problem = synthetic_problem(args.gamma, seed=args.seed)
            kw = {}
    else:
        try:
            problem = ladder_problem(
                None if path == "shipped" else path,
                4 if args.quick else args.batch,
                args.seed,
                ode=args.ode,
            )
        except (ValueError, FileNotFoundError) as e:
            parser.error(f"--ladder: {str(e).replace('`path`: ', '')}")
        kw = QUICK_LADDER_SETTINGS if args.quick else LADDER_SETTINGS
    print(f"rates minimise {args.cost}")
    result = run_cost_error(problem, seed=args.seed, cost=cost_unit(args.cost), **kw)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"cost_error_{problem.name}")
    write_json(stem + ".json", result, default=float)
    plot_cost_error(result, stem + ".png")
    for line in speedup_lines(result):
        print(line)
    print(f"wrote {stem}.json and {stem}.png")
    return 0
