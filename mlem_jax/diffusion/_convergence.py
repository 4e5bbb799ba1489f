"""The top network's own error with a sampler, which `Calibration.verdict` compares
multilevel sampling with: `calibrate_sampler`'s counterpart of `calibrate`'s
Euler–Maruyama pilot."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._brownian import coarsen_increments
from .._calibrate import FINE, strong_convergence
from ._param import AbstractParametrisation
from ._samplers import AbstractSampler, sample


def sampler_convergence(
    model,
    param: AbstractParametrisation,
    sampler: AbstractSampler,
    y0: Array,
    *,
    ts: np.ndarray,
    key: PRNGKeyArray,
    prediction: str,
    args: Any,
) -> tuple[float, float]:
    """`(error, order)`: `sample` with `model` (the top level) on the grid `ts`
    (`num_steps + 1` times), on `ts` with every step halved and on `ts` with every
    step cut in `FINE`, on one Brownian path (drawn on the finest grid and
    coarsened, as `calibrate`'s Euler–Maruyama pilot). The finest solve stands for
    the exact one: `error` is the RMS distance of the `num_steps` solve to it over
    the batch `y0`, and `order = log2(e(num_steps) / e(2·num_steps))`, clipped to
    [1/4, 2] (the sampler's strong order on this model, e.g. 2 for
    DPM-Solver++(2M) on a smooth network, 1/2 to 1 for the stochastic samplers).

    The finer grids interpolate `ts` linearly in the step index, so they contain
    its times and a coarse step's noise is the sum of the fine steps' increments.
    The finest solve's own error biases `error` by about `e(FINE·n) / e(n)`
    (`FINE^−order`)."""
    ts = np.asarray(ts, np.float64)
    n = len(ts) - 1
    fine_ts = np.interp(np.arange(FINE * n + 1) / FINE, np.arange(n + 1), ts)
    fine_ts[::FINE] = ts  # exactly the pilot's times
    dw = None
    if sampler.stochastic:
        z = jax.random.normal(key, (FINE * n, *y0.shape), y0.dtype)
        scale = jnp.sqrt(jnp.asarray(np.abs(np.diff(fine_ts)), y0.dtype))
        dw = z * scale.reshape((-1,) + (1,) * y0.ndim)

    def solve(factor: int) -> Array:
        grid = fine_ts[::factor]

        @eqx.filter_jit
        def run(model, y0, dw):
            return sample(
                model,
                param,
                sampler,
                y0,
                t0=float(grid[0]),
                t1=float(grid[-1]),
                num_steps=len(grid) - 1,
                prediction=prediction,
                grid=grid,
                args=args,
                brownian=dw,
                checkpoint=False,
            )[0]

        coarse = None if dw is None else coarsen_increments(dw, factor)
        return run(model, y0, coarse)

    return strong_convergence(solve(FINE), solve(FINE // 2), solve(1))
