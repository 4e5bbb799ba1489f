"""Overhead of the diffrax drop-in solver over the functional core.

Times, on one problem and in one run:

- `diffrax.diffeqsolve(MultiTerm(MultilevelTerm, ControlTerm(g, StepBrownianPath)),
  MLEMSolver)` against the functional `mlem_solve` (ML-EM);
- `diffrax.diffeqsolve(..., diffrax.Euler())` on the same term against `em_solve`
  (Euler–Maruyama with the top level).

The hierarchy is real compute: three MLP drifts whose hidden widths grow 4× per level,
on a batch of 256 states. Both paths solve the same problem with the same key and give
the same result (checked here too). Each timing is the median of several runs after
compilation; the runs of the variants are interleaved, in a fresh random order every
round, so that load on a shared machine hits them alike. The fastest run of each is
recorded too, and the 10th percentile. Results (ratios, machine, versions, seed) go to
`benchmarks/results/diffrax_overhead.json`.

    python benchmarks/diffrax_overhead.py            # or: taskset -c 0 python ...
    python benchmarks/diffrax_overhead.py --dim 4 --batch 8 --base-width 2 \
        --num-steps 400 --calls-per-run 20 \
        --out benchmarks/results/diffrax_overhead_small.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

import mlem_jax as mj
from mlem_jax._env import machine, versions
from mlem_jax._io import write_json

RESULTS = Path(__file__).parent / "results" / "diffrax_overhead.json"


class MLP(eqx.Module):
    """A drift `f(t, y)`: one hidden tanh layer on `[y, t]`."""

    w1: jax.Array
    b1: jax.Array
    w2: jax.Array

    def __init__(self, dim: int, width: int, key):
        k1, k2 = jax.random.split(key)
        self.w1 = jax.random.normal(k1, (dim + 1, width)) / np.sqrt(dim + 1)
        self.b1 = jnp.zeros(width)
        self.w2 = jax.random.normal(k2, (width, dim)) / np.sqrt(width)

    def __call__(self, t, y, args):
        del args
        ty = jnp.broadcast_to(jnp.asarray(t, y.dtype), y.shape[:-1] + (1,))
        hidden = jnp.tanh(jnp.concatenate([y, ty], axis=-1) @ self.w1 + self.b1)
        return hidden @ self.w2 - y


def diffusion(t, y, args):
    del args
    return 0.5 * jnp.ones_like(y) * (1 + jnp.asarray(t, y.dtype))


def diffusion_operator(t, y, args):
    return lx.DiagonalLinearOperator(diffusion(t, y, args))


def build(seed: int, dim: int, batch: int, base_width: int, num_levels: int):
    key = jax.random.key(seed)
    model_key, y_key, solve_key = jax.random.split(key, 3)
    widths = [base_width * 4**i for i in range(num_levels)]
    fns = tuple(
        MLP(dim, w, k) for w, k in zip(widths, jax.random.split(model_key, num_levels))
    )
    costs = tuple(float(2 * batch * ((dim + 1) * w + w * dim)) for w in widths)
    levels = mj.Levels(fns, costs)
    y0 = jax.random.normal(y_key, (batch, dim))
    return levels, widths, y0, solve_key


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--base-width", type=int, default=32)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--num-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--calls-per-run",
        type=int,
        default=1,
        help="solves per timed run (more for tiny problems, whose single runs are "
        "too short to time on a busy machine)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args()

    levels, widths, y0, key = build(
        opts.seed, opts.dim, opts.batch, opts.base_width, opts.levels
    )
    n = opts.num_steps
    t0, t1 = 1.0, 0.0  # reverse time, as diffusion models sample
    # Level 1 every step; the expensive levels a few dozen times over the solve.
    rates = (jnp.inf,) + tuple(40.0 / 4**i for i in range(1, opts.levels))
    schedule = mj.Rates(rates)
    path = mj.StepBrownianPath(y0.shape, key, t0=t0, t1=t1, num_steps=n)
    terms = diffrax.MultiTerm(
        mj.MultilevelTerm(levels), diffrax.ControlTerm(diffusion_operator, path)
    )
    dt0 = (t1 - t0) / n

    # `checkpoint` only changes reverse-mode autodiff, but the jax.checkpoint around
    # the core's scan step also costs time in a plain forward solve; both settings
    # are timed.
    @eqx.filter_jit
    def functional_mlem(levels, y0, checkpoint):
        return mj.mlem_solve(
            levels,
            schedule,
            diffusion,
            y0,
            t0=t0,
            t1=t1,
            num_steps=n,
            key=key,
            checkpoint=checkpoint,
        )[0]

    @eqx.filter_jit
    def functional_em(levels, y0, checkpoint):
        return mj.em_solve(
            levels.top,
            diffusion,
            y0,
            t0=t0,
            t1=t1,
            num_steps=n,
            key=key,
            checkpoint=checkpoint,
        )[0]

    @eqx.filter_jit
    def diffrax_solve(terms, solver, y0):
        sol = diffrax.diffeqsolve(terms, solver, t0, t1, dt0, y0, max_steps=n)
        return sol.ys[-1]

    mlem_solver = mj.MLEMSolver(schedule, key=key)
    euler = diffrax.Euler()
    variants = {
        "mlem_solve": lambda: functional_mlem(levels, y0, True),
        "mlem_solve_no_checkpoint": lambda: functional_mlem(levels, y0, False),
        "diffrax_mlem": lambda: diffrax_solve(terms, mlem_solver, y0),
        "em_solve": lambda: functional_em(levels, y0, True),
        "em_solve_no_checkpoint": lambda: functional_em(levels, y0, False),
        "diffrax_euler": lambda: diffrax_solve(terms, euler, y0),
    }
    outputs = {name: np.asarray(fn()) for name, fn in variants.items()}  # compile
    agreement = {
        "mlem": float(np.abs(outputs["diffrax_mlem"] - outputs["mlem_solve"]).max()),
        "em": float(np.abs(outputs["diffrax_euler"] - outputs["em_solve"]).max()),
    }
    times = {name: [] for name in variants}
    # A fresh random order every round, so that no variant always runs first
    # (right after another executable) or always last.
    order = random.Random(opts.seed)
    names = list(variants)
    for _ in range(opts.repeats):
        order.shuffle(names)
        for name in names:
            fn = variants[name]
            start = time.perf_counter()
            jax.block_until_ready([fn() for _ in range(opts.calls_per_run)])
            times[name].append((time.perf_counter() - start) / opts.calls_per_run)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    fastest = {name: min(ts) for name, ts in times.items()}
    tenth = {name: float(np.quantile(ts, 0.1)) for name, ts in times.items()}

    def ratios_of(t):
        return {
            "diffrax_mlem / mlem_solve": t["diffrax_mlem"] / t["mlem_solve"],
            "diffrax_mlem / mlem_solve_no_checkpoint": t["diffrax_mlem"]
            / t["mlem_solve_no_checkpoint"],
            "diffrax_euler / em_solve": t["diffrax_euler"] / t["em_solve"],
            "diffrax_euler / em_solve_no_checkpoint": t["diffrax_euler"]
            / t["em_solve_no_checkpoint"],
        }

    ratios = ratios_of(median)
    # On a loaded machine the fastest run is the least disturbed one.
    ratios_of_fastest = ratios_of(fastest)
    ratios_of_10th_percentiles = ratios_of(tenth)
    result = {
        "benchmark": "diffrax_overhead",
        "ratios": ratios,
        "ratios_of_fastest_runs": ratios_of_fastest,
        "ratios_of_10th_percentiles": ratios_of_10th_percentiles,
        "median_seconds": median,
        "fastest_seconds": fastest,
        "10th_percentile_seconds": tenth,
        "all_seconds": times,
        "max_abs_difference": agreement,
        "problem": {
            "levels": opts.levels,
            "hidden_widths": widths,
            "dim": opts.dim,
            "batch": opts.batch,
            "num_steps": n,
            "t0": t0,
            "t1": t1,
            "rates": [float(r) for r in rates],
            "brownian": "StepBrownianPath",
            "repeats": opts.repeats,
            "calls_per_run": opts.calls_per_run,
        },
        "seed": opts.seed,
        "machine": dict(
            machine(),
            # Other processes on a shared machine; the interleaved runs see it alike.
            load_average_1_5_15=list(os.getloadavg()),
        ),
        "versions": versions(),
    }
    write_json(opts.out, result)
    print(
        json.dumps(
            {
                "ratios": ratios,
                "ratios_of_fastest_runs": ratios_of_fastest,
                "ratios_of_10th_percentiles": ratios_of_10th_percentiles,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
