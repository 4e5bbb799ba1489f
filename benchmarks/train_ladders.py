"""Train UNet ladders on `digits` and `patches` and measure γ (DESIGN.md §1).

    python benchmarks/train_ladders.py train --out /tmp/mlem_ladders
    python benchmarks/train_ladders.py evaluate --out /tmp/mlem_ladders

`train` trains every level of both ladders (resumable: rerun the same command after an
interruption). `evaluate` samples reverse-SDE trajectories with Euler–Maruyama and the
top level, evaluates every level's drift on the visited states, and records per level:
FLOPs, parameters, training / held-out loss, drift error against the top level, and
the fitted γ in `log c_l = −γ log e_l + b` over levels 1..k−1 (the top level is the
reference). Results go to `benchmarks/results/ladder_<dataset>.json` (written
atomically). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import mlem_jax as mj
from mlem_jax import data as mdata
from mlem_jax._cost import fit_cost_exponent
from mlem_jax._env import machine
from mlem_jax.diffusion import (
    drift_flops,
    ladder_drifts,
    sliced_wasserstein,
)
from mlem_jax.training import (
    TrainConfig,
    _write_json,
    load_ladder,
    sde_from_manifest,
    train_ladder,
)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

LADDERS = {
    "digits": dict(
        data=dict(name="digits", kwargs={}),
        widths=(8, 12, 16, 24, 32),
        unet=dict(channel_mults=[1, 2], num_res_blocks=1),
        config=TrainConfig(
            steps=1500,
            batch_size=128,
            learning_rate=2e-3,
            warmup_steps=100,
            ema_decay=0.995,
            checkpoint_every=250,
        ),
    ),
    "patches": dict(
        data=dict(name="patches", kwargs=dict(size=16, num=10_000, grey=True)),
        widths=(8, 12, 16, 24),
        unet=dict(channel_mults=[1, 2], num_res_blocks=1),
        config=TrainConfig(
            steps=1000,
            batch_size=64,
            learning_rate=2e-3,
            warmup_steps=100,
            ema_decay=0.995,
            checkpoint_every=250,
        ),
    ),
}


def _load(spec, split):
    kwargs = dict(spec["data"]["kwargs"], split=split)
    return mdata.load_dataset(spec["data"]["name"], **kwargs)


def cmd_train(args):
    for name in args.datasets:
        spec = LADDERS[name]
        out = os.path.join(args.out, name)
        start = time.process_time()
        wall = time.time()
        _, manifest = train_ladder(
            out,
            _load(spec, "train"),
            widths=spec["widths"],
            unet_kwargs=spec["unet"],
            config=spec["config"],
            seed=args.seed,
            dataset=spec["data"],
            eval_data=_load(spec, "test"),
            progress=not args.quiet,
        )
        print(
            f"{name}: trained in {time.time() - wall:.0f}s wall, "
            f"{time.process_time() - start:.0f}s CPU (this process)",
            flush=True,
        )


def fit_gamma(costs, errors):
    """Least-squares slope of log c against −log e: `log c = −γ log e + b`."""
    fit = fit_cost_exponent(errors, costs)
    return fit.exponent, fit.intercept


def cmd_evaluate(args):
    for name in args.datasets:
        out = os.path.join(args.out, name)
        models, manifest = load_ladder(out)
        sde = sde_from_manifest(manifest)
        shape = tuple(manifest["spec"]["image_shape"])
        batch, steps, t1 = args.batch, args.steps, args.t1
        key = jr.key(args.seed)
        k_y0, k_solve, k_sw = jr.split(key, 3)
        fns = ladder_drifts(sde, models)
        y0 = sde.prior_sample(k_y0, (batch, *shape))
        costs = [drift_flops(f, y0) for f in fns]

        # Euler–Maruyama from t = 1 to t1 with the Brownian increments em_solve would
        # use for this key, as a Python loop of compiled steps: on XLA:CPU a UNet
        # inside em_solve's lax.scan runs about 4x slower than the same evaluations
        # dispatched one by one (measured here), and this benchmark only needs states.
        h = (t1 - 1.0) / steps
        incs = mj.brownian_increments(k_solve, y0.shape, t0=1.0, t1=t1, num_steps=steps)

        @eqx.filter_jit
        def em_step(f, t, y, dw):
            return y + h * f(t, y, None) + sde.diffusion(t, y) * dw  # noqa: B023

        @eqx.filter_jit
        def sq_errors(fns, t, y):
            ref = fns[-1](t, y, None)
            return jnp.stack(
                [
                    jnp.mean(jnp.sum((f(t, y, None) - ref).reshape(batch, -1) ** 2, 1))  # noqa: B023
                    for f in fns
                ]
            )

        def em_path(f, visit=None):
            y = y0  # noqa: B023
            for n in range(steps):  # noqa: B023
                t = jnp.asarray(1.0 + n * h, y0.dtype)  # noqa: B023
                if visit is not None:
                    visit(t, y)
                y = em_step(f, t, y, incs[n])  # noqa: B023
            return y

        # Drift error of every level against the top one, on the states visited by
        # the top level's reverse-SDE trajectories.
        acc = []
        em_path(fns[-1], visit=lambda t, y: acc.append(sq_errors(fns, t, y)))  # noqa: B023
        errors = np.sqrt(np.mean(np.stack([np.asarray(a) for a in acc]), axis=0))

        # Sample quality of each level alone (same Brownian path) vs held-out data.
        held_out = (
            jnp.asarray(_load(LADDERS[name], "test")) if name in LADDERS else None
        )
        sw = []
        for f in fns:
            x = em_path(f)
            sw.append(
                float(sliced_wasserstein(x, held_out, k_sw))
                if held_out is not None
                else None
            )
        train_sw = (
            float(
                sliced_wasserstein(
                    held_out, jnp.asarray(_load(LADDERS[name], "train"))[:batch], k_sw
                )
            )
            if held_out is not None
            else None
        )

        k = len(fns)
        gamma, b = fit_gamma(costs[:-1], errors[:-1]) if k >= 3 else (None, None)
        gamma_params, _ = (
            fit_gamma([lv["params"] for lv in manifest["levels"]][:-1], errors[:-1])
            if k >= 3
            else (None, None)
        )
        rows = []
        for lvl, entry in enumerate(manifest["levels"]):
            rows.append(
                dict(
                    level=lvl + 1,
                    width=entry["width"],
                    params=entry["params"],
                    flops_per_eval=costs[lvl],
                    flops_per_image=costs[lvl] / batch,
                    train_loss=entry["final_loss"],
                    eval_loss=entry.get("eval_loss"),
                    drift_error_vs_top=float(errors[lvl]),
                    sliced_wasserstein_em_samples=sw[lvl],
                )
            )
        result = dict(
            benchmark="train_ladders",
            dataset=manifest["spec"]["dataset"],
            ladder_spec=manifest["spec"],
            levels=rows,
            gamma_flops=gamma,
            gamma_fit_intercept=b,
            gamma_params=gamma_params,
            gamma_fit="log c_l = -gamma log e_l + b over levels 1..k-1, e_l = RMS "
            "||f^l - f^k|| over EM(top level) reverse-SDE states",
            sliced_wasserstein_train_vs_heldout=train_sw,
            evaluation=dict(
                batch=batch,
                num_steps=steps,
                t0=1.0,
                t1=t1,
                seed=args.seed,
                solver="Euler-Maruyama (python loop of jitted steps, em_solve's Brownian increments), top level for the drift-error states",
            ),
            training_cpu_s=sum(lv.get("train_cpu_s", 0.0) for lv in manifest["levels"]),
            machine=machine(),
            versions=manifest["versions"],
        )
        path = os.path.join(RESULTS, f"ladder_{name}.json")
        _write_json(path, result)
        print(f"{name}: gamma (FLOPs) = {gamma}, written {path}")
        for r in rows:
            print(
                f"  level {r['level']} width {r['width']:3d} params {r['params']:8d} "
                f"flops/img {r['flops_per_image']:.3e} loss {r['train_loss']:.4f} "
                f"eval {r['eval_loss']:.4f} e_l {r['drift_error_vs_top']:.3e} "
                f"SW {r['sliced_wasserstein_em_samples']}"
            )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("train", "evaluate"):
        s = sub.add_parser(name)
        s.add_argument("--out", default="/tmp/mlem_ladders")
        s.add_argument(
            "--datasets", nargs="+", default=list(LADDERS), choices=list(LADDERS)
        )
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--quiet", action="store_true")
        if name == "evaluate":
            s.add_argument("--batch", type=int, default=128)
            s.add_argument("--steps", type=int, default=100)
            s.add_argument("--t1", type=float, default=1e-3)
    args = p.parse_args(argv)
    {"train": cmd_train, "evaluate": cmd_evaluate}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
