"""Calibration: measure a ladder along trajectories and choose ML-EM's rates.

`calibrate` runs pilot solves and estimates, on a grid of time bins,

* `V_l(t) = E‖f^l − f^{l−1}‖²` along trajectories (the variance ML-EM adds per unit
  time at rate `λ_l` is about `V_l/λ_l`),
* each level's cost (the `Levels` costs, XLA's FLOP count, measured wall-clock),
* each level's drift error, and the exponent `γ` of `cost ∝ error^{−γ}`,

* the sensitivity `a(t)` of the final state to a perturbation at time `t`
  (`E‖∂Y_T/∂Y_t · δ‖² / E‖δ‖²`, by one reverse-mode pass along the pilot trajectory):
  noise injected where the dynamics contract matters less than where they expand,
* per level, the amplification `A_l`: measured over predicted added mean-square
  error of pilot ML-EM solves in which only level `l` is randomised (probability
  1/2 at every step). `a(t)` is the growth of an *isotropic* perturbation; a level's
  corrections point in particular directions, which the dynamics may amplify more
  or less (on the shipped digits ladder's reverse SDE, 3–5× more),

then builds time-dependent `Rates` with `λ_l(t) ∝ sqrt(A_l a(t) V_l(t)/C_l)`,
`C_l = c_l + c_{l−1}` (Giles's multilevel allocation, weighted by the sensitivity),
scaled to a target added error or a budget.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from . import _checks as checks
from ._brownian import brownian_increments, coarsen_increments
from ._calibration import Calibration
from ._cost import count_flops, fit_cost_exponent, time_in_scan
from ._integrate import EulerMaruyama, Grid, Problem, integrate
from ._levels import Levels, Refinement, refinements
from ._misc import check_key, check_num_steps
from ._pricing import _bin_index, _grid
from ._schedules import FixedProbabilities
from ._solve import SolveOptions, mlem_solve, run_problem, solve_problem
from ._step import check_drift_output


def calibrate(
    levels: Levels,
    diffusion,
    y0,
    *,
    t0: float,
    t1: float,
    num_steps: int,
    key: PRNGKeyArray,
    args=None,
    num_bins: int = 8,
    reference=None,
    pilot_keys: int = 8,
    measure_costs: bool = True,
) -> Calibration:
    """Measure a ladder along its trajectories and fit ML-EM's optimal rates.

    Pilot solves: one Euler–Maruyama solve with the top level, saving every state,
    on which every level (and `reference`) is evaluated; then, for each level
    `l ≥ 2`, `pilot_keys` ML-EM solves on the same Brownian path randomising level
    `l` alone (probability 1/2 at every step, every other level firing), to measure
    how the dynamics amplify that level's corrections. These cost about
    `(k − 1) · pilot_keys` Euler–Maruyama solves with every level; probability 1/2
    keeps the estimate's variance low (a pilot at small probabilities is dominated
    by a few rare corrections, and 8–32 of them scattered by 10× on the digits
    ladder). Keys: with `path_key, level_key = jax.random.split(key)`, the pilots'
    Brownian path is `path_key`'s, the sensitivity's random probes come from
    `jax.random.fold_in(path_key, 7)` and the ML-EM pilots' level keys from
    `jax.random.split(level_key, pilot_keys)`.

    **Arguments:**

    - `levels`, `diffusion`, `y0`, `t0`, `t1`, `num_steps`, `key`, `args`: as in
        `mlem_solve`; `y0` should be a representative batch (leading axis), its
        first axis is averaged over.
    - `num_bins`: number of equal time bins for `V_l(t)`.
    - `reference`: an optional more accurate drift `f(t, y, args)` for the drift
        errors and `γ` (default: errors against the top level).
    - `pilot_keys`: number of ML-EM pilot runs per level for the amplification (0
        skips them, taking amplification 1). With pilots, Euler–Maruyama's own
        error and order with the top level are measured too (`em_error`,
        `em_order`: solves at `num_steps`, `2·num_steps` and `16·num_steps` on the
        Brownian path of `jax.random.fold_in(key, 2)`, the finest standing for the
        exact solution; about `19·num_steps` evaluations of the top level), which
        `Calibration.verdict` needs.
    - `measure_costs`: measure FLOPs and wall-clock of each level on `y0`.

    **Returns:** a `Calibration`; `print` it for the diagnostic table, call
    `.schedule(target_error=...)` or `.schedule(budget=...)` for rates, and
    `.predict(schedule)` for a schedule's expected cost and added error.
    """
    num_steps = check_pilot("calibrate", levels, num_steps, num_bins, pilot_keys)
    check_key("calibrate", key)
    t0, t1 = float(t0), float(t1)
    pilot_key, level_key = jax.random.split(key)
    saveat = diffrax.SaveAt(t0=True, steps=True)
    options = SolveOptions(t0, t1, num_steps, pilot_key, args, None, saveat)
    problem = solve_problem("calibrate", (levels.top,), None, diffusion, y0, options)
    pilot = _Pilot(problem, EulerMaruyama(diffusion), t0, t1)
    _check_reference(reference, problem)
    calibration, y_em = _pilot_calibration(
        levels, pilot, num_bins, reference, measure_costs
    )
    if pilot_keys > 0 and levels.num_levels > 1:
        mean_added = _em_added_error(calibration, levels, pilot, y_em)
        calibration = with_amplification(calibration, mean_added, level_key, pilot_keys)
    if pilot_keys > 0 and diffusion is not None:
        em_error, em_order = _convergence(pilot, jax.random.fold_in(key, 2))
        calibration = dataclasses.replace(
            calibration, em_error=em_error, em_order=em_order
        )
    return calibration


class _Pilot(NamedTuple):
    """`calibrate`'s pilot, checked once: the Euler–Maruyama solve with the top
    level on the pilot key's Brownian path, saving every state, and its interval as
    the floats the calibration records. The other pilots are variants of it."""

    problem: Problem
    stepper: EulerMaruyama
    t0: float
    t1: float

    def run(self, **changes) -> Any:
        """The final state (or saved states) of the pilot with `changes` to its
        `Problem` (`dataclasses.replace`)."""
        return integrate(self.stepper, dataclasses.replace(self.problem, **changes))[0]


def check_pilot(name: str, levels, num_steps, num_bins, pilot_keys) -> int:
    """The checks every calibration entry (`calibrate`, `calibrate_sampler`) makes
    of its ladder and pilot sizes; returns `num_steps` as an `int`."""
    checks.instance(name, "levels", levels, Levels, "a mlem_jax.Levels")
    num_bins = checks.integer(name, "num_bins", num_bins)
    num_steps = check_num_steps(name, num_steps)
    if num_steps < num_bins:
        what = f"at least `num_bins` ({num_bins})"
        raise checks.fail(name, "num_steps", what, num_steps)
    checks.integer(name, "pilot_keys", pilot_keys, minimum=0)
    return num_steps


def _check_reference(reference, problem: Problem) -> None:
    """A clear error, naming `calibrate`, for a `reference` that is not a drift
    shaped like the pilot's state."""
    if reference is None:
        return
    what = "a drift f(t, y, args) or None"
    checks.function("calibrate", "reference", reference, what)
    y0 = problem.y0
    t = jnp.asarray(problem.grid.t0, y0.dtype)
    out = eqx.filter_eval_shape(reference, t, y0, problem.args)
    try:
        check_drift_output(out, y0, "`reference`")
    except (TypeError, ValueError) as e:
        raise type(e)(str(e).replace("mlem_jax:", "calibrate:", 1)) from None


