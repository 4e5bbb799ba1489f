"""One ML-EM drift estimate, shared by the functional solver and `MLEMSolver`."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jaxtyping import Array, Bool, Float, PyTree

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


@custom_vmap
def _unbatched(draws):
    return draws


@_unbatched.def_vmap
def _unbatched_rule(axis_size, in_batched, draws):
    del axis_size
    if in_batched[0]:
        raise ValueError(BATCHED_DRAWS_MESSAGE)
    return draws, False


def level_draws(
    uniforms: Float[Array, " k"], probs: Float[Array, " k"]
) -> tuple[Bool[Array, " k"], Bool[Array, " k"], Float[Array, " k"]]:
    """From the uniforms and probabilities of one step: `(fires, needed, weights)`.

    `fires[l] = B_l`, `needed[l] = B_l or B_{l+1}` (level `l` is the fine half of its
    own increment and the coarse half of the next one) and `weights[l] = B_l / p_l`
    (zero where `B_l = 0`, so `p_l = 0` is safe).

    Raises a clear error if the draws would be batched under `jax.vmap`.
    """
    fires = uniforms < probs
    fires = _unbatched(fires)
    needed = fires | jnp.concatenate([fires[1:], jnp.zeros((1,), bool)])
    safe_p = jnp.where(fires, probs, 1)
    weights = jnp.where(fires, 1 / safe_p, 0)
    return fires, needed, weights


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

    With `increments=True`, returns `(drift, terms)` with `terms[l]` the weighted
    increment `(B_l/p_l)(f^l − f^{l−1})(t, y)` of level `l` alone (zero where `B_l`
    is 0), e.g. to keep the last computed correction of each level.
    """

    # Walk the levels carrying (drift so far, previous level's value). A level that
    # is not needed returns the carry untouched, so a skipped branch does no work:
    # when B_{l+1} fires, level l was needed and `previous` holds f^l.
    # Differences are taken before weighting: (f^l − f^{l−1}) is small, so a large
    # 1/p_l multiplies it without the cancellation of Σ (w_l − w_{l+1}) f^l.

    def update(l, fn, carry):
        drift, previous, terms = carry
        value = level_value(fn, f"level {l + 1}", t, y, args)
        term = jax.tree.map(
            lambda v, p: weights[l].astype(v.dtype) * (v - p), value, previous
        )
        drift = jax.tree.map(jnp.add, drift, term)
        if increments:
            terms = terms[:l] + (term,) + terms[l + 1 :]
        return drift, value, terms

    zeros = jax.tree.map(jnp.zeros_like, y)
    carry = (zeros, zeros, (zeros,) * len(fns) if increments else ())
    for l, fn in enumerate(fns):  # noqa: E741
        if always is not None and always[l]:
            carry = update(l, fn, carry)
        else:
            carry = jax.lax.cond(
                needed[l],
                lambda c, l=l, fn=fn: update(l, fn, c),
                lambda c: c,
                carry,
            )
    return (carry[0], carry[2]) if increments else carry[0]


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
    if jax.tree.structure(value) != structure:
        raise ValueError(
            f"mlem_jax: {what} returned a PyTree of structure "
            f"{jax.tree.structure(value)}, expected the structure of `y` "
            f"{structure}. Each level f(t, y, args) must return a PyTree like y."
        )
    for v, yi in zip(jax.tree.leaves(value), jax.tree.leaves(y)):
        check_drift_output(v, yi, what)


def check_drift_output(value, y, what: str) -> None:
    """Raise a clear error unless `value` (an array, or the `jax.ShapeDtypeStruct` of
    one) is a floating array shaped like `y`. `what` names the function in the
    message, e.g. "level 2" or "`drift`"."""
    if value is None:
        raise TypeError(
            f"mlem_jax: {what} returned None; each level f(t, y, args) must return an "
            "array like y (did the function forget a `return`?)."
        )
    if not hasattr(value, "dtype"):
        try:
            value = jnp.asarray(value)
        except TypeError as e:
            raise TypeError(
                f"mlem_jax: {what} returned {type(value).__name__}; each level "
                "f(t, y, args) must return an array like y."
            ) from e
    if value.shape != y.shape:
        raise ValueError(
            f"mlem_jax: {what} returned shape {value.shape}, expected the shape of `y` "
            f"{y.shape}. Each level f(t, y, args) must return an array like y."
        )
    # int/bool would be cast silently (a truncated drift); complex for a real `y`
    # would drop its imaginary part. A complex `y` takes real or complex values.
    expected = (
        jnp.inexact if jnp.issubdtype(y.dtype, jnp.complexfloating) else jnp.floating
    )
    if not jnp.issubdtype(value.dtype, expected):
        raise TypeError(
            f"mlem_jax: {what} returned dtype {value.dtype}, expected a "
            f"{'floating or complex' if expected is jnp.inexact else 'floating'} dtype "
            f"like `y` ({y.dtype})."
        )
