"""Cost–error benchmark: ML-EM vs the best Euler–Maruyama and diffrax's SRK solvers.

Synthetic drift hierarchies with γ = 2.5, 3 and 4 by construction (the theory's test
bench: EM's cost exponent should approach γ + 1 and ML-EM's γ). For each problem it
writes `benchmarks/results/cost_error_<problem>.json` (every run, the frontiers,
fitted exponents, speedups at matched error, predicted vs measured cost and error of
the calibrated schedules, machine, versions and seed) and a log–log PNG beside it.

Run:  python benchmarks/cost_error.py [--gamma 2.5 3 4] [--quick] [--cost seconds] [--out DIR]
      python benchmarks/cost_error.py --ladder shipped [--ode]   # trained UNet ladder

With `--ladder` (a ladder directory, or `shipped` for the digits ladder inside the
package) the problem is that ladder's reverse SDE (or probability-flow ODE with
`--ode`: Euler, Heun and ML-EM), the top network as the reference drift.

A full run also rewrites the cost_error table in docs/results.md (between its
`<!-- cost_error:start -->` and `<!-- cost_error:end -->` markers) from every
`cost_error_*.json` under `benchmarks/results/`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from types import SimpleNamespace

import jax

sys.path.insert(0, os.path.dirname(__file__))
from _common import RESULTS_PAGE, environment, replace_results_block, write_json  # noqa: E402
from _harness import (  # noqa: E402
    LADDER_SETTINGS,
    QUICK_LADDER_SETTINGS,
    QUICK_SETTINGS,
    ladder_problem,
    plot_cost_error,
    run_cost_error,
    summarise,
    synthetic_problem,
)

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gamma", type=float, nargs="+", default=[2.5, 3.0, 4.0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument(
        "--large",
        action="store_true",
        help="the GPU configuration: 5 levels (top 262144 features), batch 256; "
        "results are saved with a _<backend> suffix beside the CPU ones",
    )
    parser.add_argument(
        "--ladder", help="a ladder directory, or 'shipped', instead of --gamma"
    )
    parser.add_argument(
        "--ode", action="store_true", help="--ladder: the probability-flow ODE"
    )
    parser.add_argument("--batch", type=int, default=32, help="--ladder: images")
    parser.add_argument(
        "--cost",
        choices=("flops", "seconds"),
        default="flops",
        help="what ML-EM's calibrated rates minimise: the levels' FLOPs, or their "
        "seconds measured here on the batch (the speedups are reported in both)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--resummarise",
        action="store_true",
        help="recompute the fits and speedups of the saved results from their "
        "recorded runs (no solves), then rewrite the table in docs/results.md",
    )
    parser.add_argument("--out", default=RESULTS)
    opts = parser.parse_args(argv)
    if opts.resummarise:
        resummarise(opts.out)
        if os.path.abspath(opts.out) == os.path.abspath(RESULTS):
            update_results_page(RESULTS, RESULTS_PAGE)
        return
    unit = "seconds" if opts.cost == "seconds" else "costs"
    if opts.ladder is not None:
        path = None if opts.ladder == "shipped" else opts.ladder
        problem = ladder_problem(path, opts.batch, opts.seed, ode=opts.ode)
        kw = QUICK_LADDER_SETTINGS if opts.quick else LADDER_SETTINGS
        result = run_cost_error(problem, seed=opts.seed, cost=unit, **kw)
        save(result, opts, problem.name)
        if not opts.quick and os.path.abspath(opts.out) == os.path.abspath(RESULTS):
            update_results_page(RESULTS, RESULTS_PAGE)
        return
    for gamma in opts.gamma:
        if opts.quick:
            problem = synthetic_problem(
                gamma, num_levels=3, growth=4, batch=8, seed=opts.seed
            )
            kw = QUICK_SETTINGS
        elif opts.large:
            problem = synthetic_problem(gamma, num_levels=5, batch=256, seed=opts.seed)
            kw = dict(
                fine_steps=2048,
                em_steps=(8, 16, 32, 64, 128, 256, 512),
                mlem_steps=(64, 256, 1024),
                level_keys=16,
            )
        else:
            problem = synthetic_problem(gamma, seed=opts.seed)
            kw = {}
        suffix = f"_{jax.default_backend()}" if opts.large else ""
        result = run_cost_error(problem, seed=opts.seed, cost=unit, **kw)
        save(result, opts, problem.name + suffix)
    if not (opts.quick or opts.large) and os.path.abspath(opts.out) == os.path.abspath(
        RESULTS
    ):
        update_results_page(RESULTS, RESULTS_PAGE)
        print(f"updated the results table in {RESULTS_PAGE}")


def save(result: dict, opts, name: str) -> None:
    result.update(environment(opts.seed))
    stem = os.path.join(opts.out, f"cost_error_{name}")
    write_json(stem + ".json", result)
    plot_cost_error(result, stem + ".png")
    print(report(result))
    print(f"wrote {stem}.json and {stem}.png")


def results_table(folder: str) -> str:
    """A Markdown table of every cost_error_*.json in `folder`."""
    rows = [
        "| problem | γ (design / fitted) | EM exponent, errors ≥ √2·floor (all) | "
        "ML-EM exponent, errors ≥ √2·floor (all) | speedup at "
        "tightest error ≥ √2·floor | at tightest matched error | largest at "
        "matched error | calibrated: cost meas/pred | added error meas/target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(glob.glob(os.path.join(folder, "cost_error_*.json"))):
        if path.endswith(("_gpu.json", "_cuda.json", "_tpu.json")):
            continue
        with open(path) as f:
            r = json.load(f)
        ex = r["exponents"]
        fitted = [c["gamma"] for c in r["calibrations"]]
        above = r.get("speedup_at_tightest_error_above_floor")
        tight = r.get("speedup_at_tightest_matched_error")
        cal = r["calibrated_schedules"]
        cost = [c["cost_ratio"] for c in cal]
        err = [c["error_ratio"] for c in cal]
        rows.append(
            f"| {r['problem']} | {r.get('gamma_design') or 'trained'} / "
            f"{fitted[-1]:.2f} | "
            f"{_exponent(ex['em'])} | {_exponent(ex['mlem'])} | "
            + (
                f"{above['speedup']:.1f}× at {above['error']:.3g} | "
                if above
                else "– | "
            )
            + (
                f"{tight['speedup']:.1f}× at {tight['error']:.3g} | "
                if tight
                else "– | "
            )
            + (
                f"{best['speedup']:.1f}× at {best['error']:.3g} | "
                if (
                    best := max(
                        r["speedup_at_matched_error"],
                        key=lambda x: x["speedup"],
                        default=None,
                    )
                )
                else "– | "
            )
            + f"{min(cost):.2f}–{max(cost):.2f} | {min(err):.2f}–{max(err):.2f} |"
        )
    return "\n".join(rows)


def _exponent(fit: dict) -> str:
    above = fit["above_floor"]
    return (
        f"{above['exponent']:.2f} ± {above['stderr']:.2f} ({fit['exponent']:.2f})"
        if above["points"] >= 3
        else f"– ({fit['exponent']:.2f})"
    )


def resummarise(folder: str) -> None:
    """Recompute every `cost_error_*.json`'s frontiers, fits and speedups from its
    recorded runs (after a change to `summarise`; no solve is rerun), and its plot."""
    for path in sorted(glob.glob(os.path.join(folder, "cost_error_*.json"))):
        with open(path) as f:
            old = json.load(f)
        problem = SimpleNamespace(name=old["problem"], gamma=old["gamma_design"])
        new = summarise(problem, old["runs"], old["calibrations"], old["config"])
        old.update(new)
        write_json(path, old)
        plot_cost_error(old, path[: -len(".json")] + ".png")
        print(f"resummarised {path}")


def update_results_page(folder: str, page: str) -> None:
    """Replace the table between the markers of docs/results.md, atomically."""
    replace_results_block(page, "cost_error", results_table(folder))


def report(result: dict) -> str:
    lines = [f"== {result['problem']} =="]
    for method, fit in result["exponents"].items():
        lines.append(
            f"  {method:>6}: cost ∝ error^-{fit['exponent']:.2f} "
            f"(± {fit['stderr']:.2f}, {fit['points']} frontier points; at errors "
            f"≥ √2·floor: {fit['above_floor']['exponent']:.2f} ± "
            f"{fit['above_floor']['stderr']:.2f}, {fit['above_floor']['points']})"
        )
    best = result["speedup_at_tightest_matched_error"]
    if best:
        lines.append(
            f"  speedup at the tightest matched error {best['error']:.3g}: "
            f"{best['speedup']:.2f}x (EM {best['em_cost']:.3g} FLOPs, "
            f"ML-EM {best['mlem_cost']:.3g})"
        )
    cal = result["calibrated_schedules"]
    if cal:
        cost = [c["cost_ratio"] for c in cal]
        err = [c["error_ratio"] for c in cal]
        lines.append(
            f"  calibrated schedules: measured/predicted cost "
            f"{min(cost):.2f}..{max(cost):.2f}; measured/target added error "
            f"{min(err):.2f}..{max(err):.2f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
