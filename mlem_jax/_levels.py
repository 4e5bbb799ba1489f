"""The drift hierarchy `f^1, …, f^k` of an ML-EM solve."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np

from . import _checks as checks

DriftFn = Callable[[Any, Any, Any], Any]
# (t, y, args, coarse) -> the refined value, shaped like y.
RefineFn = Callable[[Any, Any, Any, Any], Any]


class Refinement(eqx.Module):
    """A level computed from the value of the level below it:
    `f^l(t, y, args) = refine(t, y, args, f^{l−1}(t, y, args))`.

    The ML-EM step evaluates the level below anyway (it is the coarse half of the
    increment `f^l − f^{l−1}`), so a refinement level receives that value instead
    of evaluating it a second time: guidance is the example. Classifier-free
    guidance on a conditional network `f^{l−1} = x̂_c` is the refinement
    `refine = x̂_c + (w − 1)(x̂_c − x̂_u(t, y))`, which evaluates only the
    unconditional prediction (see `mlem_jax.diffusion.cfg_levels`).

    Put it in `mlem_jax.Levels` after the level it refines, unbound:
    `mj.Levels((f_c, mj.Refinement(g)), costs=(c_c, c_g))`. `Levels` binds it to the
    level below (`coarse`), which makes it an ordinary level function `f(t, y, args)`
    wherever a level is evaluated on its own (`levels.top`, `em_solve`, calibration);
    the step of every multilevel integrator shares the value instead, and evaluates
    the level below whenever the refinement runs, even where it is not in the
    step's ladder (below the step's base level: then the pair counts as the base).
    Its `cost` in `Levels.costs` is that of `refine` alone (the coarse level is paid
    for as its own level, in `info.evaluations` too).

    The bound `coarse` is a second reference to the level below in the `Levels`
    PyTree: differentiate with respect to level parameters through `Levels.fns[l]`
    of the unbound levels, or sum the two gradients.

    **Arguments:**

    - `refine`: `refine(t, y, args, coarse) -> value`, a PyTree like `y`.
    - `coarse`: the level below; leave it `None`, `Levels` sets it.
    - `joint`: optional `joint(t, y, args) -> (coarse value, refined value)`, the
        level below and this one in one call, used at the steps where both run
        (e.g. CFG's conditional and unconditional predictions as one batch of twice
        the size, as standard CFG implementations evaluate them). It must agree
        with `coarse` and `refine`.
    """

    refine: RefineFn
    coarse: DriftFn | None = None
    joint: Callable[[Any, Any, Any], tuple[Any, Any]] | None = None

    def __check_init__(self):
        what = "a callable refine(t, y, args, coarse)"
        checks.function("Refinement", "refine", self.refine, what)
        if self.joint is not None:
            what = "a callable joint(t, y, args) or None"
            checks.function("Refinement", "joint", self.joint, what)
        if self.coarse is not None:
            what = "a level function f(t, y, args) or None"
            checks.function("Refinement", "coarse", self.coarse, what)

    def __call__(self, t, y, args):
        if self.coarse is None:
            why = "not bound to a coarse level; put it in mlem_jax.Levels after it"
            raise TypeError(f"Refinement: this refinement is {why}.")
        return self.refine(t, y, args, self.coarse(t, y, args))


def _is_number(c) -> bool:
    """A real number or a 0-d numeric array; not a bool, nor a string (which
    `float("8")` would convert)."""
    if isinstance(c, bool) or not isinstance(c, (numbers.Real, np.ndarray, jax.Array)):
        return False
    if isinstance(c, numbers.Real):
        return True
    return c.shape == () and bool(np.issubdtype(c.dtype, np.number))


def refinements(fns: Sequence) -> tuple[bool, ...]:
    """Which of the level functions `fns` are `Refinement`s (static)."""
    return tuple(isinstance(f, Refinement) for f in fns)


class Levels(eqx.Module):
    """A hierarchy of drift approximations of increasing accuracy and cost.

    Level `l` is a function `f^l(t, y, args)` returning an array shaped like `y`
    (with `y` carrying any batch axes the caller puts in it). ML-EM uses the
    increments `Δ_l = f^l − f^{l−1}` (with `f^0 = 0`), so the last level is the
    drift the solve is unbiased for.

    **Arguments:**

    - `fns`: the level functions, cheapest first. Each may be a plain function or an
        `equinox.Module` (its arrays are then differentiable parameters), or (not
        first) a `mlem_jax.Refinement` of the level below it.
    - `costs`: relative cost of one evaluation of each level (positive and finite;
        for example FLOPs of one batched evaluation). Increasing costs are typical
        but not required. Used for cost accounting (`SolveInfo.cost`) and
        calibration, never for control flow.

    **Example:**

    ```python
    levels = mj.Levels(fns=(f1, f2, f3), costs=(1.0, 8.0, 64.0))
    ```
    """

    fns: tuple[DriftFn, ...]
    costs: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, fns: Sequence[DriftFn], costs: Sequence[float]):
        if callable(fns):
            what = "a sequence of level functions (`fns=(f,)`), not a single function"
            raise checks.fail("Levels", "fns", what, type(fns).__name__, TypeError)
        fns = tuple(fns)
        if len(fns) == 0:
            raise checks.fail("Levels", "fns", "at least one level", fns)
        for i, fn in enumerate(fns):
            checks.function("Levels", f"fns[{i}]", fn, "a callable f(t, y, args)")
        try:
            costs = tuple(costs)
        except TypeError as e:
            got = type(costs).__name__
            what = "a sequence of numbers, one per level"
            raise checks.fail("Levels", "costs", what, got, TypeError) from e
        for i, c in enumerate(costs):
            if not _is_number(c):
                what = "a number (e.g. FLOPs of one evaluation)"
                raise checks.fail("Levels", f"costs[{i}]", what, c, TypeError)
        n, k = len(costs), len(fns)
        if n != k:
            raise ValueError(f"Levels: `costs` has {n} entries but `fns` has {k}.")
        costs = tuple(
            checks.number("Levels", f"costs[{i}]", c) for i, c in enumerate(costs)
        )
        bound = []
        for i, fn in enumerate(fns):
            if isinstance(fn, Refinement):
                if i == 0:
                    why = "a Refinement; put it after the level it refines"
                    raise ValueError(f"Levels: `fns[0]` is {why}.")
                fn = Refinement(fn.refine, bound[-1], fn.joint)
            bound.append(fn)
        self.fns = tuple(bound)
        self.costs = costs

    @property
    def num_levels(self) -> int:
        """The number of levels `k`."""
        return len(self.fns)

    @property
    def top(self) -> DriftFn:
        """The most accurate level `f^k`: the drift that ML-EM is unbiased for."""
        return self.fns[-1]
