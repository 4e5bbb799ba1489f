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

import dataclasses
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
from .._integrate import AbstractStepper, Problem, integrate
from .._levels import Levels
from .._schedules import FixedProbabilities
from .._step import check_drift_output
from ._convergence import sampler_convergence
from ._param import AbstractParametrisation
from ._samplers import (
    AbstractSampler,
    _SamplerStep,
    _X0Prediction,
    check_affine,
    sampler_problem,
)


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
        them, taking amplification 1). With pilots, the sampler's own error and
        order with the top network are measured too (`em_error`, `em_order`:
        `sample` on the grid, on it with every step halved and cut in 16, on one
        Brownian path from `jax.random.fold_in(key, 2)`, the finest standing for
        the exact solution; `19·num_steps` steps with the top level), which
        `Calibration.verdict` needs.
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
    check_affine(name, sampler)
    if reference is not None:
        what = "a network f(t, y, args) or None"
        checks.function(name, "reference", reference, what)
    problem = sampler_problem(
        name,
        levels,
        None,
        param,
        sampler,
        y0,
        t0=t0,
        t1=t1,
        num_steps=num_steps,
        key=key,
        key_for="the pilot's noise and probes",
        prediction=prediction,
        grid=grid,
        rho=rho,
        args=args,
    )
    stepper = _SamplerStep(sampler, param)
    pilot_key, level_key = jax.random.split(problem.key)
    dw = _pilot_noise(problem, pilot_key) if stepper.stochastic else None
    problem = dataclasses.replace(problem, brownian=dw)
    fns = problem.fns + _reference(name, reference, problem, param, prediction)
    y1, states, coefficients, per_step, growth = _measure(
        dataclasses.replace(problem, fns=fns), stepper, levels.num_levels, pilot_key
    )
    coefficients = _check_pilot_run(name, sampler, y1, states, coefficients)
    sensitivity = np.asarray(growth, np.float64) / coefficients**2
    ts, dts = problem.grid.ts, problem.grid.dts
    assert ts is not None and dts is not None
    grid_c, steps_c = np.asarray(ts, np.float64), np.asarray(dts, np.float64)
    idx = np.round(np.linspace(0, num_steps, num_bins + 1)).astype(int)
    calibration = assemble_calibration(
        name,
        levels,
        per_step,
        sensitivity,
        np.sort(grid_c[idx]),
        grid_c[:-1] + steps_c / 2,
        t0=float(grid_c[0]),
        t1=float(grid_c[-1]),
        num_steps=num_steps,
        grid=grid_c,
        top_is_reference=reference is None,
        costs_at=(ts[num_steps // 2], problem.y0, args) if measure_costs else None,
        what="network",
    )
    if pilot_keys > 0:  # the top network's own error, for the verdict
        calibration = _with_convergence(
            calibration, levels.top, prediction, stepper, problem
        )
    if pilot_keys == 0 or levels.num_levels == 1:
        return calibration
    # The amplification pilots: `mlem_sample` on the pilot's noise, its checked
    # problem at `FixedProbabilities(probs)` (the ladder and `y0` are operands of
    # one compiled program).
    mean_added = mean_added_error(_pilot_sample, (stepper, problem), y1)
    return with_amplification(calibration, mean_added, level_key, pilot_keys)


def _with_convergence(
    calibration, top, prediction: str, stepper, problem: Problem
) -> Calibration:
    """`calibration` with the sampler's own error and order with the `top` network
    (predicting `prediction`) on the pilot's grid (`sampler_convergence`, on the
    path of `fold_in(key, 2)`)."""
    error, order = sampler_convergence(
        top,
        stepper.param,
        stepper.sampler,
        problem.y0,
        ts=calibration.grid,
        key=jax.random.fold_in(problem.key, 2),
        prediction=prediction,
        args=problem.args,
    )
    return dataclasses.replace(calibration, em_error=error, em_order=order)


def _pilot_noise(problem: Problem, key) -> Array:
    """The pilot's noise as Brownian increments over the grid's steps, in the
    layout `mlem_sample` reads."""
    y0, dts, num_steps = problem.y0, problem.grid.dts, problem.grid.num_steps
    assert dts is not None
    brownian_key, _ = split_key(key)
    noise = jax.vmap(
        lambda n: step_increment(brownian_key, n, y0.shape, 1.0, y0.dtype)
    )(jnp.arange(num_steps))
    scale = jnp.sqrt(jnp.abs(dts)).astype(y0.dtype)
    return noise * scale.reshape((num_steps,) + (1,) * y0.ndim)


def _reference(name, reference, problem: Problem, param, prediction) -> tuple:
    """`()`, or the checked `reference` network as a data predictor, to measure the
    levels' errors against."""
    if reference is None:
        return ()
    assert problem.grid.ts is not None
    y0 = problem.y0
    out = jax.eval_shape(reference, problem.grid.ts[0], y0, problem.args)
    try:
        check_drift_output(out, y0, "`reference`")
    except (TypeError, ValueError) as e:
        raise type(e)(str(e).replace("mlem_jax:", f"{name}:", 1)) from None
    return (_X0Prediction(reference, param, prediction),)


_NON_FINITE = (
    "the pilot run of {} with the top level produced NaN or infinite states from a "
    "finite `y0`: the top network returns NaN/inf on the pilot trajectory (or the "
    "grid reaches a time where the parametrisation is singular, e.g. `t1 = 0` for VP)."
)
_UNUSED = (
    "the sampler does not use the network at some step of the grid (zero "
    "coefficient); check `t0`, `t1` and `grid`."
)


def _check_pilot_run(name, sampler, y1, states, coefficients) -> np.ndarray:
    """The pilot's coefficients `c_n` (float64), once its states are known finite
    and every step uses the network."""
    finite = np.all(np.isfinite(np.asarray(states))) and np.all(np.isfinite(y1))
    if not finite:
        raise ValueError(f"{name}: " + _NON_FINITE.format(type(sampler).__name__))
    coefficients = np.asarray(coefficients, np.float64)
    if np.any(coefficients == 0):
        raise ValueError(f"{name}: {_UNUSED}")
    return coefficients


class _Linearised(AbstractStepper):
    """The sampler's step with `perturbation[n]` added to the prediction of step
    `n`, recording each step's start state and its coefficient of the prediction,
    `c_n = ∂y_{n+1}/∂x̂_0` (a scalar: every affine sampler's is)."""

    stepper: _SamplerStep
    perturbation: Array
    unit_noise: ClassVar[bool] = True

    @property
    def stochastic(self) -> bool:
        return self.stepper.stochastic

    def init(self, y0):
        return self.stepper.init(y0), jnp.zeros((), jnp.int32)

    def step(self, t, t_next, dt, y, predict, noise, state, args):
        inner, n = state
        x0 = predict(t, y) + self.perturbation[n]

        def advance(shift):
            shifted = lambda tt, yy: x0 + shift  # noqa: E731
            out = self.stepper.step(t, t_next, dt, y, shifted, noise, inner, args)
            return out[:2]

        zero = jnp.zeros((), y.dtype)
        (y_next, inner), (tangent, _) = jax.jvp(
            advance, (zero,), (jnp.ones((), y.dtype),)
        )
        return y_next, (inner, n + 1), (y, jnp.mean(tangent))


@eqx.filter_jit
def _measure(problem: Problem, stepper: _SamplerStep, k: int, key):
    """The pilot run with the top level (`problem.fns[k - 1]`); the
    `trajectory_statistics` of `(c_n/h_n) x̂_0^l(t_n, y_n)` of `problem.fns` at
    every step; and the `perturbation_growth` of a perturbation of each step's
    prediction. One compiled program."""
    y0, grid = problem.y0, problem.grid
    assert grid.ts is not None and grid.dts is not None
    top = dataclasses.replace(problem, fns=(problem.fns[k - 1],))

    def pilot(perturbation):
        linearised = _Linearised(stepper, perturbation)
        y1, _, (states, coefficients), _ = integrate(linearised, top)
        return y1, states, coefficients

    y1, states, coefficients = pilot(jnp.zeros((grid.num_steps, *y0.shape), y0.dtype))
    scales = (coefficients / grid.dts.astype(coefficients.dtype)).astype(states.dtype)
    per_step = trajectory_statistics(
        problem.fns, grid.ts[:-1], states, problem.args, k, scales
    )
    growth = perturbation_growth(lambda p: pilot(p)[0], grid.num_steps, y0, key)
    return y1, states, coefficients, per_step, growth


def _pilot_sample(operands, probs, key):
    """The final state of `mlem_sample` at `FixedProbabilities(probs)` on the
    checked pilot problem (`operands = (stepper, problem)`)."""
    stepper, problem = operands
    schedule = FixedProbabilities(probs)
    return integrate(stepper, dataclasses.replace(problem, schedule=schedule, key=key))[
        0
    ]
