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
    if kind not in GRIDS:
        raise ValueError(f"`grid` must be one of {GRIDS} or an array; got {kind!r}.")
    if not (isinstance(rho, (int, float)) and rho > 0):
        raise ValueError(f"`rho` must be a positive number; got {rho!r}.")
    t0 = jnp.asarray(t0, dtype)
    t1 = jnp.asarray(t1, dtype)
    u = jnp.arange(num_steps + 1, dtype=dtype) / num_steps
    if kind == "uniform":
        # t0 + n·h, the grid of `em_solve`, bit for bit.
        ts = t0 + jnp.arange(num_steps + 1, dtype=dtype) * ((t1 - t0) / num_steps)
    elif kind == "quadratic":
        t0c, t1c = concrete_or_none(t0), concrete_or_none(t1)
        if t0c is not None and t1c is not None and min(t0c, t1c) < 0:
            raise ValueError(
                f'`grid="quadratic"` needs t0, t1 >= 0; got {float(t0c)}, {float(t1c)}.'
            )
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
            raise ValueError(
                f"DDIM: `eta` must be a number in [0, 1]; got {self.eta!r}."
            )

    @property
    def stochastic(self):
        return self.eta != 0

    def init(self, y0):
        del y0
        return None

    def step(self, param, t, t_next, y, predict, z, carry):
        alpha_next, ratio, h = _coefficients(param, t, t_next)
        x0 = predict(t, y)
        dt = y.dtype
        if self.eta == 0:
            # y' = (σ'/σ) y + α'(1 − e^{−h}) x̂_0, the same map without cancellation.
            y_next = (
                ratio.astype(dt) * y + (alpha_next * -jnp.expm1(-h)).astype(dt) * x0
            )
            return y_next, carry
        one_minus = -jnp.expm1(-2 * h)  # 1 − e^{−2h}
        keep = jnp.sqrt(1 - self.eta**2 * one_minus)  # sqrt(σ'² − c²) / σ'
        c = self.eta * param.sigma(t_next) * jnp.sqrt(one_minus)
        assert z is not None  # a stochastic step: `_run` draws z
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
        alpha_next, ratio, h = _coefficients(param, t, t_next)
        x0 = predict(t, y)
        dt = y.dtype
        one_minus = -jnp.expm1(-2 * h)
        assert z is not None  # a stochastic step: `_run` draws z
        y_next = (
            (ratio * jnp.exp(-h)).astype(dt) * y
            + (alpha_next * one_minus).astype(dt) * x0
            + (param.sigma(t_next) * jnp.sqrt(one_minus)).astype(dt) * z
        )
        return y_next, carry


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
        alpha_next, ratio, h = _coefficients(param, t, t_next)
        d, carry = self._extrapolate(predict(t, y), h, carry)
        dt = y.dtype
        y_next = ratio.astype(dt) * y + (alpha_next * -jnp.expm1(-h)).astype(dt) * d
        return y_next, carry


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
        alpha_next, ratio, h = _coefficients(param, t, t_next)
        d, carry = self._extrapolate(predict(t, y), h, carry)
        dt = y.dtype
        one_minus = -jnp.expm1(-2 * h)
        assert z is not None  # a stochastic step: `_run` draws z
        y_next = (
            (ratio * jnp.exp(-h)).astype(dt) * y
            + (alpha_next * one_minus).astype(dt) * d
            + (param.sigma(t_next) * jnp.sqrt(one_minus)).astype(dt) * z
        )
        return y_next, carry


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


class _X0Prediction(eqx.Module):
    """A network `f(t, y, args)` predicting `prediction`, as a data predictor
    `f(t, y, args) -> x̂_0` (a level function for `mlem_drift`)."""

    fn: Callable
    param: AbstractParametrisation
    prediction: str = eqx.field(static=True)

    def __call__(self, t, y, args):
        out = jnp.asarray(self.fn(t, y, args))
        check_drift_output(out, y, "the network")
        x0 = self.param.convert(
            out.astype(y.dtype), t, y, source=self.prediction, target="x0"
        )
        return x0.astype(y.dtype)


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
        out = jnp.asarray(self.refine(t, y, args, coarse))
        check_drift_output(out, y, "the refinement")
        x0 = self.param.convert(
            out.astype(y.dtype), t, y, source=self.prediction, target="x0"
        )
        return x0.astype(y.dtype)


