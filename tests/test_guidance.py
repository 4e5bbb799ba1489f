"""Tests for guided sampling (mlem_jax.diffusion's cfg_levels, autoguidance_levels,
guidance_interval) and the `mlem_jax.Refinement` level kind they are built on.

Two Gaussian classes `N(m_c, diag(v_c))` and a Gaussian "unconditional" prediction
(the null label) give closed forms: every prediction is affine in `y`,
`x̂ = m + g_t (y − α_t m)`, `g_t = α_t v/(α_t² v + σ_t²)`, so the guided prediction
`x̂_c + (w − 1)(x̂_c − x̂_u)` is affine too and an affine sampler's state stays
Gaussian with moments given by a scalar recursion per dimension.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax as mj
import mlem_jax.diffusion as md

P = md.VPLinear()
T0, T1 = 1.0, 1e-3
# Rows: class 0, class 1, the null label 2 (the unconditional prediction).
MEANS = jnp.array([[1.0, -0.5], [-1.0, 0.5], [0.0, 0.0]])
VARS = jnp.array([[0.1, 0.3], [0.2, 0.05], [1.1, 0.4]])
W = 2.5
KEY = jax.random.key(0)


class ClassGaussian(eqx.Module):
    """The exact data prediction of each class (and of the null label), as a
    conditional network `f(t, y, labels)`; with `calls`, each call appends `(tag,
    number of rows with a class label, number of rows with the null label)`."""

    means: jax.Array
    vars: jax.Array
    shift: float = 0.0
    tag: str | None = eqx.field(static=True, default=None)
    calls: list | None = eqx.field(static=True, default=None)

    def __call__(self, t, y, labels):
        labels = jnp.broadcast_to(labels, y.shape[:1])
        if self.calls is not None:
            calls, tag = self.calls, self.tag
            null = jnp.sum(labels == 2)
            jax.debug.callback(
                lambda u: calls.append((tag, y.shape[0] - int(u), int(u))), null
            )
        m, v = self.means[labels] + self.shift, self.vars[labels]
        a, s = P.alpha(t), P.sigma(t)
        gain = a * v / (a**2 * v + s**2)
        return (m + gain * (y - a * m)).astype(y.dtype)


NET = ClassGaussian(MEANS, VARS)


class Guided(eqx.Module):
    """The closed-form guided prediction `x̂_u + w (x̂_c − x̂_u)`."""

    net: ClassGaussian
    scale: float

    def __call__(self, t, y, labels):
        c = self.net(t, y, labels)
        u = self.net(t, y, jnp.full_like(labels, 2))
        return u + self.scale * (c - u)


def labels_for(n):
    return jnp.arange(n) % 2


def run(levels, sched, sampler, y0, labels, key, num_steps=12, **kw):
    return md.mlem_sample(
        levels,
        sched,
        P,
        sampler,
        y0,
        t0=T0,
        t1=T1,
        num_steps=num_steps,
        key=key,
        prediction="x0",
        args=labels,
        **kw,
    )


# ---------------------------------------------------------------------------------
# p = 1 is full CFG


def test_p_one_is_full_cfg():
    # A multistep sampler (it carries the previous step's estimate); SDE-DPM-Solver
    # ++(1) is checked against the closed-form moments below, DDIM in ε below.
    sampler = md.DPMSolverPP2M()
    y0 = jax.random.normal(jax.random.key(0), (6, 2))
    labels = labels_for(6)
    levels = md.cfg_levels(NET, 1.0, scale=W, num_classes=2)
    key = jax.random.key(1)
    y, info = run(levels, mj.FixedProbabilities((1.0, 1.0)), sampler, y0, labels, key)
    y_ref, _ = md.sample(
        Guided(NET, W), P, sampler, y0, t0=T0, t1=T1, num_steps=12, key=key,
        prediction="x0", args=labels,
    )  # fmt: skip
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    assert info.evaluations.tolist() == [12, 12]
    assert float(info.cost) == 24.0


def test_p_one_is_full_cfg_in_eps():
    # Networks predicting ε: the guided level combines in ε, the step in x̂_0 (the
    # conversion is affine with weights summing to one: the same prediction).
    def eps(f):
        return lambda t, y, a: P.convert(f(t, y, a), t, y, source="x0", target="eps")

    y0 = jax.random.normal(jax.random.key(0), (4, 2))
    labels = labels_for(4)
    levels = md.cfg_levels(eps(NET), 1.0, scale=W, num_classes=2)
    y, _ = md.mlem_sample(
        levels, mj.FixedProbabilities((1.0, 1.0)), P, md.DDIM(), y0, t0=T0, t1=T1,
        num_steps=12, key=jax.random.key(1), args=labels,
    )  # fmt: skip
    y_ref, _ = md.sample(
        eps(Guided(NET, W)), P, md.DDIM(), y0, t0=T0, t1=T1, num_steps=12, args=labels
    )
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------
# Moments of the guided process and unbiasedness


def guided_moments(label, num_steps, w=W):
    """Mean and variance per dimension of SDE-DPM-Solver++(1) with the closed-form
    guided prediction from `y0 ~ N(0, I)` on the uniform grid (float64)."""
    ts = np.linspace(T0, T1, num_steps + 1)
    mean, var = np.zeros(2), np.ones(2)
    mc, vc = np.asarray(MEANS[label], np.float64), np.asarray(VARS[label], np.float64)
    mu, vu = np.asarray(MEANS[2], np.float64), np.asarray(VARS[2], np.float64)

    def coef(t):
        a, s = float(P.alpha(t)), float(P.sigma(t))
        return a, s

    for t, tn in zip(ts[:-1], ts[1:]):
        a, s = coef(t)
        an, sn = coef(tn)
        h = np.log(an / sn) - np.log(a / s)
        gc, gu = a * vc / (a**2 * vc + s**2), a * vu / (a**2 * vu + s**2)
        slope = w * gc + (1 - w) * gu
        offset = w * (mc - gc * a * mc) + (1 - w) * (mu - gu * a * mu)
        keep, mix = (sn / s) * np.exp(-h), an * -np.expm1(-2 * h)
        noise = sn * np.sqrt(-np.expm1(-2 * h))
        mean = (keep + mix * slope) * mean + mix * offset
        var = (keep + mix * slope) ** 2 * var + noise**2
    return mean, var


def test_full_cfg_matches_closed_form_moments():
    n = 4000
    y0 = jax.random.normal(jax.random.key(2), (n, 2))
    labels = labels_for(n)
    levels = md.cfg_levels(NET, 1.0, scale=W, num_classes=2)
    y, _ = run(
        levels, mj.FixedProbabilities((1.0, 1.0)), md.SDEDPMSolverPP1(), y0, labels,
        jax.random.key(3), num_steps=16,
    )  # fmt: skip
    y = np.asarray(y, np.float64)
    for c in (0, 1):
        mean, var = guided_moments(c, 16)
        yc = y[np.asarray(labels) == c]
        se_mean = np.sqrt(var / len(yc))
        assert np.all(np.abs(yc.mean(0) - mean) < 5 * se_mean), (yc.mean(0), mean)
        se_var = var * np.sqrt(2 / (len(yc) - 1))
        assert np.all(np.abs(yc.var(0, ddof=1) - var) < 5 * se_var), (yc.var(0), var)


def test_randomised_guidance_is_unbiased_over_the_solve():
    # The step is affine in y and the draws are independent of the state, so the
    # mean of the randomised sampler is the guided process's mean exactly.
    n, num_keys, p = 128, 96, 0.35
    y0 = jax.random.normal(jax.random.key(4), (n, 2))
    labels = jnp.zeros((n,), jnp.int32)
    levels = md.cfg_levels(NET, 1.0, scale=W, num_classes=2)
    sched = mj.FixedProbabilities((1.0, p))

    def batch_mean(key):
        y, info = run(levels, sched, md.SDEDPMSolverPP1(), y0, labels, key, 16)
        return y.mean(0), info.evaluations

    means, evaluations = jax.lax.map(
        jax.jit(batch_mean), jax.random.split(jax.random.key(5), num_keys)
    )
    means = np.asarray(means, np.float64)
    exact, _ = guided_moments(0, 16)
    # y0 is shared by the keys: the exact mean given y0 is the recursion run on
    # the batch's own mean of y0 (the mean map is affine).
    exact_given = exact + _mean_slope(0, 16) * np.asarray(y0.mean(0), np.float64)
    se = means.std(0, ddof=1) / np.sqrt(num_keys)
    assert np.all(np.abs(means.mean(0) - exact_given) < 5 * se), (means.mean(0), se)
    # The guided level ran at a fraction p of the steps; the conditional at all.
    evaluations = np.asarray(evaluations)
    assert np.all(evaluations[:, 0] == 16)
    assert abs(evaluations[:, 1].mean() - 16 * p) < 5 * np.sqrt(16 * p * (1 - p) / 96)


def _mean_slope(label, num_steps):
    """d mean(y_N)/d mean(y_0) of the guided recursion (the mean from y0 = 0 is
    `guided_moments`' mean)."""
    ts = np.linspace(T0, T1, num_steps + 1)
    vc, vu = np.asarray(VARS[label], np.float64), np.asarray(VARS[2], np.float64)
    slope_total = np.ones(2)
    for t, tn in zip(ts[:-1], ts[1:]):
        a, s = float(P.alpha(t)), float(P.sigma(t))
        an, sn = float(P.alpha(tn)), float(P.sigma(tn))
        h = np.log(an / sn) - np.log(a / s)
        gc, gu = a * vc / (a**2 * vc + s**2), a * vu / (a**2 * vu + s**2)
        slope = W * gc + (1 - W) * gu
        slope_total *= (sn / s) * np.exp(-h) + an * -np.expm1(-2 * h) * slope
    return slope_total


def test_randomised_correction_is_unbiased_per_step():
    # One DDIM step: y1 = a y + c (x̂_c + (B/p)(w − 1)(x̂_c − x̂_u)); its mean over
    # the draws is the full-CFG step.
    y0 = jax.random.normal(jax.random.key(6), (5, 2))
    labels = labels_for(5)
    levels = md.cfg_levels(NET, 1.0, scale=W, num_classes=2)
    sched = mj.FixedProbabilities((1.0, 0.3))

    def one_step(key):
        return run(levels, sched, md.DDIM(), y0, labels, key, num_steps=1)[0]

    ys = np.asarray(
        jax.lax.map(jax.jit(one_step), jax.random.split(jax.random.key(7), 2000)),
        np.float64,
    )
    full, _ = md.sample(
        Guided(NET, W), P, md.DDIM(), y0, t0=T0, t1=T1, num_steps=1,
        prediction="x0", args=labels,
    )  # fmt: skip
    se = ys.std(0, ddof=1) / np.sqrt(len(ys))
    assert np.all(np.abs(ys.mean(0) - np.asarray(full)) < 5 * se + 1e-6)
    assert np.all(se > 0)  # the correction was randomised


# ---------------------------------------------------------------------------------
# What runs


@pytest.mark.parametrize("batched", [True, False])
def test_conditional_network_runs_once_per_step(batched):
    calls = []
    net = ClassGaussian(MEANS, VARS, tag="net", calls=calls)
    levels = md.cfg_levels(net, 1.0, scale=W, num_classes=2, batched=batched)
    y0 = jnp.ones((4, 2))
    _, info = run(
        levels, mj.FixedProbabilities((1.0, 0.5)), md.DDIM(), y0, labels_for(4),
        jax.random.key(0), num_steps=20,
    )  # fmt: skip
    jax.effects_barrier()
    e = info.evaluations.tolist()
    assert e[0] == 20 and 0 < e[1] < 20
    # Every step evaluates the 4 conditional rows once; the guided steps add the 4
    # unconditional rows, in the same call (batched) or a second one.
    assert sum(c for _, c, _ in calls) == 4 * 20
    assert sum(u for _, _, u in calls) == 4 * e[1]
    assert len(calls) == (20 if batched else 20 + e[1])
    if batched:
        assert sorted(set(calls)) == [("net", 4, 0), ("net", 4, 4)]


def test_size_ladder_with_guidance_on_top():
    # Levels (small_c, big_c, guided(big)): big is called once at the steps where
    # its own correction or the guidance fires (with the unconditional rows in the
    # same batch where the guidance fires), never twice.
    calls = []
    small = ClassGaussian(MEANS, VARS, shift=0.1, tag="small", calls=calls)
    big = ClassGaussian(MEANS, VARS, tag="big", calls=calls)
    levels = md.cfg_levels((small, big), (1.0, 4.0), scale=W, num_classes=2)
    assert levels.costs == (1.0, 4.0, 4.0)
    y0 = jax.random.normal(jax.random.key(0), (4, 2))
    labels = labels_for(4)
    _, info = run(
        levels, mj.FixedProbabilities((1.0, 0.4, 0.3)), md.DDIM(), y0, labels,
        jax.random.key(2), num_steps=30,
    )  # fmt: skip
    jax.effects_barrier()
    e = info.evaluations.tolist()
    assert e[0] == 30 and e[2] < e[1] < 30
    assert calls.count(("small", 4, 0)) == e[0]
    assert calls.count(("big", 4, 4)) == e[2]
    assert calls.count(("big", 4, 0)) == e[1] - e[2]
    assert len(calls) == e[0] + e[1]
    # With every p = 1: full CFG with the big network.
    y, _ = run(
        levels, mj.FixedProbabilities((1.0, 1.0, 1.0)), md.DDIM(), y0, labels, KEY
    )
    y_ref, _ = md.sample(
        Guided(big, W), P, md.DDIM(), y0, t0=T0, t1=T1, num_steps=12,
        prediction="x0", args=labels,
    )  # fmt: skip
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)


