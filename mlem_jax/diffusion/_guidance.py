"""Guided sampling: classifier-free guidance and autoguidance as multilevel ladders.

Both are two-level telescopes on the network's prediction:

* classifier-free guidance (CFG, Ho & Salimans 2021) with scale `w`:
  `x̂ = x̂_u + w (x̂_c − x̂_u) = x̂_c + (w − 1)(x̂_c − x̂_u)`;
* autoguidance (Karras et al. 2024), a large network guided by a smaller one:
  `x̂ = x̂_small + w (x̂_big − x̂_small)`.

The guided prediction is a `mlem_jax.Refinement` of the level below it, so the
builders here return ordinary `mlem_jax.Levels` for `mlem_sample`, `mlem_solve` and
`MLEMSolver`: `cfg_levels(net, costs, scale=w, num_classes=K)` is
`Levels((x̂_c, guided))` with `guided = refine(x̂_c)` evaluating only the
unconditional prediction. With `p = 1` on the guided level every step is full CFG
(and the conditional network runs once per step, not twice); with `p < 1` the
guidance correction `(B/p)(w − 1)(x̂_c − x̂_u)`, `B ~ Bernoulli(p)`, is randomised
exactly as an ML-EM correction and the step stays unbiased for the guided step of
every affine sampler; `p(t) ∈ {0, 1}` is the guidance interval (Kynkäänniemi et al.
2024, `guidance_interval`). A list of networks of increasing size gives the size
ladder with guidance on top: `(x̂_c^1, …, x̂_c^k, guided(x̂_c^k))`.

**Conditioning.** As in diffrax, the conditioning reaches the network through
`args`: a conditional network is `f(t, y, labels)` with `labels` an integer array
of class indices, of shape `()` (one class for the batch) or `(batch,)`, passed as
the sampler's `args=labels`. The null label `num_classes` (the extra class that
label dropout trains the unconditional prediction with) asks for the unconditional
prediction; `null_label=` sets another.

**References:** Ho & Salimans, "Classifier-Free Diffusion Guidance" (2021);
Karras et al., "Guiding a Diffusion Model with a Bad Version of Itself" (2024);
Kynkäänniemi et al., "Applying Guidance in a Limited Interval Improves Sample and
Distribution Quality in Diffusion Models" (2024).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from .. import _checks as checks
from .._levels import Levels, Refinement
from .._misc import concrete_or_none
from .._schedules import Rates

_SCALE = "(the guidance scale w; 1 is the conditional network alone, 0 the other)"


def _check_scale(name: str, scale) -> Array:
    """The guidance scale as a 0-d float array; a clear error unless it is a finite
    number (NaN or inf would make every guided prediction NaN; traced, it is
    checked where it is computed, with `eqx.error_if`)."""
    real = (numbers.Real, np.ndarray, jax.Array)
    if isinstance(scale, bool) or not isinstance(scale, real):
        raise checks.fail(name, "scale", f"a number {_SCALE}", scale, TypeError)
    value = jnp.asarray(scale)
    if value.shape != () or not jnp.issubdtype(value.dtype, jnp.number):
        raise checks.fail(name, "scale", f"a real scalar {_SCALE}", value)
    value = value.astype(jnp.result_type(float))
    concrete = concrete_or_none(value)
    if concrete is None:
        message = f"{name}: `scale` must be a finite number {_SCALE}."
        return eqx.error_if(value, ~jnp.isfinite(value), message)
    if not math.isfinite(float(concrete)):
        raise checks.fail(name, "scale", f"a finite number {_SCALE}", float(concrete))
    return value


_NETWORKS = "a network f(t, y, args) or a sequence of them, cheapest first"


def _check_networks(
    name: str, networks, costs, extra: int
) -> tuple[tuple[Callable, ...], tuple[Any, ...]]:
    """`(networks, costs)` as tuples; `Levels` checks the costs' values."""
    if callable(networks):
        networks = (networks,)
    try:
        networks = tuple(networks)
    except TypeError:
        raise checks.fail(name, "networks", _NETWORKS, networks, TypeError) from None
    for i, f in enumerate(networks):
        checks.function(name, f"networks[{i}]", f, "a callable f(t, y, args)")
    if isinstance(costs, numbers.Real):
        costs = (costs,)
    try:
        costs = tuple(costs)
    except TypeError:
        what = "a sequence of numbers, one per network"
        raise checks.fail(name, "costs", what, costs, TypeError) from None
    if len(costs) != len(networks):
        what = f"one cost per network ({len(networks)})"
        raise checks.fail(name, "costs", what, costs)
    if len(networks) < extra:
        what = f"at least {extra} networks"
        raise checks.fail(name, "networks", what, len(networks))
    return networks, costs