def _pilot_calibration(levels, pilot: _Pilot, num_bins, reference, measure_costs):
    """`(calibration, y_em)`: the `Calibration` (amplification 1) measured along
    the pilot solve (every level and `reference` evaluated at its states, the
    sensitivity by one reverse pass), and that solve's final state."""
    states, _ = run_problem("calibrate", pilot.problem, pilot.stepper, (1.0,))
    t0, t1, num_steps = pilot.t0, pilot.t1, pilot.problem.grid.num_steps
    y0, args = pilot.problem.y0, pilot.problem.args
    ts, h = _grid(t0, t1, num_steps)
    fns = levels.fns + ((reference,) if reference is not None else ())
    per_step = trajectory_statistics(
        fns, jnp.asarray(ts, y0.dtype), states[:-1], args, levels.num_levels
    )
    if not np.all(np.isfinite(np.asarray(states))):
        raise ValueError(
            "calibrate: the pilot Euler-Maruyama solve with the top level produced NaN "
            "or infinite states from a finite `y0`: the top level's drift or the "
            "diffusion returns NaN/inf on the pilot trajectory (or the solve blows up "
            "at `num_steps` steps)."
        )
    edges = np.linspace(min(t0, t1), max(t0, t1), num_bins + 1)
    calibration = assemble_calibration(
        "calibrate",
        levels,
        per_step,
        _sensitivity(pilot),
        edges,
        ts + h / 2,
        t0=t0,
        t1=t1,
        num_steps=num_steps,
        grid=None,
        top_is_reference=reference is None,
        costs_at=(jnp.asarray((t0 + t1) / 2, y0.dtype), y0, args)
        if measure_costs
        else None,
    )
    return calibration, states[-1]


