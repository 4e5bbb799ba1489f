"""Where ML-EM's seconds go, against Euler–Maruyama, on the shipped digits ladder.

On the reverse SDE (64 steps) at batch 16, 64 and 256, measures per step:

* each level evaluated alone (one jit-compiled call, `mj.time_call`), inside a
  compiled scan (`mj.time_in_scan`), and inside a taken `lax.cond` in a scan;
* the engine's own costs, each as a difference of two solves that differ only in it
  (a zero drift isolates them from the networks): drawing the Brownian increment per
  step from the key (threefry `fold_in` + normal) against given increments; drawing
  the level uniforms and reading the schedule (ML-EM with zero drifts against EM with
  a zero drift); a `lax.cond` per level that is never taken (ML-EM firing the base
  level only, against EM with the base level); `jax.checkpoint` on the step (EM with
  the top level, checkpoint on and off);
* ML-EM with every level at every step (no branch: `always` path) against the sum of
  the levels' EM solves.

Writes `benchmarks/results/profile_engine.json`. Run: `python benchmarks/profile_engine.py`
(about 10 minutes on one core); `--batches 16` for a shorter run.
"""

from __future__ import annotations

import argparse
import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, median_seconds, write_json  # noqa: E402
from _harness import ladder_problem  # noqa: E402

import mlem_jax as mj  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
STEPS = 64


def _in_cond(fn, t, y, num_steps: int, repeats: int) -> float:
    """Seconds per evaluation of `fn` inside a taken `lax.cond` in a scan (the
    predicate comes from the carry, so XLA cannot resolve it)."""
    dynamic, static = eqx.partition((fn, y), eqx.is_array)

    @jax.jit
    def loop(dynamic, t):
        f, y = eqx.combine(dynamic, static)
        eps = jnp.asarray(1e-7, y.dtype)

        def body(carry, _):
            t, y, on = carry
            y = jax.lax.cond(on, lambda y: y + eps * f(t, y, None), lambda y: y, y)
            return (t - 1e-6, y, on), None

        return jax.lax.scan(body, (t, y, jnp.asarray(True)), None, length=num_steps)[0][
            1
        ]

    return median_seconds(lambda: loop(dynamic, t), repeats) / num_steps


def profile(batch: int, seed: int, repeats: int) -> dict:
    problem = ladder_problem(None, batch=batch, seed=seed)
    levels, y0 = problem.levels, problem.y0
    k = levels.num_levels
    t0, t1, diffusion = problem.t0, problem.t1, problem.diffusion
    key = jax.random.key(seed)
    dw = mj.brownian_increments(key, y0.shape, t0=t0, t1=t1, num_steps=STEPS)
    zero = lambda t, y, args: jnp.zeros_like(y)
    t_mid = jnp.float32(0.5)
    n_eval = 4 if batch >= 256 else 8

    @eqx.filter_jit
    def em(fn, y0, dw, key, checkpoint):
        return mj.em_solve(
            fn,
            diffusion,
            y0,
            t0=t0,
            t1=t1,
            num_steps=STEPS,
            key=key,
            brownian=dw,
            checkpoint=checkpoint,
        )[0]

    @eqx.filter_jit
    def mlem(levels, schedule, y0, dw, key):
        return mj.mlem_solve(
            levels,
            schedule,
            diffusion,
            y0,
            t0=t0,
            t1=t1,
            num_steps=STEPS,
            key=key,
            brownian=dw,
        )[0]

    def per_step(fn):
        return median_seconds(fn, repeats) / STEPS

    out: dict = dict(batch=batch, steps=STEPS, levels=[])
    for f in levels.fns:
        out["levels"].append(
            dict(
                alone=mj.time_call(lambda f, t, y: f(t, y, None), f, t_mid, y0),
                in_scan=mj.time_in_scan(f, t_mid, y0, num_steps=n_eval, repeats=3),
                in_cond=_in_cond(f, t_mid, y0, n_eval, 3),
                em_step=per_step(lambda f=f: em(f, y0, dw, key, True)),
            )
        )
    zeros = mj.Levels((zero,) * k, (1.0,) * k)
    rare = mj.FixedProbabilities(jnp.asarray([1.0] + [1e-12] * (k - 1)))
    half = mj.FixedProbabilities(jnp.full((k,), 0.5))
    engine = dict(
        em_zero_given_increments=per_step(lambda: em(zero, y0, dw, key, True)),
        em_zero_drawn_increments=per_step(lambda: em(zero, y0, None, key, True)),
        mlem_zero_levels_half=per_step(lambda: mlem(zeros, half, y0, dw, key)),
        em_base=per_step(lambda: em(levels.fns[0], y0, dw, key, True)),
        mlem_base_only=per_step(lambda: mlem(levels, rare, y0, dw, key)),
        em_top_checkpoint=per_step(lambda: em(levels.fns[-1], y0, dw, key, True)),
        em_top_no_checkpoint=per_step(lambda: em(levels.fns[-1], y0, dw, key, False)),
        mlem_every_level=per_step(
            lambda: mlem(levels, mj.FixedProbabilities(jnp.ones(k)), y0, dw, key)
        ),
    )
    engine["brownian_draw"] = (
        engine["em_zero_drawn_increments"] - engine["em_zero_given_increments"]
    )
    engine["level_draws_and_schedule"] = (
        engine["mlem_zero_levels_half"] - engine["em_zero_given_increments"]
    )
    engine["untaken_conds"] = engine["mlem_base_only"] - engine["em_base"]
    engine["checkpoint"] = engine["em_top_checkpoint"] - engine["em_top_no_checkpoint"]
    engine["every_level_over_sum_of_em"] = engine["mlem_every_level"] / sum(
        lv["em_step"] for lv in out["levels"]
    )
    out["engine"] = engine
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="16,64,256")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(RESULTS, "profile_engine.json"))
    args = parser.parse_args(argv)
    results = []
    for batch in (int(b) for b in args.batches.split(",") if b):
        r = profile(batch, args.seed, args.repeats if batch < 256 else 2)
        results.append(r)
        ms = lambda x: f"{1e3 * x:.3f}"
        print(f"batch {batch}: ms per evaluation, alone / in scan / in cond / EM step")
        for i, lv in enumerate(r["levels"]):
            print(
                f"  level {i + 1}: {ms(lv['alone'])} / {ms(lv['in_scan'])} / "
                f"{ms(lv['in_cond'])} / {ms(lv['em_step'])}"
            )
        e = r["engine"]
        print(
            f"  per step (µs): Brownian draw {1e6 * e['brownian_draw']:.1f}, level "
            f"draws + schedule {1e6 * e['level_draws_and_schedule']:.1f}, "
            f"{len(r['levels']) - 1} untaken conds {1e6 * e['untaken_conds']:.1f}, "
            f"checkpoint {1e6 * e['checkpoint']:.1f}; every level every step / sum "
            f"of EM steps {e['every_level_over_sum_of_em']:.3f}",
            flush=True,
        )
    write_json(args.out, dict(environment=environment(args.seed), results=results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
