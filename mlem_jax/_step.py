"""The level draws and the ML-EM drift estimate of one step: the one place that
implements them, called by every integrator (`mlem_solve`/`em_solve`, `MLEMSolver`,
the diffusion samplers) and by everything that rebuilds or prices the draws
(`draw_log_prob`, `expected_cost`, `Calibration.predict`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, PyTree

from ._brownian import step_uniforms
from ._levels import Refinement

BATCHED_DRAWS_MESSAGE = (
    "mlem_jax: the ML-EM level draws are batched under jax.vmap (the solve's `key`, "
    "its schedule or its times are batched). Batched draws would turn every level's "
    "lax.cond into a select that runs all levels for every sample, 4-20x slower than "
    "Euler-Maruyama. Keep the level draws unbatched: put the batch inside `y0` "
    "(shape (batch, ...)) and pass one `key` (Brownian increments are still drawn "
    "independently for every element of `y0`), or vmap with `in_axes=None` for `key`; "
    "for independent level draws per sample, run the solves one after another with "
    "jax.lax.map, which keeps the compute skipping."
)


def unbatching(batched: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """The identity on an array that `jax.vmap` never batches: under `vmap` it
    returns `batched(x)` (of the batched `x`, with the batch axis first) as an
    unbatched value. What keeps a `lax.cond`'s predicate unbatched."""

    @custom_vmap
    def unbatched(x):
        return x

    @unbatched.def_vmap
    def rule(axis_size, in_batched, x):
        del axis_size
        return (batched(x) if in_batched[0] else x), False

    return unbatched


def refuse_batching(message: str) -> Callable[[Array], Array]:
    """The identity on an array, raising `ValueError(message)` if `jax.vmap` batches
    its argument: a guard that keeps what decides a `lax.cond` unbatched. (Give it a
    boolean array: `custom_vmap` on a float breaks reverse-mode linearization.)"""

    def refuse(x):
        raise ValueError(message)

    return unbatching(refuse)


_unbatched = refuse_batching(BATCHED_DRAWS_MESSAGE)


def level_draws(
    uniforms: Float[Array, " k"], probs: Float[Array, " k"]
) -> tuple[Bool[Array, " k"], Bool[Array, " k"], Float[Array, " k"]]:
    """From the uniforms and probabilities of one step: `(fires, needed, weights)`.

    `fires[l] = B_l`, `needed[l] = B_l or B_{l+1}` (level `l` is the fine half of its
    own increment and the coarse half of the next one) and `weights[l] = B_l / p_l`
    (zero where `B_l = 0`, so `p_l = 0` is safe).

    **The step's base level.** The levels below the lowest one with `p_l > 0` are out
    of the step's ladder: they are never evaluated, and the lowest level `b` with
    `p_b > 0` (the *base*) has no coarse half, its increment is `f^b` itself. So
    with `p = (0, …, 0, 1, 0, …, 0)` the step runs level `b` alone (a T-Stitch
    segment), with `p = (0, 1, p_3, …)` it is the telescope of the ladder from level
    2 up, unbiased for the top level; a `p_l = 0` above the base drops that
    correction (a bias). With `p_1 > 0`, the usual case, the base is level 1.

    Raises a clear error if the draws would be batched under `jax.vmap`.
    """
    return _draws_from_fires(uniforms < probs, probs)


def ladder_draws(
    fires: Bool[Array, " k"],
    refines: Sequence[bool] | None = None,
) -> tuple[Bool[Array, " k"], Bool[Array, " k"], Float[Array, " k"]]:
    """`(fires, needed, weights)` of levels that fire where `fires` says, with weight
    1 and every level in the ladder (no base level: a level that does not fire is
    still the coarse half of the next one). The deterministic draws of
    `mlem_jax.diffusion.Periodic`. `refines` as in `step_draws`."""
    return _draws_from_fires(fires, jnp.ones(fires.shape), refines)


def _draws_from_fires(fires, probs, refines=None):
    fires = _unbatched(fires)
    # Level l is the coarse half of level l + 1 unless l + 1 is the base level (no
    # level at or below l has p > 0): the levels below the base are never needed.
    in_ladder = jnp.cumsum((probs > 0).astype(jnp.int32)) > 0
    coarse = fires[1:] & in_ladder[:-1]
    needed = fires | jnp.concatenate([coarse, jnp.zeros((1,), bool)])
    safe_p = jnp.where(fires, probs, 1)
    weights = jnp.where(fires, 1 / safe_p, 0)
    if refines is not None and any(refines):
        needed, weights = _with_refinements(needed, weights, in_ladder, refines)
    return fires, needed, weights


