"""What `mlem-jax demo` reports: its table, the errors of the single-network methods
at ML-EM's costs, and its two figures."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from .._misc import missing_extra
from ._images import image_grid, save_figure
from ._solves import SINGLE_SAMPLER


def format_table(runs: Sequence[dict]) -> str:
    """The demo's results as a fixed-width text table."""
    head = (
        f"{'method':<12} {'steps':>5} {'evaluations per level':>24} {'top-eq':>7} "
        f"{'GFLOPs':>8} {'wall s':>7} {'strong err':>10} {'SW dist':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        evals = "/".join(str(e) for e in r["evaluations"])
        lines.append(
            f"{r['label']:<12} {r['steps']:>5} {evals:>24} {r['top_equivalent']:>7.1f} "
            f"{r['flops'] / 1e9:>8.2f} {r['seconds']:>7.2f} {r['strong_error']:>10.4f} "
            f"{r['distance']:>8.4f}"
        )
    return "\n".join(lines)


def matched_cost_lines(runs: Sequence[dict]) -> list[str]:
    """For each ML-EM run inside the range of costs of a single-network method,
    that method's error at the same cost (log–log interpolation between its runs)
    and the ratio of the two errors: Euler–Maruyama with the top level, and the
    best single-network sampler at that cost (the lower of Euler–Maruyama's and
    SDE-DPM-Solver++(1)'s interpolated errors); once with cost = FLOPs and once
    with cost = wall-clock seconds measured in this run."""
    singles = {
        name: [r for r in runs if r["method"] == method and r["strong_error"] > 0]
        for name, method in (("EM", "em"), (SINGLE_SAMPLER, "sampler"))
    }
    lines = []
    for r in runs:
        if r["method"] != "mlem":
            continue
        parts = []
        # Seconds are this run's timings: that comparison varies from run to run.
        for unit, name in (("flops", "FLOPs"), ("seconds", "seconds (this run)")):
            errors = {
                m: _interpolate_error(pts, r[unit], unit) for m, pts in singles.items()
            }
            known = {m: e for m, e in errors.items() if e is not None}
            if errors["EM"] is None:
                part = f"at equal {name}: outside EM's range"
            else:
                part = (
                    f"at equal {name} EM error {errors['EM']:.3g}, ratio EM/ML-EM "
                    f"{errors['EM'] / r['strong_error']:.2f}"
                )
            if len(known) == len(singles):
                best = min(known, key=lambda m: known[m])
                part += (
                    f", best single-network sampler {best} error {known[best]:.3g}, "
                    f"ratio {known[best] / r['strong_error']:.2f}"
                )
            parts.append(part)
        lines.append(
            f"{r['label']} (error {r['strong_error']:.3g}): " + "; ".join(parts)
        )
    return lines


def _interpolate_error(em: Sequence[dict], cost: float, unit: str) -> float | None:
    """EM's error at `cost` (in `unit`), interpolated log–log between the EM runs
    bracketing it; `None` outside their range."""
    em = sorted(em, key=lambda r: r[unit])
    c = math.log(cost)
    for a, b in zip(em, em[1:], strict=False):
        ca, cb = math.log(a[unit]), math.log(b[unit])
        if ca <= c <= cb and cb > ca:
            w = (c - ca) / (cb - ca)
            return math.exp(
                (1 - w) * math.log(a["strong_error"]) + w * math.log(b["strong_error"])
            )
    return None


def plot_demo(result: dict, out: str) -> tuple[str, str]:
    """Write `cost_error.png` (log–log) and `samples.png` (EM and ML-EM side by side)
    into `out`; returns their paths."""
    # A bare `Figure` renders to files with no pyplot state and no GUI backend.
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError as e:
        raise missing_extra(e, "cli", "mlem-jax demo's plots") from e

    cost_path = os.path.join(out, "cost_error.png")
    save_figure(_cost_error_figure(Figure, result["runs"]), cost_path)
    samples_path = os.path.join(out, "samples.png")
    save_figure(_samples_figure(Figure, result), samples_path)
    return cost_path, samples_path


def _cost_error_figure(Figure, runs: Sequence[dict]):
    """Error against cost, in FLOPs and in seconds: Euler–Maruyama, the
    single-network sampler, and ML-EM at each step count."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    em = [r for r in runs if r["method"] == "em"]
    ml = [r for r in runs if r["method"] == "mlem"]
    sde_dpm = [r for r in runs if r["method"] == "sampler"]
    top_seconds = next((r["seconds"] / r["steps"] for r in em), None)
    fig = Figure(figsize=(11, 4.6), dpi=120)
    axes = fig.subplots(1, 2)
    for ax, unit, xlabel in (
        (axes[0], "top_equivalent", "cost in FLOPs (top-level-equivalent evaluations)"),
        (
            axes[1],
            "seconds",
            "cost in wall-clock seconds (this run, after compilation)",
        ),
    ):
        _curve(ax, unit, em, "o-", "tab:blue", "Euler–Maruyama, top level", _steps)
        if sde_dpm:
            _curve(ax, unit, sde_dpm, "^-", "tab:green", f"{SINGLE_SAMPLER}, top level")
        for i, n in enumerate(sorted({r["steps"] for r in ml})):
            mine = [r for r in ml if r["steps"] == n]
            _curve(
                ax,
                unit,
                mine,
                "s--",
                ("tab:red", "tab:orange", "tab:purple", "tab:brown")[i % 4],
                f"ML-EM, {n} steps, rates by {mine[0].get('cost', 'flops')}",
                lambda r: f"×{r['scale']:g}",
                offset=(5, -10),
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_locator(LogLocator(subs=(2, 3, 5)))
            axis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("strong error to the reference (RMS, pixel space)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("cost vs pathwise error: FLOPs")
    axes[1].set_title(
        "cost vs pathwise error: seconds"
        + (f" (top level ≈ {1e3 * top_seconds:.3g} ms/step)" if top_seconds else "")
    )
    return fig


def _steps(run: dict) -> str:
    return f"{run['steps']} steps"


def _curve(ax, key, runs, style, color, label, note=None, offset=(5, 4)) -> None:
    """The runs as one line of error against `run[key]`, each point labelled
    `note(run)`."""
    ax.plot(
        [r[key] for r in runs],
        [r["strong_error"] for r in runs],
        style,
        color=color,
        label=label,
    )
    if note is None:
        return
    for r in runs:
        ax.annotate(
            note(r),
            (r[key], r["strong_error"]),
            textcoords="offset points",
            xytext=offset,
            fontsize=8,
            color=color,
        )


def _samples_figure(Figure, result: dict):
    """The reference, the EM run closest in cost to the middle ML-EM run, and that
    ML-EM run, side by side."""
    runs = result["runs"]
    em = [r for r in runs if r["method"] == "em"]
    ml = [r for r in runs if r["method"] == "mlem"]
    by_label = {r["label"]: r for r in runs}
    mid = ml[len(ml) // 2] if ml else None
    panels = ["reference"]
    if em:
        pick = (
            min(
                em,
                key=lambda r: abs(
                    math.log(r["top_equivalent"] / mid["top_equivalent"])
                ),
            )
            if mid
            else em[0]
        )
        panels.append(pick["label"])
    if mid:
        panels.append(mid["label"])
    n = min(16, result["config"]["batch"])
    ncol = int(math.ceil(math.sqrt(n)))
    fig = Figure(figsize=(3.2 * len(panels), 3.6), dpi=120)
    axes = fig.subplots(1, len(panels))
    for ax, label in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(
            # A blown-up solve's NaNs show as grey (imshow does the enlarging).
            image_grid(np.nan_to_num(result["samples"][label][:n]), ncol, 1),
            cmap="gray",
            vmin=0,
            vmax=255,
        )
        r = by_label[label]
        sub = f"cost {r['top_equivalent']:.1f} top evals"
        if r["method"] != "reference":
            sub += f", error {r['strong_error']:.3f}"
        ax.set_title(f"{label}\n{sub}", fontsize=9)
        ax.axis("off")
    fig.suptitle("Same prior draws and Brownian paths", fontsize=10)
    return fig
