"""Learn time-dependent level probabilities p_l(t) and compare them, at equal cost,
with the calibrated rule and with time-constant probabilities.

Runs on a small version of the synthetic γ = 3 hierarchy (the digits ladder of
`mlem_jax.diffusion` works the same way: pass its `Levels`, diffusion and a batch of
noise as `y0`). The full comparison is `benchmarks/learn_schedule.py`.

    python examples/learn_schedule.py
"""

import jax
import jax.numpy as jnp

import mlem_jax as mj
from mlem_jax.benchmarking import synthetic_problem

problem = synthetic_problem(3.0, num_levels=3, growth=8, batch=16)
levels, y0, diffusion = problem.levels, problem.y0, problem.diffusion
grid = dict(t0=problem.t0, t1=problem.t1, num_steps=32)
key = jax.random.key(0)

calibration = mj.calibrate(
    levels, diffusion, y0, key=key, measure_costs=False, pilot_keys=2, **grid
)
budget = 0.2 * grid["num_steps"] * levels.costs[-1]  # 1/5 of Euler–Maruyama's cost
calibrated = calibration.schedule(budget=budget)

# Error at a fixed budget: after every Adam step the logits are shifted back onto
# the budget. `cost_weight=μ` instead minimises error² + μ·expected cost.
learned = mj.learn_schedule(
    levels,
    diffusion,
    y0,
    key=jax.random.fold_in(key, 1),
    init=calibrated,
    budget=budget,
    num_iterations=60,
    samples=8,
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

        def run(k):
            y, info = mj.mlem_solve(
                levels, schedule, diffusion, y0, key=k, brownian=dw, **grid
            )
            return jnp.mean(jnp.sum((y - y_em) ** 2, -1)), info.cost

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
