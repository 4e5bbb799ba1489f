"""Shared test helpers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import mlem_jax as mj

if TYPE_CHECKING:  # the application is imported where it is used
    import mlem_jax.diffusion as md


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


# --- shared test problems --------------------------------------------------------
# Drift hierarchies and drifts that several test files solve.

# Times as arrays, so that forward and reverse solves share one compilation.
DIRECTIONS = {
    "forward": (jnp.float32(0.0), jnp.float32(1.0)),
    "reverse": (jnp.float32(1.0), jnp.float32(0.0)),
}


def nonlinear_levels() -> mj.Levels:
    """Three levels converging to the top one; they depend on t, y and args (a scalar
    parameter, for gradients), so every place where time or direction could go wrong
    shows in the result."""

    def f1(t, y, args):
        return -args * y

    def f2(t, y, args):
        return -args * y + 0.3 * jnp.sin(3 * t) * jnp.tanh(y)

    def f3(t, y, args):
        return -args * y + 0.3 * jnp.sin(3 * t) * jnp.tanh(y) + 0.1 * jnp.cos(y + t)

    return mj.Levels((f1, f2, f3), (1.0, 4.0, 16.0))


def linear_levels(rates=(-0.5, -0.9, -1.0), costs=(1.0, 4.0, 16.0)) -> mj.Levels:
    """Levels f^l(y) = a_l · y: Δ_l are distinct and the top level is a·y."""
    fns = tuple((lambda t, y, args, a=a: jnp.asarray(a, y.dtype) * y) for a in rates)
    return mj.Levels(fns=fns, costs=costs)


def additive(t, y, args):
    """A constant diffusion 0.5 in `y`'s dtype."""
    return jnp.asarray(0.5, y.dtype)


class Affine(eqx.Module):
    """An affine-then-tanh drift with trainable weights: tanh(y w + b) · args − y."""

    w: jax.Array
    b: jax.Array

    def __call__(self, t, y, args):
        return jnp.tanh(y @ self.w + self.b) * args - y


def affine_problem(dtype=None, d=3):
    """Two `Affine` levels (coarse, fine), a (2, d) state and the scalar args 1.5:
    `(levels, y0, args)` for gradient tests, in `dtype` (default: JAX's default
    float, float64 where x64 is enabled)."""
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    coarse = Affine(0.3 * jax.random.normal(k1, (d, d), dtype), jnp.zeros(d, dtype))
    fine = Affine(0.3 * jax.random.normal(k2, (d, d), dtype), 0.1 * jnp.ones(d, dtype))
    levels = mj.Levels((coarse, fine), (1.0, 4.0))
    y0 = jax.random.normal(k3, (2, d), dtype)
    return levels, y0, jnp.asarray(1.5, dtype)


# A PyTree state: two leaves of different shapes.
TREE_Y0 = {"a": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": (jnp.ones(4),)}


def png(path):
    """`(size, pixels)` of a PNG file."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.size, np.asarray(im)


def gaussian_score(sde):
    """Gaussian data N(mean, cov) in 2-D and its exact score under `sde`:
    `(mean, cov, score)`."""
    import mlem_jax.diffusion as md

    mean = jnp.array([0.5, -1.0])
    cov = jnp.array([[0.6, 0.2], [0.2, 0.3]])
    return mean, cov, md.GaussianScore(sde, mean, cov)


# Diffusion: exact networks for Gaussian data `N(mean, diag(var))`.


class GaussianX0(eqx.Module):
    """Exact data prediction for data `N(mean, diag(var))`, as f(t, y, args)."""

    param: md.AbstractParametrisation
    mean: jax.Array
    var: jax.Array

    def __call__(self, t, y, args=None):
        a, s = self.param.alpha(t), self.param.sigma(t)
        gain = a * self.var / (a**2 * self.var + s**2)
        return (self.mean + gain * (y - a * self.mean)).astype(y.dtype)


class AsEps(eqx.Module):
    """The same network predicting ε."""

    x0: GaussianX0

    def __call__(self, t, y, args=None):
        return self.x0.param.convert(self.x0(t, y), t, y, source="x0", target="eps")


def grid_increments(key, ts, shape):
    """Brownian increments with variance |t_{n+1} − t_n| on an arbitrary grid."""
    dt = np.abs(np.diff(np.asarray(ts, np.float64)))
    z = jax.random.normal(key, (len(dt), *shape))
    return z * jnp.sqrt(jnp.asarray(dt, z.dtype)).reshape(-1, *[1] * len(shape))


# --- subprocesses (JAX runs with forced host devices, jax.distributed) -------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a jax.distributed coordinator)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(commands, envs, timeout: float) -> list[tuple[int, str, str]]:
    """Start every command of `commands` (argv lists, with the matching `envs`) at
    once and wait for all: `[(returncode, stdout, stderr)]`. Each must finish within
    `timeout` seconds of the start; on a timeout or any error every process still
    running is killed before raising."""
    import subprocess
    import time

    procs = [
        subprocess.Popen(
            c, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for c, e in zip(commands, envs, strict=True)
    ]
    deadline = time.monotonic() + timeout
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out
