"""Diffusion samplers (DDIM, DPM-Solver++, Euler/Heun) and their multilevel versions.

```python
param = mlem_jax.diffusion.VPLinear()
y, info = mlem_jax.diffusion.sample(
    eps_model, param, mlem_jax.diffusion.DPMSolverPP2M(), y0,
    t0=1.0, t1=1e-3, num_steps=20, grid="logsnr")
y, info = mlem_jax.diffusion.mlem_sample(
    levels, schedule, param, mlem_jax.diffusion.SDEDPMSolverPP1(), y0,
    t0=1.0, t1=1e-3, num_steps=50, key=key)
```

**Keys and the Brownian path.** The same layout as `mlem_jax.em_solve`:
`brownian_key, level_key = split_key(key)`; step `n` (from `t_n` to `t_{n+1}` of the
time grid) uses the Brownian increment `ΔW_n = step_increment(brownian_key, n, …,
t_{n+1} − t_n)` and the level uniforms `step_uniforms(level_key, n, k)`. On a uniform
grid these are exactly the increments of an `em_solve` with the same key, `t0`, `t1`
and `num_steps`. A stochastic sampler uses the standard normal `z_n = ΔW_n /
sqrt(|t_{n+1} − t_n|)` in place of the noise of its own step (which has its own
variance, e.g. `σ_{t'} sqrt(1 − e^{−2h}) z` for SDE-DPM-Solver++(1)). Explicit
increments `brownian=` of shape `(num_steps, *y0.shape)` are normalised the same way,
so solves at different step counts on one path (`coarsen_increments`) see noises that
are sums of the same fine increments.

**Multilevel.** In `mlem_sample` the network's data prediction `x̂_0` at each step is
replaced by the randomized telescope `Σ_l (B_l/p_l)(x̂_0^l − x̂_0^{l−1})` of
`mlem_jax.mlem_solve` (the same `level_draws` and compute-skipping `mlem_drift`). Every
step of these samplers except Heun's is affine in the prediction, so the step stays
unbiased for the top network's step; the 2M methods carry the previous step's
estimate. `calibrate_sampler` measures a ladder along the sampler's own grid and
prediction type and gives rates for it (`Calibration.schedule`). `Periodic` is the
deterministic variant: each level on a fixed period, its last correction reused in
between.

**References:** Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (2021);
Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models" (2022); Karras et al., "Elucidating the Design Space of Diffusion-Based
Generative Models" (2022); A. Jacot, arXiv:2603.24594 (2026).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .. import _checks as checks
from .._integrate import AbstractStepper, Grid, Problem
from .._levels import Levels, Refinement
from .._misc import check_key, check_num_steps, concrete_or_none
from .._schedules import AbstractSchedule, Periodic, Stitch
from .._solve import (
    SolveInfo,
    check_finite_state,
    check_increments,
    run_problem,
)
from .._step import check_drift_output
from ._param import AbstractParametrisation, check_prediction

GRIDS = ("uniform", "quadratic", "logsnr", "edm")

# (t, y) -> the data prediction x̂_0, shaped like y.
PredictFn = Callable[[Array, Array], Array]


# ---------------------------------------------------------------------------------
# Time grids


def time_grid(
    param: AbstractParametrisation,
    num_steps: int,
    *,
    t0: float | ArrayLike,
    t1: float | ArrayLike,
    kind: str = "uniform",
    rho: float = 7.0,
    dtype=jnp.float32,
) -> Float[Array, " num_steps+1"]:
    """The `num_steps + 1` times `t0 = t_0, …, t_N = t1` of a sampler.

    - `"uniform"`: uniform in `t`.
    - `"quadratic"`: uniform in `sqrt(t)` (DPM-Solver's "time quadratic"; `t ≥ 0`),
        denser near `t = 0`.
    - `"logsnr"`: uniform in the log-SNR `λ_t`, mapped back with `t(λ)`.
    - `"edm"`: Karras et al.'s `σ̃_n = (σ̃_0^{1/ρ} + n/N (σ̃_N^{1/ρ} − σ̃_0^{1/ρ}))^ρ` in
        the noise level `σ̃ = σ_t/α_t = e^{−λ_t}`, mapped back with `t(λ)`.

    The end points are `t0` and `t1` exactly.
    """
    checks.choice("time_grid", "kind", kind, GRIDS)
    rho = checks.number("time_grid", "rho", rho)
    t0c, t1c = concrete_or_none(t0), concrete_or_none(t1)
    if kind == "quadratic" and t0c is not None and t1c is not None:
        if min(t0c, t1c) < 0:
            raise checks.fail("time_grid", "t0, t1", "times >= 0", (t0, t1))
    return _grid_times(param, num_steps, t0, t1, kind, rho, dtype)


def _grid_times(param, num_steps, t0, t1, kind, rho, dtype):
    """`time_grid`'s times, of checked arguments."""
    t0 = jnp.asarray(t0, dtype)
    t1 = jnp.asarray(t1, dtype)
    u = jnp.arange(num_steps + 1, dtype=dtype) / num_steps
    if kind == "uniform":
        # t0 + n·h, the grid of `em_solve`, bit for bit.
        ts = t0 + jnp.arange(num_steps + 1, dtype=dtype) * ((t1 - t0) / num_steps)
    elif kind == "quadratic":
        ts = (jnp.sqrt(t0) + u * (jnp.sqrt(t1) - jnp.sqrt(t0))) ** 2
    else:
        lam0, lam1 = param.log_snr(t0), param.log_snr(t1)
        if kind == "logsnr":
            lam = lam0 + u * (lam1 - lam0)
        else:
            s0, s1 = jnp.exp(-lam0 / rho), jnp.exp(-lam1 / rho)
            lam = -rho * jnp.log(s0 + u * (s1 - s0))
        ts = param.t_of_log_snr(lam).astype(dtype)
    return ts.at[0].set(t0).at[-1].set(t1)


# ---------------------------------------------------------------------------------
# Samplers: one step each, in terms of the data prediction


class AbstractSampler(eqx.Module):
    """A diffusion sampler: one step from `t` to `t_next` given a data predictor.

    `step` receives `predict(t, y) -> x̂_0` (the network, or in `mlem_sample` the
    randomized telescope of the step's draws), the standard normal `z` of the step
    (`None` for deterministic samplers) and the sampler's carry; it returns the next
    state and carry. Coefficients are computed in the time dtype, then cast to `y`'s.
    """

    # Network evaluations per step.
    evaluations_per_step: eqx.AbstractClassVar[int]
    # Whether each step is affine in the prediction (then the telescope is unbiased).
    affine: eqx.AbstractClassVar[bool]

    @property
    @abc.abstractmethod
    def stochastic(self) -> bool:
        """Whether the step uses noise (and so a Brownian increment)."""

    @abc.abstractmethod
    def init(self, y0: Array) -> Any:
        """The carry before the first step."""

    @abc.abstractmethod
    def step(
        self,
        param: AbstractParametrisation,
        t: Array,
        t_next: Array,
        y: Array,
        predict: PredictFn,
        z: Array | None,
        carry: Any,
    ) -> tuple[Array, Any]:
        """`(y_next, carry)`."""


def _coefficients(param, t, t_next):
    """`(α', σ'/σ, h)` with `h = λ_{t'} − λ_t`."""
    h = param.log_snr(t_next) - param.log_snr(t)
    ratio = jnp.exp(param.log_sigma(t_next) - param.log_sigma(t))
    return param.alpha(t_next), ratio, h


def _ode_step(coefficients, y, x0):
    """`y' = (σ'/σ) y + α'(1 − e^{−h}) x̂_0`, the step of DPM-Solver++(1) on the
    probability-flow ODE (= DDIM), without cancellation."""
    alpha_next, ratio, h = coefficients
    dt = y.dtype
    return ratio.astype(dt) * y + (alpha_next * -jnp.expm1(-h)).astype(dt) * x0


def _sde_step(param, t_next, coefficients, y, x0, z):
    """`y' = (σ'/σ) e^{−h} y + α'(1 − e^{−2h}) x̂_0 + σ' sqrt(1 − e^{−2h}) z`, the step
    of SDE-DPM-Solver++(1) on the reverse SDE."""
    alpha_next, ratio, h = coefficients
    dt = y.dtype
    one_minus = -jnp.expm1(-2 * h)
    return (
        (ratio * jnp.exp(-h)).astype(dt) * y
        + (alpha_next * one_minus).astype(dt) * x0
        + (param.sigma(t_next) * jnp.sqrt(one_minus)).astype(dt) * z
    )


class DDIM(AbstractSampler):
    """DDIM (Song et al. 2021) with stochasticity `eta ∈ [0, 1]`:

        y' = α' x̂_0 + sqrt(σ'² − c²) ε̂ + c z,   ε̂ = (y − α x̂_0)/σ,
        c = η σ' sqrt(1 − e^{−2h}),   h = λ_{t'} − λ_t,

    which in the variance-preserving case is DDIM's `σ_η`. `eta = 0` is the
    deterministic DDIM (= DPM-Solver++(1) on the probability-flow ODE, exact for a
    single-point dataset); `eta = 1` is DDPM ancestral sampling (= SDE-DPM-Solver++(1)).

    **Arguments:**

    - `eta`: a float in `[0, 1]` (default 0).
    """

    eta: float = eqx.field(static=True, default=0.0)
    evaluations_per_step: ClassVar[int] = 1
    affine: ClassVar[bool] = True

    def __check_init__(self):
        if not (isinstance(self.eta, (int, float)) and 0 <= self.eta <= 1):
            raise checks.fail("DDIM", "eta", "a number in [0, 1]", self.eta)

    @property
    def stochastic(self):
        return self.eta != 0

    def init(self, y0):
        del y0
        return None

    def step(self, param, t, t_next, y, predict, z, carry):
        coefficients = _coefficients(param, t, t_next)
        x0 = predict(t, y)
        if self.eta == 0:
            return _ode_step(coefficients, y, x0), carry
        alpha_next, ratio, h = coefficients
        dt = y.dtype
        one_minus = -jnp.expm1(-2 * h)  # 1 − e^{−2h}
        keep = jnp.sqrt(1 - self.eta**2 * one_minus)  # sqrt(σ'² − c²) / σ'
        c = self.eta * param.sigma(t_next) * jnp.sqrt(one_minus)
        assert z is not None  # a stochastic step: the loop draws z
        y_next = (
            (ratio * keep).astype(dt) * y
            + (alpha_next * (1 - keep * jnp.exp(-h))).astype(dt) * x0
            + c.astype(dt) * z
        )
        return y_next, carry


class SDEDPMSolverPP1(AbstractSampler):
    """SDE-DPM-Solver++(1) on the reverse SDE (Lu et al. 2022), the exact integral
    of its linear part with the data prediction frozen over the step:

        y' = (σ'/σ) e^{−h} y + α' (1 − e^{−2h}) x̂_0 + σ' sqrt(1 − e^{−2h}) z.

    Mathematically equal to `DDIM(eta=1)` and to DDPM ancestral sampling.
    """

    evaluations_per_step: ClassVar[int] = 1
    affine: ClassVar[bool] = True

    @property
    def stochastic(self):
        return True

    def init(self, y0):
        del y0
        return None

    def step(self, param, t, t_next, y, predict, z, carry):
        coefficients = _coefficients(param, t, t_next)
        assert z is not None  # a stochastic step: the loop draws z
        return _sde_step(param, t_next, coefficients, y, predict(t, y), z), carry


class _Multistep(AbstractSampler):
    """Carry `(previous x̂_0, previous h, started)` for the 2M methods."""

    def init(self, y0):
        return (jnp.zeros_like(y0), jnp.ones((), jnp.float32), jnp.zeros((), bool))

    @staticmethod
    def _extrapolate(x0, h, carry):
        """`D = x̂_0 + (x̂_0 − x̂_0^prev)/(2r)`, `r = h_prev/h`; first step `x̂_0`."""
        previous, h_prev, started = carry
        r = h_prev.astype(h.dtype) / h
        d = x0 + (0.5 / r).astype(x0.dtype) * (x0 - previous)
        return jnp.where(started, d, x0), (
            x0,
            h.astype(jnp.float32),
            jnp.ones((), bool),
        )


class DPMSolverPP2M(_Multistep):
    """DPM-Solver++(2M) on the probability-flow ODE (Lu et al. 2022, Alg. 2):

        y' = (σ'/σ) y + α'(1 − e^{−h}) D,   D = x̂_0 + (x̂_0 − x̂_0^prev)/(2r),

    `r = h_prev/h`; the first step is first order (DDIM). Second order in the step.
    """

    evaluations_per_step: ClassVar[int] = 1
    affine: ClassVar[bool] = True

    @property
    def stochastic(self):
        return False

    def step(self, param, t, t_next, y, predict, z, carry):
        coefficients = _coefficients(param, t, t_next)
        d, carry = self._extrapolate(predict(t, y), coefficients[2], carry)
        return _ode_step(coefficients, y, d), carry


class SDEDPMSolverPP2M(_Multistep):
    """SDE-DPM-Solver++(2M) on the reverse SDE (Lu et al. 2022; the "midpoint" form
    of diffusers):

        y' = (σ'/σ) e^{−h} y + α'(1 − e^{−2h}) D + σ' sqrt(1 − e^{−2h}) z,

    with `D` as in `DPMSolverPP2M`; the first step is SDE-DPM-Solver++(1).
    """

    evaluations_per_step: ClassVar[int] = 1
    affine: ClassVar[bool] = True

    @property
    def stochastic(self):
        return True

    def step(self, param, t, t_next, y, predict, z, carry):
        coefficients = _coefficients(param, t, t_next)
        d, carry = self._extrapolate(predict(t, y), coefficients[2], carry)
        assert z is not None  # a stochastic step: the loop draws z
        return _sde_step(param, t_next, coefficients, y, d, z), carry


def _pf_ode_term(param, predict):
    """The probability-flow ODE `dy/dt = (σ̇/σ) y + (α̇ − α σ̇/σ) x̂_0(t, y)`."""

    def vf(t, y, args):
        del args
        da, ds = param.derivatives(t)
        a, s = param.alpha(t), param.sigma(t)
        return (ds / s).astype(y.dtype) * y + (da - a * ds / s).astype(
            y.dtype
        ) * predict(t, y)

    return diffrax.ODETerm(vf)


class _DiffraxODE(AbstractSampler):
    """One step of a diffrax solver on the probability-flow ODE in `t`."""

    @property
    def stochastic(self):
        return False

    def init(self, y0):
        del y0
        return None

    @property
    @abc.abstractmethod
    def solver(self) -> diffrax.AbstractSolver: ...

    def step(self, param, t, t_next, y, predict, z, carry):
        term = _pf_ode_term(param, predict)
        state = self.solver.init(term, t, t_next, y, None)
        y_next = self.solver.step(term, t, t_next, y, None, state, False)[0]
        return y_next, carry


class Euler(_DiffraxODE):
    """Euler on the probability-flow ODE in `t` (`diffrax.Euler`); first order. Use
    `grid="edm"` for Karras et al.'s time discretisation."""

    evaluations_per_step: ClassVar[int] = 1
    affine: ClassVar[bool] = True

    @property
    def solver(self):
        return diffrax.Euler()


class Heun(_DiffraxODE):
    """Heun on the probability-flow ODE in `t` (`diffrax.Heun`); second order, two
    network evaluations per step. Not affine in the prediction (its second
    evaluation is at a state built from the first), so there is no unbiased
    multilevel version: `mlem_sample` refuses it."""

    evaluations_per_step: ClassVar[int] = 2
    affine: ClassVar[bool] = False

    @property
    def solver(self):
        return diffrax.Heun()


# ---------------------------------------------------------------------------------
# The samplers as solves


def _to_x0(param, prediction: str, out, t, y, what: str) -> Array:
    """A network's output `out` at `(t, y)`, predicting `prediction`, as the data
    prediction in `y`'s dtype (`what` names the network in a shape error)."""
    out = jnp.asarray(out)
    check_drift_output(out, y, what)
    x0 = param.convert(out.astype(y.dtype), t, y, source=prediction, target="x0")
    return x0.astype(y.dtype)


class _X0Prediction(eqx.Module):
    """A network `f(t, y, args)` predicting `prediction`, as a data predictor
    `f(t, y, args) -> x̂_0` (a level function for `mlem_drift`)."""

    fn: Callable
    param: AbstractParametrisation
    prediction: str = eqx.field(static=True)

    def __call__(self, t, y, args):
        out = self.fn(t, y, args)
        return _to_x0(self.param, self.prediction, out, t, y, "the network")


class _X0Refine(eqx.Module):
    """A refinement `refine(t, y, args, coarse)` of networks predicting `prediction`,
    on data predictions: the coarse `x̂_0` is converted to `prediction` and the
    refined value back (the conversion is affine in the prediction at fixed `(t,
    y)`, so guidance combines the same in either)."""

    refine: Callable
    param: AbstractParametrisation
    prediction: str = eqx.field(static=True)

    def __call__(self, t, y, args, coarse):
        if self.prediction != "x0":
            coarse = self.param.convert(
                coarse, t, y, source="x0", target=self.prediction
            ).astype(y.dtype)
        out = self.refine(t, y, args, coarse)
        return _to_x0(self.param, self.prediction, out, t, y, "the refinement")


class _X0Joint(eqx.Module):
    """A refinement's `joint(t, y, args) -> (coarse, refined)` on data predictions."""

    joint: Callable
    param: AbstractParametrisation
    prediction: str = eqx.field(static=True)

    def __call__(self, t, y, args):
        what = "the refinement's joint"
        coarse, refined = self.joint(t, y, args)
        param, prediction = self.param, self.prediction
        return (
            _to_x0(param, prediction, coarse, t, y, what),
            _to_x0(param, prediction, refined, t, y, what),
        )


def as_x0_prediction(fn, param, prediction):
    """The level `fn` (predicting `prediction`) as a data predictor; a
    `mlem_jax.Refinement` stays one, on data predictions."""
    if isinstance(fn, Refinement):
        return Refinement(
            _X0Refine(fn.refine, param, prediction),
            as_x0_prediction(fn.coarse, param, prediction),
            None if fn.joint is None else _X0Joint(fn.joint, param, prediction),
        )
    return _X0Prediction(fn, param, prediction)


def sample(
    model: Callable[[Any, Any, Any], Any],
    param: AbstractParametrisation,
    sampler: AbstractSampler,
    y0: ArrayLike,
    *,
    t0: float | ArrayLike,
    t1: float | ArrayLike,
    num_steps: int,
    key: PRNGKeyArray | None = None,
    prediction: str = "eps",
    grid: str | ArrayLike = "uniform",
    rho: float = 7.0,
    args: Any = None,
    brownian: Array | None = None,
    cost: float = 1.0,
    checkpoint: bool = True,
) -> tuple[Array, SolveInfo]:
    """Sample a diffusion model with one network.

    **Arguments:**

    - `model`: the network as `f(t, y, args)` on the batch `y` (shape of `y0`),
        returning its `prediction`.
    - `param`: the parametrisation the network was trained for (e.g. `VPLinear()`).
    - `sampler`: `DDIM(eta)`, `DPMSolverPP2M()`, `SDEDPMSolverPP1()`,
        `SDEDPMSolverPP2M()`, `Euler()` or `Heun()`.
    - `y0`: the state at `t0` (e.g. `N(0, I)` draws), batch in the leading axis.
    - `t0`, `t1`, `num_steps`: from `t0` (noise) to `t1` (data, `t1 > 0` for VP
        parametrisations where `σ_0 = 0`) in `num_steps` steps.
    - `key`: a PRNG key, split like `em_solve`'s (see the module docstring);
        needed by stochastic samplers unless `brownian` is given.
    - `prediction`: what `model` predicts: `"eps"`, `"x0"` or `"v"`.
    - `grid`: `"uniform"`, `"quadratic"`, `"logsnr"`, `"edm"` (see `time_grid`) or
        an array of the `num_steps + 1` times from `t0` to `t1`.
    - `rho`: the exponent of the `"edm"` grid.
    - `args`: passed to `model`.
    - `brownian`: optional Brownian increments, shape `(num_steps, *y0.shape)`,
        increment `n` over `[t_n, t_{n+1}]`; `key` is then not needed.
    - `cost`: the cost of one evaluation, for `info.cost`.
    - `checkpoint`: rematerialise each step in reverse-mode autodiff.

    **Returns:** `(y1, info)`, `info` a `mlem_jax.SolveInfo` with
    `evaluations = [num_steps · evaluations per step]`.
    """
    checks.function("sample", "model", model, "a callable f(t, y, args)")
    cost = checks.number("sample", "cost", cost)
    problem = sampler_problem(
        "sample",
        model,
        None,
        param,
        sampler,
        y0,
        t0=t0,
        t1=t1,
        num_steps=num_steps,
        key=key,
        key_for=None,
        prediction=prediction,
        grid=grid,
        rho=rho,
        args=args,
        brownian=brownian,
        checkpoint=checkpoint,
    )
    step, per_step = _SamplerStep(sampler, param), sampler.evaluations_per_step
    return run_problem("sample", problem, step, (cost,), per_step=per_step)


def mlem_sample(
    levels: Levels,
    schedule: AbstractSchedule | Periodic,
    param: AbstractParametrisation,
    sampler: AbstractSampler,
    y0: ArrayLike,
    *,
    t0: float | ArrayLike,
    t1: float | ArrayLike,
    num_steps: int,
    key: PRNGKeyArray | None = None,
    prediction: str = "eps",
    grid: str | ArrayLike = "uniform",
    rho: float = 7.0,
    args: Any = None,
    brownian: Array | None = None,
    checkpoint: bool = True,
) -> tuple[Array, SolveInfo]:
    """Sample with a ladder of networks: the multilevel version of `sample`.

    At each step the data prediction is the randomized telescope
    `Σ_l (B_l/p_l)(x̂_0^l − x̂_0^{l−1})(t, y)`, `B_l ~ Bernoulli(p_l)` drawn with
    `mlem_jax`'s `level_draws` from `schedule.probabilities(t_n, t_{n+1} − t_n)`, one
    draw per level per step shared by the batch; levels not needed are skipped by a
    real `lax.cond`. The step is affine in the prediction, so its expectation over
    the draws is the single-network step with the top network; with every `p_l = 1`
    it is that step.

    **Arguments:** as `sample`, with `levels` (networks `f(t, y, args)` all
    predicting `prediction`, cheapest first, and their costs) and `schedule`
    (`FixedProbabilities`, `Rates`, … — e.g. `calibrate_sampler(...).schedule(...)`
    — or the deterministic `Periodic`) in place of `model` and `cost`; `key` is
    required (it drives the level draws) except with a deterministic sampler and a
    schedule whose draws are fixed (`Periodic`, `mlem_jax.Stitch`).

    **Returns:** `(y1, info)` as `mlem_jax.mlem_solve`: `info.evaluations[l]` is the
    number of steps at which level `l` was evaluated.
    """
    name = "mlem_sample"
    checks.instance(name, "levels", levels, Levels, "a mlem_jax.Levels")
    what = "a mlem_jax schedule (FixedProbabilities, Rates, ...) or a Periodic"
    checks.instance(name, "schedule", schedule, (AbstractSchedule, Periodic), what)
    if schedule.num_levels != levels.num_levels:
        what = f"a schedule of {levels.num_levels} levels, one per level of `levels`"
        raise checks.fail(name, "schedule", what, schedule.num_levels)
    check_affine(name, sampler)
    random_draws = not isinstance(schedule, (Periodic, Stitch))
    problem = sampler_problem(
        name,
        levels,
        schedule,
        param,
        sampler,
        y0,
        t0=t0,
        t1=t1,
        num_steps=num_steps,
        key=key,
        key_for="the level draws" if random_draws else None,
        prediction=prediction,
        grid=grid,
        rho=rho,
        args=args,
        brownian=brownian,
        checkpoint=checkpoint,
    )
    step, per_step = _SamplerStep(sampler, param), sampler.evaluations_per_step
    return run_problem(name, problem, step, levels.costs, per_step=per_step)


_AFFINE = "Euler, DDIM, DPMSolverPP2M, SDEDPMSolverPP1 or SDEDPMSolverPP2M"


def check_affine(name: str, sampler) -> None:
    """Refuse a sampler that is not affine in the prediction (Heun): the randomized
    telescope would bias it, so it has no unbiased multilevel version."""
    if isinstance(sampler, AbstractSampler) and not sampler.affine:
        what = f"affine in the network's prediction (multilevel: {_AFFINE})"
        raise checks.fail(name, "sampler", what, sampler)


class _SamplerStep(AbstractStepper):
    """A diffusion sampler as a stepper of `mlem_jax`'s integration loop."""

    sampler: AbstractSampler
    param: AbstractParametrisation
    unit_noise: ClassVar[bool] = True

    @property
    def stochastic(self) -> bool:
        return self.sampler.stochastic

    def init(self, y0):
        return self.sampler.init(y0)

    def step(self, t, t_next, dt, y, predict, noise, state, args):
        del dt, args
        y_next, state = self.sampler.step(
            self.param, t, t_next, y, predict, noise, state
        )
        return y_next, state, None


_PARAMS = "a mlem_jax.diffusion parametrisation (VPLinear, VPCosine, VE, EDM)"
_SAMPLERS = (
    "a mlem_jax.diffusion sampler (DDIM, DPMSolverPP2M, SDEDPMSolverPP1, "
    "SDEDPMSolverPP2M, Euler, Heun)"
)


def sampler_problem(
    name: str,
    networks: Levels | Callable,
    schedule,
    param,
    sampler,
    y0,
    *,
    t0,
    t1,
    num_steps,
    key,
    key_for: str | None,
    prediction,
    grid,
    rho,
    args,
    brownian=None,
    checkpoint=True,
) -> Problem:
    """Check the arguments of a sampler run (errors name `name`) into a `Problem`
    on the sampler's time grid, with the `networks` (a ladder, or one network
    `model`) as data predictors.

    `key` may be `None` unless `key_for` names what else needs it (e.g. `"the level
    draws"`) or the sampler draws noise and no `brownian` is given; a dummy key
    then stands in (nothing is drawn with it)."""
    checks.instance(name, "param", param, AbstractParametrisation, _PARAMS)
    checks.instance(name, "sampler", sampler, AbstractSampler, _SAMPLERS)
    check_prediction(name, "prediction", prediction)
    num_steps = check_num_steps(name, num_steps)
    y0 = _check_state(name, y0)
    tdtype = y0.dtype if jnp.finfo(y0.dtype).bits >= 32 else jnp.dtype(jnp.float32)
    t0, t1 = jnp.asarray(t0, tdtype), jnp.asarray(t1, tdtype)
    if t0.shape != () or t1.shape != ():
        raise ValueError(f"{name}: `t0` and `t1` must be scalars.")
    ends = Grid(t0=t0, t1=t1, num_steps=num_steps)
    times = _time_steps(name, param, ends, grid, rho)
    key, brownian = _noise_source(name, sampler, key, key_for, brownian, y0, num_steps)
    assert times.ts is not None
    ladder = isinstance(networks, Levels)
    fns = networks.fns if ladder else (networks,)
    for i, fn in enumerate(fns):
        what = f"level {i + 1}" if ladder else "`model`"
        check_drift_output(eqx.filter_eval_shape(fn, times.ts[0], y0, args), y0, what)
    return Problem(
        fns=tuple(as_x0_prediction(fn, param, prediction) for fn in fns),
        schedule=schedule,
        always=_always(schedule, times.dts, len(fns)),
        y0=y0,
        grid=times,
        key=key,
        args=args,
        brownian=brownian,
        checkpoint=checkpoint,
    )


def _check_state(name: str, y0) -> Array:
    """`y0` as a floating array, refused if it holds NaN or inf (when concrete)."""
    try:
        y0 = jnp.asarray(y0)
    except TypeError as e:
        raise TypeError(f"{name}: `y0` must be an array.") from e
    if not jnp.issubdtype(y0.dtype, jnp.floating):
        what = "an array of a floating dtype"
        raise checks.fail(name, "y0", what, y0.dtype, TypeError)
    check_finite_state(name, y0)
    return y0


def _noise_source(name, sampler, key, key_for, brownian, y0, num_steps):
    """The checked `(key, brownian)` of a sampler run (see `sampler_problem`)."""
    sname = type(sampler).__name__
    if brownian is not None and not sampler.stochastic:
        raise ValueError(f"{name}: `brownian` was given to the deterministic {sname}.")
    if brownian is not None:
        brownian = check_increments(
            name, brownian, num_steps, y0, "an array of increments"
        )
    if key is not None:
        check_key(name, key)
        return key, brownian
    if key_for is None and sampler.stochastic and brownian is None:
        key_for = f"the noise of {sname} (or pass `brownian`)"
    if key_for is not None:
        raise TypeError(f"{name}: `key` is required for {key_for}.")
    return jax.random.key(0), brownian  # unused: no draws and no noise


def _time_steps(name: str, param, grid: Grid, kind, rho) -> Grid:
    """`grid` (its ends and steps) with the checked times `ts` of the sampler's
    grid `kind` (a name or an array) and its steps `dts`."""
    t0, t1, num_steps, tdtype = grid.t0, grid.t1, grid.num_steps, grid.t0.dtype
    t0c, t1c = concrete_or_none(t0), concrete_or_none(t1)
    if t0c is not None and t1c is not None:
        _check_times(name, param, float(t0c), float(t1c), kind)
    if isinstance(kind, str):
        what = f"one of {', '.join(map(repr, GRIDS))} or an array"
        checks.choice(name, "grid", kind, GRIDS, what)
        rho = checks.number(name, "rho", rho)
        ts = _grid_times(param, num_steps, t0, t1, kind, rho, tdtype)
    else:
        ts = jnp.asarray(kind, tdtype)
        if ts.shape != (num_steps + 1,):
            what = f"an array of shape (num_steps + 1,) = ({num_steps + 1},)"
            raise checks.fail(name, "grid", what, ts.shape)
    tsc = concrete_or_none(ts)
    if tsc is None:  # traced: checked where the grid is computed
        decreasing = jnp.all(jnp.isfinite(ts)) & jnp.all(jnp.diff(ts) < 0)
        ts = eqx.error_if(ts, ~decreasing, f"{name}: {_DECREASING}")
    elif not _monotone(tsc):
        raise checks.fail(name, "grid", "finite, strictly monotone times", tsc.tolist())
    # Step sizes: on the uniform grid `h = (t1 − t0)/num_steps` exactly, as em_solve
    # (and `brownian_increments`) use; else the grid's differences.
    if isinstance(kind, str) and kind == "uniform":
        dts = jnp.full((num_steps,), (t1 - t0) / num_steps, tdtype)
    else:
        dts = jnp.diff(ts)
    return Grid(t0=t0, t1=t1, num_steps=num_steps, ts=ts, dts=dts)


_DECREASING = "the time grid must be finite and decrease from `t0` to `t1`."


def _monotone(ts: np.ndarray) -> bool:
    steps = np.diff(ts)
    return bool(np.all(np.isfinite(ts)) and (np.all(steps < 0) or np.all(steps > 0)))


def _always(schedule, dts, k: int) -> tuple[bool, ...] | None:
    """Per level, whether it fires at every step of the grid (known before tracing
    for `Periodic` and for concrete steps), else `None`."""
    if isinstance(schedule, Periodic):
        return tuple(m == 1 for m in schedule.periods)
    dtsc = concrete_or_none(dts)
    if schedule is None or dtsc is None:
        return None
    per_step = [schedule.always_fires(float(h)) for h in np.unique(dtsc)]
    return tuple(all(a[l] for a in per_step) for l in range(k))


_REVERSE = "above `t1` (samplers run in reverse time, from noise to data)"


def _check_times(name: str, param, t0: float, t1: float, grid) -> None:
    """Samplers run in reverse time, from noise at `t0` to data at `t1`, inside the
    parametrisation's range and, on a log-SNR grid, where `λ_t` is finite."""
    if not (math.isfinite(t0) and math.isfinite(t1) and t0 > t1):
        raise checks.fail(name, "t0", _REVERSE, (t0, t1))
    pname = type(param).__name__
    lo, hi = param.time_range()
    log_snr_grid = isinstance(grid, str) and grid in ("logsnr", "edm")
    for arg, t in (("t0", t0), ("t1", t1)):
        if not lo <= t <= hi:
            raise checks.fail(name, arg, f"in {pname}'s time range [{lo}, {hi}]", t)
        alpha, sigma = param.alpha(t), param.sigma(t)
        if not (np.isfinite(alpha) and np.isfinite(sigma) and alpha > 0):
            what = f"a time where {pname} has α_t > 0 and a finite σ_t"
            raise checks.fail(name, arg, what, t)
        if log_snr_grid and not np.isfinite(param.log_snr(t)):
            what = f"a time where {pname}'s log-SNR is finite (σ_t > 0), for {grid=}"
            raise checks.fail(name, arg, what, t)
