"""The `sample`, `bench` and `demo` commands of the `mlem-jax` CLI.

`mlem_jax.cli` builds the parser; this module adds these three subcommands to it and
holds what they run. Every solve here keeps the level draws unbatched (DESIGN §2):
the batch of images lives in `y0`, with one level key per solve.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .pretrained import (  # the shipped ladders' sampling defaults and loader
    MIN_PROBABILITY as MIN_PROBABILITY,
    T0 as T0,
    T1 as T1,
    Ladder as _Ladder,
    load_ladder_levels as load_ladder_levels,
)

# --------------------------------------------------------------------------- types


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _parse_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _parse_float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    value = _parse_int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _nonnegative_float(text: str) -> float:
    value = _parse_float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return value


def _seed(text: str) -> int:
    value = _parse_int(text)
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(
            f"expected an integer between -2**63 and 2**63 - 1, got {value}"
        )
    return value


def _unit_interval(text: str) -> float:
    value = _parse_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def _list(convert: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        items = [v for v in text.replace(" ", "").split(",") if v]
        if not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}"
            )
        return tuple(convert(v) for v in items)

    return parse


def _probability(text: str) -> float:
    value = _parse_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"probabilities must lie in (0, 1], got {value}"
        )
    return value


# ------------------------------------------------------------------------ ladders


def _check_ladder(parser: argparse.ArgumentParser, path: str | None) -> None:
    """Refuse a `--ladder` that is not a readable ladder (manifest and weight files
    present and well formed), before any work."""
    from .training import read_manifest

    if path is None:
        return
    try:
        read_manifest(path)
    except (ValueError, FileNotFoundError) as e:
        parser.error(f"--ladder: {str(e).replace('`path`: ', '')}")


def _load_ladder(parser: argparse.ArgumentParser, path: str | None, batch: int):
    """`load_ladder_levels`, a damaged ladder (truncated weights, say) being a usage
    error that names the bad file."""
    try:
        return load_ladder_levels(path, batch)
    except (ValueError, FileNotFoundError) as e:
        parser.error(f"--ladder: {str(e).replace('`path`: ', '')}")


def _unwritable(path: str) -> str | None:
    """Why a file or folder cannot be created at `path` (its nearest existing
    ancestor must be a writable folder), or None if it can."""
    probe = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe!r} is a file, not a folder"
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".mlem-jax-write-test.")
    except OSError as e:
        return f"{probe!r} is not writable ({e.strerror})"
    os.close(fd)
    os.remove(tmp)
    return None


def check_output_file(parser: argparse.ArgumentParser, flag: str, path: str) -> None:
    """Refuse, before any compute, an output file that could not be written."""
    if os.path.isdir(path):
        parser.error(f"{flag}: {path!r} is a directory; give a file name")
    reason = _unwritable(path)
    if reason:
        parser.error(f"{flag}: cannot write {path!r}: {reason}")


def check_output_dir(
    parser: argparse.ArgumentParser, flag: str, path: str, files: Sequence[str] = ()
) -> None:
    """Refuse, before any compute, an output folder that could not be created or
    written, or in which one of `files` is a directory."""
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"{flag}: {path!r} exists and is not a folder")
    reason = _unwritable(os.path.join(path, "x"))
    if reason:
        parser.error(f"{flag}: cannot write into {path!r}: {reason}")
    for name in files:
        if os.path.isdir(os.path.join(path, name)):
            parser.error(f"{flag}: {os.path.join(path, name)!r} is a directory")


def available_memory() -> float:
    """Bytes of memory available to a new allocation (Linux `MemAvailable`, else the
    physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def check_memory(
    parser: argparse.ArgumentParser, what: str, nbytes: float, advice: str
) -> None:
    """Refuse a run whose estimated memory `nbytes` exceeds half of what is
    available (the rest is the networks, XLA's buffers and the OS)."""
    available = available_memory()
    if nbytes > available / 2:
        parser.error(
            f"{what} needs about {nbytes / 2**30:.3g} GiB of memory, more than half of "
            f"the {available / 2**30:.3g} GiB available; {advice}"
        )


def _warn(message: str) -> None:
    import sys

    print(f"mlem-jax: warning: {message}", file=sys.stderr)


# ------------------------------------------------------------------------- solves


@jax.jit
def _sw_distance(x, y, key):
    from .diffusion import sliced_wasserstein

    return sliced_wasserstein(x, y, key)


def _em_fn(params, static, y0, dw, key, num_steps):
    from ._solve import em_solve

    drift = eqx.combine(params, static)
    return em_solve(
        drift.fns[-1],
        lambda t, y, args: jnp.sqrt(drift.sde_beta(t)),
        y0,
        t0=T0,
        t1=T1,
        num_steps=num_steps,
        key=key,
        brownian=dw,
        cost=drift.costs[-1],
    )


class _Problem(eqx.Module):
    """What a compiled solve closes over: the drifts, costs and the VP-SDE's β."""

    fns: tuple
    costs: tuple[float, ...] = eqx.field(static=True)
    beta_min: float = eqx.field(static=True)
    beta_max: float = eqx.field(static=True)

    def sde_beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)


def _mlem_fn(params, static, schedule, y0, dw, key, num_steps):
    from ._levels import Levels
    from ._solve import mlem_solve

    problem = eqx.combine(params, static)
    return mlem_solve(
        Levels(problem.fns, problem.costs),
        schedule,
        lambda t, y, args: jnp.sqrt(problem.sde_beta(t)),
        y0,
        t0=T0,
        t1=T1,
        num_steps=num_steps,
        key=key,
        brownian=dw,
    )


class _EpsNet(eqx.Module):
    """A per-image ε-network as the batched `f(t, y, args)` samplers take."""

    model: Any

    def __call__(self, t, y, args):
        del args
        return jax.vmap(self.model, in_axes=(None, 0))(t, y)


SINGLE_SAMPLER = "SDE-DPM++(1)"
"""The single-network sampler the demo runs beside Euler–Maruyama: on the shipped
ladder's reverse SDE it beats Euler–Maruyama with the top network at every step
count (`benchmarks/samplers.py`)."""