class _X0Joint(eqx.Module):
    """A refinement's `joint(t, y, args) -> (coarse, refined)` on data predictions."""

    joint: Callable
    param: AbstractParametrisation
    prediction: str = eqx.field(static=True)

    def __call__(self, t, y, args):
        def x0(out):
            out = jnp.asarray(out)
            check_drift_output(out, y, "the refinement's joint")
            return self.param.convert(
                out.astype(y.dtype), t, y, source=self.prediction, target="x0"
            ).astype(y.dtype)

        coarse, refined = self.joint(t, y, args)
        return x0(coarse), x0(refined)


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
    if not callable(model):
        raise TypeError(
            f"sample: `model` must be a callable f(t, y, args); got "
            f"{type(model).__name__}."
        )
    cost = _check_cost(cost)
    problem = sampler_problem(
        "sample",
        (model,),
        None,
        param,
        sampler,
        y0,
        t0=t0,
        t1=t1,
        num_steps=num_steps,
        key=key,
        needs_key=False,
        prediction=prediction,
        grid=grid,
        rho=rho,
        args=args,
        brownian=brownian,
        checkpoint=checkpoint,
    )
    return run_problem(
        "sample",
        problem,
        _SamplerStep(sampler, param),
        (cost,),
        per_step=sampler.evaluations_per_step,
    )


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
    if not isinstance(levels, Levels):
        raise TypeError(
            f"mlem_sample: `levels` must be a mlem_jax.Levels; got "
            f"{type(levels).__name__}."
        )
    if not isinstance(schedule, (AbstractSchedule, Periodic)):
        raise TypeError(
            "mlem_sample: `schedule` must be a mlem_jax schedule (FixedProbabilities, "
            f"Rates, ...) or a mlem_jax.diffusion.Periodic; got "
            f"{type(schedule).__name__}."
        )
    if schedule.num_levels != levels.num_levels:
        raise ValueError(
            f"mlem_sample: `schedule` has {schedule.num_levels} levels but `levels` "
            f"has {levels.num_levels}; expected one probability, rate or period per "
            "level."
        )
    if isinstance(sampler, AbstractSampler) and not sampler.affine:
        raise ValueError(
            f"mlem_sample: `sampler` {type(sampler).__name__} is not affine in the "
            "network's prediction, so the randomized telescope would bias it; use "
            "Euler, DDIM, DPMSolverPP2M, SDEDPMSolverPP1 or SDEDPMSolverPP2M."
        )
    random_draws = not isinstance(schedule, (Periodic, Stitch))
    if key is None and random_draws:
        raise TypeError("mlem_sample: `key` is required (it drives the level draws).")
    problem = sampler_problem(
        "mlem_sample",
        levels.fns,
        schedule,
        param,
        sampler,
        y0,
        t0=t0,
        t1=t1,
        num_steps=num_steps,
        key=key,
        needs_key=random_draws,
        prediction=prediction,
        grid=grid,
        rho=rho,
        args=args,
        brownian=brownian,
        checkpoint=checkpoint,
    )
    return run_problem(
        "mlem_sample",
        problem,
        _SamplerStep(sampler, param),
        levels.costs,
        per_step=sampler.evaluations_per_step,
    )


def _check_cost(cost) -> float:
    if isinstance(cost, bool) or not (
        isinstance(cost, (int, float)) and math.isfinite(cost) and cost > 0
    ):
        raise ValueError(
            f"sample: `cost` must be a positive finite number; got {cost!r}."
        )
    return float(cost)


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


def sampler_problem(
    name: str,
    fns,
    schedule,
    param,
    sampler,
    y0,
    *,
    t0,
    t1,
    num_steps,
    key,
    needs_key: bool,
    prediction,
    grid,
    rho,
    args,
    brownian,
    checkpoint,
) -> Problem:
    """Check the arguments of a sampler run (errors name `name`) into a `Problem`
    on the sampler's time grid, with the networks as data predictors and a key (a
    dummy one where none is needed: `needs_key` false and no noise to draw)."""
    if not isinstance(param, AbstractParametrisation):
        raise TypeError(
            f"{name}: `param` must be a mlem_jax.diffusion parametrisation (VPLinear, "
            f"VPCosine, VE, EDM); got {type(param).__name__}."
        )
    if not isinstance(sampler, AbstractSampler):
        raise TypeError(
            f"{name}: `sampler` must be a mlem_jax.diffusion sampler (DDIM, "
            "DPMSolverPP2M, SDEDPMSolverPP1, SDEDPMSolverPP2M, Euler, Heun); got "
            f"{type(sampler).__name__}."
        )
    try:
        check_prediction("prediction", prediction)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    num_steps = check_num_steps(name, num_steps)
    try:
        y0 = jnp.asarray(y0)
    except TypeError as e:
        raise TypeError(f"{name}: `y0` must be an array.") from e
    if not jnp.issubdtype(y0.dtype, jnp.floating):
        raise TypeError(f"{name}: `y0` must have a floating dtype; got {y0.dtype}.")
    check_finite_state(name, y0)
    dtype = y0.dtype
    tdtype = dtype if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)
    t0 = jnp.asarray(t0, tdtype)
    t1 = jnp.asarray(t1, tdtype)
    if t0.shape != () or t1.shape != ():
        raise ValueError(f"{name}: `t0` and `t1` must be scalars.")
    ts, dts = _time_steps(name, param, num_steps, t0, t1, grid, rho, tdtype)
    needs_key = needs_key or (sampler.stochastic and brownian is None)
    if key is None:
        if needs_key:
            raise TypeError(
                f"{name}: `key` is required for the stochastic sampler "
                f"{type(sampler).__name__} (or pass `brownian`)."
            )
    else:
        check_key(name, key)
    if brownian is not None:
        if not sampler.stochastic:
            raise ValueError(
                f"{name}: `brownian` was given but the sampler "
                f"{type(sampler).__name__} is deterministic; drop `brownian`."
            )
        brownian = check_increments(
            name, brownian, num_steps, y0, "an array of increments"
        )
    for i, fn in enumerate(fns):
        out = eqx.filter_eval_shape(fn, ts[0], y0, args)
        check_drift_output(out, y0, "`model`" if name == "sample" else f"level {i + 1}")
    x0_fns = tuple(as_x0_prediction(fn, param, prediction) for fn in fns)
    if key is None:
        key = jax.random.key(0)  # unused: no draws and no noise
    return Problem(
        fns=x0_fns,
        schedule=schedule,
        always=_always(schedule, dts, len(fns)),
        y0=y0,
        grid=Grid(t0=t0, t1=t1, num_steps=num_steps, ts=ts, dts=dts),
        key=key,
        args=args,
        brownian=brownian,
        checkpoint=checkpoint,
    )


