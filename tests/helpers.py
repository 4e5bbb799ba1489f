"""Shared test helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8) -> bool:
    """Whether two pytrees have the same structure and allclose leaves."""
    if jax.tree.structure(x) != jax.tree.structure(y):
        return False
    return all(
        np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
        for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y))
    )


def fit_order(step_sizes, errors) -> float:
    """Least-squares slope of log(error) against log(step size): the observed order."""
    slope, _ = np.polyfit(np.log(np.asarray(step_sizes)), np.log(np.asarray(errors)), 1)
    return float(slope)


def rms(x, axis=None):
    """Root mean square of the Euclidean norm over the last axis."""
    x = jnp.asarray(x)
    return float(jnp.sqrt(jnp.mean(jnp.sum(x**2, axis=-1), axis=axis)))
