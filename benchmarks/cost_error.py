"""Cost–error benchmark: ML-EM vs the best Euler–Maruyama and diffrax's SRK solvers.

Synthetic drift hierarchies with γ = 2.5, 3 and 4 by construction (the theory's test
bench: EM's cost exponent should approach γ + 1 and ML-EM's γ). For each problem it
writes `benchmarks/results/cost_error_<problem>.json` (every run, the frontiers,
fitted exponents, speedups at matched error, predicted vs measured cost and error of
the calibrated schedules, machine, versions and seed) and a log–log PNG beside it.

Run:  python benchmarks/cost_error.py [--gamma 2.5 3 4] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import environment, write_json  # noqa: E402

from mlem_jax.benchmarking import (  # noqa: E402
    plot_cost_error,
    run_cost_error,
    synthetic_problem,
)

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gamma", type=float, nargs="+", default=[2.5, 3.0, 4.0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=RESULTS)
    opts = parser.parse_args(argv)
    for gamma in opts.gamma:
        if opts.quick:
            problem = synthetic_problem(
                gamma, num_levels=3, growth=4, batch=8, seed=opts.seed
            )
            kw = dict(
                fine_steps=64,
                em_steps=(8, 16, 32),
                mlem_steps=(16, 64),
                targets=(1.0,),
                level_keys=2,
                pilot_steps=16,
                srk_solvers=("SRA1",),
                srk_steps=(8, 16),
            )
        else:
            problem = synthetic_problem(gamma, seed=opts.seed)
            kw = {}
        result = run_cost_error(problem, seed=opts.seed, **kw)
        result.update(environment(opts.seed))
        stem = os.path.join(opts.out, f"cost_error_{problem.name}")
        write_json(stem + ".json", result)
        plot_cost_error(result, stem + ".png")
        print(report(result))
        print(f"wrote {stem}.json and {stem}.png")


def report(result: dict) -> str:
    lines = [f"== {result['problem']} =="]
    for method, fit in result["exponents"].items():
        lines.append(
            f"  {method:>6}: cost ∝ error^-{fit['exponent']:.2f} "
            f"(± {fit['stderr']:.2f}, {fit['points']} frontier points)"
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
