"""Tests of the functional solvers `mlem_solve` and `em_solve`."""

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TREE_Y0, additive, affine_problem, fit_order, linear_levels

import mlem_jax as mj

pytestmark = pytest.mark.usefixtures("strict_promotion")


# ---------------------------------------------------------------------------------
# Unbiasedness and the Euler–Maruyama limit


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 1e-3)], ids=["fwd", "rev"])
def test_all_ones_is_euler_maruyama(t0, t1):
    levels = linear_levels()
    key = jax.random.key(1)
    y0 = jnp.linspace(-1, 1, 12).reshape(4, 3)
    diffusion = lambda t, y, args: 0.3 * (1 + y**2) ** 0.5
    ones = mj.FixedProbabilities(jnp.ones(3))
    y_ml, info_ml = mj.mlem_solve(
        levels, ones, diffusion, y0, t0=t0, t1=t1, num_steps=50, key=key
    )
    y_em, info_em = mj.em_solve(
        levels.top, diffusion, y0, t0=t0, t1=t1, num_steps=50, key=key, cost=16.0
    )
    np.testing.assert_allclose(y_ml, y_em, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(info_ml.evaluations, [50, 50, 50])
    np.testing.assert_array_equal(info_em.evaluations, [50])
    assert float(info_ml.cost) == 50 * (1 + 4 + 16)
    assert float(info_em.cost) == 50 * 16


# ---------------------------------------------------------------------------------
# Compute skipping: each level runs exactly when the draws say, never more


def test_expected_cost_of_rates_is_step_independent():
    # With rates, the expected number of level-3 evaluations is ∫λ dt = 4, however
    # fine the steps: average the realised counts over keys.
    levels = linear_levels()
    sched = mj.Rates((jnp.inf, 20.0, 4.0))

    def count(num_steps):
        def one(key):
            _, info = mj.mlem_solve(
                levels,
                sched,
                None,
                jnp.ones(2),
                t0=0.0,
                t1=1.0,
                num_steps=num_steps,
                key=key,
            )
            return info.evaluations

        keys = jax.random.split(jax.random.key(3), 400)
        return np.asarray(jax.lax.map(one, keys)).mean(axis=0)

    for num_steps in (100, 400):
        mean = count(num_steps)
        assert mean[0] == num_steps
        # Level 3 runs iff B_3 fires: Binomial(N, 4/N), mean 4, sd ≈ 2/sqrt(400).
        assert abs(mean[2] - 4.0) < 5 * 2.0 / np.sqrt(400)
        # Level 2 runs iff B_2 or B_3: N(1 − (1 − 20/N)(1 − 4/N)).
        p2, p3 = 20 / num_steps, 4 / num_steps
        expected2 = num_steps * (1 - (1 - p2) * (1 - p3))
        assert abs(mean[1] - expected2) < 5 * np.sqrt(expected2 / 400)


# ---------------------------------------------------------------------------------
# Convergence against closed forms


@pytest.mark.parametrize("t0, t1", [(0.0, 2.0), (2.0, 0.0)], ids=["fwd", "rev"])
def test_euler_on_linear_ode_matches_closed_form(t0, t1):
    # Euler on y' = λy gives exactly (1 + hλ)^N y0; its error against e^{λ(t1−t0)}
    # falls at order 1.
    lam = -1.3
    y0 = jnp.array([1.0, -2.0])
    drift = lambda t, y, args: lam * y
    errors, hs = [], []
    for n in (16, 32, 64, 128):
        y1, _ = mj.em_solve(
            drift, None, y0, t0=t0, t1=t1, num_steps=n, key=jax.random.key(0)
        )
        h = (t1 - t0) / n
        np.testing.assert_allclose(y1, (1 + h * lam) ** n * y0, rtol=2e-5)
        errors.append(float(jnp.max(jnp.abs(y1 - np.exp(lam * (t1 - t0)) * y0))))
        hs.append(abs(h))
    assert abs(fit_order(hs, errors) - 1.0) < 0.1


def test_em_strong_order_on_geometric_brownian_motion():
    # dY = μY dt + σY dW has the pathwise solution Y_T = Y0 exp((μ − σ²/2)T + σW_T).
    # Euler–Maruyama converges strongly at order 1/2 for this multiplicative noise.
    mu, sigma, T, batch = 0.5, 0.8, 1.0, 4000
    fine = 256
    y0 = jnp.ones((batch,))
    dw = mj.brownian_increments(
        jax.random.key(11), (batch,), t0=0.0, t1=T, num_steps=fine
    )
    exact = y0 * jnp.exp((mu - sigma**2 / 2) * T + sigma * dw.sum(axis=0))
    errors, hs = [], []
    for n in (16, 32, 64, 128, 256):
        y1, _ = mj.em_solve(
            lambda t, y, a: mu * y,
            lambda t, y, a: sigma * y,
            y0,
            t0=0.0,
            t1=T,
            num_steps=n,
            key=jax.random.key(0),
            brownian=mj.coarsen_increments(dw, fine // n),
        )
        errors.append(float(jnp.sqrt(jnp.mean((y1 - exact) ** 2))))
        hs.append(T / n)
    # Order 1/2; the band allows for the Monte Carlo error of 4000 paths and the
    # pre-asymptotic range of step sizes.
    assert abs(fit_order(hs, errors) - 0.5) < 0.15, errors
    assert errors[-1] < errors[0]


def test_mlem_error_approaches_top_level_as_rates_grow():
    # GBM with levels μ_l·y that approach μ. Pathwise against the exact solution,
    # ML-EM's mean-square error exceeds EM-with-f^k's by about T·Σ_l V_l/λ_l, so it
    # approaches it as the rates grow, and equals it when every p = 1.
    mu, sigma, T, batch, n = 0.5, 0.3, 1.0, 256, 200
    levels = linear_levels(rates=(0.25, 0.45, mu))
    diffusion = lambda t, y, a: sigma * y
    y0 = jnp.ones((batch,))
    dw = mj.brownian_increments(jax.random.key(5), (batch,), t0=0.0, t1=T, num_steps=n)
    exact = y0 * jnp.exp((mu - sigma**2 / 2) * T + sigma * dw.sum(axis=0))
    y_em, _ = mj.em_solve(
        levels.top,
        diffusion,
        y0,
        t0=0.0,
        t1=T,
        num_steps=n,
        key=jax.random.key(0),
        brownian=dw,
    )
    mse_em = float(jnp.mean((y_em - exact) ** 2))

    def mse(scale):
        sched = mj.Rates((jnp.inf, 4.0 * scale, 1.0 * scale))

        def one(key):
            y1, _ = mj.mlem_solve(
                levels,
                sched,
                diffusion,
                y0,
                t0=0.0,
                t1=T,
                num_steps=n,
                key=key,
                brownian=dw,
            )
            return jnp.mean((y1 - exact) ** 2)

        # Average over level keys: the draws are shared by the batch.
        return float(jax.lax.map(one, jax.random.split(jax.random.key(9), 64)).mean())

    excess = [mse(s) - mse_em for s in (1.0, 8.0, 64.0)]
    assert excess[0] > excess[1] > excess[2] > 0
    # Excess ∝ 1/scale: each 8× in rates divides it by about 8 (within a factor 2.5
    # for the Monte Carlo error of 64 draws and the p = min(1, λh) saturation).
    assert 8 / 2.5 < excess[0] / excess[1] < 8 * 2.5
    y_all, _ = mj.mlem_solve(
        levels,
        mj.Rates((jnp.inf,) * 3),
        diffusion,
        y0,
        t0=0.0,
        t1=T,
        num_steps=n,
        key=jax.random.key(1),
        brownian=dw,
    )
    np.testing.assert_allclose(y_all, y_em, rtol=1e-5)


# ---------------------------------------------------------------------------------
# Consistency: determinism, reverse time, ODE mode, batches, dtypes, jit


def _solve(y0, key=None, diffusion=additive, **kw):
    key = jax.random.key(2) if key is None else key
    kw = dict(dict(t0=1.0, t1=0.01, num_steps=40), **kw)
    return mj.mlem_solve(
        linear_levels(),
        mj.FixedProbabilities((1.0, 0.4, 0.1)),
        diffusion,
        y0,
        key=key,
        **kw,
    )


def test_same_key_bit_identical_and_different_key_differs():
    y0 = jnp.ones((5, 3))
    a, info_a = _solve(y0)
    b, info_b = _solve(y0)
    c, _ = _solve(y0, key=jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(info_a.evaluations, info_b.evaluations)
    assert not np.allclose(a, c)


def test_legacy_uint32_key_accepted():
    a, _ = _solve(jnp.ones(3), key=jax.random.PRNGKey(2))
    assert a.shape == (3,) and np.all(np.isfinite(a))


def test_jit_and_no_jit_agree():
    y0 = jnp.linspace(0, 1, 6)
    eager_key = jax.random.key(4)
    jitted = jax.jit(lambda y: _solve(y, key=eager_key)[0])(y0)
    with jax.disable_jit():
        eager = _solve(y0, key=eager_key)[0]
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)


def test_ode_batch_rows_solve_independently():
    # Without noise, a batch row follows the same level draws as solving it alone.
    y0 = jnp.arange(12.0).reshape(4, 3) / 10
    batched, _ = _solve(y0, diffusion=None)
    for i in range(4):
        alone, _ = _solve(y0[i], diffusion=None)
        np.testing.assert_allclose(batched[i], alone, rtol=1e-6)


def test_reverse_time_is_forward_time_of_reflected_problem():
    # Solving from 1 to 0 equals solving the reflected SDE (drift negated, time
    # reflected) from 0 to 1 with the same increments (noise is symmetric).
    t_dep = (lambda t, y, a: -y * (1 + t), lambda t, y, a: -y * (1 + t) + 0.1 * t)
    levels = mj.Levels(t_dep, (1.0, 2.0))
    reflected = mj.Levels(
        tuple(lambda t, y, a, f=f: -f(1 - t, y, a) for f in t_dep), (1.0, 2.0)
    )
    sched = mj.FixedProbabilities((1.0, 0.5))
    dw = mj.brownian_increments(jax.random.key(0), (3,), t0=0.0, t1=1.0, num_steps=30)
    g = lambda t, y, a: 0.2 * (1 + t) * jnp.ones_like(y)
    g_reflected = lambda t, y, a: g(1 - t, y, a)
    y0 = jnp.array([1.0, 0.5, -1.0])
    back, info_b = mj.mlem_solve(
        levels,
        sched,
        g,
        y0,
        t0=1.0,
        t1=0.0,
        num_steps=30,
        key=jax.random.key(1),
        brownian=dw,
    )
    fwd, info_f = mj.mlem_solve(
        reflected,
        sched,
        g_reflected,
        y0,
        t0=0.0,
        t1=1.0,
        num_steps=30,
        key=jax.random.key(1),
        brownian=dw,
    )
    np.testing.assert_allclose(back, fwd, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(info_b.evaluations, info_f.evaluations)


def test_float32_and_float64_agree(x64):
    y0 = jnp.linspace(-1, 1, 4)
    dw = mj.brownian_increments(jax.random.key(0), (4,), t0=1.0, t1=0.0, num_steps=40)
    out32, i32 = _solve(y0.astype(jnp.float32), brownian=dw.astype(jnp.float32), t1=0.0)
    out64, i64 = _solve(y0.astype(jnp.float64), brownian=dw.astype(jnp.float64), t1=0.0)
    assert out32.dtype == jnp.float32 and out64.dtype == jnp.float64
    np.testing.assert_array_equal(i32.evaluations, i64.evaluations)
    np.testing.assert_allclose(out32, out64, rtol=1e-5, atol=1e-6)


def test_float16_state_keeps_times_and_costs_in_float32():
    # A float16 grid t0 + n·h has too few distinct values for 5000 steps over
    # [0, 10] (spacing 2^-7 near 10, h = 2e-3), and FLOP-sized costs overflow
    # float16 (max 65504). Times and costs must stay in float32.
    num_steps = 5000
    levels = mj.Levels(fns=(lambda t, y, a: -y, lambda t, y, a: -y), costs=(1e6, 1e7))
    y0 = jnp.ones((2,), jnp.float16)
    ys, info = mj.mlem_solve(
        levels,
        mj.FixedProbabilities((1.0, 0.5)),
        None,
        y0,
        t0=0.0,
        t1=10.0,
        num_steps=num_steps,
        key=jax.random.key(0),
        saveat=diffrax.SaveAt(steps=True),
    )
    assert ys.dtype == jnp.float16
    assert info.ts.dtype == jnp.float32
    ts = np.asarray(info.ts)
    assert len(np.unique(ts)) == num_steps
    assert np.all(np.diff(ts) > 0) and ts[-1] == 10.0
    evaluations = np.asarray(info.evaluations, np.float64)
    expected = 1e6 * evaluations[0] + 1e7 * evaluations[1]
    assert np.isfinite(float(info.cost))
    np.testing.assert_allclose(float(info.cost), expected, rtol=1e-6)
    # The ODE dy = -y dt with the float16 state: y(10) = e^-10 within float16's
    # resolution near 0 and Euler's O(h) error.
    np.testing.assert_allclose(np.asarray(ys[-1], np.float32), np.exp(-10.0), atol=2e-4)


def test_diffrax_brownian_path_is_accepted_in_both_directions():
    # A diffrax path evaluated on the step grid: equals the same increments given
    # as an array, with diffrax's sign convention in reverse time.
    path = diffrax.VirtualBrownianTree(
        0.0, 1.0, tol=1e-4, shape=(3,), key=jax.random.key(0)
    )
    grid = jnp.linspace(0.0, 1.0, 21)
    w = jax.vmap(lambda t: path.evaluate(0.0, t))(grid)
    y0 = jnp.ones(3)
    fwd, _ = _solve(y0, t0=0.0, t1=1.0, num_steps=20, brownian=path)
    fwd_arr, _ = _solve(y0, t0=0.0, t1=1.0, num_steps=20, brownian=jnp.diff(w, axis=0))
    np.testing.assert_allclose(fwd, fwd_arr, rtol=1e-4, atol=1e-5)
    rev, _ = _solve(y0, t0=1.0, t1=0.0, num_steps=20, brownian=path)
    rev_arr, _ = _solve(
        y0, t0=1.0, t1=0.0, num_steps=20, brownian=jnp.diff(w[::-1], axis=0)
    )
    np.testing.assert_allclose(rev, rev_arr, rtol=1e-4, atol=1e-5)


def test_saveat():
    y0 = jnp.ones((2, 3))
    y1, _ = _solve(y0, t0=0.0, t1=1.0, num_steps=10)
    steps, info = _solve(
        y0, t0=0.0, t1=1.0, num_steps=10, saveat=diffrax.SaveAt(steps=True)
    )
    assert steps.shape == (10, 2, 3)
    np.testing.assert_allclose(info.ts, np.linspace(0.1, 1.0, 10), rtol=1e-6)
    np.testing.assert_array_equal(steps[-1], y1)
    ys, info = _solve(
        y0,
        t0=0.0,
        t1=1.0,
        num_steps=10,
        saveat=diffrax.SaveAt(t0=True, ts=jnp.array([0.3, 0.0, 0.7]), t1=True),
    )
    assert ys.shape == (5, 2, 3)
    np.testing.assert_allclose(info.ts, [0.0, 0.3, 0.0, 0.7, 1.0], atol=1e-7)
    for saved, expected in zip(ys, [y0, steps[2], y0, steps[6], y1]):
        np.testing.assert_array_equal(saved, expected)


# ---------------------------------------------------------------------------------
# Gradients


def _grad_problem():
    levels, y0, _ = affine_problem()
    sched = mj.FixedProbabilities((1.0, 0.4))

    def loss(levels, y0, args):
        y1, _ = mj.mlem_solve(
            levels,
            sched,
            lambda t, y, a: 0.3 * jnp.cos(y) * a,
            y0,
            t0=1.0,
            t1=0.0,
            num_steps=30,
            key=jax.random.key(5),
            args=args,
        )
        return jnp.sum(y1**2)

    return loss, levels, y0, jnp.asarray(1.5)


def test_gradients_match_finite_differences(x64):
    loss, levels, y0, args = _grad_problem()
    levels = jax.tree.map(
        lambda x: x.astype(jnp.float64) if eqx.is_array(x) else x, levels
    )
    y0 = y0.astype(jnp.float64)
    args = args.astype(jnp.float64)
    g_levels, g_y0, g_args = jax.grad(loss, argnums=(0, 1, 2))(levels, y0, args)
    eps = 1e-6

    def fd(f, x, direction):
        return (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)

    direction = jax.random.normal(jax.random.key(1), y0.shape, jnp.float64)
    np.testing.assert_allclose(
        jnp.vdot(g_y0, direction),
        fd(lambda y: loss(levels, y, args), y0, direction),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        g_args, fd(lambda a: loss(levels, y0, a), args, jnp.ones(())), rtol=1e-6
    )
    w = levels.fns[1].w
    dw = jax.random.normal(jax.random.key(2), w.shape, jnp.float64)
    replace = lambda w_: eqx.tree_at(lambda lv: lv.fns[1].w, levels, w_)
    np.testing.assert_allclose(
        jnp.vdot(g_levels.fns[1].w, dw),
        fd(lambda w_: loss(replace(w_), y0, args), w, dw),
        rtol=1e-6,
    )
    # Forward mode agrees with reverse mode.
    _, tangent = jax.jvp(lambda y: loss(levels, y, args), (y0,), (direction,))
    np.testing.assert_allclose(tangent, jnp.vdot(g_y0, direction), rtol=1e-10)


def test_checkpointing_does_not_change_gradients():
    loss, levels, y0, args = _grad_problem()
    grad = jax.grad(lambda y: loss(levels, y, args))(y0)

    def loss_nocheckpoint(y):
        y1, _ = mj.mlem_solve(
            levels,
            mj.FixedProbabilities((1.0, 0.4)),
            lambda t, y, a: 0.3 * jnp.cos(y) * a,
            y,
            t0=1.0,
            t1=0.0,
            num_steps=30,
            key=jax.random.key(5),
            args=args,
            checkpoint=False,
        )
        return jnp.sum(y1**2)

    np.testing.assert_allclose(grad, jax.grad(loss_nocheckpoint)(y0), rtol=1e-5)


# ---------------------------------------------------------------------------------
# Bad input


def _kwargs(**overrides):
    kw = dict(
        levels=linear_levels(),
        schedule=mj.FixedProbabilities((1.0, 0.5, 0.1)),
        diffusion=additive,
        y0=jnp.ones(3),
        t0=0.0,
        t1=1.0,
        num_steps=4,
        key=jax.random.key(0),
    )
    kw.update(overrides)
    return kw


def _call(**overrides):
    kw = _kwargs(**overrides)
    return mj.mlem_solve(
        kw.pop("levels"), kw.pop("schedule"), kw.pop("diffusion"), kw.pop("y0"), **kw
    )


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (
            dict(levels=(lambda t, y, a: y,)),
            TypeError,
            "`levels` must be a mlem_jax.Levels",
        ),
        (
            dict(schedule=(1.0, 0.5, 0.1)),
            TypeError,
            "`schedule` must be a mlem_jax schedule",
        ),
        (
            dict(schedule=mj.FixedProbabilities((1.0, 0.5))),
            ValueError,
            "`schedule` has 2 levels but `levels` has 3",
        ),
        (dict(num_steps=0), ValueError, "`num_steps` must be a positive int; got 0"),
        (dict(num_steps=2.5), TypeError, "`num_steps` must be a positive int"),
        (dict(t0=1.0, t1=1.0), ValueError, "`t0` and `t1` must differ"),
        (dict(t1=float("nan")), ValueError, "`t0` and `t1` must be finite"),
        (dict(y0=jnp.ones(3, jnp.int32)), TypeError, "`y0` must have a floating dtype"),
        (dict(diffusion=0.5), TypeError, "`diffusion` must be a callable"),
        (dict(key=0), TypeError, "`key` must be a PRNG key"),
        (
            dict(key=jax.random.split(jax.random.key(0), 3)),
            ValueError,
            "`key` must be a single PRNG key",
        ),
        (
            dict(brownian=jnp.ones((3, 3))),
            ValueError,
            r"`brownian` increments have shape \(3, 3\); expected \(num_steps, \*y0.shape\)",
        ),
        (
            dict(diffusion=None, brownian=jnp.ones((4, 3))),
            ValueError,
            "`brownian` was given but `diffusion` is None",
        ),
        (
            dict(
                brownian=diffrax.VirtualBrownianTree(
                    0.0, 1.0, tol=1e-3, shape=(2,), key=jax.random.key(0)
                )
            ),
            ValueError,
            r"the Brownian path `brownian` has shape \(2,\); expected y0's shape \(3,\)",
        ),
        (dict(saveat=[0.5]), TypeError, "`saveat` must be a diffrax.SaveAt"),
        (
            dict(saveat=diffrax.SaveAt(ts=jnp.array([0.3]))),
            ValueError,
            "`saveat.ts` must lie on the step grid",
        ),
        (
            dict(saveat=diffrax.SaveAt(ts=jnp.array([1.5]))),
            ValueError,
            "`saveat.ts` must lie between t0=0.0 and t1=1.0",
        ),
        (
            dict(saveat=diffrax.SaveAt(t1=True, dense=True)),
            ValueError,
            r"`saveat` supports only SaveAt\(t0=..., t1=..., ts=..., steps=...\)",
        ),
        (
            dict(diffusion=lambda t, y, a: jnp.ones(2)),
            ValueError,
            r"the diffusion returned shape \(2,\), which does not broadcast",
        ),
        (
            dict(
                levels=mj.Levels((lambda t, y, a: y[:2],), (1.0,)),
                schedule=mj.FixedProbabilities((1.0,)),
            ),
            ValueError,
            r"level 1 returned shape \(2,\), expected the shape of `y` \(3,\)",
        ),
    ],
)
def test_mlem_solve_bad_input(overrides, error, match):
    with pytest.raises(error, match=match):
        _call(**overrides)


def test_em_solve_bad_input():
    kw = dict(t0=0.0, t1=1.0, num_steps=3, key=jax.random.key(0))
    with pytest.raises(TypeError, match="`drift` must be a callable"):
        mj.em_solve(1.0, None, jnp.ones(2), **kw)
    with pytest.raises(ValueError, match="`cost` must be a positive finite number"):
        mj.em_solve(lambda t, y, a: y, None, jnp.ones(2), cost=0.0, **kw)
    with pytest.raises(ValueError, match="`num_steps` must be a positive int"):
        mj.em_solve(lambda t, y, a: y, None, jnp.ones(2), **dict(kw, num_steps=-1))


def test_levy_area_path_gives_its_increments():
    # Paths built for stochastic Runge–Kutta solvers return Lévy area with `.W`.
    levy = diffrax.VirtualBrownianTree(
        0.0,
        1.0,
        tol=1e-3,
        shape=(3,),
        key=jax.random.key(0),
        levy_area=diffrax.SpaceTimeLevyArea,
    )
    grid = jnp.linspace(0.0, 1.0, 9)
    dw = jnp.stack([levy.evaluate(a, b) for a, b in zip(grid[:-1], grid[1:])])
    a, _ = _solve(jnp.ones(3), t0=0.0, t1=1.0, num_steps=8, brownian=dw)
    b, _ = _solve(jnp.ones(3), t0=0.0, t1=1.0, num_steps=8, brownian=levy)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------
# PyTree states


def _leaf_levels(tree: bool):
    # Three levels acting leaf by leaf, so a PyTree solve is per-leaf solves.
    def level(rate):
        def leaf(t, x):
            return rate * x + jnp.sin(t).astype(x.dtype)

        if tree:
            return lambda t, y, a: jax.tree.map(lambda x: leaf(t, x), y)
        return lambda t, y, a: leaf(t, y)

    return mj.Levels(fns=tuple(level(r) for r in (-0.5, -0.9, -1.0)), costs=(1, 4, 16))


def _leaf_diffusion(t, x):
    return 0.3 * jnp.cos(x)


_SCHEDULE = mj.FixedProbabilities((1.0, 0.5, 0.25))


def test_pytree_state_is_solved_leaf_by_leaf():
    # The estimator is linear and the draws are shared by the whole state: each leaf
    # of a PyTree solve is the single-array solve of that leaf with the same key
    # (same level draws) and that leaf's increments (one key per leaf, the documented
    # layout). Covers SaveAt with t0, ts, steps and t1, PyTree `brownian` increments
    # and a PyTree diffusion.
    key = jax.random.key(7)
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), TREE_Y0)
    grid = dict(t0=1.0, t1=0.0, num_steps=6)
    dw = mj.brownian_increments(key, like, **grid)
    saveat = diffrax.SaveAt(t0=True, ts=jnp.array([0.5]), steps=True, t1=True)
    g_tree = lambda t, y, a: jax.tree.map(lambda x: _leaf_diffusion(t, x), y)  # noqa: E731
    ys, info = mj.mlem_solve(
        _leaf_levels(True), _SCHEDULE, g_tree, TREE_Y0, key=key, saveat=saveat, **grid
    )
    for leaf_y0, leaf_dw, leaf_ys in zip(
        jax.tree.leaves(TREE_Y0), jax.tree.leaves(dw), jax.tree.leaves(ys)
    ):
        ref, ref_info = mj.mlem_solve(
            _leaf_levels(False), _SCHEDULE, lambda t, y, a: _leaf_diffusion(t, y),
            leaf_y0, key=key, brownian=leaf_dw, saveat=saveat, **grid,
        )  # fmt: skip
        # Increments drawn inside the scan or given: equal to fusion rounding.
        np.testing.assert_allclose(leaf_ys, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(info.evaluations, ref_info.evaluations)
    np.testing.assert_array_equal(info.ts, ref_info.ts)
    # Given as a PyTree, with two-level checkpointing (forward values unchanged).
    given, _ = mj.mlem_solve(
        _leaf_levels(True), _SCHEDULE, g_tree, TREE_Y0,
        key=key, brownian=dw, saveat=saveat, checkpoint="sqrt", **grid,
    )  # fmt: skip
    for a, b in zip(jax.tree.leaves(given), jax.tree.leaves(ys)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


class _TreePath(diffrax.AbstractPath):
    # A PyTree of scalar-time paths as one path (diffrax's interpolations take arrays).
    paths: Any
    t0 = 0.0
    t1 = 1.0

    def evaluate(self, t0, t1=None, left=True):
        is_path = lambda x: isinstance(x, diffrax.AbstractPath)  # noqa: E731
        return jax.tree.map(
            lambda p: p.evaluate(t0, t1, left), self.paths, is_leaf=is_path
        )


@pytest.mark.parametrize("functional", ["mlem", "em"])
def test_pytree_solve_equals_diffeqsolve(functional):
    # On the same driving path (a PyTree of paths), mlem_solve equals
    # diffeqsolve with MLEMSolver (same key, same draws) and em_solve equals
    # diffrax.Euler, in reverse time, with a PyTree (diagonal) diffusion.
    import lineax as lx

    key = jax.random.key(5)
    # A random piecewise-linear path with knots on the grid: the same increments for
    # both, and much cheaper to compile than a VirtualBrownianTree.
    knots = jnp.linspace(0.0, 1.0, 5)
    values = jax.tree.map(
        lambda x, k: 0.5 * jax.random.normal(k, (5, *x.shape)),
        TREE_Y0,
        {"a": jax.random.key(1), "b": (jax.random.key(2),)},
    )
    path = _TreePath(
        jax.tree.map(lambda v: diffrax.LinearInterpolation(knots, v), values)
    )
    g = lambda t, y, a: jax.tree.map(lambda x: _leaf_diffusion(t, x), y)  # noqa: E731
    levels = _leaf_levels(True)
    if functional == "mlem":
        ys, info = mj.mlem_solve(
            levels, _SCHEDULE, g, TREE_Y0,
            t0=1.0, t1=0.0, num_steps=4, key=key, brownian=path,
        )  # fmt: skip
        drift, solver = mj.MultilevelTerm(levels), mj.MLEMSolver(_SCHEDULE, key=key)
    else:
        ys, info = mj.em_solve(
            levels.top, g, TREE_Y0, t0=1.0, t1=0.0, num_steps=4, key=key, brownian=path
        )
        drift, solver = diffrax.ODETerm(levels.top), diffrax.Euler()
    noise = diffrax.ControlTerm(
        lambda t, y, a: lx.DiagonalLinearOperator(g(t, y, a)), path
    )
    sol = diffrax.diffeqsolve(
        diffrax.MultiTerm(drift, noise), solver, 1.0, 0.0, -0.25, TREE_Y0,
        saveat=diffrax.SaveAt(t1=True, solver_state=True),
    )  # fmt: skip
    for a, b in zip(jax.tree.leaves(ys), jax.tree.leaves(sol.ys)):
        np.testing.assert_allclose(a, b[0], rtol=1e-5, atol=1e-6)
    if functional == "mlem":
        np.testing.assert_array_equal(info.evaluations, sol.solver_state.evaluations)


def test_pytree_bad_input():
    tree_levels = _leaf_levels(True)
    y0 = {"a": jnp.ones(2), "b": jnp.zeros(3)}

    def call(levels=tree_levels, y0=y0, diffusion=None, **kw):
        return mj.mlem_solve(
            levels, mj.FixedProbabilities((1.0, 1.0, 1.0)), diffusion, y0,
            t0=0.0, t1=1.0, num_steps=2, key=jax.random.key(0), **kw,
        )  # fmt: skip

    with pytest.raises(
        TypeError, match="`y0` must have a floating dtype.*a leaf of dtype int32"
    ):
        call(y0={"a": jnp.ones(2), "b": jnp.zeros(3, jnp.int32)})
    with pytest.raises(
        TypeError, match="`y0` must be a floating array or a PyTree.*no arrays"
    ):
        call(y0={})
    with pytest.raises(ValueError, match="level 1 returned a PyTree of structure"):
        call(levels=mj.Levels((lambda t, y, a: y["a"],) * 3, (1, 2, 3)))
    g = lambda t, y, a: {"a": jnp.ones(2)}  # noqa: E731
    with pytest.raises(
        ValueError, match="the diffusion returned a PyTree of structure"
    ):
        call(diffusion=g)
    with pytest.raises(
        ValueError, match="`brownian` must be increments in a PyTree with the structure"
    ):
        call(diffusion=lambda t, y, a: 1.0, brownian=jnp.ones((2, 5)))
    with pytest.raises(
        ValueError, match=r"`brownian` increments at \['b'\] have shape \(2, 2\)"
    ):
        call(
            diffusion=lambda t, y, a: 1.0,
            brownian={"a": jnp.ones((2, 2)), "b": jnp.ones((2, 2))},
        )


def test_non_finite_and_list_states_are_named():
    """NaN in `y0` is refused; a drift that returns NaN part of the way warns
    (outside `jit`; inside, the result is traced and not checked); a Python list
    of numbers, which JAX reads as a PyTree of scalars, is refused by name."""
    key = jax.random.key(0)
    kw = dict(t0=0.0, t1=1.0, num_steps=4, key=key)
    drift = lambda t, y, a: -y  # noqa: E731
    with pytest.raises(ValueError, match=r"em_solve: `y0` holds 2 non-finite"):
        mj.em_solve(drift, None, jnp.array([jnp.nan, jnp.inf, 1.0]), **kw)
    with pytest.raises(ValueError, match=r"mlem_solve: `y0` holds 1 non-finite"):
        mj.mlem_solve(
            mj.Levels((drift,), (1.0,)),
            mj.FixedProbabilities((1.0,)),
            None,
            {"a": jnp.ones(2), "b": jnp.array([jnp.nan])},
            **kw,
        )
    late_nan = lambda t, y, a: jnp.where(t > 0.5, jnp.nan, 1.0) * y  # noqa: E731
    with pytest.warns(RuntimeWarning, match="em_solve: the solve returned 2 non-fin"):
        y1, _ = mj.em_solve(late_nan, None, jnp.ones(2), **kw)
    assert not np.any(np.isfinite(y1))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.jit(lambda y: mj.em_solve(late_nan, None, y, **kw)[0])(jnp.ones(2))
    with pytest.raises(TypeError, match="`y0` is a Python list of numbers.*asarray"):
        mj.em_solve(drift, None, [[1.0, 2.0]], **kw)
    # A tuple of arrays is still a PyTree state.
    tree_drift = lambda t, y, a: jax.tree.map(jnp.negative, y)  # noqa: E731
    y1, _ = mj.em_solve(tree_drift, None, (jnp.ones(2), jnp.ones(1)), **kw)
    assert y1[0].shape == (2,)
