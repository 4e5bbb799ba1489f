"""Schedule gradients: unbiasedness against a closed form, draws, cost, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax as mj

# Toy with a closed-form ∂E[loss]/∂p: an ODE whose levels have constant increments
# d_l, from y0 = 0 over [0, 1] in N steps of size h. Then
#   y1 = h Σ_n Σ_l (B_nl/p_nl) d_l,   E‖y1‖² = ‖Σ_l d_l‖² + h² Σ_n Σ_l ‖d_l‖²(1/p_nl − 1)
# so ∂E/∂logit_{b,l} = −h² ‖d_l‖² Σ_{n in bin b} (1 − p_bl)/p_bl.
D = np.array([[1.0, 0.5], [0.3, -0.4], [0.2, 0.1]], np.float32)
P = np.array([[0.8, 0.3, 0.5], [0.6, 0.4, 0.2]])
N = 4


def _toy():
    levels = mj.Levels(
        [
            lambda t, y, a, i=i: jnp.broadcast_to(
                jnp.asarray(D[: i + 1].sum(0)), y.shape
            )
            for i in range(3)
        ],
        (1.0, 2.0, 4.0),
    )
    sched = mj.LogitProbabilities(
        jnp.asarray(np.log(P / (1 - P)), jnp.float32), jnp.array([0.0, 0.5, 1.0])
    )

    def loss(s, k):
        y, _ = mj.mlem_solve(
            levels, s, None, jnp.zeros((1, 2)), t0=0.0, t1=1.0, num_steps=N, key=k
        )
        return jnp.sum(y**2)

    h = 1 / N
    exact = -(N // 2) * h**2 * np.sum(D**2, 1)[None] * (1 - P) / P
    return levels, sched, loss, exact


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_schedule_gradient_is_unbiased(mode):
    levels, sched, loss, exact = _toy()
    repeats = 200

    @jax.jit
    def estimates(key):
        def one(k):
            k1, k2 = jax.random.split(k)
            _, g = mj.schedule_gradient(
                loss,
                sched,
                jax.random.split(k1, 8),
                t0=0.0,
                t1=1.0,
                num_steps=N,
                mode=mode,
                tangent_key=k2,
            )
            return g.logits

        return jax.lax.map(one, jax.random.split(key, repeats))

    g = np.asarray(estimates(jax.random.key(0)), np.float64)
    mean = g.mean(0)
    stderr = g.std(0, ddof=1) / np.sqrt(repeats)
    # Each estimate is an independent unbiased draw: the mean lies within a few
    # standard errors of the truth (5σ over 6 entries: a false failure ~1e-5).
    assert np.all(np.abs(mean - exact) < 5 * stderr), (mean, exact, stderr)
    # The estimate is informative, not just noise around anything.
    assert np.all(stderr < np.abs(exact).max())


def test_pathwise_term_alone_is_biased():
    # Without the score term (draws' dependence on p ignored) the estimate is
    # biased here; the full estimator is not (see above). Guards the test's power.
    levels, sched, loss, exact = _toy()

    @jax.jit
    def pathwise(key):
        return jax.lax.map(
            lambda k: jax.grad(loss)(sched, k).logits, jax.random.split(key, 1000)
        )

    g = np.asarray(pathwise(jax.random.key(1)), np.float64)
    stderr = g.std(0, ddof=1) / np.sqrt(g.shape[0])
    assert np.any(np.abs(g.mean(0) - exact) > 10 * stderr)


def test_draw_log_prob_matches_the_solve_draws():
    levels, sched, _, _ = _toy()
    key = jax.random.key(3)
    _, info = mj.mlem_solve(
        levels, sched, None, jnp.zeros((1, 2)), t0=0.0, t1=1.0, num_steps=N, key=key
    )
    # Rebuild the draws from the log-probability's gradient in the logits:
    # ∂ log P/∂logit = Σ_n (B − p), so the number of fires per bin is recovered.
    g = np.asarray(
        jax.grad(lambda s: mj.draw_log_prob(s, key, t0=0.0, t1=1.0, num_steps=N))(
            sched
        ).logits
    )
    fires = np.rint(g + (N // 2) * P).astype(int)
    assert np.all((fires >= 0) & (fires <= N // 2))
    # The top level is evaluated exactly when it fires.
    assert fires[:, -1].sum() == int(info.evaluations[-1])
    lp = mj.draw_log_prob(sched, key, t0=0.0, t1=1.0, num_steps=N)
    assert np.isfinite(float(lp)) and float(lp) < 0


def test_expected_cost_matches_mean_realised_cost():
    levels, sched, _, _ = _toy()
    expected = float(mj.expected_cost(levels, sched, t0=0.0, t1=1.0, num_steps=N))
    solve = jax.jit(
        lambda k: (
            mj.mlem_solve(
                levels,
                sched,
                None,
                jnp.zeros((1, 2)),
                t0=0.0,
                t1=1.0,
                num_steps=N,
                key=k,
            )[1].cost
        )
    )
    costs = np.asarray(jax.lax.map(solve, jax.random.split(jax.random.key(0), 2000)))
    assert abs(costs.mean() - expected) < 5 * costs.std() / np.sqrt(costs.size)


def test_expected_cost_counts_the_level_a_refinement_evaluates():
    # Level 2 is a Refinement of level 1: the step evaluates level 1 wherever level
    # 2 runs, also where B_3 alone fires (level 1 is not in that step's ladder).
    # The expected cost must count that (as `info.cost` does), and the count without
    # it must be measurably off, so this test can tell the two apart.
    base, _, _, _ = _toy()
    coarse, middle, top = base.fns
    refine = mj.Refinement(lambda t, y, a, c: c + jnp.asarray(D[1]))
    levels = mj.Levels((coarse, refine, top), (8.0, 1.0, 2.0))
    sched = mj.LogitProbabilities(
        jnp.asarray(np.log(P / (1 - P)), jnp.float32), jnp.array([0.0, 0.5, 1.0])
    )
    grid = dict(t0=0.0, t1=1.0, num_steps=N)
    expected = float(mj.expected_cost(levels, sched, **grid))
    plain = float(mj.expected_cost(mj.Levels(base.fns, levels.costs), sched, **grid))
    solve = jax.jit(
        lambda k: (
            mj.mlem_solve(levels, sched, None, jnp.zeros((1, 2)), key=k, **grid)[1].cost
        )
    )
    costs = np.asarray(jax.lax.map(solve, jax.random.split(jax.random.key(1), 4000)))
    se = costs.std() / np.sqrt(costs.size)
    assert abs(costs.mean() - expected) < 5 * se
    assert abs(costs.mean() - plain) > 5 * se


def test_logit_probabilities_match_rates_and_work_in_both_solvers():
    import diffrax

    rates = mj.Rates(
        jnp.array([[jnp.inf, 8.0, 2.0], [jnp.inf, 4.0, 1.0]]),
        jnp.array([0.0, 0.5, 1.0]),
    )
    sched = mj.LogitProbabilities.from_schedule(rates, t0=0.0, t1=1.0, num_steps=8)
    assert sched.always_fires(0.125) == (True, False, False)
    for t in (0.0, 0.3, 0.6, 0.9):
        np.testing.assert_allclose(
            sched.probabilities(t, 0.125), rates.probabilities(t, 0.125), rtol=1e-5
        )
    levels, _, _, _ = _toy()
    key = jax.random.key(0)
    y, _ = mj.mlem_solve(
        levels, sched, None, jnp.zeros((1, 2)), t0=0.0, t1=1.0, num_steps=8, key=key
    )
    sol = diffrax.diffeqsolve(
        mj.MultilevelTerm(levels),
        mj.MLEMSolver(sched, key=key),
        0.0,
        1.0,
        0.125,
        jnp.zeros((1, 2)),
    )
    np.testing.assert_allclose(sol.ys[-1], y, rtol=1e-5, atol=1e-6)


def test_learn_schedule_improves_the_toy_at_fixed_budget():
    # On the toy, level 2's increment is larger than level 3's: a flat start should
    # move probability to level 2, lowering E‖y − y_EM‖² at the same expected cost.
    levels, _, _, _ = _toy()
    init = mj.FixedProbabilities((1.0, 0.3, 0.3))
    budget = float(mj.expected_cost(levels, init, t0=0.0, t1=1.0, num_steps=N))
    kw = dict(t0=0.0, t1=1.0, num_steps=N)
    out = mj.learn_schedule(
        levels,
        None,
        jnp.zeros((1, 2)),
        key=jax.random.key(0),
        init=init,
        budget=budget,
        num_iterations=60,
        samples=8,
        **kw,
    )
    cost = float(mj.expected_cost(levels, out.schedule, **kw))
    assert abs(cost - budget) < 1e-3 * budget

    def added(s):  # closed-form E‖y − y_EM‖² = h² Σ_n Σ_l ‖d_l‖² (1/p − 1)
        ts = jnp.arange(N) / N
        p = np.asarray(jax.vmap(lambda t: s.probabilities(t, 1 / N))(ts))
        return float(np.sum(np.sum(D**2, 1) * (1 / p - 1)) / N**2)

    assert added(out.schedule) < 0.9 * added(out.initial)
    assert out.history["loss"].shape == (60,)


def test_bad_inputs():
    levels, sched, loss, _ = _toy()
    kw = dict(t0=0.0, t1=1.0, num_steps=N)
    with pytest.raises(ValueError, match="`logits` must have shape"):
        mj.LogitProbabilities(jnp.zeros((3, 2)), jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="`times` must be finite and strictly"):
        mj.LogitProbabilities(jnp.zeros((2, 2)), jnp.array([0.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="`logits` must be free of NaN"):
        mj.LogitProbabilities(jnp.array([0.0, jnp.nan]))
    with pytest.raises(ValueError, match="`keys` must be at least 2 keys"):
        mj.schedule_gradient(loss, sched, jax.random.split(jax.random.key(0), 1), **kw)
    with pytest.raises(ValueError, match="`mode` must be"):
        mj.schedule_gradient(
            loss, sched, jax.random.split(jax.random.key(0), 2), mode="x", **kw
        )
    with pytest.raises(ValueError, match="needs a `tangent_key`"):
        mj.schedule_gradient(
            loss, sched, jax.random.split(jax.random.key(0), 2), mode="forward", **kw
        )
    with pytest.raises(TypeError, match="`key` must be a PRNG key"):
        mj.draw_log_prob(sched, 0, **kw)
    init = mj.FixedProbabilities((1.0, 0.3, 0.3))
    common = dict(key=jax.random.key(0), init=init, **kw)
    y0 = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="exactly one of `budget` or `cost_weight`"):
        mj.learn_schedule(levels, None, y0, **common)
    with pytest.raises(ValueError, match="learn_schedule: `budget` must be above"):
        mj.learn_schedule(levels, None, y0, budget=0.5, **common)
    with pytest.raises(ValueError, match="`samples` must be an int ≥ 2"):
        mj.learn_schedule(levels, None, y0, cost_weight=0.1, samples=1, **common)
    with pytest.raises(ValueError, match="`init` has 2 levels"):
        mj.learn_schedule(
            levels,
            None,
            y0,
            cost_weight=0.1,
            key=jax.random.key(0),
            init=mj.FixedProbabilities((1.0, 0.5)),
            **kw,
        )
