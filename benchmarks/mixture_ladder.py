"""Per-level sample quality and γ on a ladder trained on a known Gaussian mixture
(the shipped `digits_mixture`), against the exact distribution.

    taskset -c 1 python benchmarks/mixture_ladder.py [--ladder DIR] [--samples 1024]

Every level of the ladder, and the exact score as an "infinitely large" level
(`mlem_jax.diffusion.MixtureEps`), samples the probability-flow ODE with the same
sampler, step count and prior draws: DPM-Solver++(2M), 32 steps on the log-SNR grid
from t = 1 to 1e-3. Quality is `mlem_jax.pretrained.quality("digits_mixture")`:
the log-density gap `E_p log p − mean log p(samples)` (nats), with its standard
error; neighbouring levels are compared by the paired difference (same prior draws),
whose standard error is that of the per-sample differences. The mode-coverage KL of
each level is recorded too.

γ: each level's RMS drift error against the exact reverse-SDE drift, on the states
of an exact-score Euler–Maruyama path (64 steps), against its FLOPs per image:
`log c_l = −γ log e_l + b` fitted by least squares (DESIGN §1).

Writes `benchmarks/results/mixture_ladder.json` (machine, versions, seed, FLOPs
and wall-clock of the same run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, write_json  # noqa: E402

import mlem_jax.diffusion as md  # noqa: E402
from mlem_jax import pretrained  # noqa: E402
from mlem_jax.training import load_ladder, sde_from_manifest  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
T0, T1 = 1.0, 1e-3


class BatchedEps(eqx.Module):
    """A one-image ε-network as the batched `f(t, y, args)` samplers take."""

    model: eqx.Module

    def __call__(self, t, y, args=None):
        return jax.vmap(self.model, in_axes=(None, 0))(t, y)


@eqx.filter_jit
def _dpm(model, y0, num_steps):
    return md.sample(
        BatchedEps(model),
        md.VPLinear(),
        md.DPMSolverPP2M(),
        y0,
        t0=T0,
        t1=T1,
        num_steps=num_steps,
        grid="logsnr",
    )[0]


@eqx.filter_jit
def _em_path(drift, diffusion, y0, key, num_steps):
    ts = jnp.linspace(T0, T1, num_steps + 1)

    def step(y, i):
        t, dt = ts[i], ts[i + 1] - ts[i]
        dw = jnp.sqrt(-dt) * jr.normal(jr.fold_in(key, i), y.shape)
        y = y + drift(t, y) * dt + diffusion(t, y) * dw
        return y, y

    _, ys = jax.lax.scan(step, y0, jnp.arange(num_steps))
    return ts, jnp.concatenate([y0[None], ys])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--ladder", default=None, help="default: shipped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--gamma-batch", type=int, default=128)
    parser.add_argument("--out", default=os.path.join(RESULTS, "mixture_ladder.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = args.ladder or pretrained.pretrained_path("digits_mixture")
    models, manifest = load_ladder(path)
    sde = sde_from_manifest(manifest)
    quality = pretrained.quality("digits_mixture")
    mixture = quality.mixture
    flops = [float(lv["flops_per_image"]) for lv in manifest["levels"]]
    exact_eps = md.MixtureEps(mixture, sde)
    exact_flops = md.mixture_flops(mixture)

    key = jr.key(args.seed)
    y0 = sde.prior_sample(jr.fold_in(key, 0), (args.samples, *mixture.event_shape))
    names = [
        f"level {i} (width {lv['width']})" for i, lv in enumerate(manifest["levels"])
    ]
    runs = []
    for name, model, cost in zip(
        [*names, "exact score"],
        [*models, exact_eps],
        [*flops, exact_flops],
        strict=True,
    ):
        wall = time.perf_counter()
        y = jax.block_until_ready(_dpm(model, y0, args.steps))
        wall = time.perf_counter() - wall  # includes compilation
        report = quality.report(y)
        runs.append(
            dict(name=name, flops_per_image=cost, wall_s=round(wall, 2), _y=y, **report)
        )
        print(
            f"{name}: gap {report['gap']:.3f} ± {report['gap_stderr']:.3f}, mode KL "
            f"{report['mode_kl']:.4f} ± {report['mode_kl_stderr']:.4f}",
            flush=True,
        )
    exact_draws = mixture.sample(jr.fold_in(key, 1), args.samples)
    baseline = quality.report(exact_draws)
    for lower, upper in zip(runs[:-1], runs[1:], strict=True):
        d, se = quality.difference(upper["_y"], lower["_y"])
        upper["minus_below"], upper["minus_below_stderr"] = d, se
        upper["improvement_in_stderr"] = -d / se
        # Mode KL: unpaired (conservative: paired runs are positively correlated).
        se_kl = np.hypot(upper["mode_kl_stderr"], lower["mode_kl_stderr"])
        upper["mode_kl_improvement_in_stderr"] = (
            lower["mode_kl"] - upper["mode_kl"]
        ) / se_kl
    d, se = quality.difference(runs[len(models) - 1]["_y"], runs[0]["_y"])
    top_vs_cheapest = dict(difference=d, stderr=se, improvement_in_stderr=-d / se)

    # γ: drift errors against the exact score on an exact-score reverse-SDE path.
    exact_drift = md.ReverseDrift(sde, md.MixtureScore(mixture, sde))
    yg = sde.prior_sample(jr.fold_in(key, 2), (args.gamma_batch, *mixture.event_shape))
    ts, ys = _em_path(exact_drift, sde.diffusion, yg, jr.fold_in(key, 3), 64)
    fns = md.ladder_drifts(sde, models)
    errors = np.asarray(md.drift_errors(fns, ts[:-1], ys[:-1], reference=exact_drift))
    slope, intercept = np.polyfit(np.log(errors), np.log(flops), 1)
    # Away from t = 0, where the exact score of narrow components is steepest.
    away = np.asarray(ts[:-1]) >= 0.1
    errors_away = np.asarray(
        md.drift_errors(fns, ts[:-1][away], ys[:-1][away], reference=exact_drift)
    )
    slope_away = np.polyfit(np.log(errors_away), np.log(flops), 1)[0]
    out = dict(
        benchmark="mixture_ladder",
        environment=environment(args.seed),
        ladder=os.path.relpath(path),
        settings=dict(
            sampler="DPMSolverPP2M",
            grid="logsnr",
            steps=args.steps,
            samples=args.samples,
            t0=T0,
            t1=T1,
            gamma_path="exact-score Euler–Maruyama, 64 steps",
            gamma_batch=args.gamma_batch,
        ),
        neg_entropy=quality.neg_entropy,
        neg_entropy_stderr=quality.neg_entropy_stderr,
        exact_draws=baseline,
        levels=[{k: v for k, v in r.items() if k != "_y"} for r in runs],
        top_vs_cheapest=top_vs_cheapest,
        flops_span=flops[-1] / flops[0],
        drift_errors=errors.tolist(),
        gamma=float(-slope),
        gamma_intercept=float(intercept),
        drift_errors_t_above_0_1=errors_away.tolist(),
        gamma_t_above_0_1=float(-slope_away),
        wall_s=round(time.perf_counter() - start, 1),
    )
    write_json(args.out, out)
    print(f"exact draws: gap {baseline['gap']:.3f} ± {baseline['gap_stderr']:.3f}")
    print(f"top vs cheapest: {top_vs_cheapest}")
    print(f"drift errors {errors}, gamma {-slope:.3f}")
    print(f"t >= 0.1: drift errors {errors_away}, gamma {-slope_away:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
