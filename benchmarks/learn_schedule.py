"""Learned vs calibrated vs time-constant level probabilities, at equal cost.

On the synthetic γ = 3 hierarchy (`_harness.synthetic_problem(3.0)`):

1. calibrate the ladder and take the calibrated rule's schedule at a budget
   (`Calibration.schedule(budget=...)`, rates `∝ sqrt(V_l(t)/C_l)`),
2. a time-constant schedule: the calibrated probabilities averaged over time, shifted
   (one logit offset for all learned levels) to the same expected cost,
3. `mlem_jax.learn_schedule` from the calibrated schedule at the same budget,

then measure all three on held-out Brownian paths and level keys: the strong error
against a fine reference solve (reference drift, 4× finer steps, same Brownian path),
the added error against Euler–Maruyama with the top level, and the realised cost.

    python benchmarks/learn_schedule.py [--steps 64 --iterations 150]
    python benchmarks/learn_schedule.py --ladder shipped   # the digits UNet ladder

With `--ladder` (a ladder directory, or `shipped`) the problem is that ladder's
reverse SDE (`_harness.ladder_problem`), the top network as the
reference drift; results go to `learn_schedule_<problem>.json`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import environment, write_json  # noqa: E402
from _harness import ladder_problem, synthetic_problem  # noqa: E402

import mlem_jax as mj  # noqa: E402
from mlem_jax._learn import _project_to_budget  # noqa: E402


def _mse(y, ref):
    """Mean over the batch of the squared distance per sample (all other axes)."""
    return jnp.mean(jnp.sum((y - ref) ** 2, axis=tuple(range(1, y.ndim))))


def evaluate(problem, schedules, *, num_steps, fine, paths, keys, seed):
    levels, y0, t0, t1 = problem.levels, problem.y0, problem.t0, problem.t1
    diffusion = problem.diffusion
    out = {name: {"err_ref": [], "err_em": [], "cost": []} for name in schedules}
    em_err = []
    for i in range(paths):
        pkey = jax.random.fold_in(jax.random.key(seed + 1000), i)
        dw_fine = mj.brownian_increments(
            pkey, y0.shape, t0=t0, t1=t1, num_steps=num_steps * fine
        )
        dw = mj.coarsen_increments(dw_fine, fine)
        y_ref, _ = mj.em_solve(
            problem.reference,
            diffusion,
            y0,
            t0=t0,
            t1=t1,
            num_steps=num_steps * fine,
            key=pkey,
            brownian=dw_fine,
        )
        y_em, _ = mj.em_solve(
            levels.top,
            diffusion,
            y0,
            t0=t0,
            t1=t1,
            num_steps=num_steps,
            key=pkey,
            brownian=dw,
        )
        em_err.append(float(_mse(y_em, y_ref)))
        for name, sched in schedules.items():

            @jax.jit
            def run(k, sched=sched):
                y, info = mj.mlem_solve(
                    levels,
                    sched,
                    diffusion,
                    y0,
                    t0=t0,
                    t1=t1,
                    num_steps=num_steps,
                    key=k,
                    brownian=dw,  # noqa: B023
                )
                return _mse(y, y_ref), _mse(y, y_em), info.cost  # noqa: B023

            lkeys = jax.random.split(jax.random.fold_in(pkey, 7), keys)
            e_ref, e_em, cost = jax.lax.map(run, lkeys)
            out[name]["err_ref"] += np.asarray(e_ref).tolist()
            out[name]["err_em"] += np.asarray(e_em).tolist()
            out[name]["cost"] += np.asarray(cost).tolist()
    summary = {}
    for name, d in out.items():
        n = len(d["cost"])
        summary[name] = dict(
            rms_error_vs_reference=float(np.sqrt(np.mean(d["err_ref"]))),
            rms_added_error_vs_em=float(np.sqrt(np.mean(d["err_em"]))),
            mse_vs_reference_stderr=float(np.std(d["err_ref"], ddof=1) / np.sqrt(n)),
            mse_added_stderr=float(np.std(d["err_em"], ddof=1) / np.sqrt(n)),
            mean_measured_cost=float(np.mean(d["cost"])),
            cost_stderr=float(np.std(d["cost"], ddof=1) / np.sqrt(n)),
            samples=n,
        )
    em_top = dict(
        rms_error_vs_reference=float(np.sqrt(np.mean(em_err))),
        cost=float(num_steps * levels.costs[-1]),
    )
    return summary, em_top


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gamma", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument(
        "--budget-fraction",
        type=float,
        default=0.2,
        help="budget as a fraction of Euler-Maruyama with the top level",
    )
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--mode", default="reverse")
    parser.add_argument("--eval-paths", type=int, default=8)
    parser.add_argument("--eval-keys", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ladder", help="a ladder directory, or 'shipped', instead of --gamma"
    )
    parser.add_argument("--batch", type=int, default=8, help="--ladder: images")
    parser.add_argument(
        "--min-probability",
        type=float,
        default=0.0,
        help="floor on the calibrated schedule's probabilities (0.02 for a ladder)",
    )
    parser.add_argument(
        "--pilot-keys",
        type=int,
        default=4,
        help="calibrate's pilot runs per level for the amplification (16 for a "
        "ladder: its reverse SDE makes 4 of them scatter by 10x)",
    )
    parser.add_argument("--out", help="result JSON (default under results/)")
    opts = parser.parse_args()
    import optax

    if opts.ladder is None:
        problem = synthetic_problem(opts.gamma)
        name = "learn_schedule.json"
    else:
        path = None if opts.ladder == "shipped" else opts.ladder
        problem = ladder_problem(path, opts.batch, opts.seed)
        name = f"learn_schedule_{problem.name}.json"
    out = opts.out or os.path.join(os.path.dirname(__file__), "results", name)
    levels, y0, t0, t1 = problem.levels, problem.y0, problem.t0, problem.t1
    n = opts.steps
    grid = dict(t0=t0, t1=t1, num_steps=n)
    key = jax.random.key(opts.seed)
    cal = mj.calibrate(
        levels,
        problem.diffusion,
        y0,
        key=jax.random.fold_in(key, 0),
        reference=problem.reference,
        num_bins=8,
        pilot_keys=opts.pilot_keys,
        measure_costs=False,
        **grid,
    )
    print(cal)
    budget = opts.budget_fraction * n * levels.costs[-1]
    calibrated = cal.schedule(
        budget=budget, num_steps=n, min_probability=opts.min_probability
    )
    cal_logits = mj.LogitProbabilities.from_schedule(calibrated, **grid)
    # Time-constant: average p over time (per level), then back to the same budget.
    p_mean = jax.nn.sigmoid(cal_logits.logits).mean(0)
    const = mj.LogitProbabilities(
        jnp.where(p_mean >= 1, jnp.inf, jnp.log(p_mean) - jnp.log1p(-p_mean))
    )
    const = _project_to_budget(levels, const, budget, dict(grid, dtype=y0.dtype))
    start = time.perf_counter()
    learned = mj.learn_schedule(
        levels,
        problem.diffusion,
        y0,
        key=jax.random.fold_in(key, 1),
        init=calibrated,
        budget=budget,
        num_iterations=opts.iterations,
        samples=opts.samples,
        optimizer=optax.adam(opts.lr),
        mode=opts.mode,
        callback=lambda i, l, c: (
            print(f"  iter {i:4d} loss {l:.4g} cost {c:.4g}", flush=True)
            if i % 10 == 0
            else None
        ),
        **grid,
    )
    train_seconds = time.perf_counter() - start
    schedules = {
        "calibrated": calibrated,
        "constant": const,
        "learned": learned.schedule,
    }
    expected = {
        k: float(mj.expected_cost(levels, s, **grid)) for k, s in schedules.items()
    }
    summary, em_top = evaluate(
        problem,
        schedules,
        num_steps=n,
        fine=4,
        paths=opts.eval_paths,
        keys=opts.eval_keys,
        seed=opts.seed,
    )
    for k in summary:
        summary[k]["expected_cost"] = expected[k]
        print(k, summary[k])
    c, l = summary["calibrated"], summary["learned"]
    improvement = dict(
        error_ratio_learned_over_calibrated=l["rms_error_vs_reference"]
        / c["rms_error_vs_reference"],
        added_error_ratio_learned_over_calibrated=l["rms_added_error_vs_em"]
        / c["rms_added_error_vs_em"],
        cost_ratio_learned_over_calibrated=l["mean_measured_cost"]
        / c["mean_measured_cost"],
    )
    print("improvement:", improvement, "EM top:", em_top)
    payload = dict(
        benchmark="learn_schedule",
        problem=dict(
            name=problem.name,
            gamma=problem.gamma,
            costs=list(levels.costs),
            batch=int(y0.shape[0]),
            state_shape=list(y0.shape[1:]),
            t0=t0,
            t1=t1,
        ),
        settings=dict(
            num_steps=n,
            budget=budget,
            budget_fraction=opts.budget_fraction,
            min_probability=opts.min_probability,
            pilot_keys=opts.pilot_keys,
            iterations=opts.iterations,
            samples=opts.samples,
            lr=opts.lr,
            mode=opts.mode,
            eval_paths=opts.eval_paths,
            eval_keys=opts.eval_keys,
            reference_steps=4 * n,
            train_seconds=train_seconds,
        ),
        results=summary,
        improvement=improvement,
        em_top_level=em_top,
        probabilities={
            k: np.asarray(
                jax.vmap(lambda t, s=s: s.probabilities(t, (t1 - t0) / n))(
                    jnp.linspace(t0, t1, 9)[:-1] + (t1 - t0) / 16
                )
            ).tolist()
            for k, s in schedules.items()
        },
        training_history={k: v.tolist() for k, v in learned.history.items()},
        environment=environment(opts.seed),
    )
    write_json(out, payload)


if __name__ == "__main__":
    main()
