"""`MLEMSolver` inside diffrax.diffeqsolve: Euler at p = 1, the functional
`mlem_solve` reproduced, vmap, PyTree and complex states, refusals, the statistics
of one step, gradients."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from helpers import DIRECTIONS, nonlinear_levels

import mlem_jax as mj
from mlem_jax._brownian import split_key, step_uniforms
from mlem_jax._step import level_draws

KEY = jax.random.key(42)
SHAPE = (2, 3)
PROBS = (1.0, 0.5, 0.2)
NUM_STEPS = 8
LEVELS = nonlinear_levels()


def _g(t, y, args):
    return 0.5 + 0.2 * jnp.cos(y) * (1 + t)


def _g_operator(t, y, args):
    return lx.DiagonalLinearOperator(_g(t, y, args))


def _terms(levels, path):
    if path is None:
        return mj.MultilevelTerm(levels)
    control = diffrax.ControlTerm(_g_operator, path)
    return diffrax.MultiTerm(mj.MultilevelTerm(levels), control)


def _y0(dtype=jnp.float32):
    return jnp.linspace(-1.0, 1.5, np.prod(SHAPE), dtype=dtype).reshape(SHAPE)


CONSTANT = diffrax.ConstantStepSize()


def _save_ts(t0, t1):
    # Two interior grid times (concrete, as mlem_solve's `saveat.ts` must be).
    return t0 + (t1 - t0) * jnp.array([3.0, 5.0], t0.dtype) / NUM_STEPS


@eqx.filter_jit
def _solve(terms, solver, t0, t1, y0, args, controller):
    """One compiled solve shared by most tests: saves y0, two grid times and every
    step, and the solver state."""
    if isinstance(controller, diffrax.StepTo):
        dt0 = None
    else:
        dt0 = (t1 - t0) / NUM_STEPS
    subs = (
        diffrax.SubSaveAt(t0=True, ts=_save_ts(t0, t1)),
        diffrax.SubSaveAt(steps=True),
    )
    return diffrax.diffeqsolve(
        terms,
        solver,
        t0,
        t1,
        dt0,
        y0,
        args=args,
        stepsize_controller=controller,
        saveat=diffrax.SaveAt(subs=subs, solver_state=True),
        max_steps=NUM_STEPS,
        # ForwardMode: the primal solve is the same as with the default adjoint,
        # compiles in half the time, and accepts UnsafeBrownianPath.
        adjoint=diffrax.ForwardMode(),
    )


def _final(sol):
    return sol.ys[1][-1]


# --- MLEMSolver with every p_l = 1 is diffrax.Euler ---------------------------------


def _path(kind, t0, t1):
    if kind == "step":
        return mj.StepBrownianPath(SHAPE, KEY, t0=t0, t1=t1, num_steps=NUM_STEPS)
    if kind == "virtual":
        return diffrax.VirtualBrownianTree(
            jnp.minimum(t0, t1), jnp.maximum(t0, t1), tol=1e-3, shape=SHAPE, key=KEY
        )
    return diffrax.UnsafeBrownianPath(SHAPE, KEY)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_all_ones_is_euler(direction):
    t0, t1 = DIRECTIONS[direction]
    terms = _terms(LEVELS, _path("step", t0, t1))
    args = jnp.float32(1.3)
    ones = mj.FixedProbabilities((1.0, 1.0, 1.0))
    sol = _solve(terms, mj.MLEMSolver(ones, key=KEY), t0, t1, _y0(), args, CONSTANT)
    sol_euler = _solve(terms, diffrax.Euler(), t0, t1, _y0(), args, CONSTANT)
    # The telescope f1 + (f2 − f1) + (f3 − f2) equals f3 up to float32 rounding.
    np.testing.assert_allclose(sol.ys[1], sol_euler.ys[1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(_final(sol), _y0(), atol=1e-2)
    np.testing.assert_array_equal(sol.solver_state.evaluations, [NUM_STEPS] * 3)


# --- diffeqsolve(MLEMSolver) reproduces the functional mlem_solve --------------------


@pytest.mark.parametrize(
    "direction, noise, controller",
    [
        ("forward", "step", "constant"),
        ("reverse", "step", "constant"),
        ("reverse", "step", "step_to"),
        ("reverse", "virtual", "constant"),
        # UnsafeBrownianPath keys its draws on the bits of the query times: forward
        # on a dyadic grid, diffrax and the core ask for the same times.
        ("forward", "unsafe", "constant"),
        ("forward", "ode", "constant"),
        ("reverse", "ode", "constant"),
    ],
)
def test_matches_mlem_solve(direction, noise, controller):
    t0, t1 = DIRECTIONS[direction]
    sde = noise != "ode"
    # For the ODE, Rates: p_l depends on the signed step and time, so those must be
    # the core's too.
    schedule = mj.FixedProbabilities(PROBS) if sde else mj.Rates((jnp.inf, 3.0, 1.0))
    path = _path(noise, t0, t1) if sde else None
    args = jnp.float32(1.3)
    controller = (
        CONSTANT
        if controller == "constant"
        else diffrax.StepTo(ts=jnp.linspace(t0, t1, NUM_STEPS + 1))
    )
    terms = _terms(LEVELS, path)
    sol = _solve(
        terms, mj.MLEMSolver(schedule, key=KEY), t0, t1, _y0(), args, controller
    )
    ys, info = mj.mlem_solve(
        LEVELS,
        schedule,
        _g if sde else None,
        _y0(),
        t0=t0,
        t1=t1,
        num_steps=NUM_STEPS,
        key=KEY,
        args=args,
        # The core's own increments for the project's path (same key), else the
        # diffrax path itself.
        brownian=None if noise in ("step", "ode") else path,
        saveat=diffrax.SaveAt(t0=True, ts=_save_ts(t0, t1), steps=True),
    )
    np.testing.assert_allclose(jnp.concatenate(sol.ts), info.ts, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jnp.concatenate(sol.ys), ys, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sol.solver_state.evaluations, info.evaluations)
    # The schedule's draws matter: some expensive level was skipped.
    assert int(info.evaluations[-1]) < NUM_STEPS


@pytest.mark.parametrize("kind", ["stitch", "base_level"])
def test_stitch_and_base_levels_match_mlem_solve(kind):
    # The step's base level in diffrax's loop: a T-Stitch schedule (level 1, then
    # level 3) and rates with level 1 out of the ladder (p = (0, 1, 0.5)).
    t0, t1 = DIRECTIONS["reverse"]
    if kind == "stitch":
        grid = np.linspace(float(t0), float(t1), NUM_STEPS + 1)
        schedule = mj.Stitch.from_fractions(3, (0, 2), (0.5,), grid=grid)
        expected = [NUM_STEPS // 2, 0, NUM_STEPS // 2]
    else:
        h = abs(float(t1 - t0)) / NUM_STEPS
        schedule = mj.Rates((0.0, jnp.inf, 0.5 / h))
        expected = None
    args = jnp.float32(1.3)
    terms = _terms(LEVELS, _path("step", t0, t1))
    sol = _solve(terms, mj.MLEMSolver(schedule, key=KEY), t0, t1, _y0(), args, CONSTANT)
    ys, info = mj.mlem_solve(
        LEVELS,
        schedule,
        _g,
        _y0(),
        t0=t0,
        t1=t1,
        num_steps=NUM_STEPS,
        key=KEY,
        args=args,
        saveat=diffrax.SaveAt(t0=True, ts=_save_ts(t0, t1), steps=True),
    )
    np.testing.assert_allclose(jnp.concatenate(sol.ys), ys, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sol.solver_state.evaluations, info.evaluations)
    if expected is not None:
        assert info.evaluations.tolist() == expected
    else:
        assert int(info.evaluations[0]) == 0
        assert int(info.evaluations[1]) == NUM_STEPS


def test_deterministic_and_key_dependent():
    t0, t1 = DIRECTIONS["forward"]
    path = mj.StepBrownianPath(SHAPE, KEY, t0=t0, t1=t1, num_steps=NUM_STEPS)
    terms = _terms(LEVELS, path)
    sched = mj.FixedProbabilities(PROBS)
    args = jnp.float32(1.3)
    a = _solve(terms, mj.MLEMSolver(sched, key=KEY), t0, t1, _y0(), args, CONSTANT)
    b = _solve(terms, mj.MLEMSolver(sched, key=KEY), t0, t1, _y0(), args, CONSTANT)
    other = mj.MLEMSolver(sched, key=jax.random.key(7))
    c = _solve(terms, other, t0, t1, _y0(), args, CONSTANT)
    np.testing.assert_array_equal(a.ys[1], b.ys[1])
    assert not np.array_equal(_final(a), _final(c))


# --- vmap ---------------------------------------------------------------------------


def test_vmap_over_y0_with_unbatched_key():
    t0, t1 = DIRECTIONS["reverse"]
    path = mj.StepBrownianPath(SHAPE, KEY, t0=t0, t1=t1, num_steps=NUM_STEPS)
    terms = _terms(LEVELS, path)
    solver = mj.MLEMSolver(mj.FixedProbabilities(PROBS), key=KEY)
    args = jnp.float32(1.3)
    y0s = jnp.stack([_y0(), 2 * _y0(), -_y0()])
    batched = jax.vmap(
        lambda y: _final(_solve(terms, solver, t0, t1, y, args, CONSTANT))
    )(y0s)
    for i in range(y0s.shape[0]):
        single = _final(_solve(terms, solver, t0, t1, y0s[i], args, CONSTANT))
        np.testing.assert_allclose(batched[i], single, rtol=1e-6, atol=1e-6)


def test_vmap_over_key_raises():
    t0, t1 = DIRECTIONS["forward"]
    terms = _terms(LEVELS, None)
    sched = mj.FixedProbabilities(PROBS)
    keys = jax.random.split(KEY, 3)
    solve = lambda key: _final(
        _solve(terms, mj.MLEMSolver(sched, key=key), t0, t1, _y0(), 1.0, CONSTANT)
    )
    with pytest.raises(ValueError, match="level draws are batched under jax.vmap"):
        jax.vmap(solve)(keys)


def _event_solve(solver, y0, t1=5.0, schedule_dt=0.125):
    # Stops when the first component falls below 0.5: the number of steps depends
    # on y0, so diffrax's loop is batched under vmap over y0.
    event = diffrax.Event(lambda t, y, args, **kwargs: y[0, 0] < 0.5)
    return diffrax.diffeqsolve(
        mj.MultilevelTerm(LEVELS),
        solver,
        0.0,
        t1,
        schedule_dt,
        y0,
        args=jnp.float32(1.0),
        event=event,
        max_steps=64,
        saveat=diffrax.SaveAt(t1=True, solver_state=True),
        adjoint=diffrax.ForwardMode(),
    )


def _assert_branches(fn, *args):
    # Every level behind a p < 1 stays a real branch: a `cond`, not a `select_n`
    # that runs it for every batch element.
    jaxpr = str(jax.make_jaxpr(fn)(*args))
    assert jaxpr.count("cond[") >= 2


@pytest.mark.parametrize("over", ["t1", "t0", "y0_event"])
def test_vmap_batched_loop_keeps_draws_unbatched(over):
    # vmap over t0/t1, or over y0 with an event, batches diffrax's loop and its
    # step counter; the running elements share one count, so the draws stay
    # unbatched and each element equals its own solve.
    solver = mj.MLEMSolver(mj.FixedProbabilities(PROBS), key=KEY)
    if over == "y0_event":
        xs = jnp.stack([_y0() + 3.0, 2 * _y0() + 3.6, _y0() + 4.0])
        solve = lambda y0: _event_solve(solver, y0)
    elif over == "t1":
        xs = jnp.array([0.5, 1.0, 0.75], jnp.float32)
        solve = lambda t1: _event_solve(solver, _y0() + 9.0, t1=t1)
    else:
        xs = jnp.array([0.0, 0.25, -0.5], jnp.float32)
        solve = lambda t0: diffrax.diffeqsolve(
            mj.MultilevelTerm(LEVELS),
            solver,
            t0,
            1.0,
            0.125,
            _y0(),
            args=jnp.float32(1.0),
            max_steps=64,
            saveat=diffrax.SaveAt(t1=True, solver_state=True),
            adjoint=diffrax.ForwardMode(),
        )
    batched = jax.jit(jax.vmap(solve))(xs)
    counts = set()
    for i in range(xs.shape[0]):
        single = jax.jit(solve)(xs[i])
        np.testing.assert_allclose(batched.ts[i], single.ts, rtol=1e-6)
        np.testing.assert_allclose(batched.ys[i], single.ys, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(
            batched.solver_state.evaluations[i], single.solver_state.evaluations
        )
        counts.add(int(single.solver_state.step))
    assert len(counts) == xs.shape[0]  # the elements really took different steps
    _assert_branches(jax.vmap(lambda x: solve(x).ys), xs)


def test_vmap_batched_probabilities_raise_naming_them():
    # Rates depend on the step size: under vmap over t1 they are genuinely batched.
    solver = mj.MLEMSolver(mj.Rates((jnp.inf, 3.0, 1.0)), key=KEY)
    t1s = jnp.array([0.5, 1.0], jnp.float32)
    with pytest.raises(ValueError, match="level probabilities are batched"):
        jax.vmap(lambda t1: _event_solve(solver, _y0(), t1=t1, schedule_dt=t1 / 4))(t1s)


def test_vmap_over_t1_all_ones_is_euler():
    # Every p = 1: nothing is drawn, so nothing can be batched.
    solver = mj.MLEMSolver(mj.FixedProbabilities((1.0,)), key=KEY)
    terms = diffrax.ODETerm(lambda t, y, args: -y * jnp.cos(t))
    solve = lambda t1, s: diffrax.diffeqsolve(terms, s, 0.0, t1, 0.1, _y0()).ys
    t1s = jnp.array([0.5, 1.0], jnp.float32)
    np.testing.assert_array_equal(
        jax.vmap(solve, (0, None))(t1s, solver),
        jax.vmap(solve, (0, None))(t1s, diffrax.Euler()),
    )


def test_pytree_state_equals_flat_state():
    # The estimator is linear and the draws are shared by the whole state: a PyTree
    # state solves exactly as the same numbers in one flat array.
    def split(y):
        return {"a": y[0], "b": (y[1:].reshape(2, 3), y[7:])}

    def flat(y):
        return jnp.concatenate(
            [y["a"][None], y["b"][0].reshape(-1), y["b"][1].reshape(-1)]
        )[:7]

    y0 = jnp.linspace(-1.0, 1.0, 7, dtype=jnp.float32)
    tree_levels = mj.Levels(
        tuple(lambda t, y, a, f=f: split(f(t, flat(y), a)) for f in LEVELS.fns),
        LEVELS.costs,
    )
    solver = mj.MLEMSolver(mj.FixedProbabilities(PROBS), key=KEY)

    def solve(levels, y0):
        return diffrax.diffeqsolve(
            mj.MultilevelTerm(levels),
            solver,
            1.0,
            0.0,
            -1 / NUM_STEPS,
            y0,
            args=jnp.float32(1.3),
            saveat=diffrax.SaveAt(t1=True, solver_state=True),
        )

    y0_tree = {"a": y0[0], "b": (y0[1:].reshape(2, 3), jnp.zeros((0,)))}
    tree, ref = solve(tree_levels, y0_tree), solve(LEVELS, y0)
    np.testing.assert_allclose(flat(jax.tree.map(lambda x: x[0], tree.ys)), ref.ys[0])
    np.testing.assert_array_equal(
        tree.solver_state.evaluations, ref.solver_state.evaluations
    )
    assert int(ref.solver_state.evaluations[-1]) < NUM_STEPS


def test_complex_state_equals_real_pair():
    # dy = c_l y dt with complex c_l, against the same solve on (Re y, Im y).
    cs = (-1.0 + 0.5j, -1.2 + 0.7j, -1.25 + 0.75j)
    complex_levels = mj.Levels(
        tuple(lambda t, y, a, c=c: jnp.complex64(c) * y for c in cs), LEVELS.costs
    )

    def real_level(c):
        def f(t, y, a):
            z = jax.lax.complex(y[0], y[1]) * jnp.complex64(c)
            return jnp.stack([z.real, z.imag])

        return f

    real_levels = mj.Levels(tuple(real_level(c) for c in cs), LEVELS.costs)
    solver = mj.MLEMSolver(mj.FixedProbabilities(PROBS), key=KEY)
    solve = lambda levels, y0: diffrax.diffeqsolve(
        mj.MultilevelTerm(levels), solver, 0.0, 1.0, 1 / NUM_STEPS, y0
    ).ys[0]
    z0 = jnp.array([1.0 + 2.0j, -0.5j], jnp.complex64)
    z1 = solve(complex_levels, z0)
    pair = solve(real_levels, jnp.stack([z0.real, z0.imag]))
    np.testing.assert_allclose(z1.real, pair[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z1.imag, pair[1], rtol=1e-5, atol=1e-6)


# --- errors -------------------------------------------------------------------------


@pytest.mark.parametrize("dt0", [0.1, None])
@pytest.mark.parametrize("sde", [True, False], ids=["sde", "ode"])
def test_adaptive_controller_refused(dt0, sde):
    # As for diffrax.Euler, the error estimate is None and diffrax refuses adaptive
    # controllers itself; the docstring says why ML-EM cannot adapt.
    path = diffrax.VirtualBrownianTree(0.0, 1.0, tol=1e-3, shape=SHAPE, key=KEY)
    terms = _terms(LEVELS, path if sde else None)
    solver = mj.MLEMSolver(mj.FixedProbabilities(PROBS), key=KEY)
    with pytest.raises(RuntimeError, match="does not provide error estimates"):
        diffrax.diffeqsolve(
            terms,
            solver,
            0.0,
            1.0,
            dt0,
            _y0(),
            args=jnp.float32(1.0),
            stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-3),
        )
    assert "ML-EM cannot adapt its step size" in " ".join(mj.MLEMSolver.__doc__.split())


def _pytree_f(t, y, args):
    return {
        "a": -y["a"] * jnp.sin(t) + args,
        "b": (y["a"][:, None] * y["b"][0], jnp.cos(y["b"][1]) * t),
    }


def _pytree_y0(dtype):
    return {
        "a": jnp.linspace(-1.0, 1.0, 3, dtype=jnp.float32),
        "b": (jnp.ones((3, 2), dtype), jnp.full((2,), 0.5, dtype)),
    }


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("sde", [True, False], ids=["sde", "ode"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_ode_term_is_euler(direction, sde, dtype):
    # ODETerm(f) is a one-level ladder: at p = 1 the solver does diffrax.Euler's
    # arithmetic, on PyTree, complex and reverse-time problems, with a pytree noise.
    # Bit for bit, but for XLA fusing the two compiled programs differently: a few
    # float32 ulps (seen: 1 ulp in 7 of 8192 entries, reverse-time SDE).
    t0, t1 = DIRECTIONS[direction]
    terms = diffrax.ODETerm(_pytree_f)
    y0 = _pytree_y0(dtype)
    if sde:
        if dtype == jnp.complex64:
            pytest.skip("diffrax's Brownian paths are real")
        shape = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), y0)
        path = diffrax.VirtualBrownianTree(0.0, 1.0, tol=1e-3, shape=shape, key=KEY)
        noise = diffrax.ControlTerm(
            lambda t, y, a: lx.DiagonalLinearOperator(jax.tree.map(jnp.cos, y)), path
        )
        terms = diffrax.MultiTerm(terms, noise)
    one = mj.MLEMSolver(mj.FixedProbabilities((1.0,)), key=KEY)
    solve = eqx.filter_jit(
        lambda solver: (
            diffrax.diffeqsolve(
                terms,
                solver,
                t0,
                t1,
                (t1 - t0) / NUM_STEPS,
                y0,
                args=jnp.float32(0.3),
                saveat=diffrax.SaveAt(steps=True),
            ).ys
        )
    )
    ys, ys_euler = solve(one), solve(diffrax.Euler())
    for a, b in zip(jax.tree.leaves(ys), jax.tree.leaves(ys_euler)):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=4 * 2.0**-23, atol=1e-30)
    assert not np.allclose(ys["b"][1][-1], y0["b"][1], atol=1e-2)


def test_ode_term_schedule_mismatch_refused():
    solver = mj.MLEMSolver(mj.FixedProbabilities(PROBS), key=KEY)
    terms = diffrax.ODETerm(lambda t, y, args: -y)
    with pytest.raises(ValueError, match="has 3 levels but the ODETerm drift is a lad"):
        diffrax.diffeqsolve(terms, solver, 0.0, 1.0, 0.25, _y0())


def test_no_drift_term_refused():
    path = mj.StepBrownianPath(SHAPE, KEY, t0=0.0, t1=1.0, num_steps=4)
    noise = diffrax.ControlTerm(lambda t, y, a: lx.DiagonalLinearOperator(y), path)
    solver = mj.MLEMSolver(mj.FixedProbabilities((1.0,)), key=KEY)
    with pytest.raises(TypeError, match=r"got no drift term among \(ControlTerm\)"):
        diffrax.diffeqsolve(noise, solver, 0.0, 1.0, 0.25, _y0())


def test_integer_y0_refused():
    solver = mj.MLEMSolver(mj.FixedProbabilities(PROBS), key=KEY)
    with pytest.raises(TypeError, match="`y0` must be a PyTree of floating or complex"):
        solver.init(mj.MultilevelTerm(LEVELS), 0.0, 1.0, {"a": jnp.ones(2, int)}, 1.0)


def test_backsolve_adjoint_refused():
    solver = mj.MLEMSolver(mj.FixedProbabilities(PROBS), key=KEY)

    def loss(y0):
        sol = diffrax.diffeqsolve(
            mj.MultilevelTerm(LEVELS),
            solver,
            0.0,
            1.0,
            0.25,
            y0,
            args=jnp.float32(1.0),
            adjoint=diffrax.BacksolveAdjoint(),
        )
        return jnp.sum(sol.ys)

    with pytest.raises(TypeError, match="diffrax.BacksolveAdjoint is not supported"):
        jax.grad(loss)(_y0())


def test_schedule_level_mismatch_refused():
    solver = mj.MLEMSolver(mj.FixedProbabilities((1.0, 0.5)), key=KEY)
    with pytest.raises(ValueError, match="`schedule` has 2 levels but"):
        diffrax.diffeqsolve(
            mj.MultilevelTerm(LEVELS), solver, 0.0, 1.0, 0.25, _y0(), args=1.0
        )


def test_constructor_errors():
    with pytest.raises(TypeError, match="`schedule` must be a mlem_jax schedule"):
        mj.MLEMSolver((1.0, 0.5), key=KEY)
    with pytest.raises(ValueError, match="`key` must be a single PRNG key"):
        mj.MLEMSolver(mj.FixedProbabilities(PROBS), key=jax.random.split(KEY, 2))


# --- statistics of one ML-EM step ---------------------------------------------------


def test_one_step_mean_is_top_level():
    levels = LEVELS
    probs = jnp.array(PROBS)
    solver_probs = mj.FixedProbabilities(probs)
    terms = mj.MultilevelTerm(levels)
    t, h = 0.7, -0.1
    y0 = _y0()
    args = jnp.float32(1.3)

    def one_step(key):
        solver = mj.MLEMSolver(solver_probs, key=key)
        state = solver.init(terms, t, t + h, y0, args)
        y1, *_, state, _ = solver.step(terms, t, t + h, y0, args, state, False)
        return y1, state.evaluations

    num_keys = 4000
    keys = jax.random.split(jax.random.key(11), num_keys)
    # lax.map, not vmap: a batched solver key is refused (by design).
    y1s, evaluations = jax.jit(lambda ks: jax.lax.map(one_step, ks))(keys)
    expected = y0 + h * levels.top(t, y0, args)
    mean = y1s.mean(0)
    sem = y1s.std(0) / np.sqrt(num_keys)
    assert float(sem.min()) > 0  # the draws matter
    np.testing.assert_array_less(np.abs(mean - expected), 5 * sem + 1e-6)
    # Level l is evaluated when B_l or B_{l+1} fires.
    p = np.asarray(PROBS)
    p_next = np.append(p[1:], 0.0)
    rate = 1 - (1 - p) * (1 - p_next)
    err = np.abs(np.asarray(evaluations.mean(0)) - rate)
    np.testing.assert_array_less(err, 5 * np.sqrt(rate * (1 - rate) / num_keys) + 1e-9)


def test_step_draws_follow_key_layout():
    # Step n of MLEMSolver draws its levels from step_uniforms(level_key, n, k).
    terms = mj.MultilevelTerm(LEVELS)
    solver = mj.MLEMSolver(mj.FixedProbabilities(PROBS), key=KEY)
    y0, args = _y0(), jnp.float32(1.0)
    step = eqx.filter_jit(
        lambda t, state: solver.step(terms, t, t + 0.1, y0, args, state, False)[3]
    )
    state = solver.init(terms, 0.0, 0.1, y0, args)
    _, level_key = split_key(KEY)
    total = np.zeros(3, int)
    for n in range(5):
        state = step(jnp.float32(0.1 * n), state)
        u = step_uniforms(level_key, n, 3, y0.dtype)
        _, needed, _ = level_draws(u, jnp.asarray(PROBS, y0.dtype))
        total += np.asarray(needed, int)
        np.testing.assert_array_equal(state.evaluations, total)
    assert int(state.step) == 5


# --- gradients ----------------------------------------------------------------------


def test_gradients_reverse_forward_and_finite_differences():
    with jax.enable_x64(True):
        t0, t1 = 1.0, 0.0
        path = mj.StepBrownianPath(
            SHAPE, KEY, t0=t0, t1=t1, num_steps=NUM_STEPS, dtype=jnp.float64
        )
        terms = _terms(LEVELS, path)
        solver = mj.MLEMSolver(mj.FixedProbabilities(PROBS), key=KEY)

        def loss(params, adjoint):
            y0, args = params
            sol = diffrax.diffeqsolve(
                terms,
                solver,
                t0,
                t1,
                (t1 - t0) / NUM_STEPS,
                y0,
                args=args,
                adjoint=adjoint,
                max_steps=NUM_STEPS,
            )
            return jnp.sum(jnp.sin(sol.ys[-1]))

        params = (_y0(jnp.float64), jnp.float64(1.3))
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        reverse = {
            name: jax.jit(jax.grad(lambda x, a=adjoint: loss(unravel(x), a)))(flat)
            for name, adjoint in [
                ("recursive", diffrax.RecursiveCheckpointAdjoint()),
                ("direct", diffrax.DirectAdjoint()),
            ]
        }
        # One compiled forward-mode solve gives both the JVPs along the coordinate
        # directions (at `flat`) and the primal values for central differences.
        eps = 1e-6
        basis = jnp.eye(flat.size)
        points = jnp.concatenate(
            [flat + 0 * basis, flat + eps * basis, flat - eps * basis]
        )
        tangents = jnp.concatenate([basis, basis, basis])
        f = lambda x: loss(unravel(x), diffrax.ForwardMode())
        values, jvps = jax.jit(jax.vmap(lambda x, v: jax.jvp(f, (x,), (v,))))(
            points, tangents
        )
        forward = jvps[: flat.size]
        plus, minus = values[flat.size : 2 * flat.size], values[2 * flat.size :]
        central = (plus - minus) / (2 * eps)

        rev = reverse["recursive"]
        assert float(jnp.abs(rev).max()) > 1e-2
        np.testing.assert_allclose(reverse["direct"], rev, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(forward, rev, rtol=1e-10, atol=1e-12)
        # Central differences: truncation O(eps²) plus rounding O(1e-16/eps).
        np.testing.assert_allclose(central, rev, rtol=1e-7, atol=1e-8)


def test_brownian_path_of_another_shape_is_named_at_init():
    """A `StepBrownianPath` built for another shape failed inside a broadcast."""
    path = mj.StepBrownianPath((2, 2), KEY, t0=0.0, t1=1.0, num_steps=4)
    noise = diffrax.ControlTerm(lambda t, y, a: lx.DiagonalLinearOperator(y), path)
    terms = diffrax.MultiTerm(mj.MultilevelTerm(LEVELS), noise)
    solver = mj.MLEMSolver(mj.FixedProbabilities(PROBS), key=KEY)
    y0 = jnp.ones((2, 3))
    with pytest.raises(
        ValueError, match=r"Brownian path\) has increments of shape \(2, 2\).*\(2, 3\)"
    ):
        diffrax.diffeqsolve(terms, solver, 0.0, 1.0, 0.25, y0, args=1.0)