def _em_convergence(top, diffusion, y0, t0, t1, num_steps, key, args):
    """`_convergence` of Euler–Maruyama with the drift `top` on `[t0, t1]` (what
    `tests/test_verdict.py` checks against a finer reference)."""
    options = SolveOptions(t0, t1, num_steps, key, args)
    problem = solve_problem("calibrate", (top,), None, diffusion, y0, options)
    pilot = _Pilot(problem, EulerMaruyama(diffusion), float(t0), float(t1))
    return _convergence(pilot, key)


def _convergence(pilot: _Pilot, key):
    """`(em_error, em_order)`: Euler–Maruyama with the top level at `num_steps`,
    `2·num_steps` and `16·num_steps` steps on one Brownian path (`key`'s, drawn at
    the finest and coarsened). The 16×-finer solve stands for the exact solution:
    the error at `n` steps is the RMS distance to it, `e(n)`, and the strong order
    `q = log2(e(num_steps) / e(2·num_steps))` (clipped to [1/4, 2]).

    Not Richardson extrapolation from consecutive distances: a stochastic solve's
    error at `2n` steps is only partly aligned with its error at `n` (refining the
    path adds independent terms), which biases `‖y_n − y_2n‖ / (1 − 2^−q)` upward
    (by 25% on a test SDE). The finer solve's own error biases `e(n)` by at most
    `e(16n) / e(n)`, about 1/16 for a strong order-1 method."""
    grid, y0, fns = pilot.problem.grid, pilot.problem.y0, pilot.problem.fns
    num_steps = grid.num_steps
    fine = FINE * num_steps
    dw = brownian_increments(
        key, y0.shape, t0=pilot.t0, t1=pilot.t1, num_steps=fine, dtype=y0.dtype
    )

    @eqx.filter_jit
    def solve(fns, y0, brownian):
        steps = Grid(t0=grid.t0, t1=grid.t1, num_steps=brownian.shape[0])
        changes = dict(grid=steps, key=key, brownian=brownian, save=None)
        return pilot.run(fns=fns, y0=y0, **changes)

    return strong_convergence(
        *(
            solve(fns, y0, coarsen_increments(dw, fine // n))
            for n in (num_steps, 2 * num_steps, fine)
        )
    )


FINE = 16
"""How much finer than the pilot's grid the solve standing for the exact one is
(`calibrate`'s and `calibrate_sampler`'s measurement of the top level's own error)."""


def strong_convergence(y1, y2, y_fine) -> tuple[float, float]:
    """`(e(n), q)` from solves at `n`, `2n` and `FINE·n` steps on one path, the
    finest standing for the exact one: the RMS distance over the batch (leading
    axis) of the `n`-step solve to the finest, and the strong order
    `q = log2(e(n) / e(2n))`, clipped to [1/4, 2] (1 where an error is 0)."""
    y1, y2, y_fine = (np.asarray(y, np.float64) for y in (y1, y2, y_fine))

    def rms(a):
        d = (a - y_fine).reshape(a.shape[0], -1)
        return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))

    e1, e2 = rms(y1), rms(y2)
    order = 1.0 if not (e1 > 0 and e2 > 0) else math.log2(e1 / e2)
    return e1, min(max(order, 0.25), 2.0)


def level_statistics(values, k: int):
    """From the `k` level values at one state (and optionally a reference value
    after them), each of shape `(batch, ...)`: `(increments, errors, pairs)`, the
    batch means of `‖f^l − f^{l−1}‖²` (shape `(k,)`), of `‖f^l − f_ref‖²` (`f_ref`
    the last value) and of `‖f^j − f^i‖²` for every pair with `f^0 = 0` (shape
    `(k + 1, k + 1)`)."""

    def sq(v):
        return jnp.mean(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1))

    zero = jnp.zeros_like(values[0])
    with_zero = [zero] + list(values[:k])
    increments = jnp.stack([sq(with_zero[l + 1] - with_zero[l]) for l in range(k)])
    ref = values[-1]
    errors = jnp.stack([sq(v - ref) for v in values[:k]])
    pairs = jnp.stack([jnp.stack([sq(a - b) for b in with_zero]) for a in with_zero])
    return increments, errors, pairs


