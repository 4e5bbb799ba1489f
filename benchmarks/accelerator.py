"""One command for an accelerator: the shipped ladders' samplers at batch 256 and 1024,
FLOPs and seconds from the same run, with the device recorded.

    python benchmarks/accelerator.py            # on a GPU or TPU (aimed at < 8 min)
    python benchmarks/accelerator.py --quick    # on a CPU: the check a test runs

`--quick`: the two cheapest networks of `digits` (its level 2 as the "top"), batch
2, 4 steps, one timed call: it only shows that the script runs (a test runs it with
two methods). Flags `--ladders`, `--batches`, `--steps`, `--repeats`, `--levels`,
`--methods` trim a full run. Not yet run on a GPU or TPU (none was available to the
session that wrote it): the full run's duration is a target, not a measurement.

For each shipped ladder (`mlem_jax.pretrained`: `digits`, `digits_wide`) and batch:

* **Single network**, the top network and the cheapest: Euler–Maruyama on the
  reverse SDE (`mlem_jax.em_solve`), SDE-DPM-Solver++(1) (`mlem_jax.diffusion.sample`,
  uniform grid), and the top network with DPM-Solver++(2M) on the probability-flow
  ODE (log-SNR grid), each at `--steps` steps.
* **T-Stitch**: the cheapest network for the first half of the steps, the top one
  after (`mlem_jax.Stitch`), with Euler–Maruyama and SDE-DPM-Solver++(1).
* **Multilevel**: ML-EM (`mlem_jax.mlem_solve`) and the multilevel SDE-DPM-Solver++(1)
  (`mlem_jax.diffusion.mlem_sample`), every level of the ladder, rates from the
  ladder's shipped calibration at a budget of `steps/4` top-level evaluations in
  FLOPs, a 2% floor on every firing probability (the CLI's `sample` defaults).

**Cost.** FLOPs: the realised evaluations of each level times its per-image FLOPs
from the ladder's manifest (XLA's cost analysis at training time) times the batch.
Seconds: each solve compiled first (untimed), then the median of `--repeats` timed
calls, all in this one process. Every run uses the same prior draws and key
(`key(seed)`), so the single-network and multilevel solves see the same Brownian
increments. The result file records the device kind, platform, versions and seed:
`results/accelerator_<platform>.json` (`_quick` appended for `--quick`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, median_seconds, write_json  # noqa: E402

import mlem_jax as mj  # noqa: E402
import mlem_jax.diffusion as md  # noqa: E402
from mlem_jax import pretrained  # noqa: E402
from mlem_jax.cli._budget import MIN_PROBABILITY, budget_schedule  # noqa: E402
from mlem_jax.training import sde_from_manifest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

SETTINGS = {
    "full": dict(ladders=pretrained.NAMES, batches=(256, 1024), steps=64, repeats=3),
    # The two cheapest networks of one ladder (its level 2 as the "top"): compiles
    # are most of a CPU run, and a smaller ladder compiles faster.
    "quick": dict(ladders=("digits",), batches=(2,), steps=4, repeats=1, levels=2),
}
SINGLE = ("EM", "SDE-DPM++(1)", "DPM++(2M) ODE")
MULTILEVEL = ("ML-EM", "ML SDE-DPM++(1)")
# T-Stitch with each solve: the multilevel solve it runs through.
STITCH = {"T-Stitch EM": "ML-EM", "T-Stitch SDE-DPM++(1)": "ML SDE-DPM++(1)"}
METHODS = SINGLE + tuple(STITCH) + MULTILEVEL


class Eps(eqx.Module):
    """A per-image ε-network as a batched `f(t, y, args)`."""

    model: eqx.Module

    def __call__(self, t, y, args):
        del args
        return jax.vmap(self.model, in_axes=(None, 0))(t, y)


class Ladder(eqx.Module):
    """One shipped ladder, loaded once: networks, drifts, SDE and costs."""

    nets: tuple
    levels: mj.Levels
    sde: eqx.Module
    param: md.VPLinear
    shape: tuple[int, ...] = eqx.field(static=True)
    flops_per_image: tuple[float, ...] = eqx.field(static=True)


def load(name: str, levels: int | None = None) -> tuple[Ladder, mj.Calibration]:
    """The ladder and its shipped calibration; with `levels`, its `levels` cheapest
    networks only (and the calibration restricted to them)."""
    path = pretrained.pretrained_path(name)
    models, manifest = pretrained.load_ladder(path)
    sde = sde_from_manifest(manifest)
    spec = manifest["spec"]["sde"]
    flops = tuple(float(lv["flops_per_image"]) for lv in manifest["levels"])
    cal = pretrained.load_calibration(os.path.join(path, pretrained.CALIBRATION))
    m = len(models) if levels is None else levels
    if m < len(models):
        cal = cal.restrict(list(range(m)))
    drifts = md.ladder_drifts(sde, models[:m], md.ReverseDrift)
    lad = Ladder(
        tuple(Eps(model) for model in models[:m]),
        mj.Levels(drifts, flops[:m]),
        sde,
        md.VPLinear(beta_min=spec["beta_min"], beta_max=spec["beta_max"]),
        tuple(manifest["spec"]["image_shape"]),
        flops[:m],
    )
    return lad, cal


# --------------------------------------------------------------- the solves
# Each returns (y1, evaluations of every level of the ladder); compiled once per
# ladder and batch (static: the method; traced: networks, y0, key, schedule).


@eqx.filter_jit
def _single(method: str, level: int, lad: Ladder, y0, key, steps: int):
    kw = dict(t0=pretrained.T0, t1=pretrained.T1, num_steps=steps, key=key)
    if method == "EM":
        y, info = mj.em_solve(lad.levels.fns[level], lad.sde.diffusion, y0, **kw)
    elif method == "SDE-DPM++(1)":
        y, info = md.sample(lad.nets[level], lad.param, md.SDEDPMSolverPP1(), y0, **kw)
    elif method == "DPM++(2M) ODE":
        y, info = md.sample(
            lad.nets[level], lad.param, md.DPMSolverPP2M(), y0, grid="logsnr", **kw
        )
    else:
        raise ValueError(method)
    counts = (
        jnp.zeros(len(lad.nets), jnp.int32)
        .at[level]
        .set(info.evaluations[0].astype(jnp.int32))
    )
    return y, counts


@eqx.filter_jit
def _multilevel(method: str, lad: Ladder, schedule, y0, key, steps: int):
    kw = dict(t0=pretrained.T0, t1=pretrained.T1, num_steps=steps, key=key)
    if method == "ML-EM":
        y, info = mj.mlem_solve(lad.levels, schedule, lad.sde.diffusion, y0, **kw)
    elif method == "ML SDE-DPM++(1)":
        nets = mj.Levels(lad.nets, lad.levels.costs)
        y, info = md.mlem_sample(
            nets, schedule, lad.param, md.SDEDPMSolverPP1(), y0, **kw
        )
    else:
        raise ValueError(method)
    return y, info.evaluations.astype(jnp.int32)


STITCH_FRACTION = 0.5


def stitch_runs(
    lad: Ladder, y0, key, steps: int, repeats: int, methods=METHODS
) -> list[dict]:
    """T-Stitch (Pan et al., 2024): the cheapest network for the first half of the
    steps, the top one after (`mlem_jax.Stitch`), with Euler–Maruyama and with
    SDE-DPM-Solver++(1), run as the multilevel solves are (the schedule traced:
    one compile per method)."""
    k = len(lad.nets)
    grid = np.linspace(pretrained.T0, pretrained.T1, steps + 1)
    schedule = mj.Stitch.from_fractions(k, (0, k - 1), (STITCH_FRACTION,), grid=grid)
    rows = []
    for name in (m for m in STITCH if m in methods):
        fn = lambda m=STITCH[name]: _multilevel(m, lad, schedule, y0, key, steps)  # noqa: E731
        rows.append(_row(name, [0, k - 1], fn, lad, y0.shape[0], repeats))
    return rows


def _row(method, networks, fn, lad: Ladder, batch: int, repeats: int) -> dict:
    start = time.perf_counter()
    y, counts = jax.block_until_ready(fn())  # compiles
    compile_s = time.perf_counter() - start
    seconds = median_seconds(fn, repeats)
    counts = np.asarray(counts, np.int64)
    flops = float(counts @ np.asarray(lad.flops_per_image)) * batch
    top = lad.flops_per_image[-1] * batch
    y = np.asarray(y)
    return dict(
        method=method,
        networks=networks,
        evaluations=counts.tolist(),
        flops=flops,
        top_equivalent_evaluations=flops / top,
        seconds=seconds,
        first_call_seconds=compile_s,
        seconds_per_sample=seconds / batch,
        finite=bool(np.all(np.isfinite(y))),
        max_abs=float(np.max(np.abs(y))),
    )


def measure(
    name: str,
    batch: int,
    steps: int,
    repeats: int,
    seed: int,
    levels: int | None = None,
    methods=METHODS,
) -> dict:
    lad, cal = load(name, levels)
    key = jax.random.key(seed)
    k_y0, k_run = jax.random.split(key)
    y0 = lad.sde.prior_sample(k_y0, (batch, *lad.shape))
    k = len(lad.nets)
    rows = []
    networks = {"EM": (k - 1, 0), "SDE-DPM++(1)": (k - 1, 0), "DPM++(2M) ODE": (k - 1,)}
    for method in (m for m in SINGLE if m in methods):
        for level in networks[method]:
            fn = lambda m=method, lv=level: _single(m, lv, lad, y0, k_run, steps)  # noqa: E731
            rows.append(_row(method, [level], fn, lad, batch, repeats))
            print(
                f"  {name} b{batch} {method} net {level}: {_fmt(rows[-1])}", flush=True
            )
    rows += stitch_runs(lad, y0, k_run, steps, repeats, methods)
    for row in rows:
        if row["method"] in STITCH:
            print(f"  {name} b{batch} {row['method']}: {_fmt(row)}", flush=True)
    budget = steps / 4
    schedule = budget_schedule(cal, steps, budget, cost="flops")
    for method in (m for m in MULTILEVEL if m in methods):
        fn = lambda m=method: _multilevel(m, lad, schedule, y0, k_run, steps)  # noqa: E731
        rows.append(_row(method, list(range(k)), fn, lad, batch, repeats))
        print(f"  {name} b{batch} {method}: {_fmt(rows[-1])}", flush=True)
    return dict(
        ladder=name,
        levels=k,
        batch=batch,
        steps=steps,
        budget_top_evaluations=budget,
        min_probability=MIN_PROBABILITY,
        flops_per_image=list(lad.flops_per_image),
        stitch_fraction=STITCH_FRACTION,
        runs=rows,
    )


def _fmt(row: dict) -> str:
    return (
        f"{row['seconds'] * 1e3:.1f} ms, {row['flops']:.3g} FLOPs "
        f"({row['top_equivalent_evaluations']:.1f} top-level evaluations)"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU check")
    parser.add_argument("--ladders", type=lambda s: tuple(s.split(",")))
    parser.add_argument("--batches", type=lambda s: tuple(map(int, s.split(","))))
    parser.add_argument("--steps", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument(
        "--levels", type=int, help="use the ladder's N cheapest networks only"
    )
    parser.add_argument(
        "--methods",
        type=lambda s: tuple(s.split(",")),
        default=METHODS,
        help=f"comma-separated subset of {', '.join(METHODS)}",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="result file (default: results/accelerator_*)")
    args = parser.parse_args(argv)
    settings = {"levels": None, **SETTINGS["quick" if args.quick else "full"]}
    for name in ("ladders", "batches", "steps", "repeats", "levels"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    for name in settings["ladders"]:
        if name not in pretrained.NAMES:
            parser.error(f"--ladders: no shipped ladder {name!r} ({pretrained.NAMES})")
    for method in args.methods:
        if method not in METHODS:
            parser.error(f"--methods: no method {method!r} ({', '.join(METHODS)})")
    if settings["levels"] is not None and settings["levels"] < 2:
        parser.error(f"--levels must be at least 2, got {settings['levels']}")
    settings["methods"] = args.methods
    device = jax.devices()[0]
    platform = device.platform
    print(f"device: {device.device_kind} ({platform}), settings {settings}", flush=True)
    start = time.perf_counter()
    results = [
        measure(
            name,
            batch,
            settings["steps"],
            settings["repeats"],
            args.seed,
            settings["levels"],
            settings["methods"],
        )
        for name in settings["ladders"]
        for batch in settings["batches"]
    ]
    out = args.out or os.path.join(
        RESULTS, f"accelerator_{platform}{'_quick' if args.quick else ''}.json"
    )
    write_json(
        out,
        dict(
            environment=environment(args.seed),
            device=dict(
                kind=device.device_kind,
                platform=platform,
                count=jax.device_count(),
            ),
            settings=settings,
            total_seconds=time.perf_counter() - start,
            note=(
                "FLOPs: realised evaluations x per-image manifest FLOPs x batch; "
                "seconds: median of `repeats` calls after an untimed compiling call, "
                "same process. One device."
            ),
            results=results,
        ),
    )
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
