"""Sharded ML-EM: the added error of the batch mean against the number of devices.

`mlem_jax.mlem_solve_sharded` splits the batch over 1, 2, 4, 8 devices (forced host
devices on a CPU: `XLA_FLAGS=--xla_force_host_platform_device_count=8`, set here
before JAX starts) with the same per-device batch and schedule, i.e. the same
per-device budget. For each device count it measures, over `--keys` level keys on
one fixed Brownian path (so Euler–Maruyama with the top level is solved once):

- the added MSE of the batch mean, `‖mean_i(Y_i^ML-EM − Y_i^EM)‖²` at `t1`, with
  independent level draws per device (the default) and with shared draws (what one
  device does, the alternative a user would pick); the prediction for independent
  draws is `MSE(1 device) / devices`, for shared draws no fall;
- the per-sample added MSE `mean_i ‖Y_i^ML-EM − Y_i^EM‖²`, which sharding does not
  change (each sample still sees one device's draws);
- realised FLOPs per sample and wall-clock per sample of one solve, ML-EM and EM.

Host devices share the CPU's cores (here one core: run under `taskset -c 1`), so the
wall-clock figures are not a multi-device speed: only the error figures mean
something on a CPU.

    taskset -c 1 python benchmarks/sharded.py            # writes results/sharded.json
"""

from __future__ import annotations

import os
import sys

if "jax" not in sys.modules:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (
            flags + " --xla_force_host_platform_device_count=8"
        ).strip()

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_PAGE, environment, replace_results_block, write_json  # noqa: E402
from _harness import ladder_problem, synthetic_problem  # noqa: E402

import mlem_jax as mj  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
DEVICES = (1, 2, 4, 8)

SETTINGS = {
    # Per-device batch, steps, fixed probabilities, level keys.
    "synthetic": dict(per_device=8, steps=64, probs=(1.0, 0.3, 0.1, 0.03), keys=64),
    "ladder": dict(per_device=1, steps=16, probs=(1.0, 0.5, 0.3, 0.2, 0.1), keys=24),
}


def _problem(name: str, batch: int, seed: int):
    if name == "synthetic":
        return synthetic_problem(3.0, batch=batch, seed=seed)
    return ladder_problem(None, batch=batch, seed=seed)