@eqx.filter_jit
def trajectory_statistics(fns, ts, ys, args, k: int, scales=None):
    """The `level_statistics` at every visited state, stacked along a leading time
    axis: `fns` the `k` level functions (optionally a reference after them), each
    evaluated at `(ts[n], ys[n], args)`, cast to the state's dtype and, with
    `scales`, multiplied by `scales[n]`. What `calibrate`, `calibrate_sampler` and
    `diffusion.drift_errors` measure along a trajectory. The functions (and their
    weights) are arguments of the compiled program, never closed-over constants:
    XLA constant-folds captured network weights very slowly."""

    def measure(carry, x):
        t, y, scale = x
        values = [jnp.asarray(f(t, y, args)).astype(y.dtype) for f in fns]
        if scale is not None:
            values = [scale * v for v in values]
        return carry, level_statistics(values, k)

    return jax.lax.scan(measure, None, (ts, ys, scales))[1]


class _RefineAt(eqx.Module):
    """A refinement's own part as a level function, at a fixed coarse value."""

    refine: Callable
    coarse: Any

    def __call__(self, t, y, args):
        return self.refine(t, y, args, self.coarse)


def assemble_calibration(
    name: str,
    levels: Levels,
    per_step,
    per_step_sensitivity,
    edges: np.ndarray,
    midpoints: np.ndarray,
    *,
    t0: float,
    t1: float,
    num_steps: int,
    grid: np.ndarray | None,
    top_is_reference: bool,
    costs_at,
    what: str = "drift",
) -> Calibration:
    """A `Calibration` (amplification 1) from per-step measurements along a pilot
    trajectory: `per_step` the `level_statistics` of each step (stacked), the
    sensitivity of each step, the bin `edges` and the steps' `midpoints` (which bin
    each step falls in). `costs_at = (t, y, args)` measures FLOPs and wall-clock of
    each level there (`None`: not measured). `name` prefixes error messages, `what`
    names a level's function in them."""
    per_step_v, per_step_e, per_step_pairs = (
        np.asarray(x, np.float64) for x in per_step
    )
    bad = ~np.all(np.isfinite(per_step_v), axis=0)
    if np.any(bad):
        first = int(np.flatnonzero(bad)[0]) + 1
        raise ValueError(
            f"{name}: the {what} of level {first} returns NaN or inf on the pilot "
            "trajectory (from a finite `y0`)."
        )
    num_bins = len(edges) - 1
    bins = _bin_index(edges, np.asarray(midpoints, np.float64))

    def binned(values):
        return np.stack([values[bins == b].mean(axis=0) for b in range(num_bins)])

    variances = binned(per_step_v)
    pair_variances = binned(per_step_pairs)
    sensitivity = binned(np.asarray(per_step_sensitivity, np.float64))
    drift_errors = np.sqrt(per_step_e.mean(axis=0))

    flops, seconds = (
        (None, None) if costs_at is None else _level_costs(levels, *costs_at)
    )
    gamma_costs = flops if flops is not None else levels.costs
    gamma, gamma_stderr = _fit_gamma(gamma_costs, drift_errors, top_is_reference)
    warnings = _warnings(levels, variances, gamma, gamma_stderr)
    for w in warnings:
        if "do not differ" in w:
            _warn(f"{name}: {w}")
    return Calibration(
        times=edges,
        variances=variances,
        sensitivity=sensitivity,
        costs=levels.costs,
        flops=flops,
        seconds=seconds,
        drift_errors=drift_errors,
        gamma=gamma,
        gamma_stderr=gamma_stderr,
        amplification=np.ones(levels.num_levels),
        t0=t0,
        t1=t1,
        num_steps=num_steps,
        warnings=warnings,
        pair_variances=pair_variances,
        grid=grid,
        refinements=refinements(levels.fns) if any(refinements(levels.fns)) else None,
    )


