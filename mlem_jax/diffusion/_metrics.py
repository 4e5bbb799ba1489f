"""Offline sample-quality metrics: strong error, sliced Wasserstein, kernel MMD,
kernel (KID) distance."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .. import _checks as checks
from .._calibrate import trajectory_statistics


def _flat(where: str, x: Array, name: str) -> Array:
    """`x` (samples along a leading axis) as a matrix, one sample a row."""
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise checks.fail(where, name, "samples along a leading axis", x.shape)
    return x.reshape(x.shape[0], -1)


def strong_error(
    y: Float[Array, " batch *shape"], y_ref: Float[Array, " batch *shape"]
) -> Float[Array, ""]:
    """Pathwise (strong) error `sqrt(mean_b ‖y_b − y_ref_b‖²)` over a batch.

    `y` and `y_ref` must come from solves driven by the same Brownian increments (see
    `mlem_jax.em_solve`'s `key` / `brownian` arguments).
    """
    if jnp.shape(y) != jnp.shape(y_ref):
        what = f"of the same shape as `y`, {jnp.shape(y)}"
        raise checks.fail("strong_error", "y_ref", what, jnp.shape(y_ref))
    d = _flat("strong_error", y, "y") - _flat("strong_error", y_ref, "y_ref")
    return jnp.sqrt(jnp.mean(jnp.sum(d**2, axis=1)))


def _w2_sorted(a: Array, b: Array) -> Array:
    """Squared W2 between two 1-D empirical measures given as sorted columns.

    Exact for unequal sample counts: the quantile functions are step functions and are
    compared on the union of their breakpoints.
    """
    n, m = a.shape[0], b.shape[0]
    if n == m:
        return jnp.mean((a - b) ** 2, axis=0)
    u = jnp.sort(
        jnp.concatenate([jnp.arange(1, n + 1) / n, jnp.arange(1, m + 1) / m])
    ).astype(a.dtype)
    widths = jnp.diff(jnp.concatenate([jnp.zeros((1,), a.dtype), u]))
    mid = u - 0.5 * widths
    ia = jnp.minimum(jnp.floor(mid * n).astype(jnp.int32), n - 1)
    ib = jnp.minimum(jnp.floor(mid * m).astype(jnp.int32), m - 1)
    return jnp.sum(widths[:, None] * (a[ia] - b[ib]) ** 2, axis=0)


def sliced_wasserstein(
    x: Float[Array, " n *shape"],
    y: Float[Array, " m *shape"],
    key: PRNGKeyArray,
    num_projections: int = 256,
) -> Float[Array, ""]:
    """Sliced 2-Wasserstein distance between two sample sets, in pixel space.

    `SW_2(x, y) = sqrt(E_θ W_2²(θ·x, θ·y))` with `θ` uniform on the unit sphere,
    estimated with `num_projections` random directions (the same directions for both
    sets); each 1-D `W_2` between the empirical measures is exact, also for `n ≠ m`.

    **Arguments:**

    - `x`, `y`: samples with a leading sample axis and equal trailing shapes.
    - `key`: a JAX PRNG key for the directions.
    - `num_projections`: number of directions.

    **Returns:**

    A non-negative scalar.
    """
    xf, yf = _flat("sliced_wasserstein", x, "x"), _flat("sliced_wasserstein", y, "y")
    if xf.shape[1] != yf.shape[1]:
        what = f"samples of the same sample shape as `x`, {jnp.shape(x)[1:]}"
        raise checks.fail("sliced_wasserstein", "y", what, jnp.shape(y)[1:])
    theta = jr.normal(key, (xf.shape[1], num_projections), xf.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
    a = jnp.sort(xf @ theta, axis=0)
    b = jnp.sort(yf @ theta, axis=0)
    return jnp.sqrt(jnp.mean(_w2_sorted(a, b)))


def mmd(
    x: Float[Array, " n *shape"],
    y: Float[Array, " m *shape"],
    bandwidth: float | None = None,
) -> Float[Array, ""]:
    """Unbiased estimate of the squared kernel MMD with a Gaussian kernel.

    `k(a, b) = exp(−‖a − b‖² / (2 ℓ²))` in pixel space; `MMD² = E k(X, X') +
    E k(Y, Y') − 2 E k(X, Y)`, estimated with the unbiased U-statistic (so it can be
    slightly negative when the two distributions agree).

    **Arguments:**

    - `x`, `y`: samples with a leading sample axis (at least 2 each).
    - `bandwidth`: `ℓ`; default the median pairwise distance of the pooled samples.

    **Returns:**

    A scalar estimate of `MMD²`.
    """
    xf, yf = _flat("mmd", x, "x"), _flat("mmd", y, "y")
    n, m = xf.shape[0], yf.shape[0]
    if n < 2 or m < 2:
        raise checks.fail("mmd", "x" if n < 2 else "y", "at least 2 samples", min(n, m))

    def sqdist(a, b):
        return jnp.maximum(
            jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2 * a @ b.T, 0.0
        )

    dxx, dyy, dxy = sqdist(xf, xf), sqdist(yf, yf), sqdist(xf, yf)
    if bandwidth is None:
        pooled = jnp.concatenate([dxx.ravel(), dyy.ravel(), dxy.ravel()])
        width = jnp.sqrt(jnp.median(pooled))
    else:
        width = jnp.asarray(bandwidth, xf.dtype)
    s = 2.0 * width**2
    kxx = (jnp.sum(jnp.exp(-dxx / s)) - n) / (n * (n - 1))
    kyy = (jnp.sum(jnp.exp(-dyy / s)) - m) / (m * (m - 1))
    kxy = jnp.mean(jnp.exp(-dxy / s))
    return kxx + kyy - 2 * kxy


def kernel_distance(
    x: Float[Array, " n d"], y: Float[Array, " m d"], *, num_blocks: int = 8
) -> tuple[float, float]:
    """Kernel distance (KID) between two sets of feature vectors, and its standard
    error.

    The unbiased squared MMD with the cubic polynomial kernel `k(a, b) = (a·b/d +
    1)³` (Bińkowski et al., 2018, "Demystifying MMD GANs"), computed on
    `num_blocks` disjoint blocks: block `i` pairs the `i`-th of `num_blocks` equal
    parts of `x` with the `i`-th part of `y`. The estimate is the blocks' mean and
    the standard error their standard deviation over `sqrt(num_blocks)` (the
    blocks share no sample, so they are independent). Unbiased: it can be slightly
    negative when the two distributions agree.

    **Arguments:**

    - `x`, `y`: feature vectors `(n, d)` and `(m, d)`; at least 2 per block each.
    - `num_blocks`: at least 2.

    **Returns:** `(kid, standard_error)` as Python floats.
    """
    where = "kernel_distance"
    xf, yf = _flat(where, x, "x"), _flat(where, y, "y")
    num_blocks = _check_blocks(where, xf, yf, num_blocks, "x")
    values = _kid_blocks(xf, yf, num_blocks)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(num_blocks))


def _check_blocks(where: str, xf: Array, yf: Array, num_blocks, name: str) -> int:
    """`num_blocks` once the features `xf` (called `name`) and `yf` can be split
    into that many blocks of at least 2 samples each."""
    if xf.shape[1] != yf.shape[1]:
        what = f"of the same feature dimension as `{name}`, {xf.shape[1]}"
        raise checks.fail(where, "y", what, yf.shape[1])
    num_blocks = checks.integer(where, "num_blocks", num_blocks, minimum=2)
    fewer = min(xf.shape[0], yf.shape[0])
    if fewer < 2 * num_blocks:
        what = f"at least 2 samples per block, {2 * num_blocks} for {num_blocks} blocks"
        raise checks.fail(where, name if xf.shape[0] == fewer else "y", what, fewer)
    return num_blocks


def _kid_blocks(xf: Array, yf: Array, num_blocks: int) -> np.ndarray:
    """Unbiased cubic-kernel MMD² of each of `num_blocks` (x-block, y-block) pairs."""
    n, m = xf.shape[0] // num_blocks, yf.shape[0] // num_blocks
    d = xf.shape[1]
    xb = xf[: n * num_blocks].reshape(num_blocks, n, d)
    yb = yf[: m * num_blocks].reshape(num_blocks, m, d)

    def block(a, b):
        kaa = (a @ a.T / d + 1) ** 3
        kbb = (b @ b.T / d + 1) ** 3
        kab = (a @ b.T / d + 1) ** 3
        return (
            (jnp.sum(kaa) - jnp.trace(kaa)) / (n * (n - 1))
            + (jnp.sum(kbb) - jnp.trace(kbb)) / (m * (m - 1))
            - 2 * jnp.mean(kab)
        )

    return np.asarray(jax.vmap(block)(xb, yb), np.float64)


def kernel_distance_difference(
    x1: Float[Array, " n d"],
    x2: Float[Array, " n d"],
    y: Float[Array, " m d"],
    *,
    num_blocks: int = 8,
) -> tuple[float, float]:
    """`KID(x1, y) − KID(x2, y)` and its standard error, paired: block `i` of both
    sets is compared with the same block of `y`, so the reference's own noise
    cancels, and if `x1[j]` and `x2[j]` are paired samples (two samplers from the
    same prior draw and Brownian path), much of the samples' noise cancels too. The
    standard error is the block differences' standard deviation over
    `sqrt(num_blocks)`. Arguments as `kernel_distance`; `x1` and `x2` must have the
    same shape."""
    where = "kernel_distance_difference"
    f1, f2, yf = _flat(where, x1, "x1"), _flat(where, x2, "x2"), _flat(where, y, "y")
    if f1.shape != f2.shape:
        raise checks.fail(
            where, "x2", f"of the same shape as `x1`, {f1.shape}", f2.shape
        )
    num_blocks = _check_blocks(where, f1, yf, num_blocks, "x1")
    diff = _kid_blocks(f1, yf, num_blocks) - _kid_blocks(f2, yf, num_blocks)
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(num_blocks))


def drift_errors(
    fns: Sequence[Callable],
    ts: Float[Array, " T"],
    ys: Float[Array, "T batch *shape"],
    args: Any = None,
    reference: Callable | None = None,
) -> Float[Array, " k"]:
    """RMS drift error of each level against a reference along visited states.

    `e_l = sqrt(mean_{n,b} ‖f^l(t_n, y_{n,b}) − f_ref(t_n, y_{n,b})‖²)`, the quantity
    in DESIGN §1 used to measure γ from `log c_l = −γ log e_l + b`.

    **Arguments:**

    - `fns`: the level drifts `f(t, y, args)` (batched `y`).
    - `ts`: the times of the states, shape `(T,)`.
    - `ys`: the states, shape `(T, batch, *shape)` (e.g. a solve's `SaveAt(steps=True)`
      output with the initial state prepended).
    - `args`: passed to every drift.
    - `reference`: the reference drift; default the last of `fns`.

    **Returns:**

    An array of shape `(len(fns),)`; the reference's own entry is 0.
    """
    ts, ys = jnp.asarray(ts), jnp.asarray(ys)
    if ts.ndim != 1:
        raise checks.fail("drift_errors", "ts", "times of shape (T,)", ts.shape)
    if ys.shape[0] != ts.shape[0]:
        what = f"states (T, batch, ...) with the same T = {ts.shape[0]} as `ts`"
        raise checks.fail("drift_errors", "ys", what, ys.shape)
    reference = fns[-1] if reference is None else reference
    # The drifts (and their weights) are arguments of the compiled function, never
    # closed-over constants: XLA constant-folds captured weights very slowly.
    return _drift_errors(tuple(fns), reference, ts, ys, args)


@eqx.filter_jit
def _drift_errors(fns, reference, ts, ys, args):
    # Compiled around `trajectory_statistics` so that the statistics not used here
    # (increments, pairs) are dropped from the program.
    errors = trajectory_statistics(fns + (reference,), ts, ys, args, len(fns))[1]
    return jnp.sqrt(jnp.mean(errors, axis=0))
