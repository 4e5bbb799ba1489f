"""What a level costs: FLOPs from XLA's compiled cost analysis, and wall-clock."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _checks as checks
from ._misc import check_num_steps


def count_flops(fn: Callable[..., Any], *args: Any) -> float:
    """FLOPs of one call `fn(*args)` from XLA's compiled cost analysis.

    Array leaves of `fn` and `args` are traced (not baked in as constants), so the
    count is the one of the program that runs.

    **Arguments:**

    - `fn`: a callable (e.g. an `eqx.Module`).
    - `*args`: example arguments; only their shapes and dtypes matter.

    **Returns:** the number of floating-point operations, as a float. Raises
    `RuntimeError` if the backend reports no cost analysis.
    """
    dynamic, static = eqx.partition((fn, args), eqx.is_array)

    def call(dynamic):
        f, a = eqx.combine(dynamic, static)
        return f(*a)

    analysis = jax.jit(call).lower(dynamic).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per device
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        raise RuntimeError("XLA reported no FLOP count for this backend.")
    return float(analysis["flops"])


def time_in_scan(
    fn: Callable[..., Any],
    t: Any,
    y: Any,
    args: Any = None,
    *,
    num_steps: int = 16,
    repeats: int = 5,
) -> float:
    """Median wall-clock seconds of one evaluation `fn(t, y, args)` as a solver pays
    it: inside a compiled `lax.scan` of `num_steps` dependent evaluations, divided by
    `num_steps`.

    This is the per-level cost that ML-EM's seconds-optimal rates need
    (`Calibration.schedule(cost="seconds")`). The time moves from one evaluation to
    the next, as in a solve: with a constant `t`, XLA hoists a UNet's time embedding
    out of the loop and the step looks ~20% cheaper than it is. Measure on the batch
    size and device you will sample with: small networks are latency-bound, so
    their share of the seconds is larger than their share of the FLOPs (on this
    project's CPU, 0.18 against 0.067 for the shipped ladder's cheapest network)
    and changes with the batch and the device.

    **Arguments:**

    - `fn`: a drift `f(t, y, args)` returning an array like `y` (e.g. a level).
    - `t`, `y`, `args`: example arguments (`y` with the batch you will sample).
    - `num_steps`: evaluations per timed scan; `repeats`: timed scans (median).
    """
    num_steps = check_num_steps("time_in_scan", num_steps)
    repeats = checks.integer("time_in_scan", "repeats", repeats)
    # Weights are jit arguments, not closed-over constants (XLA would fold them).
    dynamic, static = eqx.partition((fn, t, y, args), eqx.is_array)

    @jax.jit
    def loop(dynamic):
        f, t, y, a = eqx.combine(dynamic, static)
        # Each evaluation feeds the next, and the time moves as in a solve, so XLA
        # can hoist neither the evaluation nor its time embedding out of the loop
        # (a constant `t` under-counts a UNet's step by ~20%).
        eps = jnp.asarray(1e-7, y.dtype)
        t = jnp.asarray(t)
        if jnp.finfo(t.dtype).bits < 32:
            t = t.astype(jnp.float32)
        dt = jnp.asarray(1e-6, t.dtype) * jnp.maximum(jnp.abs(t), 1)

        def body(carry, _):
            t, y = carry
            value = jnp.asarray(f(t, y, a)).astype(y.dtype)
            return (t - dt, y + eps * value), None

        return jax.lax.scan(body, (t, y), None, length=num_steps)[0][1]

    return median_seconds(lambda: loop(dynamic), repeats) / num_steps


def time_call(fn: Callable[..., Any], *args: Any, repeats: int = 5) -> float:
    """Median wall-clock seconds of one jit-compiled call `fn(*args)`, after a
    compiling warm-up call."""
    dynamic, static = eqx.partition((fn, args), eqx.is_array)

    @jax.jit
    def call(dynamic):
        f, a = eqx.combine(dynamic, static)
        return f(*a)

    return median_seconds(lambda: call(dynamic), repeats)


def timed_run(run: Callable[[], Any]) -> tuple[Any, float]:
    """`(run(), wall-clock seconds)` of one call of `run` (blocking on its result)
    after one untimed call that compiles it (or finds it compiled)."""
    jax.block_until_ready(run())
    start = time.perf_counter()
    out = jax.block_until_ready(run())
    return out, time.perf_counter() - start


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    """Median wall-clock of `run()` (blocking on its result) over `repeats` calls,
    after one untimed call that compiles it."""
    jax.block_until_ready(run())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class CostExponent(NamedTuple):
    """A fitted power law `log cost = −exponent · log error + intercept`."""

    exponent: float
    stderr: float
    """Standard error of `exponent` (`nan` with fewer than 3 points)."""
    intercept: float


def fit_cost_exponent(errors, costs) -> CostExponent:
    """Least-squares fit of `cost ∝ error^{−γ}` in log–log: the cost–accuracy
    exponent `γ` of a ladder (`Calibration.gamma`), or of a solver's cost–error
    frontier (`γ + 1` for Euler–Maruyama in the theory, `γ` for ML-EM).

    **Arguments:**

    - `errors`, `costs`: one positive entry per point, in matching order.

    **Returns:** a `CostExponent`; every field `nan` with fewer than 2 points.
    """
    # The logs in the inputs' own precision (float32 errors stay float32), as the
    # fits this one replaced computed them: refitting stored results reproduces them.
    x = np.log(np.asarray(errors))
    y = np.log(np.asarray(costs))
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            "`errors` and `costs` must be 1-d with one entry per point; got shapes "
            f"{x.shape} and {y.shape}."
        )
    if len(x) < 2:
        return CostExponent(math.nan, math.nan, math.nan)
    slope, intercept = np.polyfit(x, y, 1)
    if len(x) < 3:
        return CostExponent(float(-slope), math.nan, float(intercept))
    residuals = y - (slope * x + intercept)
    s2 = residuals @ residuals / (len(x) - 2)
    stderr = math.sqrt(s2 / np.sum((x - x.mean()) ** 2))
    return CostExponent(float(-slope), float(stderr), float(intercept))