def test_guided_level_as_the_base():
    # p = (0, 1): the guided level is the step's base; its coarse level is
    # evaluated for it and the step is full CFG (a T-Stitch segment on it).
    levels = md.cfg_levels(NET, 1.0, scale=W, num_classes=2)
    y0 = jax.random.normal(jax.random.key(0), (4, 2))
    labels = labels_for(4)
    y_ref, _ = md.sample(
        Guided(NET, W), P, md.DDIM(), y0, t0=T0, t1=T1, num_steps=12,
        prediction="x0", args=labels,
    )  # fmt: skip
    for sched in (
        mj.Rates((0.0, np.inf)),  # p = (0, 1)
        mj.Stitch(2, (1,), t0=T0, t1=T1),
    ):
        y, info = run(levels, sched, md.DDIM(), y0, labels, jax.random.key(1))
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
        assert info.evaluations.tolist() == [12, 12]


def test_guidance_interval():
    a, b = 0.3, 0.7
    sched = md.guidance_interval(3, (a, b), t0=T0, t1=T1, rates=(np.inf, 5.0))
    h = -0.05
    for t, inside in ((0.9, False), (0.6, True), (0.35, True), (0.2, False)):
        p = np.asarray(sched.probabilities(t, h))
        np.testing.assert_allclose(p, [1.0, 5.0 * 0.05, 1.0 if inside else 0.0])
    # Through the sampler: the guided level at the steps whose midpoint is in
    # [a, b], and there exactly full CFG; elsewhere the conditional network.
    levels = md.cfg_levels(NET, 1.0, scale=W, num_classes=2)
    y0 = jax.random.normal(jax.random.key(0), (4, 2))
    labels = labels_for(4)
    sched = md.guidance_interval(2, (a, b), t0=T0, t1=T1)
    y, info = run(levels, sched, md.DDIM(), y0, labels, jax.random.key(1), 20)
    hstep = (T1 - T0) / 20
    mids = T0 + hstep * (np.arange(20) + 0.5)
    inside = (mids >= a) & (mids < b)
    assert info.evaluations.tolist() == [20, int(inside.sum())]

    class Interval(eqx.Module):
        def __call__(self, t, y, labels):
            mid = t + hstep / 2
            on = (mid >= a) & (mid < b)
            return jnp.where(on, Guided(NET, W)(t, y, labels), NET(t, y, labels))

    y_ref, _ = md.sample(
        Interval(), P, md.DDIM(), y0, t0=T0, t1=T1, num_steps=20, prediction="x0",
        args=labels,
    )  # fmt: skip
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)


