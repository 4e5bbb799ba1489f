"""Turn a ladder of trained noise-prediction networks into `mlem_jax.Levels`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, Float

from .. import _checks as checks
from .._cost import count_flops
from ._score import EpsilonScore, ReverseDrift
from ._sde import VPSDE


def ladder_drifts(
    sde: VPSDE,
    models: Sequence[Callable],
    drift: Callable[[VPSDE, Any], Callable] = ReverseDrift,
) -> tuple[Callable, ...]:
    """Sampling drifts `f^1, …, f^k`, one per network, narrowest first.

    **Arguments:**

    - `sde`: the forward SDE the networks were trained for.
    - `models`: noise-prediction networks `ε_θ(t, x)` on one image.
    - `drift`: `ReverseDrift` (reverse SDE, the default) or `ProbabilityFlowDrift`
      (probability-flow ODE; solve it with `diffusion=None`).

    **Returns:**

    A tuple of `f(t, y, args)` modules acting on batches `(batch, *shape)`.
    """
    return tuple(drift(sde, EpsilonScore(m, sde)) for m in models)


def drift_flops(fn: Callable, y: Float[Array, " batch *shape"]) -> float:
    """FLOPs of one batched evaluation `fn(t, y, None)` (XLA's compiled cost analysis)."""
    return count_flops(lambda f, t, y: f(t, y, None), fn, jnp.asarray(0.5, y.dtype), y)


def make_levels(
    sde: VPSDE,
    models: Sequence[Callable],
    y_example: Float[Array, " batch *shape"],
    *,
    drift: Callable[[VPSDE, Any], Callable] = ReverseDrift,
    costs: Sequence[float] | None = None,
):
    """A `mlem_jax.Levels` whose level `l` is the sampling drift of `models[l]`.

    **Arguments:**

    - `sde`: the forward SDE the networks were trained for.
    - `models`: noise-prediction networks, cheapest first.
    - `y_example`: an array with the batch shape sampling will use (values unused); the
      cost of each level is the FLOP count of one evaluation on this batch.
    - `drift`: `ReverseDrift` (default) or `ProbabilityFlowDrift`.
    - `costs`: skip the measurement and use these costs instead.

    **Returns:**

    `mlem_jax.Levels(fns=drifts, costs=flops)`. Sample with
    `mlem_jax.mlem_solve(levels, schedule, sde.diffusion, y0, t0=1.0, t1=1e-3, ...)`
    and `y0 = sde.prior_sample(key, y_example.shape)`.
    """
    from .._levels import Levels  # the core package imports this subpackage

    fns = ladder_drifts(sde, models, drift)
    if costs is None:
        costs = tuple(drift_flops(f, y_example) for f in fns)
    elif len(costs) != len(fns):
        what = f"one cost per model ({len(fns)})"
        raise checks.fail("make_levels", "costs", what, costs)
    return Levels(fns=fns, costs=tuple(float(c) for c in costs))