def _level_costs(levels: Levels, t, y, args):
    """`(flops, seconds)` of one evaluation of each level at `(t, y, args)`: what the
    step pays for it, for a `Refinement` its own part given the value of the level
    below (which is paid for as its own level)."""
    call = lambda f, t, y, a: f(t, y, a)
    own = tuple(
        _RefineAt(f.refine, f.coarse(t, y, args))
        if isinstance(f, Refinement) and f.coarse is not None
        else f
        for f in levels.fns
    )
    flops = tuple(count_flops(call, f, t, y, args) for f in own)
    seconds = tuple(time_in_scan(f, t, y, args) for f in own)
    return flops, seconds


def perturbation_growth(final, num_steps: int, y0, key, probes: int = 4):
    """Per step `n`, `E‖J_n v‖²/d`: `J_n` the Jacobian of `final(zs)` (the final
    state of a pilot solve in which `zs[n]`, shaped like `y0`, is added at step `n`)
    with respect to `zs[n]` at `zs = 0`, `d` the state size per sample. One reverse
    pass gives `J_nᵀ v` for every step at once; Hutchinson's estimator with `probes`
    random `v` gives the norm. Traceable (a JAX array of shape `(num_steps,)`)."""
    dtype = y0.dtype
    _, vjp = jax.vjp(final, jnp.zeros((num_steps, *y0.shape), dtype))

    def one(vk):
        # Rademacher probes: exact for Jacobians that are multiples of I.
        v = jax.random.rademacher(vk, y0.shape, dtype)
        (g,) = vjp(v)
        return jnp.mean(jnp.sum(g.reshape(num_steps, y0.shape[0], -1) ** 2, -1), -1)

    d = int(np.prod(y0.shape[1:])) if y0.ndim > 1 else 1
    keys = jax.random.split(jax.random.fold_in(key, 7), probes)
    return jnp.mean(jax.lax.map(one, keys), axis=0) / d


def _sensitivity(pilot: _Pilot, probes: int = 4):
    """Per step `n`, how much a perturbation added to the state at the end of step
    `n` of the pilot Euler–Maruyama solve grows by its end (`perturbation_growth`).

    The pilot is rerun on its own Brownian path, the perturbation `z_n` entering
    step `n` as the extra drift `z_n / h` (so the step adds `z_n`)."""
    problem = pilot.problem
    y0, args, key = problem.y0, problem.args, problem.key
    t0, num_steps = pilot.t0, problem.grid.num_steps
    (top,), diffusion = problem.fns, pilot.stepper.diffusion
    dtype = y0.dtype
    h = (pilot.t1 - t0) / num_steps
    dw = None
    if diffusion is not None:
        dw = brownian_increments(
            key, y0.shape, t0=t0, t1=pilot.t1, num_steps=num_steps, dtype=dtype
        )
        diffusion_of_zs = lambda t, y, zs: diffusion(t, y, args)
    else:
        diffusion_of_zs = None
    rerun = pilot._replace(stepper=EulerMaruyama(diffusion_of_zs))

    def perturbed(t, y, zs):
        n = jnp.rint((t - t0) / h).astype(jnp.int32)  # t = t0 + n·h on the grid
        return jnp.asarray(top(t, y, args)).astype(dtype) + zs[n] / jnp.asarray(
            h, dtype
        )

    def final(zs):
        return rerun.run(fns=(perturbed,), args=zs, brownian=dw, save=None)

    growth = jax.jit(lambda k: perturbation_growth(final, num_steps, y0, k, probes))
    return np.asarray(growth(key), np.float64)


def _em_added_error(cal, levels, pilot: _Pilot, y_em):
    """`mean_added(probs, keys)` for `with_amplification`: the mean over `keys` of
    the mean-square distance of ML-EM at `FixedProbabilities(probs)` to `y_em`, the
    pilot Euler–Maruyama solve's final state (top level, the pilot key's path),
    which the ML-EM pilots rerun on that same path."""
    problem, diffusion = pilot.problem, pilot.stepper.diffusion
    y0 = problem.y0
    kw = dict(t0=cal.t0, t1=cal.t1, num_steps=cal.num_steps, args=problem.args)
    dw = None
    if diffusion is not None:
        dw = brownian_increments(
            problem.key,
            y0.shape,
            t0=cal.t0,
            t1=cal.t1,
            num_steps=cal.num_steps,
            dtype=y0.dtype,
        )

    def run(operands, probs, key):
        levels, y0, dw = operands
        schedule = FixedProbabilities(probs)
        y, _ = mlem_solve(levels, schedule, diffusion, y0, key=key, brownian=dw, **kw)
        return y

    return mean_added_error(run, (levels, y0, dw), y_em)