class _Conditional(eqx.Module):
    """A conditional network `f(t, y, labels)` that checks its labels: integers of
    shape `()` or `(batch,)`, each a class in `[0, num_classes)` or the null label
    (at run time with `eqx.error_if`, so also under `jit`)."""

    network: Callable
    num_classes: int = eqx.field(static=True)
    null_label: int = eqx.field(static=True)

    def __call__(self, t, y, args):
        return self.network(
            t, y, check_labels(args, y, self.num_classes, self.null_label)
        )


def check_labels(labels, y, num_classes: int, null_label: int):
    """`labels` (the sampler's `args`) checked to be class indices for the batch
    `y`; errors name `args`."""
    labels_of = "the class labels of the batch, integers of shape () or (batch,)"
    if labels is None:
        what = f"{labels_of} (pass `args=labels` to the sampler)"
        raise checks.fail("guidance", "args", what, labels, TypeError)
    try:
        labels = jnp.asarray(labels)
    except TypeError:
        raise checks.fail("guidance", "args", labels_of, labels, TypeError) from None
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        what = "class labels of an integer dtype"
        raise checks.fail("guidance", "args", what, labels.dtype, TypeError)
    leaves = jax.tree.leaves(y)
    batch = leaves[0].shape[0] if leaves and leaves[0].ndim > 0 else None
    if labels.shape not in ((), (batch,)):
        what = f"class labels of shape () or (batch,) = ({batch},)"
        raise checks.fail("guidance", "args", what, labels.shape)
    value = concrete_or_none(labels)
    message = (
        f"guidance: `args` holds a class label outside [0, {num_classes}) that is not "
        f"the null label {null_label}."
    )
    if value is not None:  # checked now, in NumPy (also while tracing)
        value = np.asarray(value)
        if np.any(((value < 0) | (value >= num_classes)) & (value != null_label)):
            raise ValueError(f"{message} Got {value.tolist()}.")
        return labels
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != null_label)
    return eqx.error_if(labels, jnp.any(bad), message)


class _CFGRefine(eqx.Module):
    """`x̂_c + (w − 1)(x̂_c − x̂_u)`, `x̂_u` the network with the null label."""

    network: Callable
    scale: Array
    num_classes: int = eqx.field(static=True)
    null_label: int = eqx.field(static=True)

    def __call__(self, t, y, args, coarse):
        labels = check_labels(args, y, self.num_classes, self.null_label)
        unconditional = self.network(t, y, jnp.full_like(labels, self.null_label))
        return jax.tree.map(
            lambda c, u: c + (self.scale.astype(c.dtype) - 1) * (c - u),
            coarse,
            unconditional,
        )


class _CFGJoint(eqx.Module):
    """`(x̂_c, x̂_c + (w − 1)(x̂_c − x̂_u))` from one call of the network on the
    batch and its copy with the null label (the network must treat the rows of
    the batch independently, as a UNet without batch statistics does)."""

    network: Callable
    scale: Array
    num_classes: int = eqx.field(static=True)
    null_label: int = eqx.field(static=True)

    def __call__(self, t, y, args):
        labels = check_labels(args, y, self.num_classes, self.null_label)
        batch = jax.tree.leaves(y)[0].shape[0]
        labels = jnp.broadcast_to(labels, (batch,))
        both = self.network(
            t,
            jax.tree.map(lambda a: jnp.concatenate([a, a]), y),
            jnp.concatenate([labels, jnp.full_like(labels, self.null_label)]),
        )
        c = jax.tree.map(lambda a: a[:batch], both)
        u = jax.tree.map(lambda a: a[batch:], both)
        guided = jax.tree.map(
            lambda c, u: c + (self.scale.astype(c.dtype) - 1) * (c - u), c, u
        )
        return c, guided