def _sampler_fn(params, static, y0, dw, num_steps):
    from .diffusion import SDEDPMSolverPP1, VPLinear, sample

    problem = eqx.combine(params, static)
    return sample(
        _EpsNet(problem.fns[-1].score.model),
        VPLinear(beta_min=problem.beta_min, beta_max=problem.beta_max),
        SDEDPMSolverPP1(),
        y0,
        t0=T0,
        t1=T1,
        num_steps=num_steps,
        brownian=dw,
        cost=problem.costs[-1],
    )


_em_jit = jax.jit(_em_fn, static_argnums=(1, 5))
_mlem_jit = jax.jit(_mlem_fn, static_argnums=(1, 6))
_sampler_jit = jax.jit(_sampler_fn, static_argnums=(1, 4))
_STATIC = {_em_jit: (1, 5), _mlem_jit: (1, 6), _sampler_jit: (1, 4)}


def _split(ladder: _Ladder, levels: Sequence[int] | None = None):
    idx = range(ladder.levels.num_levels) if levels is None else levels
    problem = _Problem(
        tuple(ladder.levels.fns[i] for i in idx),
        tuple(ladder.levels.costs[i] for i in idx),
        ladder.sde.beta_min,
        ladder.sde.beta_max,
    )
    return eqx.partition(problem, eqx.is_array)


_COMPILED: dict = {}


def _timed_compiled(jitted, *args) -> tuple[Any, float]:
    """Compile ahead of time (once per program: executables are kept for the
    process), then run once: `(output, run wall-clock in seconds)`."""
    static_positions = _STATIC[jitted]
    dynamic = [a for i, a in enumerate(args) if i not in static_positions]
    leaves, treedef = jax.tree_util.tree_flatten(dynamic)
    cache_key = (
        jitted,
        tuple(args[i] for i in static_positions),
        treedef,
        tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves),
    )
    compiled = _COMPILED.get(cache_key)
    if compiled is None:
        compiled = _COMPILED[cache_key] = jitted.lower(*args).compile()
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*dynamic))
    return out, time.perf_counter() - start


def run_em(ladder: _Ladder, y0, dw, key, num_steps: int):
    """Euler–Maruyama with the top level; returns `(y1, info, seconds)`."""
    params, static = _split(ladder)
    (y1, info), secs = _timed_compiled(_em_jit, params, static, y0, dw, key, num_steps)
    return y1, info, secs


def run_sampler(ladder: _Ladder, y0, dw, num_steps: int):
    """`SINGLE_SAMPLER` (SDE-DPM-Solver++(1)) with the top network on the
    increments `dw` (uniform grid, as Euler–Maruyama's); returns `(y1, info,
    seconds)`. Needs a ladder of ε-networks (`ReverseDrift` of `EpsilonScore`)."""
    params, static = _split(ladder)
    (y1, info), secs = _timed_compiled(_sampler_jit, params, static, y0, dw, num_steps)
    return y1, info, secs


def run_mlem(ladder: _Ladder, schedule, y0, dw, key, num_steps: int, levels=None):
    """ML-EM over the ladder's `levels` (0-based indices; default every level);
    returns `(y1, evaluations of every level of the ladder, seconds)`."""
    params, static = _split(ladder, levels)
    (y1, info), secs = _timed_compiled(
        _mlem_jit, params, static, schedule, y0, dw, key, num_steps
    )
    evaluations = np.zeros(ladder.levels.num_levels, np.int64)
    idx = list(range(ladder.levels.num_levels) if levels is None else levels)
    evaluations[idx] = np.asarray(info.evaluations)
    return y1, evaluations, secs


def run_sharded(
    ladder: _Ladder, schedule, y0, dw, key, num_steps: int, levels, devices: int
):
    """The solve of `sample` split over `devices` local devices with
    `mlem_solve_sharded` (independent level draws); Euler–Maruyama (`schedule` None)
    as its one-level case with `p = 1`. Returns `(y1, evaluations of every level of
    the ladder in whole-batch units (the mean over devices), per-device counts
    (devices, k), seconds)`."""
    from ._levels import Levels
    from ._schedules import FixedProbabilities
    from ._shard import mlem_solve_sharded

    k = ladder.levels.num_levels
    if schedule is None:
        levels, schedule = [k - 1], FixedProbabilities(jnp.ones((1,), jnp.float32))
    idx = list(range(k) if levels is None else levels)
    params, static = _split(ladder, idx)
    mesh = jax.make_mesh((devices,), ("batch",), devices=jax.local_devices()[:devices])

    def solve(params, schedule, y0, dw, key):
        problem = eqx.combine(params, static)
        return mlem_solve_sharded(
            Levels(problem.fns, problem.costs),
            schedule,
            lambda t, y, args: jnp.sqrt(problem.sde_beta(t)),
            y0,
            mesh=mesh,
            t0=T0,
            t1=T1,
            num_steps=num_steps,
            key=key,
            brownian=dw,
        )

    compiled = jax.jit(solve).lower(params, schedule, y0, dw, key).compile()
    start = time.perf_counter()
    y1, info = jax.block_until_ready(compiled(params, schedule, y0, dw, key))
    secs = time.perf_counter() - start
    per_device = np.zeros((devices, k), np.int64)
    per_device[:, idx] = np.asarray(info.evaluations)
    return np.asarray(y1), per_device.mean(axis=0), per_device, secs


def calibrated_schedule(
    ladder: _Ladder,
    y0,
    key,
    *,
    pilot_steps: int,
    num_steps: int,
    budget: float,
    path: str | None = None,
    min_probability: float | None = None,
):
    """Rates from `calibrate`, scaled so their expected cost is `budget` top-level
    evaluations at `num_steps` steps (see `budget_schedule`).

    For the shipped ladder (`path=None`) the calibration stored next to it
    (`calibration.json`, written by `mlem_jax.pretrained.calibrate_shipped`) is used;
    otherwise `calibrate` runs pilots on `y0` (`pilot_steps` steps).

    **Returns:** `(calibration, schedule)`.
    """
    cal = ladder_calibration(ladder, y0, key, pilot_steps=pilot_steps, path=path)
    return cal, budget_schedule(cal, num_steps, budget, min_probability)


