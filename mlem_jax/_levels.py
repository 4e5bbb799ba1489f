"""The drift hierarchy `f^1, …, f^k` of an ML-EM solve."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np

DriftFn = Callable[[Any, Any, Any], Any]


class Levels(eqx.Module):
    """A hierarchy of drift approximations of increasing accuracy and cost.

    Level `l` is a function `f^l(t, y, args)` returning an array shaped like `y`
    (with `y` carrying any batch axes the caller puts in it). ML-EM uses the
    increments `Δ_l = f^l − f^{l−1}` (with `f^0 = 0`), so the last level is the
    drift the solve is unbiased for.

    **Arguments:**

    - `fns`: the level functions, cheapest first. Each may be a plain function or an
        `equinox.Module` (its arrays are then differentiable parameters).
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
            raise TypeError(
                "Levels: `fns` must be a sequence of level functions, cheapest first, "
                "not a single function; wrap it as `fns=(f,)`."
            )
        fns = tuple(fns)
        if len(fns) == 0:
            raise ValueError("Levels: `fns` is empty; expected at least one level.")
        for i, fn in enumerate(fns):
            if not callable(fn):
                raise TypeError(
                    f"Levels: `fns[{i}]` is {type(fn).__name__}, expected a callable "
                    "f(t, y, args)."
                )
        try:
            costs = tuple(costs)
        except TypeError as e:
            raise TypeError(
                "Levels: `costs` must be a sequence of numbers, one per level; got "
                f"{type(costs).__name__}."
            ) from e
        for i, c in enumerate(costs):
            # Strings would convert with float("8"): refuse them, and bools.
            if isinstance(c, bool) or not isinstance(
                c, (numbers.Real, np.ndarray, jax.Array)
            ):
                raise TypeError(
                    f"Levels: `costs[{i}]` is {c!r} ({type(c).__name__}); expected a "
                    "number (e.g. FLOPs of one evaluation)."
                )
            if isinstance(c, (np.ndarray, jax.Array)) and not (
                c.shape == () and np.issubdtype(c.dtype, np.number)
            ):
                raise TypeError(
                    f"Levels: `costs[{i}]` is an array of shape {c.shape} and dtype "
                    f"{c.dtype}; expected a number."
                )
        costs = tuple(float(c) for c in costs)
        if len(costs) != len(fns):
            raise ValueError(
                f"Levels: `costs` has {len(costs)} entries but `fns` has {len(fns)}; "
                "expected one cost per level."
            )
        for i, c in enumerate(costs):
            if not (math.isfinite(c) and c > 0):
                raise ValueError(
                    f"Levels: `costs[{i}]` is {c}; expected a positive finite number."
                )
        self.fns = fns
        self.costs = costs

    @property
    def num_levels(self) -> int:
        """The number of levels `k`."""
        return len(self.fns)

    @property
    def top(self) -> DriftFn:
        """The most accurate level `f^k`: the drift that ML-EM is unbiased for."""
        return self.fns[-1]
