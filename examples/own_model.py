"""Sampling your own diffusion model with a ladder of networks: is it worth it?

Your networks are anything callable as `f(t, y, args)` (plain functions or Equinox
modules) predicting ε, x₀ or v under a named parametrisation. Here they are a
self-contained stand-in: the exact denoiser of a 2-D Gaussian mixture with 64
components (the "big network"), and cheaper approximations of it that merge the
components into 16 and 4 moment-matched Gaussians (cost ∝ components). Nothing here
uses mlem_jax's shipped ladder.

The steps, for any ladder:

1. `mj.Levels(networks, costs)`, cheapest first, costs per evaluation (FLOPs,
   seconds, or your own estimate);
2. `md.calibrate_sampler(levels, param, sampler, y0, ...)`: measures, along the
   sampler's own grid and prediction type, how much each network's correction
   varies and how much the sample is sensitive to it;
3. `cal.choose_levels(target_error=...)` and `cal.schedule(target_error=...)`:
   which networks to use, and how often, for a given added error;
4. `md.mlem_sample(...)`: sample; compare with `md.sample(top network)`.

The verdict compares, at one step count, the ladder's cost with the top network's
for an added error equal to the top network's own discretisation error. Measured
(CPU, seeds as in the script, sde2m, 32 steps): predicted 2.81x cheaper at added
RMS error 0.095, realised 2.91x cheaper (704 vs 2048) at 0.140 ± 0.006 over 64
keys (the linearised prediction is 1.5x optimistic on this stiff mixture). A
complete answer compares at matched *total* error with the top network at fewer
steps (benchmarks/).

Run:  python examples/own_model.py [--sampler sde2m] [--prediction eps] [--quick]
"""

import argparse
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import mlem_jax as mj
import mlem_jax.diffusion as md

SAMPLERS = {
    "ddim": md.DDIM(),
    "ddpm": md.DDIM(eta=1.0),
    "dpm2m": md.DPMSolverPP2M(),
    "sde1": md.SDEDPMSolverPP1(),
    "sde2m": md.SDEDPMSolverPP2M(),
    "euler": md.Euler(),
}


class MixtureDenoiser(eqx.Module):
    """The exact denoiser of data `Σ_k w_k N(m_k, v_k I)` under `param`, as a network
    predicting `output` (`"eps"`, `"x0"` or `"v"`)."""

    means: jax.Array  # (K, d)
    variances: jax.Array  # (K,)
    log_weights: jax.Array  # (K,)
    param: md.AbstractParametrisation
    output: str = eqx.field(static=True)

    def __call__(self, t, y, args=None):
        a, s = self.param.alpha(t), self.param.sigma(t)
        spread = a**2 * self.variances + s**2  # (K,)
        diff = y[:, None, :] - a * self.means  # (B, K, d)
        d = y.shape[-1]
        logits = (
            self.log_weights
            - 0.5 * jnp.sum(diff**2, -1) / spread
            - 0.5 * d * jnp.log(spread)
        )
        r = jax.nn.softmax(logits, axis=-1)  # (B, K)
        x0_k = self.means + (a * self.variances / spread)[:, None] * diff
        x0 = jnp.einsum("bk,bkd->bd", r, x0_k)
        return self.param.convert(x0, t, y, source="x0", target=self.output)


def merged(means, variances, weights, groups):
    """Moment-matched Gaussians of `groups` consecutive blocks of the components."""
    d = means.shape[1]
    m = np.stack([np.average(means[g], 0, weights[g]) for g in groups])
    w = np.array([weights[g].sum() for g in groups])
    v = np.array(
        [
            np.average(
                variances[g] + np.sum((means[g] - mk) ** 2, 1) / d, 0, weights[g]
            )
            for g, mk in zip(groups, m)
        ]
    )
    return m, v, w


def make_ladder(param, output):
    """Networks with 4, 16 and 64 components, cheapest first; the data: 64 tight
    Gaussians on 4 rings of 16."""
    angles = 2 * np.pi * np.arange(16) / 16
    means = np.concatenate(
        [
            r * np.stack([np.cos(angles + r), np.sin(angles + r)], 1)
            for r in (0.5, 1.0, 1.5, 2.0)
        ]
    )
    variances = np.full(64, 0.01)
    weights = np.full(64, 1 / 64)
    networks = []
    for size in (4, 16, 64):
        groups = np.split(np.arange(64), size)
        m, v, w = merged(means, variances, weights, groups)
        networks.append(
            MixtureDenoiser(
                jnp.asarray(m, jnp.float32),
                jnp.asarray(v, jnp.float32),
                jnp.asarray(np.log(w), jnp.float32),
                param,
                output,
            )
        )
    # Costs per evaluation: proportional to the number of components.
    return mj.Levels(networks, (4.0, 16.0, 64.0))


