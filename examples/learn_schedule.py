"""Learn time-dependent level probabilities p_l(t) and compare them, at equal cost,
with the calibrated rule and with time-constant probabilities.

Runs on a small version of the synthetic γ = 3 hierarchy, or with `--digits` on
the shipped digits UNet ladder (its reverse SDE, 64 steps, a batch of 8 prior draws;
a few minutes on a CPU). The full comparison is `benchmarks/learn_schedule.py`.

    python examples/learn_schedule.py [--digits]
"""

import os
import sys

import jax
import jax.numpy as jnp

import mlem_jax as mj

# The test problems of the benchmarks (`benchmarks/_harness.py`, beside the package).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
from _harness import ladder_problem, synthetic_problem  # noqa: E402

digits = "--digits" in sys.argv[1:]
if digits:
    problem = ladder_problem(None, batch=8)  # the shipped ladder, t from 1 to 1e-3
    num_steps, budget_fraction, floor = 64, 0.25, 0.02
else:
    problem = synthetic_problem(3.0, num_levels=3, growth=8, batch=16)
    num_steps, budget_fraction, floor = 32, 0.2, 0.0
levels, y0, diffusion = problem.levels, problem.y0, problem.diffusion
grid = dict(t0=problem.t0, t1=problem.t1, num_steps=num_steps)
key = jax.random.key(0)

calibration = mj.calibrate(
    levels,
    diffusion,
    y0,
    key=key,
    measure_costs=False,
    pilot_keys=2,
    **grid,
)
# A fraction of Euler–Maruyama's cost with the top level. On the reverse SDE of a
# diffusion model, a 2% floor on the probabilities keeps rare corrections near t = 0
# from blowing up (see `Calibration.schedule`).
budget = budget_fraction * num_steps * levels.costs[-1]
calibrated = calibration.schedule(budget=budget, min_probability=floor)

# Error at a fixed budget: after every Adam step the logits are shifted back onto
# the budget. `cost_weight=μ` instead minimises error² + μ·expected cost.
learned = mj.learn_schedule(
    levels,
    diffusion,
    y0,
    key=jax.random.fold_in(key, 1),
    init=calibrated,
    budget=budget,
    num_iterations=30 if digits else 60,
    samples=4 if digits else 8,
    **grid,
)
# Time-constant probabilities at the same expected cost, for comparison.
constant = mj.learn_schedule(
    levels,
    diffusion,
    y0,
    key=key,
    init=mj.FixedProbabilities(
        jax.nn.sigmoid(learned.initial.logits).mean(0).clip(1e-4, 1.0)
    ),
    budget=budget,
    num_iterations=0,
    samples=2,
    **grid,
).initial


def measure(schedule, num_paths=4, num_keys=16):
    """RMS added error vs Euler–Maruyama (top level, same path) and mean cost."""
    errors, costs = [], []
    for i in range(num_paths):
        path_key = jax.random.fold_in(jax.random.key(99), i)
        dw = mj.brownian_increments(path_key, y0.shape, **grid)
        y_em, _ = mj.em_solve(
            levels.top, diffusion, y0, key=path_key, brownian=dw, **grid
        )

        def run(k, schedule=schedule, dw=dw, y_em=y_em):
            y, info = mj.mlem_solve(
                levels, schedule, diffusion, y0, key=k, brownian=dw, **grid
            )
            d = (y - y_em).reshape(y.shape[0], -1)
            return jnp.mean(jnp.sum(d**2, -1)), info.cost

        e, c = jax.lax.map(jax.jit(run), jax.random.split(path_key, num_keys))
        errors.append(e)
        costs.append(c)
    return float(jnp.sqrt(jnp.mean(jnp.stack(errors)))), float(
        jnp.mean(jnp.stack(costs))
    )


for name, schedule in [
    ("calibrated", calibrated),
    ("constant", constant),
    ("learned", learned.schedule),
]:
    error, cost = measure(schedule)
    print(f"{name:>10}: added RMS error {error:.4f} at measured cost {cost:.3g}")

# The learned schedule is an ordinary schedule: it drives MLEMSolver too.
solver = mj.MLEMSolver(learned.schedule, key=key)