def ladder_calibration(ladder: _Ladder, y0, key, *, pilot_steps: int, path=None):
    """The calibration `calibrated_schedule` scales: the stored one of the shipped
    ladder (`path=None`), else `calibrate`'s pilots on `y0`."""
    from ._calibrate import calibrate
    from .pretrained import CALIBRATION, load_calibration, pretrained_path

    cal = None
    if path is None:
        try:
            cal = load_calibration(os.path.join(pretrained_path(), CALIBRATION))
        except ValueError as e:  # a damaged installation: calibrate here instead
            _warn(f"{e} Running the calibration pilots instead.")
    if cal is None:
        cal = calibrate(
            ladder.levels,
            ladder.sde.diffusion,
            y0,
            t0=T0,
            t1=T1,
            num_steps=pilot_steps,
            key=key,
            num_bins=min(8, pilot_steps),
            pilot_keys=0,
            measure_costs=False,
        )
    return cal


COSTS = ("seconds", "flops")
"""What the CLI's calibrated rates minimise: measured wall-clock (default) or FLOPs."""


def _unit(cost: str) -> str:
    # The CLI's level costs are FLOPs, so "flops" is the calibration's `costs`.
    return "seconds" if cost == "seconds" else "costs"


def priced_calibration(cal, ladder: _Ladder, y, cost: str, seconds=None):
    """`cal` ready to minimise `cost`: for `"seconds"`, with every level's seconds
    per evaluation (`seconds` if given, else measured here, inside a compiled loop
    on the batch `y` that will be sampled: `mlem_jax.time_in_scan`; small networks
    are latency-bound, so their share of the seconds depends on the batch and the
    device). Measured timings vary from run to run, and so do the rates they give:
    pass the printed `seconds` back to reproduce a run exactly."""
    if cost != "seconds":
        return cal
    if seconds is None:
        from ._cost import time_in_scan

        t = jnp.asarray((T0 + T1) / 2, y.dtype)
        seconds = [
            time_in_scan(f, t, y, num_steps=4, repeats=3) for f in ladder.levels.fns
        ]
    return cal.with_seconds(seconds)


def describe_cost(cal, cost: str, batch: int) -> str:
    """One line saying what the rates minimise, with the per-level costs."""
    if cost == "seconds":
        ms = ",".join(f"{1e3 * s:.4g}" for s in cal.level_costs("seconds"))
        return (
            f"rates minimise seconds (ms per evaluation at batch {batch} on "
            f"{jax.default_backend()}, levels 1..k: --level-ms {ms})"
        )
    share = cal.level_costs("costs") / cal.level_costs("costs")[-1]
    return "rates minimise FLOPs (per evaluation, relative to the top level: " + (
        " ".join(f"{x:.3g}" for x in share) + ")"
    )


def budget_range(
    cal, num_steps: int, min_probability=None, cost: str = "flops"
) -> tuple[float, float]:
    """The budgets, in top-level evaluations (of FLOPs or of seconds, as `cost`
    says), that `budget_schedule` can meet at `num_steps` steps: from 1.25 times the
    cheapest schedule the floor allows (level 1 at every step, the others at the
    floor) to just below every level at every step."""
    from ._schedules import FixedProbabilities

    p_min = MIN_PROBABILITY if min_probability is None else min_probability
    unit = _unit(cost)
    top = cal.level_costs(unit)[-1]
    low = 1.25 * cal.min_cost(num_steps, p_min, unit) / top
    every = FixedProbabilities(np.ones(cal.num_levels, np.float32))
    high = 0.999 * cal.predict(every, num_steps, unit)["cost"] / top
    return low, high


def feasible_budget(
    cal, num_steps: int, budget: float, min_probability=None, cost: str = "flops"
) -> tuple[float, str | None]:
    """`(budget to use, note)`: `budget` itself (note None) if `budget_schedule` can
    meet it, the lowest feasible budget with a note saying so if it is below; a
    `ValueError` naming the feasible range if it is above."""
    low, high = budget_range(cal, num_steps, min_probability, cost)
    if budget > high:
        raise ValueError(
            f"`budget` {budget:g} top-level evaluations is more than ML-EM can spend "
            f"in {num_steps} steps: feasible budgets lie between {low:.3g} and "
            f"{high:.3g} (every level at every step); use Euler-Maruyama for more."
        )
    if budget < low:
        return low, (
            f"`budget` {budget:g} top-level evaluations is below the cheapest "
            f"schedule at {num_steps} steps (level 1 at every step, the others at "
            f"the probability floor): raised to {low:.3g}; feasible budgets lie "
            f"between {low:.3g} and {high:.3g}."
        )
    return budget, None


def level_schedule(
    cal,
    num_steps: int,
    budget: float,
    min_probability=None,
    cost: str = "flops",
    levels: str = "all",
) -> tuple[tuple[int, ...], Any]:
    """`(levels used, schedule)`: `budget_schedule` over every level
    (`levels="all"`), or over the sub-ladder `Calibration.choose_levels` predicts
    to add the least error for the budget (`levels="auto"`; every level, with a
    warning, for a stored calibration that cannot price sub-ladders)."""
    from ._schedules import FixedProbabilities

    every = tuple(range(cal.num_levels))
    if levels == "all":
        return every, budget_schedule(cal, num_steps, budget, min_probability, cost)
    if cal.pair_variances is None:
        _warn(
            "this calibration cannot price ladders that skip levels (no pair "
            "variances); using every level."
        )
        return every, budget_schedule(cal, num_steps, budget, min_probability, cost)
    p_min = MIN_PROBABILITY if min_probability is None else min_probability
    budget, _ = feasible_budget(cal, num_steps, budget, p_min, cost)
    unit = _unit(cost)
    target = budget * cal.level_costs(unit)[-1]
    idx = cal.choose_levels(
        budget=target, num_steps=num_steps, min_probability=p_min, cost=unit
    )
    if len(idx) == 1:  # the top level alone, at every step: Euler-Maruyama
        return idx, FixedProbabilities(np.ones(1, np.float32))
    sub = cal.restrict(idx)
    return idx, sub.schedule(
        budget=target, num_steps=num_steps, min_probability=p_min, cost=unit
    )


