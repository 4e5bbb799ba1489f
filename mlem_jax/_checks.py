"""The package's vocabulary of argument checks: each rule written once.

Every public function checks its arguments once, at its boundary, and names itself
and the argument in the error. The rules that recur (a positive int, a positive
finite number, one of a few strings, an instance of a class, a callable) live here,
so that a check is one line at the boundary and its message reads the same
everywhere:

    num_bins = checks.integer("calibrate_sampler", "num_bins", num_bins)
    cost = checks.number("em_solve", "cost", cost)

gives "calibrate_sampler: `num_bins` must be a positive int; got 0." Each returns
the value converted (`int`, `float`), so the caller keeps the checked value. `where`
is the public name the error starts with (`""` for none); `what` replaces the
description of what was expected where the default says too little.

Checks on values only known inside `jit` use `equinox.error_if` at their use, not
these (they raise on concrete Python values).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Collection
from typing import Any, cast

import numpy as np


def fail(where: str, arg: str, what: str, value: Any, error: type = ValueError):
    """The error "where: `arg` must be what; got value." (to `raise`)."""
    prefix = f"{where}: " if where else ""
    return error(f"{prefix}`{arg}` must be {what}; got {value!r}.")


def integer(
    where: str,
    arg: str,
    value: Any,
    *,
    minimum: int = 1,
    none_ok: bool = False,
    what: str | None = None,
) -> Any:
    """`value` as an `int` at least `minimum` (a Python or NumPy integer, not a
    bool or a float); `None` passes through when `none_ok`."""
    if value is None and none_ok:
        return None
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    n = cast(int, value)
    if not (ok and n >= minimum):
        if what is None:
            kind = {0: "a non-negative int", 1: "a positive int"}
            what = kind.get(minimum, f"an int ≥ {minimum}")
            what += " or None" if none_ok else ""
        raise fail(where, arg, what, value, ValueError if ok else TypeError)
    return int(n)


def number(
    where: str,
    arg: str,
    value: Any,
    *,
    zero_ok: bool = False,
    none_ok: bool = False,
    what: str | None = None,
) -> Any:
    """`value` as a finite `float` above zero (at least zero when `zero_ok`): a
    real Python or NumPy number or a 0-d array, not a bool; `None` passes through
    when `none_ok`."""
    if value is None and none_ok:
        return None
    value = cast(float, value)
    real = not isinstance(value, bool) and (
        isinstance(value, numbers.Real)
        or (np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.number))
    )
    x = float(np.asarray(value)) if real else math.nan
    if not (math.isfinite(x) and (x >= 0 if zero_ok else x > 0)):
        if what is None:
            what = "a non-negative" if zero_ok else "a positive"
            what += " finite number" + (" or None" if none_ok else "")
        raise fail(where, arg, what, value)
    return x


def choice(
    where: str, arg: str, value: Any, options: Collection, what: str | None = None
) -> Any:
    """`value` if it is one of `options` (compared with `==`, strings typically)."""
    if not (isinstance(value, type(next(iter(options)))) and value in options):
        listed = ", ".join(map(repr, options))
        raise fail(where, arg, what or f"one of {listed}", value)
    return value


def instance(where: str, arg: str, value: Any, types, what: str) -> Any:
    """`value` if it is an instance of `types`, else a `TypeError` saying `what`
    was expected and naming the type that came."""
    if not isinstance(value, types):
        raise fail(where, arg, what, _TypeName(value), TypeError)
    return value


def function(where: str, arg: str, value: Any, what: str) -> Callable:
    """`value` if it is callable, else a `TypeError` saying `what` was expected."""
    if not callable(value):
        raise fail(where, arg, what, _TypeName(value), TypeError)
    return value


class _TypeName:
    """Shows as the name of its value's type in an error (`got int`)."""

    def __init__(self, value):
        self.name = type(value).__name__

    def __repr__(self):
        return self.name