class _AutoguidanceRefine(eqx.Module):
    """`x̂_small + w (x̂_big − x̂_small)`, `x̂_small` the level below."""

    network: Callable
    scale: Array

    def __call__(self, t, y, args, coarse):
        big = self.network(t, y, args)
        return jax.tree.map(
            lambda s, b: s + self.scale.astype(s.dtype) * (b - s), coarse, big
        )


def cfg_levels(
    networks: Callable | Sequence[Callable],
    costs: float | Sequence[float],
    *,
    scale: float | ArrayLike,
    num_classes: int,
    null_label: int | None = None,
    guidance_cost: float | None = None,
    batched: bool = True,
) -> Levels:
    """Classifier-free guidance as a ladder: `(x̂_c^1, …, x̂_c^k, guided)` with the
    guided level `x̂_c^k + (w − 1)(x̂_c^k − x̂_u^k)`, a `mlem_jax.Refinement` of the
    top conditional network that evaluates only the unconditional prediction.

    **Arguments:**

    - `networks`: a conditional network `f(t, y, labels)` or a sequence of them,
        cheapest first (all predicting the same quantity: pass the sampler's
        `prediction`). The labels reach them as the sampler's `args` (see the
        module docstring); the null label gives the unconditional prediction.
    - `costs`: the cost of one evaluation of each network.
    - `scale`: the guidance scale `w` (`x̂_u + w (x̂_c − x̂_u)`; 1 is the
        conditional network alone, 0 the unconditional one), a finite number.
    - `num_classes`: the number of classes `K`; labels must lie in `[0, K)`.
    - `null_label`: the label of the unconditional prediction (default `K`).
    - `guidance_cost`: the cost of the guided level's own evaluation, the
        unconditional network (default: the top network's cost).
    - `batched`: at the steps where both the top conditional and the guided
        level run, evaluate the conditional and unconditional predictions in one
        call of the top network on the batch stacked twice (labels, then the null
        label), as standard CFG implementations do. Needs a network that treats
        the rows of its batch independently and takes labels of shape `(batch,)`;
        `False` makes two calls.

    **Returns:** a `mlem_jax.Levels` of `k + 1` levels. Its top level is full CFG;
    sample it with `mlem_sample(levels, schedule, ..., args=labels)`, where the
    schedule's last probability is the guidance's (1: every step, `guidance_interval`
    for an interval, a calibrated `Rates` for randomised guidance).
    """
    name = "cfg_levels"
    nets, cost_list = _check_networks(name, networks, costs, 1)
    w = _check_scale(name, scale)
    num_classes = checks.integer(name, "num_classes", num_classes)
    null = num_classes if null_label is None else null_label
    if isinstance(null, bool) or not isinstance(null, (int, np.integer)):
        raise checks.fail(name, "null_label", "an int", null, TypeError)
    if 0 <= null < num_classes:
        what = f"a label outside the classes [0, {num_classes})"
        raise checks.fail(name, "null_label", what, null)
    null = int(null)
    conditional = tuple(_Conditional(f, num_classes, null) for f in nets)
    checks.instance(name, "batched", batched, bool, "a bool")
    joint = _CFGJoint(nets[-1], w, num_classes, null) if batched else None
    guided = Refinement(_CFGRefine(nets[-1], w, num_classes, null), None, joint)
    extra = cost_list[-1] if guidance_cost is None else guidance_cost
    return Levels(conditional + (guided,), cost_list + (extra,))


