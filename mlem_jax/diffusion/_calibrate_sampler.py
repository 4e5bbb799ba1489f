"""Calibration of a ladder along a diffusion sampler's own grid and prediction type.

```python
cal = mlem_jax.diffusion.calibrate_sampler(
    levels, param, sampler, y0, t0=1.0, t1=1e-3, num_steps=20, key=key,
    prediction="eps", grid="logsnr")
schedule = cal.schedule(target_error=0.05)
y, info = mlem_jax.diffusion.mlem_sample(
    levels, schedule, param, sampler, y0, t0=1.0, t1=1e-3, num_steps=20,
    key=key, prediction="eps", grid="logsnr")
```

`mlem_jax.calibrate` measures a ladder along Euler–Maruyama trajectories of an SDE
given by its drifts. A sampler's step is instead `y' = a_n y + c_n x̂_0 (+ noise)`
(the 2M methods add the previous step's estimate), so a level's correction enters
step `n` as `c_n (x̂_0^l − x̂_0^{l−1})`. `calibrate_sampler` measures exactly that,
with the same machinery and the same `Calibration` as `calibrate`:

* the pilot trajectory is the sampler's own, with the top network, on its grid;
* `V_l(t_n) = E‖(c_n/h_n)(x̂_0^l − x̂_0^{l−1})(t_n, y_n)‖²`, the variance of the
  correction per unit time (`h_n = t_{n+1} − t_n`), so that the added variance of
  step `n` at probability `p` is `(1/p − 1) h_n² V_l` as in `calibrate`; for
  `Euler` this is the probability-flow drift's `V_l` of `calibrate`;
* the sensitivity `a(t_n) = E‖J_n v‖²/(d c_n²)` with `J_n` the Jacobian of the final
  state with respect to the data prediction used at step `n` (one reverse pass
  through the sampler), which includes the 2M methods' reuse of the estimate at the
  next step;
* the amplification pilots run `mlem_sample` itself;
* the time bins have their edges on grid points (`num_steps / num_bins` steps
  each), and the `Calibration` keeps the grid (`Calibration.grid`), so
  `predict`, `schedule` and `choose_levels` price a schedule on the sampler's steps.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from .. import _checks as checks
from .._brownian import split_key, step_increment
from .._calibrate import (
    assemble_calibration,
    check_pilot,
    mean_added_error,
    perturbation_growth,
    trajectory_statistics,
    with_amplification,
)
from .._calibration import Calibration
from .._integrate import AbstractStepper, Grid, Problem, integrate
from .._levels import Levels
from .._schedules import FixedProbabilities
from .._step import check_drift_output
from ._param import AbstractParametrisation
from ._samplers import AbstractSampler, _X0Prediction, mlem_sample, sampler_problem


def calibrate_sampler(
    levels: Levels,
    param: AbstractParametrisation,
    sampler: AbstractSampler,
    y0: ArrayLike,
    *,
    t0: float,
    t1: float,
    num_steps: int,
    key: PRNGKeyArray,
    prediction: str = "eps",
    grid: str | ArrayLike = "uniform",
    rho: float = 7.0,
    args: Any = None,
    num_bins: int = 8,
    reference=None,
    pilot_keys: int = 8,
    measure_costs: bool = True,
) -> Calibration:
    """Measure a ladder of diffusion networks along a sampler's own trajectory.

    **Arguments:**

    - `levels`, `param`, `sampler`, `y0`, `t0`, `t1`, `num_steps`, `prediction`,
        `grid`, `rho`, `args`: as in `mlem_sample`; `y0` a representative batch of
        initial states, averaged over.
    - `key`: drives the pilot's noise (for stochastic samplers), the sensitivity
        probes and the amplification pilots.
    - `num_bins`: number of time bins, each spanning `num_steps / num_bins`
        consecutive steps of the grid (at most `num_steps`).
    - `reference`: an optional more accurate network predicting `prediction`, for
        the drift errors and `γ` (default: errors against the top level).
    - `pilot_keys`: `mlem_sample` pilots per level for the amplification (0 skips
        them, taking amplification 1).
    - `measure_costs`: measure FLOPs and wall-clock of each level on `y0`.

    **Returns:** a `mlem_jax.Calibration` whose `predict(schedule).error` is the
    predicted RMS distance of `mlem_sample` to `sample` with the top network on the
    same noise (linearised along the pilot trajectory, corrected per level by the
    amplification pilots), and whose `schedule(...)` gives rates for `mlem_sample`
    with this sampler and grid. Its `variances[:, 0]` is `E‖(c_n/h_n) x̂_0^1‖²`, the
    cheapest network's whole prediction, which the schedules never randomise.
    """
    name = "calibrate_sampler"
    num_steps = check_pilot(name, levels, num_steps, num_bins, pilot_keys)
    if isinstance(sampler, AbstractSampler) and not sampler.affine:
        raise ValueError(
            f"{name}: `sampler` {type(sampler).__name__} is not affine in the "
            "network's prediction, so it has no unbiased multilevel version; use "
            "Euler, DDIM, DPMSolverPP2M, SDEDPMSolverPP1 or SDEDPMSolverPP2M."
        )
    if reference is not None:
        what = "a network f(t, y, args) or None"
        checks.function(name, "reference", reference, what)
    problem = sampler_problem(
        name,
        levels.fns,
        None,
        param,
        sampler,
        y0,
        t0=t0,
        t1=t1,
        num_steps=num_steps,
        key=key,
        needs_key=True,
        prediction=prediction,
        grid=grid,
        rho=rho,
        args=args,
        brownian=None,
        checkpoint=True,
    )
    y0, key, x0_fns = jnp.asarray(problem.y0), problem.key, problem.fns
    ts, dts = problem.grid.ts, problem.grid.dts
    assert ts is not None and dts is not None
    if reference is not None:
        out = jax.eval_shape(reference, ts[0], y0, args)
        try:
            check_drift_output(out, y0, "`reference`")
        except (TypeError, ValueError) as e:
            raise type(e)(str(e).replace("mlem_jax:", f"{name}:", 1)) from None
        x0_fns = x0_fns + (_X0Prediction(reference, param, prediction),)
    k = levels.num_levels
    dtype = y0.dtype
    pilot_key, level_key = jax.random.split(key)
    dw = None
    if sampler.stochastic:
        # The pilot's noise as Brownian increments, the layout `mlem_sample` reads.
        brownian_key, _ = split_key(pilot_key)
        noise = jax.vmap(
            lambda n: step_increment(brownian_key, n, y0.shape, 1.0, dtype)
        )(jnp.arange(num_steps))
        scale = jnp.sqrt(jnp.abs(dts)).astype(dtype)
        dw = noise * scale.reshape((num_steps,) + (1,) * y0.ndim)

    y1, states, coefficients, per_step, growth = _measure(
        x0_fns, k, param, sampler, y0, ts, dts, dw, args, pilot_key
    )
    states_c, coefficients_c = np.asarray(states), np.asarray(coefficients, np.float64)
    if not (np.all(np.isfinite(states_c)) and np.all(np.isfinite(np.asarray(y1)))):
        raise ValueError(
            f"{name}: the pilot run of {type(sampler).__name__} with the top level "
            "produced NaN or infinite states from a finite `y0`: the top network "
            "returns NaN/inf on the pilot trajectory (or the grid reaches a time where "
            "the parametrisation is singular, e.g. `t1 = 0` for VP)."
        )
    if np.any(coefficients_c == 0):
        raise ValueError(
            f"{name}: the sampler does not use the network at some step of the grid "
            "(zero coefficient); check `t0`, `t1` and `grid`."
        )
    sensitivity = np.asarray(growth, np.float64) / coefficients_c**2
    grid_c = np.asarray(ts, np.float64)
    steps_c = np.asarray(dts, np.float64)
    idx = np.round(np.linspace(0, num_steps, num_bins + 1)).astype(int)
    edges = np.sort(grid_c[idx])
    calibration = assemble_calibration(
        name,
        levels,
        per_step,
        sensitivity,
        edges,
        grid_c[:-1] + steps_c / 2,
        t0=float(grid_c[0]),
        t1=float(grid_c[-1]),
        num_steps=num_steps,
        grid=grid_c,
        top_is_reference=reference is None,
        costs_at=(ts[num_steps // 2], y0, args) if measure_costs else None,
        what="network",
    )
    if pilot_keys > 0 and k > 1:

        def run(operands, probs, key):
            levels, y0, dw = operands
            schedule = FixedProbabilities(probs)
            return mlem_sample(
                levels,
                schedule,
                param,
                sampler,
                y0,
                t0=t0,
                t1=t1,
                num_steps=num_steps,
                key=key,
                prediction=prediction,
                grid=grid,
                rho=rho,
                args=args,
                brownian=dw,
            )[0]

        mean_added = mean_added_error(run, (levels, y0, dw), y1)
        calibration = with_amplification(calibration, mean_added, level_key, pilot_keys)
    return calibration


class _Linearised(AbstractStepper):
    """The sampler's step with `perturbation[n]` added to the prediction of step
    `n`, recording each step's start state and its coefficient of the prediction,
    `c_n = ∂y_{n+1}/∂x̂_0` (a scalar: every affine sampler's is)."""

    sampler: AbstractSampler
    param: AbstractParametrisation
    perturbation: Array
    unit_noise: ClassVar[bool] = True

    @property
    def stochastic(self) -> bool:
        return self.sampler.stochastic

    def init(self, y0):
        return self.sampler.init(y0), jnp.zeros((), jnp.int32)

    def step(self, t, t_next, dt, y, predict, noise, state, args):
        del dt, args
        inner, n = state
        x0 = predict(t, y) + self.perturbation[n]

        def advance(shift):
            return self.sampler.step(
                self.param, t, t_next, y, lambda tt, yy: x0 + shift, noise, inner
            )

        zero = jnp.zeros((), y.dtype)
        (y_next, inner), (tangent, _) = jax.jvp(
            advance, (zero,), (jnp.ones((), y.dtype),)
        )
        return y_next, (inner, n + 1), (y, jnp.mean(tangent))


def _pilot(top, param, sampler, y0, ts, dts, dw, args, perturbation=None):
    """The sampler with the data predictor `top` on the grid `ts` (noise `dw`, none
    if `None`), with `perturbation[n]` added to the prediction of step `n`: `(y1,
    states, c)`, the state at the start of every step and each step's coefficient
    `c_n` of the prediction."""
    num_steps = ts.shape[0] - 1
    if perturbation is None:
        perturbation = jnp.zeros((num_steps, *y0.shape), y0.dtype)
    if dw is None:
        dw = jnp.zeros((num_steps, *y0.shape), y0.dtype)
    problem = Problem(
        fns=(top,),
        schedule=None,
        always=None,
        y0=y0,
        grid=Grid(t0=ts[0], t1=ts[-1], num_steps=num_steps, ts=ts, dts=dts),
        key=jax.random.key(0),  # unused: the noise is `dw`, no level draws
        args=args,
        brownian=dw,
    )
    stepper = _Linearised(sampler, param, perturbation)
    y1, _, (states, coefficients), _ = integrate(stepper, problem)
    return y1, states, coefficients


@eqx.filter_jit
def _measure(x0_fns, k, param, sampler, y0, ts, dts, dw, args, key):
    """The pilot run with the top level; the `trajectory_statistics` of
    `(c_n/h_n) x̂_0^l(t_n, y_n)` at every step; and the `perturbation_growth` of a
    perturbation of each step's prediction. One compiled program."""
    y1, states, coefficients = _pilot(
        x0_fns[k - 1], param, sampler, y0, ts, dts, dw, args
    )

    scales = (coefficients / dts.astype(coefficients.dtype)).astype(states.dtype)
    per_step = trajectory_statistics(x0_fns, ts[:-1], states, args, k, scales)

    def final(p):
        return _pilot(x0_fns[k - 1], param, sampler, y0, ts, dts, dw, args, p)[0]

    growth = perturbation_growth(final, ts.shape[0] - 1, y0, key)
    return y1, states, coefficients, per_step, growth
