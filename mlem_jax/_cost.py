"""What a level costs: FLOPs from XLA's compiled cost analysis, and wall-clock."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax


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


def time_call(fn: Callable[..., Any], *args: Any, repeats: int = 5) -> float:
    """Median wall-clock seconds of one jit-compiled call `fn(*args)`, after a
    compiling warm-up call."""
    dynamic, static = eqx.partition((fn, args), eqx.is_array)

    @jax.jit
    def call(dynamic):
        f, a = eqx.combine(dynamic, static)
        return f(*a)

    jax.block_until_ready(call(dynamic))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call(dynamic))
        times.append(time.perf_counter() - start)
    return statistics.median(times)