def autoguidance_levels(
    networks: Sequence[Callable],
    costs: Sequence[float],
    *,
    scale: float | ArrayLike,
) -> Levels:
    """Autoguidance as a ladder: the last network guided by the one below it,
    `x̂_small + w (x̂_big − x̂_small)`.

    The guided level is a `mlem_jax.Refinement` of the guide `x̂_small`: the ladder
    `(x̂^1, …, x̂^{k−1}, guided)` is the size ladder whose top increment is scaled by
    `w`, `guided − x̂_small = w (x̂_big − x̂_small)`, so the big network runs only
    where its correction fires and the small one is evaluated once per step.

    **Arguments:**

    - `networks`: at least two networks `f(t, y, args)`, cheapest first; the last
        is guided by the one before it (`args` reaches both, e.g. class labels).
    - `costs`: the cost of one evaluation of each network.
    - `scale`: the guidance scale `w` (1: the big network alone), a finite number.

    **Returns:** a `mlem_jax.Levels` with one level per network, the top one guided.
    """
    name = "autoguidance_levels"
    nets, cost_list = _check_networks(name, networks, costs, 2)
    w = _check_scale(name, scale)
    guided = Refinement(_AutoguidanceRefine(nets[-1], w))
    return Levels(nets[:-1] + (guided,), cost_list)


def guidance_interval(
    num_levels: int,
    interval: Sequence[float],
    *,
    t0: float,
    t1: float,
    rates: ArrayLike | None = None,
    rate: float = math.inf,
) -> Rates:
    """The guidance interval (Kynkäänniemi et al. 2024) as a schedule: the top
    (guided) level fires at every step whose midpoint lies in `interval` and never
    outside it, where the prediction is the conditional network's alone.

    **Arguments:**

    - `num_levels`: the levels of the guided ladder (e.g. `cfg_levels(...)`).
    - `interval`: `(a, b)`, `a < b`, within the time range between `t0` and `t1`.
    - `t0`, `t1`: the sampler's time range.
    - `rates`: the rates of the levels below the guided one, shape
        `(num_levels − 1,)` (default: every step, `inf`).
    - `rate`: the guided level's rate inside the interval (default `inf`: every
        step, full guidance; a finite rate randomises it there).

    **Returns:** a `mlem_jax.Rates` with time bins at the interval's ends.
    """
    name = "guidance_interval"
    what = "an int >= 2 (a guided ladder)"
    num_levels = checks.integer(name, "num_levels", num_levels, minimum=2, what=what)
    try:
        lo_t, hi_t = sorted((float(t0), float(t1)))
    except (TypeError, ValueError):
        raise checks.fail(name, "t0, t1", "numbers", (t0, t1), TypeError) from None
    try:
        a, b = (float(x) for x in interval)
    except (TypeError, ValueError):
        what = "two numbers (a, b)"
        raise checks.fail(name, "interval", what, interval, TypeError) from None
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise checks.fail(name, "interval", "two finite times a < b", (a, b))
    if not (lo_t <= a and b <= hi_t):
        what = f"within the time range [{lo_t:g}, {hi_t:g}] of `t0` and `t1`"
        raise checks.fail(name, "interval", what, (a, b))
    if rates is None:
        rates = np.full((num_levels - 1,), np.inf)
    below = np.asarray(rates, np.float64).reshape(-1)
    if below.shape != (num_levels - 1,):
        what = f"of shape (num_levels - 1,) = ({num_levels - 1},)"
        raise checks.fail(name, "rates", what, np.shape(rates))
    if not (isinstance(rate, numbers.Real) and rate > 0):
        raise checks.fail(name, "rate", "a positive number", rate)
    edges, guided = [lo_t], []
    if a > lo_t:
        edges.append(a)
        guided.append(0.0)
    edges.append(b)
    guided.append(float(rate))
    if b < hi_t:
        edges.append(hi_t)
        guided.append(0.0)
    table = np.concatenate(
        [np.tile(below, (len(guided), 1)), np.asarray(guided)[:, None]], axis=1
    )
    dtype = jnp.result_type(float)
    return Rates(jnp.asarray(table, dtype), jnp.asarray(edges, dtype))
