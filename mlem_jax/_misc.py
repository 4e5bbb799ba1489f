"""Small internal helpers shared by several modules."""

from __future__ import annotations

import jax
import numpy as np


def concrete_or_none(x) -> np.ndarray | None:
    """`x` as a NumPy array if its value is known now (not a tracer), else `None`.

    Validation of array arguments runs only on concrete values, so that the public
    constructors still work inside `jax.jit`, `jax.vmap` and `jax.grad`.
    """
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