def _with_refinements(needed, weights, in_ladder, refines):
    """A `mlem_jax.Refinement` level takes the value of the level below it, so that
    level is needed whenever the refinement is (top down: chains of refinements).
    Where the level below is out of the step's ladder (the refinement is the base,
    or below it), it is evaluated for the refinement's sake with the refinement's
    weight: `w (f^{l−1} − 0) + w (f^l − f^{l−1}) = w f^l`, the base's own term."""
    for l in reversed(range(1, len(refines))):  # noqa: E741
        if refines[l]:
            needed = needed.at[l - 1].set(needed[l - 1] | needed[l])
            weights = weights.at[l - 1].set(
                jnp.where(in_ladder[l - 1], weights[l - 1], weights[l])
            )
    return needed, weights


def step_fires(
    schedule,
    level_key: PRNGKeyArray,
    n: ArrayLike,
    t,
    h,
    dtype,
    check_probabilities: Callable[[Array], object] | None = None,
) -> tuple[Float[Array, " k"], Bool[Array, " k"]]:
    """`(probs, fires)` of step `n` at time `t` with signed step `h`: the documented
    draws `B_l = U_l < p_l` with `p = schedule.probabilities(t, h)` and
    `U = step_uniforms(level_key, n, k)`, both in `dtype`.

    The contract every user of the draws shares (`step_draws` for the integrators,
    `draw_log_prob` and `schedule_gradient` to rebuild them). No batching check:
    vmapping this over steps or keys is fine. `check_probabilities(probs)`, if
    given, runs on the probabilities before the draw (`MLEMSolver` names batched
    probabilities in its error with it).
    """
    probs = schedule.probabilities(t, h).astype(dtype)
    if check_probabilities is not None:
        check_probabilities(probs)
    uniforms = step_uniforms(level_key, n, schedule.num_levels, dtype)
    return probs, uniforms < probs


class StepDraws(NamedTuple):
    """What an integrator needs of step `n`'s draws (see `level_draws`)."""

    needed: Bool[Array, " k"]
    weights: Float[Array, " k"]


def step_draws(
    schedule,
    level_key: PRNGKeyArray,
    n: ArrayLike,
    t,
    h,
    dtype,
    always: Sequence[bool] | None = None,
    check_probabilities: Callable[[Array], object] | None = None,
    refines: Sequence[bool] | None = None,
) -> StepDraws:
    """`(needed, weights)` of step `n`, for `mlem_drift`: `step_fires` then
    `level_draws`, with the fast path shared by every integrator: when the static
    `always` says every level fires at every step, nothing is drawn (all needed,
    weights 1: the values the draws give with every `p_l = 1`). The static
    `refines[l]` (`mlem_jax._levels.refinements(fns)`) says level `l` is a
    `mlem_jax.Refinement`: the level below it is then needed whenever it is, so
    `needed` counts what the step evaluates."""
    k = schedule.num_levels
    if always is not None and all(always):
        return StepDraws(jnp.ones((k,), bool), jnp.ones((k,), dtype))
    probs, fires = step_fires(schedule, level_key, n, t, h, dtype, check_probabilities)
    _, needed, weights = _draws_from_fires(fires, probs, refines)
    return StepDraws(needed, weights)