def budget_schedule(
    cal, num_steps: int, budget: float, min_probability=None, cost: str = "flops"
):
    """`cal.schedule` at `budget` top-level evaluations (raised to 1.25 times the
    cheapest schedule the floor allows, if below: see `feasible_budget`), every level
    firing with probability at least `min_probability` (default `MIN_PROBABILITY`).
    A budget above every level at every step raises a `ValueError`. `cost`:
    `"flops"` or `"seconds"` (then `cal` needs measured seconds:
    `priced_calibration`), what the rates minimise and the budget counts."""
    p_min = MIN_PROBABILITY if min_probability is None else min_probability
    budget, _ = feasible_budget(cal, num_steps, budget, p_min, cost)
    unit = _unit(cost)
    return cal.schedule(
        budget=budget * cal.level_costs(unit)[-1],
        num_steps=num_steps,
        min_probability=p_min,
        cost=unit,
    )


# -------------------------------------------------------------------------- images


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """(n, c, h, w) in [−1, 1] → (n, h, w, c) uint8."""
    x = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255)
    return np.round(x).astype(np.uint8).transpose(0, 2, 3, 1)


def image_grid(
    images: np.ndarray, ncol: int | None = None, scale: int = 4
) -> np.ndarray:
    """Tile `(n, c, h, w)` images in `[−1, 1]` into one uint8 `(H, W)` or `(H, W, 3)`
    picture, `scale`× enlarged (nearest neighbour), with a 1-pixel grey border."""
    x = _to_uint8(images)
    n, h, w, c = x.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    x = np.repeat(np.repeat(x, scale, axis=1), scale, axis=2)
    h, w = h * scale, w * scale
    grid = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), 128, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[
            1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w
        ] = x[i]
    return grid[..., 0] if c == 1 else grid


def _atomic(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    from .training import atomic_write

    atomic_write(path, write, mode)


def save_png(array: np.ndarray, path: str) -> None:
    """Write a uint8 picture as a PNG, atomically."""
    from PIL import Image

    image = Image.fromarray(array)
    _atomic(path, lambda f: image.save(f, format="PNG"))


def _save_figure(fig, path: str) -> None:
    _atomic(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))


# ------------------------------------------------------------------------- sample


def _add_sample(sub: Any) -> None:
    p = sub.add_parser(
        "sample",
        help="sample a trained ladder with ML-EM or Euler–Maruyama",
        description=(
            "Draw samples from a UNet ladder by solving the reverse VP-SDE from t=1 "
            "to t=1e-3, with ML-EM over every level or Euler–Maruyama with the top "
            "level. Writes a PNG grid and an .npz of the arrays; prints evaluations "
            "per level, FLOPs and wall-clock."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--ladder", help="ladder directory (default: the shipped digits ladder)"
    )
    p.add_argument("--method", choices=("mlem", "em"), default="mlem")
    p.add_argument("--steps", type=_positive_int, default=128, help="solver steps")
    p.add_argument("--num", type=_positive_int, default=64, help="number of samples")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument(
        "--out", default="samples.png", help="PNG grid; the .npz goes next to it"
    )
    p.add_argument(
        "--probs",
        type=_list(_probability),
        help="mlem: fixed per-level probabilities in (0, 1], e.g. 1,0.5,0.3,0.2,0.1 "
        "(default: rates from `calibrate`)",
    )
    p.add_argument(
        "--budget",
        type=_positive_float,
        help="mlem with calibrated rates: expected cost in top-level evaluations, "
        "of seconds or FLOPs as --cost says (default: steps / 4)",
    )
    p.add_argument(
        "--cost",
        choices=COSTS,
        default="seconds",
        help="mlem with calibrated rates: what the rates minimise; seconds are "
        "measured here, per level, on this batch (a few seconds before the solve; "
        "the rates then vary with the timings: --level-ms fixes them)",
    )
    p.add_argument(
        "--levels",
        choices=("auto", "all"),
        default="auto",
        help="mlem with calibrated rates: every level of the ladder, or the levels "
        "`Calibration.choose_levels` predicts to add the least error for the "
        "budget (a sub-ladder; skipping a level keeps the estimate unbiased)",
    )
    p.add_argument(
        "--level-ms",
        type=_list(_positive_float),
        help="with --cost seconds: milliseconds per evaluation of each level, "
        "instead of measuring them (the values a previous run printed reproduce it "
        "exactly)",
    )
    p.add_argument(
        "--pilot-steps", type=_positive_int, default=32, help="calibration pilot steps"
    )
    p.add_argument(
        "--devices",
        type=_devices,
        default="all",
        help="split the batch over this many local devices (`all`: every local "
        "device, or the most that divide --num); with more than one, each device "
        "draws its own levels (mlem_jax.mlem_solve_sharded, independent draws), "
        "which lowers the ML-EM noise of the batch at the same cost",
    )
    p.set_defaults(func=_run_sample, parser=p)


def _devices(text: str) -> int | str:
    if text.strip().lower() == "all":
        return "all"
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"expected `all` or {e}") from None


def sample_devices(parser: argparse.ArgumentParser, devices: int | str, num: int):
    """`(devices to split the --num samples over, a note or None)`: `all` takes the
    most local devices that divide `num`; a number must be available and divide it."""
    local = jax.local_device_count()
    if devices == "all":
        n = max(d for d in range(1, local + 1) if num % d == 0)
        note = None
        if n < local:
            note = (
                f"--devices all: using {n} of the {local} local devices, the most that "
                f"divide --num {num}"
            )
        return n, note
    assert isinstance(devices, int)
    if devices > local:
        parser.error(
            f"--devices {devices}: only {local} local device(s); on a CPU, set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before "
            "starting for host devices"
        )
    if num % devices:
        parser.error(f"--devices {devices} must divide --num ({num})")
    return devices, None


