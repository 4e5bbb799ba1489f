"""Small internal helpers shared by several modules."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import ArrayLike

from . import _checks as checks

# A small table of numbers as a user writes it: an array or scalar, or a (nested)
# sequence of numbers, e.g. `(1.0, 0.5)` or `[[1.0, 0.5], [1.0, 0.2]]`. jaxtyping's
# `ArrayLike` alone refuses tuples and lists under runtime type checking.
NumbersLike = ArrayLike | Sequence[ArrayLike] | Sequence[Sequence[ArrayLike]]


EXTRAS = {"diffusion": ("PIL", "sklearn", "tqdm"), "cli": ("matplotlib",)}
"""The optional extras of the package and the top-level modules each installs
(`pip install 'mlem_jax[diffusion]'`, `'mlem_jax[cli]'`, which includes diffusion)."""


def missing_extra(error: ModuleNotFoundError, extra: str, what: str) -> Exception:
    """The error to raise when `error` is a missing module of the optional `extra`:
    a `ModuleNotFoundError` saying that `what` needs it and how to install it. Use
    as `except ModuleNotFoundError as e: raise missing_extra(e, "diffusion", ...)
    from e`; a module that is not the extra's is re-raised as it was."""
    top = (error.name or "").partition(".")[0]
    if top not in EXTRAS[extra]:
        return error
    return ModuleNotFoundError(
        f"mlem_jax: {what} needs {top!r}, which the `{extra}` extra installs: "
        f"pip install 'mlem_jax[{extra}]'.",
        name=error.name,
    )


def require_extra(extra: str, what: str) -> None:
    """Raise `missing_extra`'s error now unless every module of `extra` (and, for
    `cli`, of `diffusion`) is installed: for entry points that would otherwise fail
    only at their end (the CLI writes its PNG after sampling)."""
    extras = ("diffusion", extra) if extra == "cli" else (extra,)
    for name in extras:
        for module in EXTRAS[name]:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise missing_extra(ModuleNotFoundError(name=module), name, what)


def concrete_or_none(x) -> np.ndarray | None:
    """`x` as a NumPy array if its value is known now (not a tracer), else `None`.

    Validation of array arguments runs only on concrete values, so that the public
    constructors still work inside `jax.jit`, `jax.vmap` and `jax.grad`. Where a
    check guards against a silently wrong result it falls back to `eqx.error_if`
    on traced values (probabilities in `(0, 1]`, rates non-negative and not NaN,
    `StepBrownianPath` queries inside its grid); the others (`t0 != t1`, bin edges
    increasing, `saveat` times on the grid) are skipped when traced: pass those
    arguments as concrete values to have them checked.
    """
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_num_steps(name: str, num_steps) -> int:
    """`num_steps` as an `int`, the one rule for every grid of the package:
    `checks.integer`'s positive int (`np.int64(8)` from an array of step counts is
    fine; a bool, a float or `8.0` is not). Errors name `name`."""
    return checks.integer(name, "num_steps", num_steps)


def check_grid(name: str, t0, t1, num_steps) -> int:
    """`check_num_steps`, and `t0 != t1` when both are concrete; returns
    `num_steps` as an `int`."""
    num_steps = check_num_steps(name, num_steps)
    t0c, t1c = concrete_or_none(jnp.asarray(t0)), concrete_or_none(jnp.asarray(t1))
    if t0c is not None and t1c is not None and float(t0c) == float(t1c):
        raise ValueError(f"{name}: `t0` and `t1` must differ; both are {float(t0c)}.")
    return num_steps


def check_key(name: str, key) -> None:
    """Raise a clear error unless `key` is one PRNG key (typed or legacy uint32)."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        got = f"a key array of shape {key.shape} (for a batch, put it in `y0`)"
        if key.shape != ():
            raise ValueError(f"{name}: `key` must be a single PRNG key; got {got}.")
        return
    if (
        isinstance(key, (jax.Array, np.ndarray))
        and key.shape == (2,)
        and key.dtype == jnp.uint32
    ):
        return
    got = type(key).__name__ + (
        f" of shape {key.shape}" if hasattr(key, "shape") else ""
    )
    what = "a PRNG key from jax.random.key(seed) or jax.random.PRNGKey(seed)"
    raise TypeError(f"{name}: `key` must be {what}; got {got}.")


def time_dtype(y0) -> jnp.dtype:
    """The real dtype of times, step sizes, probabilities and weights for a state `y0`
    (a PyTree of arrays): the widest real dtype of its leaves (complex leaves count by
    their real part), at least float32 (a float16 time grid `t0 + n·h` loses distinct
    times after a few thousand steps)."""
    dtype = jnp.dtype(jnp.float32)
    for leaf in jtu.tree_leaves(y0):
        real = jnp.dtype(jnp.finfo(jnp.result_type(leaf)).dtype)
        if real.itemsize > dtype.itemsize:
            dtype = real
    return dtype
