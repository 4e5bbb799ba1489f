"""Guided sampling on the shipped class-conditional ladder (issue 27, item 6): full
classifier-free guidance, the guidance interval, T-Stitch with CFG, randomised
guidance and randomised guidance on the size ladder, at matched class accuracy and
KID, with FLOPs and seconds from the same runs.

    taskset -c 0 nice python benchmarks/guidance.py [--ladder digits_cond] [--quick]

Every run samples `samples` images (labels `i mod 10`, so every class equally)
with SDE-DPM-Solver++(1) on the uniform grid at guidance scale `scale`
(`x̂_u + w (x̂_c − x̂_u)`), from the same prior draws, and at one step count from
the same Brownian path:

* **full CFG** (`cfg_levels(top)`, `p = (1, 1)`) at `cfg_steps`, and the
  conditional network alone (`w = 1`, the guided level never fires) and the
  unguided unconditional network at `ref_steps` for context;
* **guidance interval** (`guidance_interval`) for every interval of `intervals` at
  `ref_steps`;
* **T-Stitch with CFG**: CFG with the cheaper network `j` (its own unconditional
  prediction) for the first fraction `f` of the steps, CFG with the top network
  after (`Stitch` on `cfg_levels(net_j) + cfg_levels(top)`), `j` in
  `stitch_levels`, `f` in `stitch_fractions`, at `ref_steps`;
* **randomised guidance**: `cfg_levels(top)` calibrated with `calibrate_sampler`
  at the step count sampled with, `Calibration.schedule` at budgets `fractions` of
  full CFG's cost (2 top-level evaluations a step), 2% floor;
* **randomised guidance + size ladder**: `cfg_levels(every level)`, the same.

Probability schedules run through one compiled solve per ladder and step count
(`stitch.step_table`); each compiled solve is warmed up once, then every run is
timed once. Quality: class accuracy under the digits classifier
(`md.digits_class_quality`, binomial standard error), KID against the training
digits and the mean per-class KID. "Matched": the cheapest run of a family whose
accuracy and KID are both not significantly worse than full CFG at `ref_steps`
(difference below two combined standard errors). Writes
`benchmarks/results/guidance_<ladder>.json` (atomically, with machine, versions and
seed) and prints a markdown table; `--quick`: a smoke run (`_quick` file).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, write_json  # noqa: E402
from stitch import step_table  # noqa: E402

import mlem_jax as mj  # noqa: E402
from mlem_jax import diffusion as md  # noqa: E402
from mlem_jax.pretrained import T0, T1, resolve_ladder  # noqa: E402
from mlem_jax.training import load_ladder, num_classes_from_manifest  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

SETTINGS = dict(
    samples=400,
    scale=2.0,
    ref_steps=32,
    cfg_steps=(8, 12, 16, 24, 32, 48),
    fine_steps=96,
    alt_steps=(16, 32, 48),
    intervals=((0.2, 0.7), (0.1, 0.6), (0.001, 0.5)),
    stitch_levels=(2, 3),
    stitch_fractions=(0.3, 0.5),
    random_steps=(16, 24, 32, 48),
    fractions=(0.55, 0.7, 0.85),
    ladder_fractions=(0.35, 0.5, 0.7),
    min_probability=0.02,
    pilot_batch=32,
)
QUICK = dict(
    SETTINGS,
    samples=40,
    ref_steps=8,
    cfg_steps=(4, 8),
    fine_steps=16,
    alt_steps=(8,),
    intervals=((0.2, 0.7),),
    stitch_levels=(0,),
    stitch_fractions=(0.5,),
    random_steps=(8,),
    fractions=(0.7,),
    ladder_fractions=(0.5,),
    pilot_batch=8,
)


def _solve_fn():
    import equinox as eqx

    @eqx.filter_jit
    def solve(levels, schedule, param, sampler, y0, labels, key, dw, steps):
        return md.mlem_sample(
            levels,
            schedule,
            param,
            sampler,
            y0,
            key=key,
            t0=T0,
            t1=T1,
            num_steps=steps,
            brownian=dw,
            args=labels,
        )

    return solve


class Bench:
    def __init__(self, settings, ladder, seed, quality=None):
        self.s = settings
        path, name = resolve_ladder(ladder)
        self.name = name or os.path.basename(os.path.normpath(path))
        self.nets, self.manifest = load_ladder(path)
        num_classes = num_classes_from_manifest(self.manifest)
        if num_classes is None:
            raise SystemExit(f"{ladder!r} is not a class-conditional ladder")
        self.num_classes: int = num_classes
        self.flops = [float(lv["flops_per_image"]) for lv in self.manifest["levels"]]
        sde = self.manifest["spec"]["sde"]
        self.param = md.VPLinear(beta_min=sde["beta_min"], beta_max=sde["beta_max"])
        self.sampler = md.SDEDPMSolverPP1()
        n = settings["samples"]
        self.key = jax.random.key(seed)
        k_y0, self.k_path, self.k_cal, self.k_level = jax.random.split(self.key, 4)
        shape = (n, *self.manifest["spec"]["image_shape"])
        self.shape = shape
        self.y0 = jax.random.normal(k_y0, shape)
        self.labels = jnp.arange(n, dtype=jnp.int32) % self.num_classes
        self.quality = quality or md.digits_class_quality()
        self.solve = _solve_fn()
        self.warm: set = set()
        self.runs: list[dict] = []
        self.fine = mj.brownian_increments(
            self.k_path, shape, t0=T0, t1=T1, num_steps=settings["fine_steps"]
        )
        self.reference: np.ndarray | None = None

    def path(self, steps):
        """The Brownian increments at `steps`: sums of the one fine path's, so that
        every run's pathwise error is measured on the same noise."""
        fine = self.s["fine_steps"]
        if fine % steps:
            raise SystemExit(f"fine_steps {fine} is not a multiple of {steps}")
        return mj.coarsen_increments(self.fine, fine // steps)

    def grid(self, steps):
        return np.linspace(T0, T1, steps + 1)

    def cfg(self, idx, scale=None):
        nets = [self.nets[i] for i in idx]
        costs = [self.flops[i] for i in idx]
        w = self.s["scale"] if scale is None else scale
        return md.cfg_levels(nets, costs, scale=w, num_classes=self.num_classes)

    def run(self, family, describe, levels, schedule, steps, tag, **fields):
        table = step_table(schedule, self.grid(steps))
        args = (
            levels,
            table,
            self.param,
            self.sampler,
            self.y0,
            self.labels,
            self.k_level,
            self.path(steps),
            steps,
        )
        if (tag, steps) not in self.warm:
            jax.block_until_ready(self.solve(*args))  # compile
            self.warm.add((tag, steps))
        start = time.perf_counter()
        x, info = jax.block_until_ready(self.solve(*args))
        seconds = time.perf_counter() - start
        evaluations = np.asarray(info.evaluations, np.float64)
        costs = np.asarray(levels.costs, np.float64)
        n = self.s["samples"]
        flops = float(evaluations @ costs) * n
        x = np.asarray(x)
        q = self.quality(x, np.asarray(self.labels))
        if self.reference is None:  # this run is the reference
            self.reference = x
        error = pathwise_error(x, self.reference)
        run = dict(
            family=family,
            describe=describe,
            steps=steps,
            evaluations=evaluations.tolist(),
            flops=flops,
            top_equivalent=flops / (n * self.flops[-1]),
            seconds=seconds,
            accuracy=q["accuracy"],
            kid=q["kid"],
            class_kid=q["class_kid"],
            error=error,
            blowups=int(np.sum(~np.isfinite(x).all(axis=(1, 2, 3)))),
            **fields,
        )
        self.runs.append(run)
        print(
            f"{describe:<40} acc {run['accuracy'][0]:.3f}±{run['accuracy'][1]:.3f} "
            f"KID {run['kid'][0]:.4f}±{run['kid'][1]:.4f} "
            f"error {error[0]:.4f}±{error[1]:.4f} "
            f"top-eq {run['top_equivalent']:6.1f} {seconds:6.2f} s",
            flush=True,
        )
        return run

    def calibrated(self, levels, steps):
        b = self.s["pilot_batch"]
        return md.calibrate_sampler(
            levels,
            self.param,
            self.sampler,
            self.y0[:b],
            t0=T0,
            t1=T1,
            num_steps=steps,
            key=self.k_cal,
            args=self.labels[:b],
            num_bins=min(8, steps),
            pilot_keys=0,
            measure_costs=False,
        )


def pathwise_error(x, reference) -> tuple[float, float]:
    """RMS distance per sample to the reference (full CFG at `fine_steps` on the
    same noise) and its standard error (delta method on the mean square)."""
    d2 = np.sum((np.asarray(x, np.float64) - reference).reshape(len(x), -1) ** 2, 1)
    mean = float(np.mean(d2))
    if not np.isfinite(mean):
        return math.inf, math.inf
    rms = math.sqrt(mean)
    se = float(np.std(d2, ddof=1) / math.sqrt(len(d2))) / (2 * rms) if rms else 0.0
    return rms, se


def run_all(bench: Bench) -> None:
    s = bench.s
    k = len(bench.nets)
    top = k - 1
    ref = s["ref_steps"]
    full = mj.FixedProbabilities(jnp.ones(2))
    g_top = bench.cfg([top])
    fine = s["fine_steps"]
    bench.run("reference", f"full CFG x{fine} (reference)", g_top, full, fine, "top")
    for n in s["cfg_steps"]:
        bench.run("full CFG", f"full CFG x{n}", g_top, full, n, "top")
    bench.run(
        "conditional",
        f"conditional alone (w = 1) x{ref}",
        g_top,
        mj.Rates(jnp.array([[jnp.inf, 0.0]]), jnp.array([T1, T0])),
        ref,
        "top",
    )
    for n, (a, b) in itertools.product(s["alt_steps"], s["intervals"]):
        sched = md.guidance_interval(2, (a, b), t0=T0, t1=T1)
        bench.run(
            "interval", f"interval [{a:g}, {b:g}] x{n}", g_top, sched, n, "top",
            interval=[a, b],
        )  # fmt: skip
    for j in s["stitch_levels"]:
        g_small = bench.cfg([j])
        both = mj.Levels(g_small.fns + g_top.fns, g_small.costs + g_top.costs)
        for n, f in itertools.product(s["alt_steps"], s["stitch_fractions"]):
            sched = mj.Stitch.from_fractions(4, (1, 3), (f,), grid=bench.grid(n))
            bench.run(
                "T-Stitch CFG",
                f"T-Stitch CFG level {j + 1} f{f:g} x{n}",
                both,
                sched,
                n,
                f"stitch{j}",
                level=j,
                fraction=f,
            )
    g_all = bench.cfg(range(k))
    for family, levels, fractions, tag in (
        ("randomised guidance", g_top, s["fractions"], "top"),
        ("randomised guidance + ladder", g_all, s["ladder_fractions"], "all"),
    ):
        for n in s["random_steps"]:
            cal = bench.calibrated(levels, n)
            unit = cal.level_costs("costs")[-1]
            for frac in fractions:
                budget = frac * 2 * n * unit
                try:
                    sched = cal.schedule(
                        budget=budget,
                        num_steps=n,
                        min_probability=s["min_probability"],
                        cost="costs",
                    )
                except ValueError as e:
                    print(f"{family} x{n} budget {frac}: skipped ({e})")
                    continue
                pred = cal.predict(sched, n)
                bench.run(
                    family,
                    f"{family} {frac:g} x{n}",
                    levels,
                    sched,
                    n,
                    tag,
                    fraction=frac,
                    predicted_top_equivalent=float(pred.cost / unit),
                )


def _not_worse(run, ref) -> bool:
    """Accuracy and KID both within two combined standard errors of `ref` (or
    better), and no blown-up sample."""
    if run["blowups"]:
        return False
    (a, sa), (ar, sar) = run["accuracy"], ref["accuracy"]
    (q, sq), (qr, sqr) = run["kid"], ref["kid"]
    return a >= ar - 2 * math.hypot(sa, sar) and q <= qr + 2 * math.hypot(sq, sqr)


FAMILIES = (
    "full CFG",
    "interval",
    "T-Stitch CFG",
    "randomised guidance",
    "randomised guidance + ladder",
)


RATIOS = (
    ("randomised vs full CFG", "full CFG", "randomised guidance"),
    ("randomised vs best interval", "interval", "randomised guidance"),
    ("ladder vs full CFG", "full CFG", "randomised guidance + ladder"),
    ("ladder vs best interval", "interval", "randomised guidance + ladder"),
    ("ladder vs T-Stitch CFG", "T-Stitch CFG", "randomised guidance + ladder"),
)


def _matched_families(runs, accept) -> dict:
    """Per family, the cheapest run in FLOPs and the fastest in seconds among the
    runs `accept` keeps (`None` if none), and the `RATIOS` of those costs."""
    out: dict = {}
    for fam in FAMILIES:
        ok = [r for r in runs if r["family"] == fam and accept(r)]
        if not ok:
            out[fam] = None
            continue
        by_flops = min(ok, key=lambda r: r["flops"])
        by_seconds = min(ok, key=lambda r: r["seconds"])
        out[fam] = dict(
            flops=by_flops["flops"],
            top_equivalent=by_flops["top_equivalent"],
            describe=by_flops["describe"],
            seconds=by_seconds["seconds"],
            describe_seconds=by_seconds["describe"],
        )
    out["ratios"] = {
        name: None
        if not (out[a] and out[b])
        else dict(
            flops=out[a]["flops"] / out[b]["flops"],
            seconds=out[a]["seconds"] / out[b]["seconds"],
        )
        for name, a, b in RATIOS
    }
    return out


def matched(runs, ref_steps) -> dict:
    """Matched in accuracy and KID to full CFG at `ref_steps` (`_not_worse`)."""
    ref = next(r for r in runs if r["family"] == "full CFG" and r["steps"] == ref_steps)
    return {"reference": ref["describe"]} | _matched_families(
        runs, lambda r: _not_worse(r, ref)
    )


def matched_error(runs) -> list[dict]:
    """At each full-CFG run's pathwise error (to the reference on the same noise):
    per family the cheapest run (in FLOPs, and separately in seconds) whose error is
    at most that, and the ratios of those costs."""
    targets = sorted(
        (r for r in runs if r["family"] == "full CFG"), key=lambda r: r["steps"]
    )
    return [
        {"target": t["describe"], "error": t["error"][0]}
        | _matched_families(runs, lambda r, e=t["error"][0]: r["error"][0] <= e)
        for t in targets
    ]


def error_table(rows) -> str:
    """Per target error: each family's cheapest matching run (top-level evals) and
    the ratios in FLOPs and seconds."""
    head = (
        "| target (error) | "
        + " | ".join(FAMILIES)
        + " | "
        + " | ".join(name for name, _, _ in RATIOS)
    )
    lines = [head + " |", "|---" * (1 + len(FAMILIES) + len(RATIOS)) + "|"]
    for row in rows:
        cells = [f"{row['target']} ({row['error']:.4f})"]
        for fam in FAMILIES:
            v = row[fam]
            cells.append("-" if v is None else f"{v['top_equivalent']:.1f}")
        for name, _, _ in RATIOS:
            v = row["ratios"][name]
            cells.append(
                "-" if v is None else f"{v['flops']:.2f}x / {v['seconds']:.2f}x s"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(result) -> str:
    lines = [
        "| run | class accuracy | KID | per-class KID | error | top-level evals | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['describe']} | {r['accuracy'][0]:.3f} ± {r['accuracy'][1]:.3f} | "
            f"{r['kid'][0]:.4f} ± {r['kid'][1]:.4f} | "
            f"{r['class_kid'][0]:.4f} ± {r['class_kid'][1]:.4f} | "
            + (
                f"{r['error'][0]:.4f} ± {r['error'][1]:.4f} | "
                if "error" in r
                else "- | "
            )
            + f"{r['top_equivalent']:.1f} | {r['seconds']:.2f} |"
        )
    m = result["matched"]
    lines += ["", f"Matched to {m['reference']} (accuracy and KID):", ""]
    for fam in FAMILIES:
        v = m[fam]
        lines.append(
            f"* {fam}: "
            + (
                "none matches"
                if v is None
                else f"{v['describe']} ({v['top_equivalent']:.1f} top-level evals); "
                f"fastest {v['describe_seconds']} ({v['seconds']:.2f} s)"
            )
        )
    lines.append("")
    for name, v in m["ratios"].items():
        lines.append(
            f"* {name}: "
            + (
                "n/a"
                if v is None
                else f"{v['flops']:.2f}x in FLOPs, {v['seconds']:.2f}x in seconds"
            )
        )
    if result.get("matched_error"):
        lines += ["", "Matched pathwise error (to the reference, same noise):", ""]
        lines.append(error_table(result["matched_error"]))
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--ladder", default="digits_cond")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", help="results file (default: benchmarks/results/...)")
    args = p.parse_args(argv)
    settings = QUICK if args.quick else SETTINGS
    start = time.perf_counter()
    quality = md.digits_class_quality(steps=300) if args.quick else None
    bench = Bench(settings, args.ladder, args.seed, quality)
    run_all(bench)
    result = dict(
        ladder=bench.name,
        sampler="SDE-DPM++(1)",
        grid="uniform",
        settings={k: v for k, v in settings.items()},
        seed=args.seed,
        level_flops=bench.flops,
        num_classes=bench.num_classes,
        runs=bench.runs,
        matched=matched(bench.runs, settings["ref_steps"]),
        matched_error=matched_error(bench.runs),
        environment=environment(args.seed),
        wall_s=round(time.perf_counter() - start, 1),
    )
    suffix = "_quick" if args.quick else ""
    out = args.out or os.path.join(RESULTS, f"guidance_{bench.name}{suffix}.json")
    write_json(out, result)
    print(table(result))
    print(f"wrote {out} ({result['wall_s']} s)")
    return result


if __name__ == "__main__":
    main()