def test_autoguidance():
    small = ClassGaussian(MEANS, VARS * 1.5, shift=0.2)
    levels = md.autoguidance_levels((small, NET), (1.0, 8.0), scale=2.0)
    y0 = jax.random.normal(jax.random.key(0), (4, 2))
    labels = labels_for(4)

    def closed(t, y, a):
        s = small(t, y, a)
        return s + 2.0 * (NET(t, y, a) - s)

    y, info = run(levels, mj.FixedProbabilities((1.0, 1.0)), md.DDIM(), y0, labels, KEY)
    y_ref, _ = md.sample(
        closed, P, md.DDIM(), y0, t0=T0, t1=T1, num_steps=12, prediction="x0",
        args=labels,
    )  # fmt: skip
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    assert float(info.cost) == 12 * 9.0
    # With scale 1 it is the plain ladder of the two networks.
    plain = md.autoguidance_levels((small, NET), (1.0, 8.0), scale=1.0)
    y1, _ = run(plain, mj.FixedProbabilities((1.0, 1.0)), md.DDIM(), y0, labels, KEY)
    y2, _ = md.sample(
        NET, P, md.DDIM(), y0, t0=T0, t1=T1, num_steps=12, prediction="x0", args=labels
    )
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)


def test_refinement_in_mlem_solve_and_solver():
    # A Refinement of drifts: mlem_solve and MLEMSolver with p = 1 are
    # Euler-Maruyama with the refined top level; the coarse level runs once.
    import diffrax

    def coarse(t, y, args):
        return -y * args

    def refine(t, y, args, c):
        return c + 0.5 * jnp.sin(y + t)

    levels = mj.Levels((coarse, mj.Refinement(refine)), (1.0, 2.0))
    y0 = jnp.linspace(-1.0, 1.0, 4)
    kw = dict(t0=0.0, t1=1.0, num_steps=10, key=jax.random.key(0), args=1.5)
    y, info = mj.mlem_solve(levels, mj.FixedProbabilities((1.0, 1.0)), None, y0, **kw)
    y_em, _ = mj.em_solve(levels.top, None, y0, **kw)
    np.testing.assert_allclose(y, y_em, rtol=1e-6)
    assert info.evaluations.tolist() == [10, 10]
    sol = diffrax.diffeqsolve(
        mj.MultilevelTerm(levels),
        mj.MLEMSolver(mj.FixedProbabilities((1.0, 1.0)), key=jax.random.key(0)),
        0.0, 1.0, 0.1, y0, args=1.5,
    )  # fmt: skip
    assert sol.ys is not None
    np.testing.assert_allclose(sol.ys[-1], y_em, rtol=1e-5)