def _time_steps(name, param, num_steps, t0, t1, grid, rho, tdtype):
    """The checked time grid `ts` of a sampler run and its steps `dts`."""
    t0c, t1c = concrete_or_none(t0), concrete_or_none(t1)
    if t0c is not None and t1c is not None:
        _check_times(name, param, float(t0c), float(t1c), grid)
    if isinstance(grid, str):
        try:
            ts = time_grid(
                param, num_steps, t0=t0, t1=t1, kind=grid, rho=rho, dtype=tdtype
            )
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    else:
        ts = jnp.asarray(grid, tdtype)
        if ts.shape != (num_steps + 1,):
            raise ValueError(
                f"{name}: an array `grid` must have shape (num_steps + 1,) = "
                f"({num_steps + 1},); got {ts.shape}."
            )
    # Step sizes: on the uniform grid `h = (t1 − t0)/num_steps` exactly, as em_solve
    # (and `brownian_increments`) use; else the grid's differences.
    if isinstance(grid, str) and grid == "uniform":
        dts = jnp.full((num_steps,), (t1 - t0) / num_steps, tdtype)
    else:
        dts = jnp.diff(ts)
    tsc = concrete_or_none(ts)
    if tsc is not None and not np.all(np.isfinite(tsc)):
        raise ValueError(f"{name}: the time grid has non-finite times: {tsc.tolist()}.")
    if tsc is not None and not (np.all(np.diff(tsc) < 0) or np.all(np.diff(tsc) > 0)):
        raise ValueError(
            f"{name}: the time grid must be strictly monotone; got {tsc.tolist()}."
        )
    return ts, dts


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


def _check_times(name: str, param, t0: float, t1: float, grid) -> None:
    """Samplers run in reverse time, from noise at `t0` to data at `t1`, inside the
    parametrisation's range and, on a log-SNR grid, where `λ_t` is finite."""
    pname = type(param).__name__
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError(f"{name}: `t0` and `t1` must be finite; got {t0:g}, {t1:g}.")
    if t0 == t1:
        raise ValueError(f"{name}: `t0` and `t1` must differ; both are {t0}.")
    if t0 < t1:
        raise ValueError(
            f"{name}: samplers run in reverse time, from noise at `t0` to data at "
            f"`t1`, so `t0` must be above `t1`; got t0={t0:g}, t1={t1:g} (swap them)."
        )
    lo, hi = param.time_range()
    for arg, t in (("t0", t0), ("t1", t1)):
        if not lo <= t <= hi:
            raise ValueError(
                f"{name}: `{arg}` = {t:g} is outside {pname}'s time range [{lo}, {hi}]."
            )
        alpha, sigma = param.alpha(t), param.sigma(t)
        if not (np.isfinite(alpha) and np.isfinite(sigma) and alpha > 0):
            raise ValueError(
                f"{name}: `{arg}` = {t:g}: {pname} has no usable coefficients there "
                f"(α_t = {float(alpha):.3g}, σ_t = {float(sigma):.3g}); choose a time "
                "where α_t > 0."
            )
    if isinstance(grid, str) and grid in ("logsnr", "edm"):
        for arg, t in (("t0", t0), ("t1", t1)):
            if not np.isfinite(param.log_snr(t)):
                raise ValueError(
                    f'{name}: `grid="{grid}"` spaces the steps in the log-SNR, which '
                    f"is infinite for {pname} at `{arg}` = {t:g}; "
                    + (
                        "use t1 > 0 (e.g. 1e-3)."
                        if arg == "t1"
                        else f"use a `{arg}` where σ_t > 0 and α_t > 0."
                    )
                )
