"""Peak memory of reverse-mode gradients through `mlem_solve` against the number of steps.

For each checkpointing mode of `mlem_solve` (`checkpoint=False`: store everything;
`True`: one state per step; `"sqrt"`: two-level, about 2·sqrt(N) states) and for
`diffrax.diffeqsolve` + `MLEMSolver` with `RecursiveCheckpointAdjoint`, compile the
gradient of a loss on the final state w.r.t. the level parameters and `y0`, and record
XLA's `memory_analysis()` of the compiled executable: `temp_size_in_bytes` is the
scratch memory the gradient needs beyond its arguments and outputs (the stored
trajectory lives there). Forward mode (`jax.jvp`) is recorded too: it stores nothing.

    python benchmarks/gradient_memory.py [--steps 100 1000 10000]
"""

from __future__ import annotations

import argparse
import os
import sys

import diffrax
import jax
import jax.numpy as jnp
import lineax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import environment, write_json  # noqa: E402

import mlem_jax as mj  # noqa: E402
from mlem_jax.synthetic import random_feature_hierarchy  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default=os.path.join(
            os.path.dirname(__file__), "results", "gradient_memory.json"
        ),
    )
    opts = parser.parse_args()
    key = jax.random.key(opts.seed)
    levels, _ = random_feature_hierarchy(
        key, dim=opts.dim, gamma=3.0, num_levels=3, base_features=16, growth=4
    )
    y0 = jax.random.normal(jax.random.fold_in(key, 1), (opts.batch, opts.dim))
    sched = mj.FixedProbabilities((1.0, 0.3, 0.05))
    sigma = lambda t, y, a: jnp.asarray(0.5, y.dtype)
    state_bytes = y0.size * y0.dtype.itemsize

    def core_loss(checkpoint, n):
        def loss(params):
            levels, y0 = params
            y1, _ = mj.mlem_solve(
                levels,
                sched,
                sigma,
                y0,
                t0=0.0,
                t1=1.0,
                num_steps=n,
                key=key,
                checkpoint=checkpoint,
            )
            return jnp.mean(y1**2)

        return loss

    def diffrax_loss(n):
        path = mj.StepBrownianPath(y0.shape, key, t0=0.0, t1=1.0, num_steps=n)
        noise = diffrax.ControlTerm(
            lambda t, y, a: lineax.DiagonalLinearOperator(jnp.full(y.shape, 0.5)), path
        )

        def loss(params):
            levels, y0 = params
            sol = diffrax.diffeqsolve(
                diffrax.MultiTerm(mj.MultilevelTerm(levels), noise),
                mj.MLEMSolver(sched, key=key),
                0.0,
                1.0,
                1.0 / n,
                y0,
                max_steps=n,
                adjoint=diffrax.RecursiveCheckpointAdjoint(),
            )
            return jnp.mean(sol.ys[-1] ** 2)

        return loss

    rows = []
    params = (levels, y0)
    for n in opts.steps:
        variants = {
            "mlem_solve checkpoint=False": core_loss(False, n),
            "mlem_solve checkpoint=True": core_loss(True, n),
            'mlem_solve checkpoint="sqrt"': core_loss("sqrt", n),
            "diffeqsolve RecursiveCheckpointAdjoint": diffrax_loss(n),
        }
        for name, loss in variants.items():
            compiled = jax.jit(jax.grad(loss)).lower(params).compile()
            mem = compiled.memory_analysis()
            rows.append(
                dict(
                    variant=name,
                    mode="reverse",
                    num_steps=n,
                    temp_bytes=int(mem.temp_size_in_bytes),
                    temp_states=mem.temp_size_in_bytes / state_bytes,
                )
            )
            print(
                f"{n:>6} {name:<42} temp {mem.temp_size_in_bytes / 2**20:9.2f} MiB"
                f" = {rows[-1]['temp_states']:8.1f} states",
                flush=True,
            )
        tangent = jax.tree.map(jnp.ones_like, params)
        loss = core_loss(True, n)
        compiled = (
            jax.jit(lambda p: jax.jvp(loss, (p,), (tangent,))).lower(params).compile()  # noqa: B023
        )
        mem = compiled.memory_analysis()
        rows.append(
            dict(
                variant="mlem_solve jax.jvp",
                mode="forward",
                num_steps=n,
                temp_bytes=int(mem.temp_size_in_bytes),
                temp_states=mem.temp_size_in_bytes / state_bytes,
            )
        )
        print(
            f"{n:>6} {'mlem_solve jax.jvp (forward)':<42} temp "
            f"{mem.temp_size_in_bytes / 2**20:9.2f} MiB",
            flush=True,
        )
    slopes = {}
    for name in {r["variant"] for r in rows}:
        sel = [r for r in rows if r["variant"] == name]
        if len(sel) >= 2:
            x = np.log([r["num_steps"] for r in sel])
            y = np.log([max(r["temp_bytes"], 1) for r in sel])
            slopes[name] = float(np.polyfit(x, y, 1)[0])
    payload = dict(
        benchmark="gradient_memory",
        measure="XLA compiled executable memory_analysis().temp_size_in_bytes of "
        "jax.jit(jax.grad(loss)) (scratch beyond arguments and outputs)",
        problem=dict(
            levels="random_feature_hierarchy gamma=3, 3 levels, features 16/64/256",
            batch=opts.batch,
            dim=opts.dim,
            state_bytes=state_bytes,
            schedule=[1.0, 0.3, 0.05],
        ),
        rows=rows,
        log_log_slopes=slopes,
        environment=environment(opts.seed),
    )
    write_json(opts.out, payload)
    print("log-log slopes of temp memory vs steps:", slopes)


if __name__ == "__main__":
    main()