def measure(name: str, settings: dict, seed: int, devices=DEVICES) -> dict:
    rows = []
    for n in devices:
        if n > jax.device_count():
            print(f"  skipping {n} devices: only {jax.device_count()}", flush=True)
            continue
        batch = settings["per_device"] * n
        problem = _problem(name, batch, seed)
        steps = settings["steps"]
        mesh = jax.make_mesh((n,), ("batch",), devices=jax.devices()[:n])
        schedule = mj.FixedProbabilities(jnp.asarray(settings["probs"], jnp.float32))
        path_key = jax.random.key(seed + 7)
        dw = mj.brownian_increments(
            path_key, problem.y0.shape, t0=problem.t0, t1=problem.t1, num_steps=steps
        )

        def em(problem=problem, dw=dw, steps=steps):
            return mj.em_solve(
                problem.levels.top,
                problem.diffusion,
                problem.y0,
                t0=problem.t0,
                t1=problem.t1,
                num_steps=steps,
                key=path_key,  # noqa: B023
                brownian=dw,
            )[0]

        def solve(key, draws, problem=problem, dw=dw, steps=steps, mesh=mesh):
            return mj.mlem_solve_sharded(
                problem.levels,
                schedule,  # noqa: B023
                problem.diffusion,
                problem.y0,
                mesh=mesh,
                t0=problem.t0,
                t1=problem.t1,
                num_steps=steps,
                key=key,
                brownian=dw,
                draws=draws,
            )

        em_jit = jax.jit(em)
        runs = {
            draws: jax.jit(lambda key, draws=draws: solve(key, draws))
            for draws in ("independent", "shared")
        }
        y_em = np.asarray(jax.block_until_ready(em_jit()), np.float64)
        start = time.perf_counter()
        jax.block_until_ready(em_jit())
        em_seconds = time.perf_counter() - start
        row = dict(devices=n, batch=batch, em_seconds_per_sample=em_seconds / batch)
        costs = np.asarray(problem.levels.costs, np.float64)  # FLOPs, global batch
        row["em_flops_per_sample"] = steps * costs[-1] / batch
        for draws, run in runs.items():
            jax.block_until_ready(run(jax.random.key(0)))  # compile
            batch_mse, shard_mse, sample_mse, flops, seconds = [], [], [], [], []
            for r in range(settings["keys"]):
                key = jax.random.key(10_000 * seed + r)
                start = time.perf_counter()
                y, info = jax.block_until_ready(run(key))
                seconds.append(time.perf_counter() - start)
                d = (np.asarray(y, np.float64) - y_em).reshape(batch, -1)
                batch_mse.append(float(np.sum(d.mean(axis=0) ** 2)))
                # Each shard's own batch-mean error: a copy of the 1-device one.
                shards = d.reshape(n, batch // n, -1).mean(axis=1)
                shard_mse.extend(np.sum(shards**2, axis=1).tolist())
                sample_mse.append(float(np.mean(np.sum(d**2, axis=1))))
                # A shard evaluation costs 1/n of a global-batch one.
                total = np.asarray(info.total_evaluations, np.float64) @ costs / n
                flops.append(total / batch)
            k = len(batch_mse)
            row[draws] = dict(
                batch_mean_mse=float(np.mean(batch_mse)),
                batch_mean_mse_se=float(np.std(batch_mse, ddof=1) / math.sqrt(k)),
                shard_mse_sum=float(np.sum(shard_mse)),
                shard_mse_count=len(shard_mse),
                per_sample_mse=float(np.mean(sample_mse)),
                per_sample_mse_se=float(np.std(sample_mse, ddof=1) / math.sqrt(k)),
                flops_per_sample=float(np.mean(flops)),
                seconds_per_sample=float(np.median(seconds) / batch),
            )
        print(
            f"  {n} devices: batch-mean MSE independent "
            f"{row['independent']['batch_mean_mse']:.4g} "
            f"± {row['independent']['batch_mean_mse_se']:.2g}, shared "
            f"{row['shared']['batch_mean_mse']:.4g} "
            f"± {row['shared']['batch_mean_mse_se']:.2g}",
            flush=True,
        )
        rows.append(row)
    # The prediction: one shard's batch-mean MSE (pooled over every shard of every
    # independent-draws run: all are copies of the 1-device experiment) / devices.
    shard_mse = sum(r["independent"]["shard_mse_sum"] for r in rows) / sum(
        r["independent"]["shard_mse_count"] for r in rows
    )
    for row in rows:
        measured = row["independent"]["batch_mean_mse"]
        row["predicted_independent_batch_mean_mse"] = shard_mse / row["devices"]
        row["measured_over_predicted"] = measured * row["devices"] / shard_mse
        row["measured_over_predicted_se"] = (
            row["independent"]["batch_mean_mse_se"] * row["devices"] / shard_mse
        )
        row["shared_over_independent"] = row["shared"]["batch_mean_mse"] / measured
    return dict(
        problem=name,
        settings=settings,
        single_shard_batch_mean_mse=shard_mse,
        rows=rows,
    )


def table(results: list[dict]) -> str:
    lines = [
        "| problem | devices (batch) | added MSE of the batch mean, independent draws: measured ± s.e. (predicted: one shard's / devices) | measured / predicted | same, shared draws | per-sample added MSE (indep.) | ML-EM / EM FLOPs per sample | ML-EM / EM s per sample (host devices share a core) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for row in result["rows"]:
            i, s = row["independent"], row["shared"]
            lines.append(
                f"| {result['problem']} | {row['devices']} ({row['batch']}) "
                f"| {i['batch_mean_mse']:.3g} ± {i['batch_mean_mse_se']:.2g} "
                f"({row['predicted_independent_batch_mean_mse']:.3g}) "
                f"| {row['measured_over_predicted']:.2f} "
                f"± {row['measured_over_predicted_se']:.2f} "
                f"| {s['batch_mean_mse']:.3g} ± {s['batch_mean_mse_se']:.2g} "
                f"| {i['per_sample_mse']:.3g} "
                f"| {i['flops_per_sample']:.3g} / {row['em_flops_per_sample']:.3g} "
                f"| {i['seconds_per_sample']:.3g} / {row['em_seconds_per_sample']:.3g} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--problems", default="synthetic,ladder", help="comma-separated subset"
    )
    parser.add_argument("--keys", type=int, help="level keys per point (override)")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    env = environment(args.seed)
    results = []
    for name in (p for p in args.problems.split(",") if p):
        settings = dict(SETTINGS[name])
        if args.keys:
            settings["keys"] = args.keys
        if args.quick:
            settings.update(keys=3, steps=8)
        print(f"{name} ...", flush=True)
        result = measure(name, settings, args.seed)
        results.append(result)
    payload = dict(
        environment=env,
        note=(
            "Forced host devices share the CPU (this run: the affinity listed in "
            "environment.machine); wall-clock per sample is not a multi-device "
            "speed, only the error figures are meaningful on a CPU."
        ),
        results=results,
    )
    print(table(results))
    if not args.quick:
        write_json(os.path.join(args.out, "sharded.json"), payload)
        if args.out == RESULTS:
            replace_results_block(RESULTS_PAGE, "sharded", table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
