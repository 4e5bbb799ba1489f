"""Tests for mlem_jax.diffusion's samplers and their multilevel versions.

Gaussian data `N(m, diag(v))` give closed forms: the data prediction
`E[x_0 | x_t] = m + α v/(α² v + σ²)(x_t − α m)`, the marginals
`N(α_t m, α_t² v + σ_t²)` and the probability-flow map
`x_t − α_t m = sqrt(C_t/C_s)(x_s − α_s m)`, `C = α² v + σ²`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import AsEps, GaussianX0, fit_order, grid_increments, rms

import mlem_jax as mj
import mlem_jax.diffusion as md
from mlem_jax._brownian import split_key, step_uniforms
from mlem_jax._step import level_draws

P = md.VPLinear()
T0, T1 = 1.0, 1e-3
MEAN = jnp.array([0.3, -0.5, 1.0])
VAR = jnp.array([0.05, 0.5, 2.0])
U = jnp.array([1.0, -2.0, 0.5])  # a direction for biased networks

AFFINE = {
    "ddim0": md.DDIM(),
    "ddim05": md.DDIM(eta=0.5),
    "sde1": md.SDEDPMSolverPP1(),
    "dpm2m": md.DPMSolverPP2M(),
    "sde2m": md.SDEDPMSolverPP2M(),
    "euler": md.Euler(),
}
ALL = {**AFFINE, "heun": md.Heun()}


class Score(eqx.Module):
    """The exact score `−ε/σ` of the Gaussian data (diagonal: no linear solve)."""

    eps: AsEps

    def __call__(self, t, y):
        return -self.eps(t, y) / self.eps.x0.param.sigma(t)


def marginal(param, t, mean=MEAN, var=VAR):
    a, s = param.alpha(t), param.sigma(t)
    return a * mean, a**2 * var + s**2


def flow(param, y, t_from, t_to, mean=MEAN, var=VAR):
    m0, c0 = marginal(param, t_from, mean, var)
    m1, c1 = marginal(param, t_to, mean, var)
    return m1 + jnp.sqrt(c1 / c0) * (y - m0)


# ---------------------------------------------------------------------------------
# Time grids


def test_time_grids(x64):
    n = 8
    u = np.arange(n + 1) / n
    ts = md.time_grid(P, n, t0=T0, t1=T1, kind="uniform", dtype=jnp.float64)
    np.testing.assert_allclose(ts, T0 + u * (T1 - T0), rtol=1e-12)
    ts = md.time_grid(P, n, t0=T0, t1=T1, kind="quadratic", dtype=jnp.float64)
    np.testing.assert_allclose(np.sqrt(ts), 1 + u * (np.sqrt(T1) - 1), rtol=1e-12)
    ts = md.time_grid(P, n, t0=T0, t1=T1, kind="logsnr", dtype=jnp.float64)
    np.testing.assert_allclose(np.diff(P.log_snr(ts)), np.diff(P.log_snr(ts))[0])
    ts = md.time_grid(P, n, t0=T0, t1=T1, kind="edm", rho=7.0, dtype=jnp.float64)
    noise = np.exp(-np.asarray(P.log_snr(ts)))  # σ/α
    np.testing.assert_allclose(np.diff(noise ** (1 / 7)), np.diff(noise ** (1 / 7))[0])
    # EDM's own schedule: t = σ from sigma_max to sigma_min with ρ = 7.
    e = md.EDM()
    ts = md.time_grid(e, n, t0=80.0, t1=0.002, kind="edm", dtype=jnp.float64)
    want = (80 ** (1 / 7) + u * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(ts, want, rtol=1e-10)
    for kind in md._samplers.GRIDS:
        ts = md.time_grid(P, n, t0=T0, t1=T1, kind=kind)
        assert float(ts[0]) == T0 and float(ts[-1]) == np.float32(T1)


# ---------------------------------------------------------------------------------
# Closed forms


class PointModel(eqx.Module):
    """The exact prediction for data concentrated at one point `c`."""

    param: md.AbstractParametrisation
    c: jax.Array
    prediction: str = eqx.field(static=True)

    def __call__(self, t, y, args=None):
        x0 = jnp.broadcast_to(self.c, y.shape)
        return self.param.convert(x0, t, y, source="x0", target=self.prediction)


@pytest.mark.parametrize(
    "param, t0, t1",
    [
        (md.VPLinear(), 1.0, 1e-3),
        (md.VPCosine(), 0.99, 1e-3),
        (md.VE(), 1.0, 0.0),
        (md.EDM(), 80.0, 0.002),
    ],
    ids=["vp_linear", "vp_cosine", "ve", "edm"],
)
def test_ddim_exact_for_a_single_point(param, t0, t1, x64):
    """Data = one point c: the PF-ODE solution is α_t c + σ_t ε with ε fixed, and
    DDIM (η = 0) follows it exactly at any number of steps, on any grid, whatever
    the network predicts."""
    c = jnp.array([0.7, -1.2])
    y0 = param.alpha(t0) * c + param.sigma(t0) * jax.random.normal(
        jax.random.key(0), (5, 2), jnp.float64
    )
    exact = param.alpha(t1) * c + param.sigma(t1) / param.sigma(t0) * (
        y0 - param.alpha(t0) * c
    )
    for num_steps, grid, prediction in [(1, "uniform", "eps"), (7, "edm", "v")]:
        y1, info = md.sample(
            PointModel(param, c, prediction),
            param,
            md.DDIM(),
            y0,
            t0=t0,
            t1=t1,
            num_steps=num_steps,
            prediction=prediction,
            grid=grid,
        )
        np.testing.assert_allclose(y1, exact, rtol=1e-10, atol=1e-10)
        assert info.evaluations.tolist() == [num_steps]


@pytest.mark.parametrize(
    "name, order",
    [("ddim0", 1), ("euler", 1), ("dpm2m", 2), ("heun", 2)],
)
def test_order_on_the_gaussian_probability_flow(name, order, x64):
    """Strong error against the exact PF-ODE map; slope of log error vs log step."""
    sampler = ALL[name]
    model = GaussianX0(P, MEAN, VAR)
    y0 = jax.random.normal(jax.random.key(0), (64, 3), jnp.float64)
    exact = flow(P, y0, T0, T1)
    steps = np.array([16, 32, 64])
    errors = []
    for n in steps:
        y1, _ = md.sample(
            model,
            P,
            sampler,
            y0,
            t0=T0,
            t1=T1,
            num_steps=int(n),
            prediction="x0",
            grid="logsnr",
        )
        errors.append(float(jnp.sqrt(jnp.mean(jnp.sum((y1 - exact) ** 2, -1)))))
    slope = fit_order(1 / steps, errors)
    # Tolerance from the fit: 3 standard errors of the slope, at least 0.1 (the
    # pre-asymptotic bend at 16 steps).
    _, cov = np.polyfit(np.log(1 / steps), np.log(errors), 1, cov=True)
    tol = max(0.1, 3 * float(np.sqrt(cov[0, 0])))
    assert abs(slope - order) <= tol, (slope, errors)


@pytest.mark.parametrize("name", list(ALL))
def test_moments_match_the_exact_marginals(name):
    """Start from the exact marginal at t0; the output's mean and covariance must
    match the exact marginal at t1 within 5 standard errors plus the discretisation
    bias, bounded by the change from halving the steps on the same Brownian path
    (|m_N − m_{N/2}| ≥ bias(N) for a method of order ≥ 1)."""
    sampler = ALL[name]
    n, num_steps = 20_000, 256
    model = AsEps(GaussianX0(P, MEAN, VAR))
    m0, c0 = marginal(P, T0)
    y0 = m0 + jnp.sqrt(c0) * jax.random.normal(jax.random.key(0), (n, 3))
    ts = md.time_grid(P, num_steps, t0=T0, t1=T1, kind="logsnr")
    dw = grid_increments(jax.random.key(1), ts, y0.shape)
    out = []
    for steps, incr in [
        (num_steps, dw),
        (num_steps // 2, mj.coarsen_increments(dw, 2)),
    ]:
        y1, _ = md.sample(
            model,
            P,
            sampler,
            y0,
            t0=T0,
            t1=T1,
            num_steps=steps,
            grid="logsnr",
            brownian=incr if sampler.stochastic else None,
        )
        out.append(np.asarray(y1, np.float64))
    fine, coarse = out
    m1, c1 = (np.asarray(x, np.float64) for x in marginal(P, T1))
    cov = np.diag(c1)
    se_mean = np.sqrt(c1 / n)
    se_cov = np.sqrt((cov**2 + np.outer(c1, c1)) / n)
    bias_mean = np.abs(fine.mean(0) - coarse.mean(0))
    bias_cov = np.abs(np.cov(fine.T) - np.cov(coarse.T))
    assert np.all(np.abs(fine.mean(0) - m1) <= 5 * se_mean + bias_mean)
    assert np.all(np.abs(np.cov(fine.T) - cov) <= 5 * se_cov + bias_cov), (
        np.cov(fine.T),
        cov,
    )
    # The allowance is small: the bias bound is well under the variance itself.
    assert np.all(bias_cov <= 0.05 * np.max(c1))


def test_ddim_eta_one_is_sde_dpm_solver_pp_1():
    model = AsEps(GaussianX0(P, MEAN, VAR))
    y0 = jax.random.normal(jax.random.key(0), (8, 3))
    ts = md.time_grid(P, 20, t0=T0, t1=T1, kind="logsnr")
    dw = grid_increments(jax.random.key(3), ts, y0.shape)
    kw = dict(t0=T0, t1=T1, num_steps=20, brownian=dw, grid="logsnr")
    a, _ = md.sample(model, P, md.DDIM(eta=1.0), y0, **kw)
    b, _ = md.sample(model, P, md.SDEDPMSolverPP1(), y0, **kw)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_euler_is_em_solve_of_the_probability_flow_drift():
    """On a uniform grid, Euler on the PF-ODE is `em_solve` of
    `ProbabilityFlowDrift` with the same network."""
    sde = md.VPSDE()
    eps = AsEps(GaussianX0(P, MEAN, VAR))
    score = Score(eps)
    y0 = jax.random.normal(jax.random.key(0), (8, 3))
    y_em, _ = mj.em_solve(
        md.ProbabilityFlowDrift(sde, score),
        None,
        y0,
        t0=T0,
        t1=T1,
        num_steps=50,
        key=jax.random.key(0),
    )
    y_s, _ = md.sample(eps, P, md.Euler(), y0, t0=T0, t1=T1, num_steps=50)
    np.testing.assert_allclose(y_s, y_em, rtol=1e-4, atol=1e-4)


def test_key_layout_is_em_solve_s():
    """`key` draws the increments of `em_solve` with the same key and grid (passing
    them as `brownian=` gives the same sample), and on one Brownian path the samples
    converge pathwise to the Euler–Maruyama solve of the reverse SDE."""
    sde = md.VPSDE()
    model = AsEps(GaussianX0(P, MEAN, VAR))
    score = Score(model)
    y0 = jax.random.normal(jax.random.key(0), (32, 3))
    key = jax.random.key(5)
    kw = dict(t0=T0, t1=T1)
    dw = mj.brownian_increments(key, y0.shape, num_steps=512, **kw)
    a, _ = md.sample(model, P, md.SDEDPMSolverPP1(), y0, key=key, num_steps=512, **kw)
    errors = []
    for factor in (8, 1):
        incr = mj.coarsen_increments(dw, factor)
        n = 512 // factor
        b, _ = md.sample(
            model, P, md.SDEDPMSolverPP1(), y0, brownian=incr, num_steps=n, **kw
        )
        if factor == 1:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        y_em, _ = mj.em_solve(
            md.ReverseDrift(sde, score),
            sde.diffusion,
            y0,
            key=key,
            brownian=incr,
            num_steps=n,
            **kw,
        )
        errors.append(float(md.strong_error(b, y_em)))
    # Both converge to the same pathwise solution (strong order ≥ ½ each: 8x fewer
    # steps, at least sqrt(8)/2 times the error).
    assert errors[1] < errors[0] / np.sqrt(2), errors


# ---------------------------------------------------------------------------------
# Multilevel versions


def ladder(nonlinear=True):
    """Three networks predicting ε: the exact one plus perturbations 0.3·2^{−l}."""
    exact = GaussianX0(P, MEAN, VAR)

    def level(scale, w):
        def fn(t, y, args):
            x0 = exact(t, y)
            bump = jnp.sin(w * y) if nonlinear else w * y + 0.1
            x0 = x0 + scale * bump
            return P.convert(x0, t, y, source="x0", target="eps")

        return fn

    fns = (level(0.3, 1.0), level(0.075, 2.0), level(0.0, 0.0))
    return mj.Levels(fns, (1.0, 4.0, 16.0))


@pytest.mark.parametrize("name", list(AFFINE))
def test_all_ones_reproduces_the_single_network_sampler(name):
    sampler = AFFINE[name]
    levels = ladder()
    y0 = jax.random.normal(jax.random.key(0), (6, 3))
    ts = md.time_grid(P, 30, t0=T0, t1=T1, kind="logsnr")
    dw = (
        grid_increments(jax.random.key(3), ts, y0.shape) if sampler.stochastic else None
    )
    kw = dict(t0=T0, t1=T1, num_steps=30, brownian=dw, grid="logsnr")
    ones = mj.FixedProbabilities(jnp.ones(3))
    y_ml, info_ml = md.mlem_sample(
        levels, ones, P, sampler, y0, key=jax.random.key(2), **kw
    )
    y_1, info_1 = md.sample(levels.top, P, sampler, y0, cost=16.0, **kw)
    np.testing.assert_allclose(y_ml, y_1, rtol=1e-5, atol=1e-5)
    assert info_ml.evaluations.tolist() == [30, 30, 30]
    assert float(info_ml.cost) == 30 * 21 and float(info_1.cost) == 30 * 16


def test_one_level_is_the_network_itself():
    levels = ladder()
    one = mj.Levels((levels.top,), (1.0,))
    y0 = jax.random.normal(jax.random.key(0), (6, 3))
    ts = md.time_grid(P, 30, t0=T0, t1=T1, kind="logsnr")
    kw = dict(t0=T0, t1=T1, num_steps=30, grid="logsnr")
    kw["brownian"] = grid_increments(jax.random.key(3), ts, y0.shape)
    sampler = md.SDEDPMSolverPP2M()
    y_one, _ = md.mlem_sample(
        one,
        mj.FixedProbabilities(jnp.ones(1)),
        P,
        sampler,
        y0,
        key=jax.random.key(2),
        **kw,
    )
    y_1, _ = md.sample(levels.top, P, sampler, y0, **kw)
    np.testing.assert_allclose(y_one, y_1, rtol=1e-6, atol=1e-6)


def _unbiased(sampler, levels, num_steps, probs, num_keys=4000):
    y0 = jax.random.normal(jax.random.key(0), (2, 3))
    kw = dict(t0=T0, t1=0.5, num_steps=num_steps, grid="logsnr")
    dw = None
    if sampler.stochastic:
        ts = md.time_grid(P, num_steps, t0=T0, t1=0.5, kind="logsnr")
        dw = grid_increments(jax.random.key(9), ts, y0.shape)
    target, _ = md.sample(levels.top, P, sampler, y0, brownian=dw, **kw)
    sched = mj.FixedProbabilities(probs)

    def one(key):
        return md.mlem_sample(
            levels, sched, P, sampler, y0, key=key, brownian=dw, **kw
        )[0]

    keys = jax.random.split(jax.random.key(1), num_keys)
    samples = np.asarray(jax.jit(lambda k: jax.lax.map(one, k))(keys), np.float64)
    mean = samples.mean(0)
    stderr = samples.std(0) / np.sqrt(num_keys)
    assert np.all(stderr > 1e-5), "the estimator must really be random"
    assert np.all(np.abs(mean - np.asarray(target)) <= 5 * stderr + 1e-6), (
        mean,
        target,
        stderr,
    )


@pytest.mark.parametrize("name", list(AFFINE))
def test_one_step_estimator_is_unbiased(name):
    _unbiased(AFFINE[name], ladder(), 1, (0.7, 0.3, 0.2))


@pytest.mark.parametrize("name", ["dpm2m", "sde2m"])
def test_two_step_multistep_is_unbiased_for_affine_networks(name):
    """With networks affine in y the carried estimate keeps the 2M step unbiased
    over two steps (the second step's draws are independent of the first)."""
    _unbiased(AFFINE[name], ladder(nonlinear=False), 2, (1.0, 0.4, 0.25))


@pytest.mark.parametrize("schedule", ["fixed", "rates"])
def test_evaluations_equal_the_draws(schedule):
    levels = ladder()
    num_steps = 40
    if schedule == "fixed":
        sched = mj.FixedProbabilities((1.0, 0.4, 0.1))
    else:
        sched = mj.Rates((jnp.inf, 30.0, 4.0))
    key = jax.random.key(7)
    y0 = jax.random.normal(jax.random.key(0), (4, 3))
    _, info = md.mlem_sample(
        levels,
        sched,
        P,
        md.SDEDPMSolverPP2M(),
        y0,
        t0=T0,
        t1=T1,
        num_steps=num_steps,
        key=key,
        grid="edm",
    )
    ts = md.time_grid(P, num_steps, t0=T0, t1=T1, kind="edm")
    _, level_key = split_key(key)

    @jax.jit
    def draws(n, t, dt):
        uniforms = step_uniforms(level_key, n, 3, jnp.float32)
        return level_draws(uniforms, sched.probabilities(t, dt))[1]

    needed = jax.lax.map(
        lambda x: draws(*x), (jnp.arange(num_steps), ts[:-1], jnp.diff(ts))
    )
    expected = np.asarray(needed).sum(0)
    np.testing.assert_array_equal(info.evaluations, expected)
    assert 0 < expected[2] < num_steps
    np.testing.assert_allclose(info.cost, expected @ np.array([1.0, 4.0, 16.0]))


def test_skipped_levels_are_not_run():
    """A level that never fires (p tiny, never drawn) is never called."""
    calls = []

    def counted(t, y, args):
        jax.debug.callback(lambda: calls.append(1))
        return jnp.zeros_like(y)

    levels = mj.Levels((lambda t, y, a: jnp.zeros_like(y), counted), (1.0, 2.0))
    y0 = jnp.ones((2, 3))
    _, info = md.mlem_sample(
        levels,
        mj.FixedProbabilities((1.0, 1e-9)),
        P,
        md.DDIM(),
        y0,
        t0=T0,
        t1=T1,
        num_steps=10,
        key=jax.random.key(0),
    )
    jax.effects_barrier()
    assert info.evaluations.tolist() == [10, 0] and calls == []


@pytest.mark.parametrize("name", ["ddim0", "sde1", "dpm2m"])
def test_stitch_is_the_single_network_samplers_glued(name):
    # T-Stitch through mlem_sample: level 1 for the first 12 of 30 log-SNR steps,
    # then the top network; the same as sampling the two segments one after the
    # other (a multistep sampler carries its previous prediction across the
    # switch, as T-Stitch does: compared with DDIM's one-step glue only there).
    sampler = AFFINE[name]
    levels = ladder()
    y0 = jax.random.normal(jax.random.key(0), (6, 3))
    ts = md.time_grid(P, 30, t0=T0, t1=T1, kind="logsnr")
    dw = (
        grid_increments(jax.random.key(3), ts, y0.shape) if sampler.stochastic else None
    )
    sched = mj.Stitch.from_fractions(3, (0, 2), (0.4,), grid=ts)
    y, info = md.mlem_sample(
        levels,
        sched,
        P,
        sampler,
        y0,
        t0=T0,
        t1=T1,
        num_steps=30,
        grid=ts,
        brownian=dw,
        # A stitch's draws are fixed: a deterministic sampler needs no key.
        key=jax.random.key(1) if sampler.stochastic else None,
    )
    assert info.evaluations.tolist() == [12, 0, 18]
    if isinstance(sampler, md.DPMSolverPP2M):
        # Not the glue, but between the two networks' own samples.
        y_a, _ = md.sample(
            levels.fns[0], P, sampler, y0, t0=T0, t1=T1, num_steps=30, grid=ts
        )
        y_b, _ = md.sample(
            levels.top, P, sampler, y0, t0=T0, t1=T1, num_steps=30, grid=ts
        )
        assert 0 < float(rms(y - y_b)) < float(rms(y_a - y_b))
        return
    kw1 = dict(t0=ts[0], t1=ts[12], num_steps=12, grid=ts[:13])
    kw2 = dict(t0=ts[12], t1=ts[-1], num_steps=18, grid=ts[12:])
    if sampler.stochastic:
        kw1["brownian"], kw2["brownian"] = dw[:12], dw[12:]
    y_mid, _ = md.sample(levels.fns[0], P, sampler, y0, **kw1)
    y_end, _ = md.sample(levels.top, P, sampler, y_mid, **kw2)
    np.testing.assert_allclose(y, y_end, rtol=1e-6, atol=1e-6)


def test_jit_and_gradients():
    levels = ladder()
    sched = mj.FixedProbabilities((1.0, 0.5, 0.25))
    kw = dict(t0=T0, t1=0.3, num_steps=5, key=jax.random.key(0), grid="logsnr")

    def loss(y0):
        y, _ = md.mlem_sample(levels, sched, P, md.SDEDPMSolverPP2M(), y0, **kw)
        return jnp.sum(y**2)

    y0 = jnp.ones((2, 3))
    g = jax.jit(jax.grad(loss))(y0)
    eps = 1e-2
    d = jnp.zeros_like(y0).at[0, 1].set(1.0)
    fd = (loss(y0 + eps * d) - loss(y0 - eps * d)) / (2 * eps)
    np.testing.assert_allclose(g[0, 1], fd, rtol=2e-2, atol=1e-3 * abs(float(fd)))
    _, tangent = jax.jvp(loss, (y0,), (d,))
    np.testing.assert_allclose(tangent, g[0, 1], rtol=1e-4)


# ---------------------------------------------------------------------------------
# Errors


def test_errors_name_the_argument():
    model = AsEps(GaussianX0(P, MEAN, VAR))
    y0 = jnp.zeros((2, 3))
    kw = dict(t0=T0, t1=T1, num_steps=4)
    with pytest.raises(ValueError, match="`prediction`"):
        md.sample(model, P, md.DDIM(), y0, prediction="score", **kw)
    with pytest.raises(ValueError, match="`grid`"):
        md.sample(model, P, md.DDIM(), y0, grid="cosine", **kw)
    with pytest.raises(ValueError, match="`grid` must be an array of shape"):
        md.sample(model, P, md.DDIM(), y0, grid=jnp.linspace(1, 0.1, 3), **kw)
    with pytest.raises(TypeError, match="`param`"):
        md.sample(model, md.VPSDE(), md.DDIM(), y0, **kw)
    with pytest.raises(TypeError, match="`sampler`"):
        md.sample(model, P, "ddim", y0, **kw)
    with pytest.raises(TypeError, match="`key` is required"):
        md.sample(model, P, md.SDEDPMSolverPP1(), y0, **kw)
    with pytest.raises(ValueError, match="`brownian` increments have shape"):
        md.sample(
            model, P, md.SDEDPMSolverPP1(), y0, brownian=jnp.zeros((3, 2, 3)), **kw
        )
    with pytest.raises(ValueError, match="`brownian` was given"):
        md.sample(model, P, md.DDIM(), y0, brownian=jnp.zeros((4, 2, 3)), **kw)
    with pytest.raises(ValueError, match="`model` returned shape"):
        md.sample(lambda t, y, a: y[0], P, md.DDIM(), y0, **kw)
    with pytest.raises(ValueError, match="`eta`"):
        md.DDIM(eta=2.0)
    levels = ladder()
    with pytest.raises(ValueError, match="`sampler` must be affine.*got Heun"):
        md.mlem_sample(
            levels,
            mj.FixedProbabilities(jnp.ones(3)),
            P,
            md.Heun(),
            y0,
            key=jax.random.key(0),
            **kw,
        )
    with pytest.raises(ValueError, match="`schedule` must be a schedule of 3 levels"):
        md.mlem_sample(
            levels,
            mj.FixedProbabilities(jnp.ones(2)),
            P,
            md.DDIM(),
            y0,
            key=jax.random.key(0),
            **kw,
        )


# SDE-DPM-Solver++(2M): noise, a non-trivial coefficient and a carried estimate
# (DDIM's and Euler's coefficients are covered by the Euler test below).


# ---------------------------------------------------------------------------------
# The deterministic variant


def drifting_ladder():
    """Two networks predicting `x̂_0`: the exact one, and one off by `b(t) u` with
    `b(t) = 0.5 t` (a correction depending on `t` alone)."""
    exact = GaussianX0(P, MEAN, VAR)
    cheap = lambda t, y, args: exact(t, y) + 0.5 * t * U  # noqa: E731
    return mj.Levels((cheap, lambda t, y, args: exact(t, y)), (1.0, 8.0))


@pytest.mark.parametrize("name", ["sde2m"])
def test_periodic_bias_is_the_stale_correction(name):
    """`Periodic((1, m))` runs the top network at steps 0, m, 2m, … and in between the
    cheap one plus the last top-level correction `−b(t_a) u`: exactly the top network
    with `x̂_0` shifted by `(b(t_n) − b(t_a)) u` (written here independently, by
    looking up the anchor step on the grid); `m = 1` is the top network itself."""
    sampler = AFFINE[name]
    levels = drifting_ladder()
    num_steps, m = 12, 5
    y0 = jax.random.normal(jax.random.key(0), (3, 3))
    ts = md.time_grid(P, num_steps, t0=T0, t1=T1, kind="logsnr")
    dw = (
        grid_increments(jax.random.key(3), ts, y0.shape) if sampler.stochastic else None
    )
    kw = dict(t0=T0, t1=T1, num_steps=num_steps, grid="logsnr", brownian=dw)
    kw["prediction"] = "x0"
    y_per, info = md.mlem_sample(levels, md.Periodic((1, m)), P, sampler, y0, **kw)
    assert info.evaluations.tolist() == [num_steps, -(-num_steps // m)]
    np.testing.assert_allclose(info.cost, num_steps * 1.0 + 3 * 8.0)

    def stale(t, y, args):
        n = jnp.argmin(jnp.abs(ts - t))
        t_anchor = ts[n - n % m]
        return levels.top(t, y, args) + 0.5 * (t - t_anchor) * U

    y_ref, _ = md.sample(stale, P, sampler, y0, **kw)
    np.testing.assert_allclose(y_per, y_ref, rtol=1e-5, atol=1e-5)
    y_top, _ = md.sample(levels.top, P, sampler, y0, **kw)
    assert float(jnp.max(jnp.abs(y_per - y_top))) > 1e-3  # the bias is really there
    y_one, info = md.mlem_sample(levels, md.Periodic((1, 1)), P, sampler, y0, **kw)
    np.testing.assert_allclose(y_one, y_top, rtol=1e-5, atol=1e-5)
    assert info.evaluations.tolist() == [num_steps, num_steps]


def test_periodic_three_levels_evaluations_and_errors():
    levels = ladder()
    y0 = jnp.ones((2, 3))
    kw = dict(t0=T0, t1=T1, num_steps=12)
    _, info = md.mlem_sample(levels, md.Periodic((1, 2, 6)), P, md.DDIM(), y0, **kw)
    # Level l runs where it or level l + 1 is due.
    assert info.evaluations.tolist() == [12, 6, 2]

    # Differentiable (reverse mode against central differences; forward and
    # reverse mode through the same draws are checked in test_jit_and_gradients).
    def loss(y0):
        y, _ = md.mlem_sample(levels, md.Periodic((1, 2, 6)), P, md.DDIM(), y0, **kw)
        return jnp.sum(y**2)

    g = jax.grad(loss)(y0)
    d = jnp.zeros_like(y0).at[1, 2].set(1.0)
    fd = (loss(y0 + 1e-2 * d) - loss(y0 - 1e-2 * d)) / 2e-2
    np.testing.assert_allclose(g[1, 2], fd, rtol=2e-2)
    with pytest.raises(ValueError, match="`periods`"):
        md.Periodic((1, 0))
    with pytest.raises(ValueError, match="`schedule` must be a schedule of 3 levels"):
        md.mlem_sample(levels, md.Periodic((1, 2)), P, md.DDIM(), y0, **kw)
    with pytest.raises(TypeError, match="`key` is required"):
        md.mlem_sample(
            levels, md.Periodic((1, 2, 4)), P, md.SDEDPMSolverPP1(), y0, **kw
        )


# ---------------------------------------------------------------------------------
# Per-sample noise: sample i's noise depends on (key, i) only (mlem_jax._brownian)


@pytest.mark.parametrize("multilevel", [False, True])
def test_each_sample_keeps_its_noise_in_any_batch(multilevel):
    # The Gaussian networks are elementwise, so a sample of a batch of 64 equals the
    # same sample in a batch of 13 or alone to a few roundings; another sample and
    # another key differ at the scale of the noise.
    levels = ladder()
    sampler = md.SDEDPMSolverPP2M()
    kw = dict(t0=T0, t1=T1, num_steps=12, grid="logsnr")
    sched = mj.FixedProbabilities(jnp.asarray([1.0, 0.5, 0.3]))
    y0 = jax.random.normal(jax.random.key(0), (64, 3))

    def run(y0, key):
        if multilevel:
            return md.mlem_sample(levels, sched, P, sampler, y0, key=key, **kw)[0]
        return md.sample(levels.top, P, sampler, y0, key=key, **kw)[0]

    key = jax.random.key(7)
    y64 = np.asarray(run(y0, key))
    for batch in (1, 13):
        np.testing.assert_allclose(
            run(y0[:batch], key), y64[:batch], rtol=1e-6, atol=1e-6
        )
    # Sample 0's noise is not sample 1's: the same start, different ends.
    same_start = np.asarray(run(jnp.broadcast_to(y0[:1], (2, 3)), key))
    assert np.min(np.abs(same_start[0] - same_start[1])) > 1e-3
    assert not np.allclose(run(y0[:13], jax.random.key(8)), y64[:13], atol=1e-3)


def test_times_and_states_that_would_mislead_are_refused():
    """Reversed times, times outside the parametrisation's range, an infinite
    log-SNR at an end of the grid and non-finite `y0` are refused by name (each
    ran, or returned NaN, without a word); a NaN part of the way warns."""
    model = AsEps(GaussianX0(P, MEAN, VAR))
    y0 = jnp.zeros((2, 3))
    kw = dict(num_steps=4)
    with pytest.raises(ValueError, match="`t0` must be above `t1`.*reverse time"):
        md.sample(model, P, md.DDIM(), y0, t0=1e-3, t1=1.0, **kw)
    with pytest.raises(
        ValueError, match=r"`t0` must be in VPLinear's time range \[0.0, 1.0\]; got 5"
    ):
        md.sample(model, P, md.DDIM(), y0, t0=5.0, t1=1e-3, **kw)
    with pytest.raises(ValueError, match="`t1` must be in VE's time range"):
        md.sample(model, md.VE(), md.DDIM(), y0, t0=1.0, t1=-0.1, **kw)
    with pytest.raises(
        ValueError, match=r"`t0` must be a time where VPCosine has α_t > 0"
    ):
        md.sample(model, md.VPCosine(), md.DDIM(), y0, t0=1.0, t1=1e-3, **kw)
    with pytest.raises(
        ValueError, match="`t1` must be a time where VPLinear's log-SNR is finite"
    ):
        md.sample(model, P, md.DDIM(), y0, t0=1.0, t1=0.0, grid="logsnr", **kw)
    bad = y0.at[1, 2].set(jnp.nan)
    with pytest.raises(ValueError, match=r"`y0` holds 1 non-finite value\(s\)"):
        md.sample(model, P, md.DDIM(), bad, t0=1.0, t1=1e-3, **kw)
    levels = mj.Levels((model, model), (1.0, 2.0))
    with pytest.raises(ValueError, match="mlem_sample: `t0` must be above `t1`"):
        md.mlem_sample(
            levels,
            mj.FixedProbabilities(jnp.ones(2)),
            P,
            md.DDIM(),
            y0,
            t0=0.5,
            t1=0.9,
            key=jax.random.key(0),
            **kw,
        )
    # A network that returns NaN below t = 0.5: a warning saying so, not silence.
    nan_late = lambda t, y, args: jnp.where(t < 0.5, jnp.nan, 1.0) * y  # noqa: E731
    with pytest.warns(RuntimeWarning, match="sample: the solve returned 6 non-finite"):
        md.sample(nan_late, P, md.DDIM(), y0 + 1.0, t0=1.0, t1=1e-3, **kw)
    # A Python list of numbers is an array to a sampler (it needs one).
    y, _ = md.sample(model, P, md.DDIM(), [[0.0, 0.0, 0.0]], t0=1.0, t1=1e-3, **kw)
    assert y.shape == (1, 3)
    assert md.VPLinear().time_range() == (0.0, 1.0)
    assert md.EDM().time_range() == (0.0, np.inf)


def test_a_traced_grid_that_does_not_decrease_is_refused_under_jit():
    """A grid only known inside `jit` is checked there (`eqx.error_if`), as a
    concrete one is checked at the call."""
    model = AsEps(GaussianX0(P, MEAN, VAR))
    y0 = jnp.zeros((2, 3))
    kw = dict(t0=T0, t1=T1, num_steps=4)

    @jax.jit
    def run(ts):
        return md.sample(model, P, md.DDIM(), y0, grid=ts, **kw)[0]

    ts = jnp.linspace(T0, T1, 5)
    eager = md.sample(model, P, md.DDIM(), y0, grid=ts, **kw)[0]
    np.testing.assert_allclose(run(ts), eager, rtol=1e-6)
    with pytest.raises(Exception, match="the time grid must be finite and decrease"):
        jax.block_until_ready(run(ts[::-1]))
    with pytest.raises(Exception, match="the time grid must be finite and decrease"):
        jax.block_until_ready(run(ts.at[2].set(jnp.nan)))
