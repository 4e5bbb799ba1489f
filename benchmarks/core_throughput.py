"""Does skipping levels save real time? ML-EM vs Euler–Maruyama wall-clock.

A hierarchy of MLP drifts whose widths grow 4× per level (real compute, batch 256).
Euler–Maruyama runs the top level every step; ML-EM runs level 1 every step and the
others at rates λ_l. The predicted wall-clock ratio is the ratio of realised costs
(`info.cost`, with per-level costs = XLA's FLOP count of one batched evaluation);
the measured ratio is the ratio of median wall-clock times in this run. The target
is measured/predicted ≤ 1.2: the branches really skip the work.

FLOPs leave out the per-step work every solver pays whatever its drift (drawing the
Brownian increments, the state update): measured here as a zero-drift
Euler–Maruyama solve, the "floor". The script also reports the prediction that adds
that floor to both sides: t_pred = floor + (cost_mlem/cost_em)·(t_em − floor).

Run:  python benchmarks/core_throughput.py [--quick]
Result: benchmarks/results/core_throughput.json
"""

from __future__ import annotations

import argparse
import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from _common import environment, median_seconds, write_json  # noqa: E402

import mlem_jax as mj  # noqa: E402
from mlem_jax.nn import count_flops  # noqa: E402


class MLPDrift(eqx.Module):
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array

    def __init__(self, dim, width, key):
        k1, k2 = jax.random.split(key)
        self.w1 = jax.random.normal(k1, (dim, width)) / jnp.sqrt(dim)
        self.b1 = jnp.zeros(width)
        self.w2 = jax.random.normal(k2, (width, dim)) / jnp.sqrt(width)

    def __call__(self, t, y, args):
        return -y + jnp.tanh(y @ self.w1 + self.b1) @ self.w2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--out",
        default=os.path.join(
            os.path.dirname(__file__), "results", "core_throughput.json"
        ),
    )
    opts = parser.parse_args(argv)
    dim, batch, steps = (32, 64, 50) if opts.quick else (64, 256, 200)
    widths = (16, 64, 256, 1024) if opts.quick else (128, 512, 2048, 8192)
    rates = (jnp.inf, 40.0, 10.0, 2.5)

    key = jax.random.key(opts.seed)
    kl, ky, ks = jax.random.split(key, 3)
    fns = tuple(MLPDrift(dim, w, k) for w, k in zip(widths, jax.random.split(kl, 4)))
    y0 = jax.random.normal(ky, (batch, dim))
    flops = [count_flops(f, 0.0, y0, None) for f in fns]
    levels = mj.Levels(fns, flops)
    schedule = mj.Rates(jnp.array(rates))
    diffusion = lambda t, y, args: 0.5
    kw = dict(t0=0.0, t1=1.0, num_steps=steps, key=ks)

    # Jitted once each; the same key gives the same draws and work on every call.
    mlem = jax.jit(lambda y: mj.mlem_solve(levels, schedule, diffusion, y, **kw))
    ones = mj.FixedProbabilities(jnp.ones(4))
    mlem_all = jax.jit(lambda y: mj.mlem_solve(levels, ones, diffusion, y, **kw))
    em = jax.jit(lambda y: mj.em_solve(levels.top, diffusion, y, cost=flops[-1], **kw))
    zero = lambda t, y, args: jnp.zeros_like(y)
    floor = jax.jit(lambda y: mj.em_solve(zero, diffusion, y, **kw))

    _, info_ml = mlem(y0)
    _, info_all = mlem_all(y0)
    _, info_em = em(y0)
    t_em = median_seconds(lambda: em(y0), opts.repeats)
    t_ml = median_seconds(lambda: mlem(y0), opts.repeats)
    t_all = median_seconds(lambda: mlem_all(y0), opts.repeats)
    t_floor = median_seconds(lambda: floor(y0), opts.repeats)
    t_em2 = median_seconds(lambda: em(y0), opts.repeats)  # drift check
    t_em = min(t_em, t_em2)

    pred = float(info_ml.cost / info_em.cost)
    meas = t_ml / t_em
    pred_all = float(info_all.cost / info_em.cost)
    meas_all = t_all / t_em
    pred_floor = (t_floor + pred * (t_em - t_floor)) / t_em
    result = {
        "benchmark": "core_throughput",
        "description": __doc__.strip().splitlines()[0],
        "config": {
            "dim": dim,
            "batch": batch,
            "num_steps": steps,
            "widths": widths,
            "rates": [float(r) for r in rates],
            "repeats": opts.repeats,
            "quick": opts.quick,
        },
        "flops_per_level": flops,
        "evaluations_mlem": [int(e) for e in info_ml.evaluations],
        "seconds": {
            "em": t_em,
            "mlem": t_ml,
            "mlem_all_levels": t_all,
            "floor": t_floor,
        },
        "mlem_vs_em": {
            "predicted_ratio": pred,
            "measured_ratio": meas,
            "measured_over_predicted": meas / pred,
            "predicted_ratio_with_floor": pred_floor,
            "measured_over_predicted_with_floor": meas / pred_floor,
        },
        "mlem_all_levels_vs_em": {
            "predicted_ratio": pred_all,
            "measured_ratio": meas_all,
            "measured_over_predicted": meas_all / pred_all,
        },
        **environment(opts.seed),
    }
    write_json(opts.out, result)
    print(f"levels: widths {widths}, FLOPs/eval {[f'{f:.3g}' for f in flops]}")
    print(f"ML-EM evaluations per level: {result['evaluations_mlem']} of {steps} steps")
    print(
        f"EM {t_em * 1e3:.1f} ms, ML-EM {t_ml * 1e3:.1f} ms, "
        f"ML-EM all levels {t_all * 1e3:.1f} ms"
    )
    print(
        f"ML-EM/EM: predicted {pred:.3f}, measured {meas:.3f}, "
        f"measured/predicted {meas / pred:.3f} (target <= 1.2)"
    )
    print(
        f"with the per-step floor ({t_floor * 1e3:.1f} ms): predicted "
        f"{pred_floor:.3f}, measured/predicted {meas / pred_floor:.3f}"
    )
    print(
        f"all-levels/EM: predicted {pred_all:.3f}, measured {meas_all:.3f}, "
        f"measured/predicted {meas_all / pred_all:.3f}"
    )
    print(f"wrote {opts.out}")
    return result


if __name__ == "__main__":
    main()