def expected_evaluations(probs, refines: Sequence[bool] | None = None):
    """The probability that each level is evaluated at a step, `1 − (1 − p_l)(1 −
    p_{l+1})` (level `l` runs when `B_l` or `B_{l+1}` fires; `p_{k+1} = 0`), for
    firing probabilities `probs` with the levels on the last axis (any leading
    axes); below the step's base level (the lowest with `p > 0`, see `level_draws`)
    nothing runs, and the base level is not the coarse half of anything. With
    `refines` (as `step_draws`), the level below a `mlem_jax.Refinement` also runs
    whenever the refinement does (so a guided base level costs its conditional
    network too): level `l` runs when any draw of its set `S_l` fires, `1 −
    Π_{j∈S_l}(1 − p_j)`. NumPy in, NumPy out (`Calibration.predict` prices in
    float64); JAX arrays give JAX arrays (`expected_cost` is differentiable)."""
    xp = np if isinstance(probs, np.ndarray) else jnp
    in_ladder = xp.cumsum((probs > 0).astype(xp.int32), axis=-1) > 0
    nxt = xp.concatenate([probs[..., 1:], xp.zeros_like(probs[..., :1])], axis=-1)
    nxt = xp.where(in_ladder, nxt, xp.zeros_like(nxt))
    if refines is None or not any(refines):
        return 1 - (1 - probs) * (1 - nxt)
    k = probs.shape[-1]
    # S_l = {l} ∪ {l + 1 if l is in the step's ladder}; a refinement at l adds S_l
    # to S_{l−1} (top down, as `_with_refinements` marks the needed levels).
    sets = [
        (xp.arange(k) == l) | ((xp.arange(k) == l + 1) & in_ladder[..., l : l + 1])
        for l in range(k)
    ]
    for l in reversed(range(1, k)):  # noqa: E741
        if refines[l]:
            sets[l - 1] = sets[l - 1] | sets[l]
    return xp.stack(
        [1 - xp.prod(xp.where(s, 1 - probs, 1), axis=-1) for s in sets], axis=-1
    )


@eqx.filter_jit
def probabilities_on_grid(schedule, ts, hs) -> Float[Array, "n k"]:
    """`schedule.probabilities(t_n, h_n)` at every step of a grid, shape `(n, k)`."""
    return jax.vmap(schedule.probabilities)(ts, hs)


def mlem_drift(
    fns: Sequence,
    needed: Bool[Array, " k"],
    weights: Float[Array, " k"],
    t,
    y: PyTree[Array],
    args,
    always: Sequence[bool] | None = None,
    increments: bool = False,
) -> PyTree[Array]:
    """The randomized telescope `Σ_l (B_l/p_l)(f^l − f^{l−1})(t, y)`.

    Each level is evaluated at most once, and only where `needed[l]`: the predicate
    is unbatched, so `lax.cond` is a real branch and a skipped level costs nothing.
    Levels flagged in the static `always` (known to fire every step, e.g. `p_1 = 1`)
    are evaluated directly, without a branch.

    `y` may be a PyTree of arrays (real or complex); every level must return a PyTree
    of the same structure. The estimator is linear, so it is taken leaf by leaf with
    the same draws for the whole state.

    A level that is a `mlem_jax.Refinement` is evaluated as `refine(t, y, args,
    f^{l−1}(t, y, args))` with the value of the level below from this walk, never a
    second evaluation of it: `needed` must then hold the level below wherever it
    holds the refinement (`step_draws(..., refines=...)` makes it so).

    With `increments=True`, returns `(drift, terms)` with `terms[l]` the weighted
    increment `(B_l/p_l)(f^l − f^{l−1})(t, y)` of level `l` alone (zero where `B_l`
    is 0), e.g. to keep the last computed correction of each level.
    """

    # Walk the levels carrying (drift so far, previous level's value). A level that
    # is not needed returns the carry untouched, so a skipped branch does no work:
    # when B_{l+1} fires, level l was needed and `previous` holds f^l.
    # Differences are taken before weighting: (f^l − f^{l−1}) is small, so a large
    # 1/p_l multiplies it without the cancellation of Σ (w_l − w_{l+1}) f^l.

    def add(l, value, carry):
        drift, previous, terms = carry
        term = jax.tree.map(
            lambda v, p: weights[l].astype(v.dtype) * (v - p), value, previous
        )
        drift = jax.tree.map(jnp.add, drift, term)
        if increments:
            terms = terms[:l] + (term,) + terms[l + 1 :]
        return drift, value, terms

    def update(l, fn, carry):
        if isinstance(fn, Refinement):
            # `previous` is f^{l−1}: the draws make level l − 1 needed with l.
            value = _cast_like(
                fn.refine(t, y, args, carry[1]), y, f"level {l + 1} (a Refinement)"
            )
        else:
            value = level_value(fn, f"level {l + 1}", t, y, args)
        return add(l, value, carry)

    def update_pair(l, fine, carry):
        # Levels l and l + 1 in one call of the refinement's `joint` (e.g. CFG's
        # conditional and unconditional predictions as one batch).
        coarse_value, value = fine.joint(t, y, args)
        coarse_value = _cast_like(coarse_value, y, f"level {l + 2}'s joint (coarse)")
        value = _cast_like(value, y, f"level {l + 2}'s joint")
        return add(l + 1, value, add(l, coarse_value, carry))

    def single(l, fn, carry):
        if always is not None and always[l]:
            return update(l, fn, carry)
        return jax.lax.cond(needed[l], lambda c: update(l, fn, c), lambda c: c, carry)

    zeros = jax.tree.map(jnp.zeros_like, y)
    carry = (zeros, zeros, (zeros,) * len(fns) if increments else ())
    l = 0  # noqa: E741
    while l < len(fns):
        fn = fns[l]
        fine = fns[l + 1] if l + 1 < len(fns) else None
        if (
            isinstance(fine, Refinement)
            and fine.joint is not None
            and not isinstance(fn, Refinement)
        ):
            # Where the refinement runs, level l runs too (`needed` says so).
            if always is not None and always[l + 1]:
                carry = update_pair(l, fine, carry)
            else:
                carry = jax.lax.cond(
                    needed[l + 1],
                    lambda c, l=l, fine=fine: update_pair(l, fine, c),
                    lambda c, l=l, fn=fn: single(l, fn, c),
                    carry,
                )
            l += 2  # noqa: E741
        else:
            carry = single(l, fn, carry)
            l += 1  # noqa: E741
    return (carry[0], carry[2]) if increments else carry[0]