# ---------------------------------------------------------------------------------
# Calibration prices the guidance level


def test_calibrate_sampler_prices_the_guidance():
    levels = md.cfg_levels(NET, 1.0, scale=W, num_classes=2)
    y0 = jax.random.normal(jax.random.key(0), (16, 2))
    cal = md.calibrate_sampler(
        levels, P, md.SDEDPMSolverPP1(), y0, t0=T0, t1=T1, num_steps=8,
        key=jax.random.key(1), prediction="x0", args=labels_for(16), num_bins=2,
        pilot_keys=0,
    )  # fmt: skip
    # The guidance level's variance is that of (c/h)(w − 1)(x̂_c − x̂_u) > 0.
    assert np.all(cal.variances[:, 1] > 0)
    # Its measured cost is one network (the unconditional prediction) and the
    # combination, not the two networks of the standalone guided prediction.
    assert cal.flops is not None
    assert cal.flops[1] < 1.5 * cal.flops[0]
    sched = cal.schedule(target_error=0.05)
    rates = np.asarray(sched.rates)
    assert rates.shape == (2, 2) and np.all(np.isfinite(rates[:, 1]))
    assert np.all(rates[:, 1] > 0)
    # Priced like any level: the conditional network every step, the guidance at
    # its probabilities; the realised counts of a run scatter around them.
    prediction = cal.predict(sched)
    assert prediction.evaluations[0] == pytest.approx(8.0)
    assert 0 < prediction.evaluations[1] < 8
    y, info = run(
        levels, sched, md.SDEDPMSolverPP1(), y0, labels_for(16), jax.random.key(2), 8
    )
    assert np.all(np.isfinite(np.asarray(y))) and int(info.evaluations[0]) == 8
    # The calibration records the guided level, and prices full CFG (the guided
    # level as the base of every step) with the conditional network it needs: as
    # the run counts it, 8 evaluations of each.
    assert cal.refinements == (False, True)
    assert mj.Calibration.from_json(cal.to_json()).refinements == (False, True)
    full, key3 = mj.FixedProbabilities((0.0, 1.0)), jax.random.key(3)
    np.testing.assert_allclose(cal.predict(full).evaluations, [8.0, 8.0])
    _, info = run(levels, full, md.SDEDPMSolverPP1(), y0, labels_for(16), key3, 8)
    np.testing.assert_array_equal(info.evaluations, [8, 8])
    # The verdict's alternatives include the guidance intervals, each priced as
    # `guidance_interval` (an independent construction, in times) prices it.
    from mlem_jax._verdict import _stitch_prices

    labels, spent, bias = _stitch_prices(cal, 8, "flops")
    ends = np.append(*cal.steps(8)[:1], T1)
    windows = [(i, label) for i, label in enumerate(labels) if "interval" in label]
    # Step ranges [a, b) cut at tenths of the 8 steps (rounded: 0, 1, …, 8), all
    # but [0, 8), which is full guidance.
    assert len(windows) == 9 * 8 // 2 - 1
    for i, label in windows[::7]:
        a, b = (int(x) for x in label.split("steps ")[1].split(" of")[0].split("–"))
        interval = md.guidance_interval(2, sorted((ends[a], ends[b])), t0=T0, t1=T1)
        price = cal.predict(interval, cost="flops")
        assert spent[i] == pytest.approx(price.cost, rel=1e-9)
        assert bias[i] == pytest.approx(price.error, rel=1e-6)