def main(argv=None):
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="sde2m")
    parser.add_argument("--prediction", choices=("eps", "x0", "v"), default="eps")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and a fixed target error (for the tests)",
    )
    a = parser.parse_args(argv)
    batch, keys, pilots = (32, 4, 0) if a.quick else (512, 64, 8)
    steps = min(a.steps, 8) if a.quick else a.steps

    param = md.VPCosine()
    sampler = SAMPLERS[a.sampler]
    levels = make_ladder(param, a.prediction)
    kw: dict[str, Any] = dict(
        t0=0.99, t1=1e-3, num_steps=steps, prediction=a.prediction, grid="logsnr"
    )
    y0 = jax.random.normal(jax.random.key(0), (batch, 2))

    cal = md.calibrate_sampler(
        levels,
        param,
        sampler,
        y0,
        key=jax.random.key(1),
        num_bins=8,
        pilot_keys=pilots,
        measure_costs=False,
        **kw,
    )
    print(cal)

    # The noise of every run below: Brownian increments on a 4x finer grid (uniform
    # in log-SNR, so it refines the sampler's), summed in fours for the sampler's.
    dw = dw_fine = None
    if sampler.stochastic:
        ts_fine = md.time_grid(
            param, 4 * steps, t0=kw["t0"], t1=kw["t1"], kind="logsnr"
        )
        dw_fine = jax.random.normal(jax.random.key(2), (4 * steps, *y0.shape))
        dw_fine = dw_fine * jnp.sqrt(jnp.abs(jnp.diff(ts_fine)))[:, None, None]
        dw = dw_fine.reshape(steps, 4, *y0.shape).sum(1)
    top, _ = md.sample(levels.top, param, sampler, y0, brownian=dw, **kw)
    top_cost = steps * levels.costs[-1]
    if a.quick:
        target = 0.3
        print(f"\n{a.sampler} at {steps} steps with the top network: cost {top_cost:g}")
    else:
        # What error to allow? Here: the top network's own discretisation error at
        # this step count (its distance to a 4x finer solve on the same noise).
        fine_kw = dict(kw, num_steps=4 * steps)
        fine, _ = md.sample(levels.top, param, sampler, y0, brownian=dw_fine, **fine_kw)
        target = float(jnp.sqrt(jnp.mean(jnp.sum((top - fine) ** 2, -1))))
        print(
            f"\n{a.sampler} at {steps} steps with the top network: cost {top_cost:g}, "
            f"RMS discretisation error {target:.4f} (the target added error)"
        )

    used = cal.choose_levels(target_error=target)
    if used == (levels.num_levels - 1,):
        print("Not worth it: no sub-ladder meets that target cheaper than the top.")
        return None
    sub = mj.Levels([levels.fns[i] for i in used], [levels.costs[i] for i in used])
    sub_cal = cal.restrict(used)
    schedule = sub_cal.schedule(target_error=target)
    pred = sub_cal.predict(schedule)
    print(
        f"levels {[i + 1 for i in used]}: predicted cost {pred.cost:.1f} "
        f"({top_cost / pred.cost:.2f}x cheaper than the top network alone) at "
        f"added RMS error {pred.error:.4f}"
    )

    @jax.jit
    def run(level_keys):
        def one(key):
            y, info = md.mlem_sample(
                sub, schedule, param, sampler, y0, key=key, brownian=dw, **kw
            )
            return jnp.mean(jnp.sum((y - top) ** 2, -1)), info.cost

        return jax.lax.map(one, level_keys)

    mse, cost = run(jax.random.split(jax.random.key(3), keys))
    mse = np.asarray(mse, np.float64)
    err = math.sqrt(mse.mean())
    err_se = mse.std() / math.sqrt(keys) / (2 * err)  # delta method
    spent = float(np.mean(cost))
    print(
        f"realised over {keys} keys: cost {spent:.1f} "
        f"({top_cost / spent:.2f}x cheaper), added RMS error {err:.4f} ± {err_se:.4f}"
    )
    if err > 1.5 * pred.error:
        print(
            "The realised error exceeds the linearised prediction: calibrate with "
            "more `pilot_keys`, or ask for a smaller `target_error`."
        )
    if err > 1.5 * target:
        verdict = "not confirmed: its realised error is above the target"
    elif spent < top_cost / 2:
        verdict = "worth it"
    elif spent < top_cost:
        verdict = "a small gain at best"
    else:
        verdict = "not worth it"
    print(f"At this error the ladder is {verdict}.")
    return {"predicted": pred, "cost": spent, "error": err, "top_cost": top_cost}


if __name__ == "__main__":
    main()