def _cast_like(value, y, what: str):
    check_drift_tree(value, y, what)
    return jax.tree.map(lambda v, yi: jnp.asarray(v).astype(yi.dtype), value, y)


def level_value(fn, what: str, t, y: PyTree[Array], args) -> PyTree[Array]:
    """`fn(t, y, args)` checked to be a PyTree like `y` (`what` names `fn` in the
    error) and cast leaf by leaf to `y`'s dtypes."""
    value = fn(t, y, args)
    check_drift_tree(value, y, what)
    return jax.tree.map(lambda v, yi: jnp.asarray(v).astype(yi.dtype), value, y)


def check_drift_tree(value, y, what: str) -> None:
    """`check_drift_output` for a PyTree state: `value` (arrays, or the
    `jax.ShapeDtypeStruct`s of them) must have `y`'s structure and each leaf must
    pass `check_drift_output` against `y`'s leaf."""
    structure = jax.tree.structure(y)
    # (`None` is a leaf-like treedef with no leaves: a state of no arrays.)
    single = jax.tree_util.treedef_is_leaf(structure) and structure.num_leaves == 1
    if single or (value is None and structure.num_leaves > 0):
        check_drift_output(value, y, what)  # also the clear "returned None" message
        return
    got = jax.tree.structure(value)
    if got != structure:
        why = f"expected the structure of `y` {structure}: a PyTree like y"
        raise ValueError(
            f"mlem_jax: {what} returned a PyTree of structure {got}, {why}."
        )
    for v, yi in zip(jax.tree.leaves(value), jax.tree.leaves(y), strict=True):
        check_drift_output(v, yi, what)


def check_drift_output(value, y, what: str) -> None:
    """Raise a clear error unless `value` (an array, or the `jax.ShapeDtypeStruct` of
    one) is a floating array shaped like `y`. `what` names the function in the
    message, e.g. "level 2" or "`drift`"."""
    like_y = "each level f(t, y, args) must return an array like y"
    if value is None:
        why = f"{like_y} (did the function forget a `return`?)"
        raise TypeError(f"mlem_jax: {what} returned None; {why}.")
    if not hasattr(value, "dtype"):
        try:
            value = jnp.asarray(value)
        except TypeError as e:
            got = type(value).__name__
            raise TypeError(f"mlem_jax: {what} returned {got}; {like_y}.") from e
    if value.shape != y.shape:
        got = f"returned shape {value.shape}, expected the shape of `y` {y.shape}"
        raise ValueError(f"mlem_jax: {what} {got}; {like_y}.")
    # int/bool would be cast silently (a truncated drift); complex for a real `y`
    # would drop its imaginary part. A complex `y` takes real or complex values.
    expected = (
        jnp.inexact if jnp.issubdtype(y.dtype, jnp.complexfloating) else jnp.floating
    )
    kind = "floating or complex" if expected is jnp.inexact else "floating"
    if not jnp.issubdtype(value.dtype, expected):
        got = f"returned dtype {value.dtype}, expected a {kind} dtype like `y`"
        raise TypeError(f"mlem_jax: {what} {got} ({y.dtype}).")