def _run_sample(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ._brownian import brownian_increments
    from ._schedules import FixedProbabilities

    _check_ladder(parser, args.ladder)
    if not args.out.lower().endswith(".png"):
        parser.error(f"--out must name a .png file, got {args.out!r}")
    npz = os.path.splitext(args.out)[0] + ".npz"
    check_output_file(parser, "--out", args.out)
    check_output_file(parser, "--out (its .npz)", npz)
    if args.pilot_steps < 8:
        parser.error(f"--pilot-steps must be at least 8, got {args.pilot_steps}")
    if args.probs is not None and args.method != "mlem":
        parser.error("--probs only applies to --method mlem")
    if args.steps >= 2**31:
        parser.error(f"--steps must be below 2**31, got {args.steps}")
    ladder = _load_ladder(parser, args.ladder, args.num)
    k = ladder.levels.num_levels
    if args.probs is not None and len(args.probs) != k:
        parser.error(f"--probs needs {k} values (one per level), got {len(args.probs)}")
    size = args.num * math.prod(ladder.shape)
    # The Brownian increments of every step are drawn up front and kept (4 bytes
    # each), plus XLA's copy of them as the scan's input.
    check_memory(
        parser,
        f"--steps {args.steps} with --num {args.num}",
        2.0 * 4 * size * args.steps,
        "lower --steps or --num.",
    )
    key = jax.random.key(args.seed)
    k_y0, k_path, k_cal, k_level = jax.random.split(key, 4)
    shape = (args.num, *ladder.shape)
    y0 = ladder.sde.prior_sample(k_y0, shape)
    schedule = None
    level_seconds = None
    used = None
    if args.method == "mlem":
        if args.probs is not None:
            schedule = FixedProbabilities(jnp.asarray(args.probs, jnp.float32))
        else:
            cal = ladder_calibration(
                ladder,
                y0[: min(args.num, 32)],
                k_cal,
                pilot_steps=args.pilot_steps,
                path=args.ladder,
            )
            if args.level_ms is not None:
                if args.cost != "seconds":
                    parser.error("--level-ms only applies to --cost seconds")
                if len(args.level_ms) != k:
                    parser.error(
                        f"--level-ms needs {k} values (one per level), got "
                        f"{len(args.level_ms)}"
                    )
                level_seconds = [ms / 1e3 for ms in args.level_ms]
            cal = priced_calibration(cal, ladder, y0, args.cost, level_seconds)
            if args.cost == "seconds":
                level_seconds = list(cal.level_costs("seconds"))
            print(describe_cost(cal, args.cost, args.num))
            budget = args.budget or args.steps / 4
            try:
                budget, note = feasible_budget(cal, args.steps, budget, cost=args.cost)
            except ValueError as e:
                parser.error(f"--budget: {str(e).replace('`budget` ', '', 1)}")
            if note:
                given = "--budget" if args.budget else "--budget (default steps/4)"
                _warn(note.replace("`budget`", given, 1))
            used, schedule = level_schedule(
                cal, args.steps, budget, cost=args.cost, levels=args.levels
            )
            print("levels used: " + ",".join(str(i + 1) for i in used))
    devices, note = sample_devices(parser, args.devices, args.num)
    if note:
        _warn(note)
    dw = brownian_increments(k_path, shape, t0=T0, t1=T1, num_steps=args.steps)
    top = ladder.levels.costs[-1]
    per_device = None
    if devices > 1:
        x, evaluations, per_device, secs = run_sharded(
            ladder, schedule, y0, dw, k_level, args.steps, used, devices
        )
        if schedule is not None and evaluations[-1] == 0:
            _warn(
                "the top level was never evaluated in this solve (0 evaluations): "
                "the samples carry the cheaper levels' error and ML-EM's noise; "
                "raise --steps or --budget."
            )
    elif schedule is None:
        x, info, secs = run_em(ladder, y0, dw, k_level, args.steps)
        evaluations = np.zeros(k, np.int64)
        evaluations[-1] = int(info.evaluations[0])
    else:
        x, evaluations, secs = run_mlem(
            ladder, schedule, y0, dw, k_level, args.steps, used
        )
        if evaluations[-1] == 0:
            _warn(
                "the top level was never evaluated in this solve (0 evaluations): "
                "the samples carry the cheaper levels' error and ML-EM's noise; "
                "raise --steps or --budget."
            )
    flops = float(np.dot(evaluations, ladder.levels.costs))
    x = np.asarray(x)
    peak = float(np.max(np.abs(x))) if np.all(np.isfinite(x)) else math.inf
    if peak > 2.0:
        _warn(
            f"the samples leave the data range [-1, 1] by far (max |x| = {peak:.3g}): "
            "too few --steps (or too small a --budget) for this ladder; they are "
            "likely noise."
        )
    save_png(image_grid(x), args.out)
    _atomic(
        npz,
        lambda f: np.savez(
            f,
            samples=x,
            y0=np.asarray(y0),
            evaluations=evaluations,
            flops=flops,
            seconds=secs,
            method=args.method,
            steps=args.steps,
            seed=args.seed,
            cost=args.cost,
            level_seconds=np.asarray(level_seconds or [], np.float64),
            devices=devices,
            device_evaluations=np.asarray(
                per_device if per_device is not None else [evaluations]
            ),
        ),
    )
    print(f"{args.method}: {args.steps} steps, {args.num} samples, seed {args.seed}")
    if per_device is None:
        print(f"devices: 1 of {jax.local_device_count()} local")
        print("evaluations per level: " + " ".join(str(int(e)) for e in evaluations))
    else:
        print(
            f"devices: {devices} of {jax.local_device_count()} local, "
            f"{args.num // devices} samples each"
            + (
                ", independent level draws (device d: key fold_in(level key, d))"
                if args.method == "mlem"
                else ""
            )
        )
        for d, counts in enumerate(per_device):
            print(f"  device {d} evaluations: " + " ".join(str(int(e)) for e in counts))
        print(
            "evaluations per level (whole-batch equivalent, mean over devices): "
            + " ".join(f"{e:g}" for e in evaluations)
        )
    print(f"top-level-equivalent evaluations (by FLOPs): {flops / top:.1f}")
    print(f"FLOPs: {flops:.3g}")
    print(f"wall-clock: {secs:.2f} s (one solve, after compilation)")
    print(f"wrote {args.out} and {npz}")
    return 0


# -------------------------------------------------------------------------- bench


def _add_bench(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="cost–error benchmark: ML-EM against Euler–Maruyama",
        description=(
            "Run the cost–error benchmark of mlem_jax.benchmarking on a synthetic "
            "drift hierarchy with cost–accuracy exponent --gamma, or on a trained "
            "ladder (--ladder). Writes a JSON result and a log–log PNG plot."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--gamma", type=_positive_float, default=3.0)
    p.add_argument(
        "--ladder",
        help="run on this ladder directory instead ('shipped' for the digits ladder)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: about 30 s on the synthetic problem; with --ladder "
        "several minutes on a CPU (mostly compiling the UNet solves at each step "
        "count), against about an hour without --quick",
    )
    p.add_argument(
        "--batch", type=_positive_int, default=16, help="--ladder: images per solve"
    )
    p.add_argument(
        "--ode",
        action="store_true",
        help="--ladder: the probability-flow ODE (Euler, Heun, ML-EM) instead of "
        "the reverse SDE",
    )
    p.add_argument(
        "--cost",
        choices=COSTS,
        default="seconds",
        help="what ML-EM's calibrated rates minimise: seconds measured here per "
        "level on the batch, or FLOPs (the speedups are reported in both)",
    )
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", default="mlem-jax-bench", help="output folder")
    p.set_defaults(func=_run_bench, parser=p)


def _run_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .benchmarking import (
        LADDER_SETTINGS,
        QUICK_LADDER_SETTINGS,
        QUICK_SETTINGS,
        ladder_problem,
        plot_cost_error,
        run_cost_error,
        speedup_lines,
        synthetic_problem,
    )
    from .pretrained import pretrained_path
    from .training import read_manifest

    path = args.ladder
    directory = pretrained_path() if path == "shipped" else path
    _check_ladder(parser, directory)
    check_output_dir(parser, "--out", args.out)
    if path is not None:
        spec = read_manifest(directory)["spec"]
        settings = QUICK_LADDER_SETTINGS if args.quick else LADDER_SETTINGS
        check_memory(
            parser,
            f"--batch {args.batch}",
            3.0
            * 4
            * math.prod(spec["image_shape"])
            * args.batch
            * settings["fine_steps"],
            "lower --batch.",
        )
    if path is None:
        if args.quick:
            problem = synthetic_problem(
                args.gamma, num_levels=3, growth=4, batch=8, seed=args.seed
            )
            kw = QUICK_SETTINGS
        else:
            problem = synthetic_problem(args.gamma, seed=args.seed)
            kw = {}
    else:
        try:
            problem = ladder_problem(
                None if path == "shipped" else path,
                4 if args.quick else args.batch,
                args.seed,
                ode=args.ode,
            )
        except (ValueError, FileNotFoundError) as e:
            parser.error(f"--ladder: {str(e).replace('`path`: ', '')}")
        kw = QUICK_LADDER_SETTINGS if args.quick else LADDER_SETTINGS
    print(f"rates minimise {args.cost}")
    result = run_cost_error(problem, seed=args.seed, cost=_unit(args.cost), **kw)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"cost_error_{problem.name}")
    text = json.dumps(result, indent=2, default=float) + "\n"
    _atomic(stem + ".json", lambda f: f.write(text), mode="w")
    plot_cost_error(result, stem + ".png")
    for line in speedup_lines(result):
        print(line)
    print(f"wrote {stem}.json and {stem}.png")
    return 0


# --------------------------------------------------------------------------- demo


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="ML-EM vs Euler–Maruyama on the shipped digits diffusion model",
        description=(
            "Load a UNet ladder (default: the shipped digits ladder), draw a "
            "fine-step reference solve, then run Euler–Maruyama with the top level "
            "at several step counts and ML-EM with calibrated rates at several "
            "scales, all on the same Brownian paths. Prints a table and writes a "
            "sample grid and a log–log cost–error plot."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--ladder", help="ladder directory (default: the shipped digits ladder)"
    )
    p.add_argument("--out", default="mlem-jax-demo", help="output folder")
    p.add_argument("--batch", type=_positive_int, default=16, help="images per solve")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument(
        "--ref-steps", type=_positive_int, default=128, help="reference solve steps"
    )
    p.add_argument("--em-steps", type=_list(_positive_int), default=(8, 16, 32, 64))
    p.add_argument(
        "--mlem-steps",
        type=_list(_positive_int),
        default=(64,),
        help="ML-EM step counts (each with every scale)",
    )
    p.add_argument(
        "--scales",
        type=_list(_positive_float),
        default=(1.0, 1.5, 2.0),
        help="ML-EM budgets, as multiples of --budget",
    )
    p.add_argument(
        "--budget",
        type=_positive_float,
        default=22.0,
        help="cost of the scale-1 ML-EM schedule, in top-level evaluations (of "
        "seconds or FLOPs, as --cost says)",
    )
    p.add_argument(
        "--cost",
        choices=COSTS,
        default="seconds",
        help="what ML-EM's calibrated rates minimise and its budgets count: seconds "
        "measured here per level on this batch, or FLOPs",
    )
    p.add_argument(
        "--levels",
        choices=("auto", "all"),
        default="auto",
        help="ML-EM over every level, or over the sub-ladder "
        "`Calibration.choose_levels` picks for each budget",
    )
    p.add_argument(
        "--level-keys",
        type=_positive_int,
        default=4,
        help="ML-EM solves per budget (level draws are shared by the batch, so one "
        "solve's error varies a lot): errors are RMS over them, costs means",
    )
    p.add_argument(
        "--min-probability",
        type=_unit_interval,
        default=MIN_PROBABILITY,
        help="floor on every level's firing probability per step (guards the "
        "stiff end of the reverse SDE against blown-up corrections)",
    )
    p.add_argument(
        "--pilot-steps", type=_positive_int, default=32, help="calibration pilot steps"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_demo, parser=p)


def _distance_data(ladder: _Ladder, limit: int = 512):
    from .data import load_dataset

    spec = ladder.dataset
    try:
        data = load_dataset(spec["name"], split="test", **spec.get("kwargs", {}))
    except Exception:  # a folder dataset that moved, say: no distance column
        return None
    return jnp.asarray(data[:limit])


def run_demo(
    ladder: _Ladder,
    *,
    batch: int,
    seed: int,
    ref_steps: int,
    em_steps: Sequence[int],
    mlem_steps: Sequence[int],
    scales: Sequence[float],
    budget: float,
    min_probability: float = MIN_PROBABILITY,
    level_keys: int = 4,
    pilot_steps: int,
    path: str | None = None,
    progress: bool = True,
    calibration=None,
    cost: str = "seconds",
    levels: str = "auto",
) -> dict:
    """The demo's measurements: one dict per run (method, steps, evaluations, cost,
    FLOPs, seconds, strong error, sliced-Wasserstein distance) plus the samples.

    All runs share one Brownian path per image (coarsened from the reference's
    increments) and the same prior draws `y0`. `calibration`: the ladder's
    calibration if already made (`demo_calibration`, priced for `cost`), else it is
    made here. `cost`: what ML-EM's rates minimise and its budgets count, `"seconds"`
    or `"flops"`. `levels`: `"auto"` (each budget on the sub-ladder
    `Calibration.choose_levels` picks) or `"all"`.
    """
    from tqdm.auto import tqdm

    from ._brownian import brownian_increments, coarsen_increments
    from .diffusion import strong_error

    key = jax.random.key(seed)
    k_y0, k_path, k_cal, k_level, k_sw = jax.random.split(key, 5)
    shape = (batch, *ladder.shape)
    y0 = ladder.sde.prior_sample(k_y0, shape)
    fine = brownian_increments(k_path, shape, t0=T0, t1=T1, num_steps=ref_steps)
    held_out = _distance_data(ladder)
    top = ladder.levels.costs[-1]
    total = 2 + 2 * len(em_steps) + len(scales) * len(mlem_steps)
    bar = tqdm(total=total, desc="mlem-jax demo", disable=not progress, unit="solve")
    runs: list[dict] = []
    samples: dict[str, np.ndarray] = {}

    def record(method, steps, x, evaluations, secs, label, repeats=None, **extra):
        # `repeats`: more solves of the same configuration (other level keys); the
        # error is then the RMS over all of them, evaluations, cost and seconds
        # their means.
        xs = [x] + [r[0] for r in repeats or []]
        evaluations = np.asarray(  # one mean count per level
            np.mean(
                [evaluations] + [r[1] for r in repeats or []], axis=0, dtype=np.float64
            )
        )
        secs = float(np.mean([secs] + [r[2] for r in repeats or []]))
        flops = float(np.dot(evaluations, ladder.levels.costs))
        err = (
            math.sqrt(np.mean([float(strong_error(z, y_ref)) ** 2 for z in xs]))
            if method != "reference"
            else 0.0
        )
        sw = (
            float(_sw_distance(x, held_out, k_sw)) if held_out is not None else math.nan
        )
        runs.append(
            dict(
                method=method,
                label=label,
                steps=steps,
                evaluations=[
                    int(e) if float(e).is_integer() else round(float(e), 2)
                    for e in evaluations
                ],
                level_keys=len(xs),
                top_equivalent=flops / top,
                flops=flops,
                seconds=secs,
                strong_error=err,
                distance=sw,
                **extra,
            )
        )
        samples[label] = np.asarray(x)

    bar.set_postfix_str("reference")
    y_ref, info, secs = run_em(ladder, y0, fine, k_level, ref_steps)
    k = ladder.levels.num_levels
    evals = [0] * (k - 1) + [int(info.evaluations[0])]
    record("reference", ref_steps, y_ref, evals, secs, "reference")
    bar.update()
    for n in em_steps:
        bar.set_postfix_str(f"EM {n} steps")
        x, info, secs = run_em(
            ladder, y0, coarsen_increments(fine, ref_steps // n), k_level, n
        )
        record("em", n, x, [0] * (k - 1) + [int(info.evaluations[0])], secs, f"EM {n}")
        bar.update()
    for n in em_steps:
        # The single-network sampler a user would pick, on the same path.
        bar.set_postfix_str(f"{SINGLE_SAMPLER} {n} steps")
        x, info, secs = run_sampler(
            ladder, y0, coarsen_increments(fine, ref_steps // n), n
        )
        evals = [0] * (k - 1) + [int(info.evaluations[0])]
        record("sampler", n, x, evals, secs, f"SDE-DPM {n}", sampler=SINGLE_SAMPLER)
        bar.update()
    bar.set_postfix_str("calibrate")
    cal = calibration
    if cal is None:
        cal = ladder_calibration(ladder, y0, k_cal, pilot_steps=pilot_steps, path=path)
        cal = priced_calibration(cal, ladder, y0, cost)
    bar.update()
    unit = _unit(cost)
    for n in mlem_steps:
        dw = coarsen_increments(fine, ref_steps // n)
        for s in scales:
            bar.set_postfix_str(f"ML-EM {n} steps x{s:g}")
            used, schedule = level_schedule(
                cal, n, s * budget, min_probability, cost, levels
            )
            x, evals, secs = run_mlem(ladder, schedule, y0, dw, k_level, n, used)
            repeats = []
            for extra_key in jax.random.split(
                jax.random.fold_in(k_level, 1), level_keys - 1
            ):
                repeats.append(run_mlem(ladder, schedule, y0, dw, extra_key, n, used))
            pred = cal.restrict(used).predict(schedule, n, unit)
            record(
                "mlem",
                n,
                x,
                evals,
                secs,
                f"ML-EM {n} x{s:g}",
                repeats=repeats,
                scale=s,
                cost=cost,
                levels=[i + 1 for i in used],
                predicted_top_equivalent=pred["cost"] / cal.level_costs(unit)[-1],
            )
            bar.update()
    bar.close()
    return dict(
        runs=runs,
        samples=samples,
        calibration=dict(
            gamma=float(cal.gamma),
            drift_errors=[float(e) for e in cal.drift_errors],
            warnings=list(cal.warnings),
        ),
        config=dict(
            batch=batch,
            seed=seed,
            ref_steps=ref_steps,
            em_steps=list(em_steps),
            mlem_steps=list(mlem_steps),
            cost=cost,
            levels=levels,
            scales=list(scales),
            budget=budget,
            min_probability=min_probability,
            level_keys=level_keys,
            pilot_steps=pilot_steps,
            level_flops_per_image=list(ladder.flops_per_image),
            t0=T0,
            t1=T1,
        ),
    )


def demo_calibration(
    ladder: _Ladder,
    *,
    batch: int,
    seed: int,
    pilot_steps: int,
    path,
    cost: str = "seconds",
):
    """The calibration `run_demo` uses for these arguments (same draws), priced for
    `cost` (`priced_calibration`), so that a caller can check budgets against it
    first."""
    k_y0, _, k_cal, _, _ = jax.random.split(jax.random.key(seed), 5)
    y0 = ladder.sde.prior_sample(k_y0, (batch, *ladder.shape))
    cal = ladder_calibration(ladder, y0, k_cal, pilot_steps=pilot_steps, path=path)
    return priced_calibration(cal, ladder, y0, cost)


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
        for unit, name in (("flops", "FLOPs"), ("seconds", "seconds")):
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
    for a, b in zip(em, em[1:]):
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    em = [r for r in runs if r["method"] == "em"]
    ml = [r for r in runs if r["method"] == "mlem"]
    top_seconds = next((r["seconds"] / r["steps"] for r in em), None)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=120)
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    for ax, unit, xlabel in (
        (axes[0], "flops", "cost in FLOPs (top-level-equivalent evaluations)"),
        (
            axes[1],
            "seconds",
            "cost in wall-clock seconds (this run, after compilation)",
        ),
    ):
        x = (
            (lambda r: r["top_equivalent"])
            if unit == "flops"
            else (lambda r: r["seconds"])
        )
        ax.plot(
            [x(r) for r in em],
            [r["strong_error"] for r in em],
            "o-",
            color="tab:blue",
            label="Euler–Maruyama, top level",
        )
        sde_dpm = [r for r in runs if r["method"] == "sampler"]
        if sde_dpm:
            ax.plot(
                [x(r) for r in sde_dpm],
                [r["strong_error"] for r in sde_dpm],
                "^-",
                color="tab:green",
                label=f"{SINGLE_SAMPLER}, top level",
            )
        for r in em:
            ax.annotate(
                f"{r['steps']} steps",
                (x(r), r["strong_error"]),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=8,
                color="tab:blue",
            )
        for i, n in enumerate(sorted({r["steps"] for r in ml})):
            mine = [r for r in ml if r["steps"] == n]
            color = ("tab:red", "tab:orange", "tab:purple", "tab:brown")[i % 4]
            ax.plot(
                [x(r) for r in mine],
                [r["strong_error"] for r in mine],
                "s--",
                color=color,
                label=f"ML-EM, {n} steps, rates by {mine[0].get('cost', 'flops')}",
            )
            for r in mine:
                ax.annotate(
                    f"×{r['scale']:g}",
                    (x(r), r["strong_error"]),
                    textcoords="offset points",
                    xytext=(5, -10),
                    fontsize=8,
                    color=color,
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
    cost_path = os.path.join(out, "cost_error.png")
    _save_figure(fig, cost_path)
    plt.close(fig)

    # Samples: the reference, the cheapest EM at least as costly as ML-EM ×1, ML-EM ×1.
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
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), dpi=120)
    for ax, label in zip(np.atleast_1d(axes), panels):
        ax.imshow(
            image_grid(result["samples"][label][:n], ncol=ncol),
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
    samples_path = os.path.join(out, "samples.png")
    _save_figure(fig, samples_path)
    plt.close(fig)
    return cost_path, samples_path


def _run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_ladder(parser, args.ladder)
    for n in (*args.em_steps, *args.mlem_steps):
        if args.ref_steps % n:
            parser.error(
                f"--ref-steps ({args.ref_steps}) must be a multiple of every step count "
                f"in --em-steps and --mlem-steps; {n} does not divide it"
            )
    if args.pilot_steps < 8:
        parser.error(f"--pilot-steps must be at least 8, got {args.pilot_steps}")
    check_output_dir(
        parser, "--out", args.out, ("cost_error.png", "samples.png", "results.json")
    )
    start = time.perf_counter()
    ladder = _load_ladder(parser, args.ladder, args.batch)
    # The reference's increments, their coarsenings (together at most as large) and
    # the saved samples of every run.
    check_memory(
        parser,
        f"--ref-steps {args.ref_steps} with --batch {args.batch}",
        3.0 * 4 * args.batch * math.prod(ladder.shape) * args.ref_steps,
        "lower --ref-steps or --batch.",
    )
    cal = demo_calibration(
        ladder,
        batch=args.batch,
        seed=args.seed,
        pilot_steps=args.pilot_steps,
        path=args.ladder,
        cost=args.cost,
    )
    print(describe_cost(cal, args.cost, args.batch))
    for n in args.mlem_steps:
        for scale in args.scales:
            budget = scale * args.budget
            try:
                _, note = feasible_budget(
                    cal, n, budget, args.min_probability, args.cost
                )
            except ValueError as e:
                parser.error(
                    f"--budget x --scales: {e}".replace(
                        "`budget`", f"{args.budget:g} x {scale:g} =", 1
                    )
                )
            if note:
                _warn(
                    f"ML-EM {n} steps x{scale:g}: "
                    + note.replace("`budget`", "budget", 1)
                )
    result = run_demo(
        ladder,
        batch=args.batch,
        seed=args.seed,
        ref_steps=args.ref_steps,
        em_steps=args.em_steps,
        mlem_steps=args.mlem_steps,
        scales=args.scales,
        budget=args.budget,
        min_probability=args.min_probability,
        level_keys=args.level_keys,
        pilot_steps=args.pilot_steps,
        path=args.ladder,
        progress=not args.no_progress,
        calibration=cal,
        cost=args.cost,
        levels=args.levels,
    )
    os.makedirs(args.out, exist_ok=True)
    cost_path, samples_path = plot_demo(result, args.out)
    record = {k: v for k, v in result.items() if k != "samples"}
    record["total_seconds"] = time.perf_counter() - start
    text = json.dumps(record, indent=2) + "\n"
    json_path = os.path.join(args.out, "results.json")
    _atomic(json_path, lambda f: f.write(text), mode="w")
    print(format_table(result["runs"]))
    print(
        f"SDE-DPM: {SINGLE_SAMPLER} with the top level (mlem_jax.diffusion.sample; "
        "the reference is Euler–Maruyama's, whose own discretisation error this "
        "distance counts against SDE-DPM only). "
        "top-eq: FLOPs, in evaluations of the top level; strong err: RMS distance to "
        f"the {args.ref_steps}-step reference on the same Brownian paths; SW dist: "
        "sliced Wasserstein distance to held-out data; wall s: one solve after "
        "compilation (ML-EM: the mean over its level keys)."
    )
    for line in matched_cost_lines(result["runs"]):
        print(line)
    print(f"wrote {cost_path}, {samples_path} and {json_path}")
    return 0


def add_commands(sub: Any) -> None:
    """Add `sample`, `bench` and `demo` to the `mlem-jax` subparsers `sub`."""
    _add_sample(sub)
    _add_bench(sub)
    _add_demo(sub)