def mean_added_error(run, operands, reference):
    """`mean_added(probs, keys)` for `with_amplification`: the mean over `keys` of
    the batch's mean-square distance of `run(operands, probs, key)` (a pilot
    multilevel solve's final state at `FixedProbabilities(probs)`) to `reference`.
    Compiled once: the probabilities are traced, and `operands` (the levels, their
    weights) are arguments of the compiled program, not constants folded into it."""

    def mean_added(probs, keys):
        return _mean_added(run, operands, reference, probs, keys)

    return mean_added


@eqx.filter_jit
def _mean_added(run, operands, reference, probs, keys):
    def added(key):
        d = (run(operands, probs, key) - reference).reshape(reference.shape[0], -1)
        return jnp.mean(jnp.sum(d**2, axis=1))

    return jnp.mean(jax.lax.map(added, keys))


def with_amplification(cal: Calibration, mean_added, level_key, n: int) -> Calibration:
    """`cal` with `A_l` measured: for each `l ≥ 2`, `mean_added(probs, keys)` (the
    mean over `n` level keys of the added mean-square error of pilot multilevel
    solves at `FixedProbabilities(probs)`, randomising level `l` alone with
    probability 1/2) over its prediction from the isotropic sensitivity (entry 0 is
    1; a level whose prediction is 0 or whose measurement is not positive keeps 1)."""
    k = cal.num_levels
    amplification = np.ones(k)
    keys = jax.random.split(level_key, n)
    for l in range(1, k):
        probs = np.ones(k, np.float32)
        probs[l] = 0.5
        one_level = dataclasses.replace(
            cal, amplification=np.eye(k)[l], warnings=()
        )  # A_l = 1 for level l, 0 for the others: the prediction for level l alone
        predicted = one_level.predict(FixedProbabilities(probs)).error ** 2
        measured = float(mean_added(jnp.asarray(probs), keys))
        if predicted > 0 and np.isfinite(predicted) and measured > 0:
            amplification[l] = measured / predicted
    return dataclasses.replace(cal, amplification=amplification)


def _fit_gamma(costs, errors, top_is_reference):
    costs = np.asarray(costs, np.float64)
    errors = np.asarray(errors, np.float64)
    if top_is_reference:
        costs, errors = costs[:-1], errors[:-1]
    keep = errors > 0
    fit = fit_cost_exponent(errors[keep], costs[keep])
    return fit.exponent, fit.stderr


def _warnings(levels, variances, gamma, gamma_stderr):
    out = []
    if not math.isnan(gamma):
        if gamma <= 2:
            out.append(
                f"gamma = {gamma:.2f} <= 2: outside the HTMC regime, expect at most a "
                "constant-factor gain over Euler-Maruyama."
            )
        elif not math.isnan(gamma_stderr) and gamma - 2 * gamma_stderr <= 2:
            out.append(
                f"gamma = {gamma:.2f} ± {gamma_stderr:.2f} is not clearly above 2."
            )
    if math.isnan(gamma) and len(levels.costs) >= 3:
        out.append(
            "gamma could not be fitted: fewer than two levels differ from the "
            "reference in drift."
        )
    mean_v = variances.mean(axis=0)
    same = [l for l in range(1, len(mean_v)) if not mean_v[l] > 0]
    if same:
        pairs = ", ".join(f"{l} and {l + 1}" for l in same)
        out.append(
            f"levels {pairs} do not differ on the pilot trajectory (V = 0): their "
            "corrections are zero, so no rate can be fitted for them and "
            "`schedule(...)` cannot meet a target by scaling their rates; drop the "
            "duplicate levels."
        )
    costs = np.asarray(levels.costs)
    if np.any(np.diff(costs) <= 0):
        out.append("costs do not increase along the ladder.")
    mean_v = variances.mean(axis=0)
    for l in range(1, len(mean_v) - 1):
        if mean_v[l + 1] > mean_v[l]:
            out.append(
                f"V_{l + 2} > V_{l + 1}: level {l + 2} does not refine level {l + 1}; "
                "its corrections cost more than they save."
            )
    return tuple(out)


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, UserWarning, stacklevel=3)