# ---------------------------------------------------------------------------------
# Bad input


def test_bad_class_index_names_args():
    levels = md.cfg_levels(NET, 1.0, scale=W, num_classes=2)
    y0 = jnp.zeros((3, 2))
    with pytest.raises(Exception, match=r"`args` holds a class label outside \[0, 2\)"):
        out, _ = run(
            levels, mj.FixedProbabilities((1.0, 1.0)), md.DDIM(), y0,
            jnp.array([0, 1, 5]), KEY,
        )  # fmt: skip
        jax.block_until_ready(out)
    with pytest.raises(TypeError, match="`args` must be the class labels"):
        run(levels, mj.FixedProbabilities((1.0, 1.0)), md.DDIM(), y0, None, KEY)
    with pytest.raises(TypeError, match="integer dtype"):
        run(levels, mj.FixedProbabilities((1.0, 1.0)), md.DDIM(), y0, jnp.ones(3), KEY)
    with pytest.raises(ValueError, match=r"shape \(\) or \(batch,\)"):
        run(
            levels, mj.FixedProbabilities((1.0, 1.0)), md.DDIM(), y0,
            jnp.zeros((2,), jnp.int32), KEY,
        )  # fmt: skip


def test_bad_guidance_arguments():
    with pytest.raises(ValueError, match="`scale` must be a finite number"):
        md.cfg_levels(NET, 1.0, scale=float("nan"), num_classes=2)
    with pytest.raises(ValueError, match="`scale` must be a finite number"):
        md.autoguidance_levels((NET, NET), (1.0, 2.0), scale=jnp.inf)
    with pytest.raises(TypeError, match="`scale` must be a number"):
        md.cfg_levels(NET, 1.0, scale="2", num_classes=2)
    with pytest.raises(
        ValueError, match="`null_label` must be a label outside the classes"
    ):
        md.cfg_levels(NET, 1.0, scale=W, num_classes=2, null_label=1)
    with pytest.raises(ValueError, match="`num_classes` must be a positive int"):
        md.cfg_levels(NET, 1.0, scale=W, num_classes=0)
    with pytest.raises(ValueError, match="`costs` must be one cost per network"):
        md.cfg_levels((NET, NET), 1.0, scale=W, num_classes=2)
    with pytest.raises(ValueError, match="at least 2"):
        md.autoguidance_levels((NET,), (1.0,), scale=W)
    with pytest.raises(
        ValueError, match=r"`interval` must be within the time range.*got \(0.5, 1.5\)"
    ):
        md.guidance_interval(2, (0.5, 1.5), t0=T0, t1=T1)
    with pytest.raises(ValueError, match="`interval` must be two finite times a < b"):
        md.guidance_interval(2, (0.7, 0.3), t0=T0, t1=T1)
    with pytest.raises(ValueError, match="`rates` must be of shape"):
        md.guidance_interval(3, (0.3, 0.7), t0=T0, t1=T1, rates=(1.0,))
    with pytest.raises(ValueError, match=r"`fns\[0\]` is a Refinement"):
        mj.Levels((mj.Refinement(lambda t, y, a, c: c),), (1.0,))
    with pytest.raises(TypeError, match="`refine` must be a callable"):
        mj.Refinement(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not bound to a coarse level"):
        mj.Refinement(lambda t, y, a, c: c)(0.0, jnp.zeros(2), None)
