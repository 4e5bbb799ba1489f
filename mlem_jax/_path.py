"""`StepBrownianPath`: the functional core's Brownian increments as a diffrax path."""

from __future__ import annotations

import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, DTypeLike, PRNGKeyArray

from . import _checks as checks
from ._brownian import split_key, step_increment
from ._misc import check_num_steps, concrete_or_none

# A time within this fraction of a step of a grid point counts as that grid point:
# diffrax computes step times in its own (possibly negated) frame, a few ULPs off.
_SNAP = 1e-2


class StepBrownianPath(diffrax.AbstractBrownianPath):
    """A Brownian motion sampled on a fixed step grid, one key per step.

    The increment over grid step `n` (from `t_n = t0 + n·h` to `t_{n+1}`, with
    `h = (t1 − t0)/num_steps`, negative when `t1 < t0`) is

        W(t_{n+1}) − W(t_n) = sqrt(|h|) · normal(fold_in(brownian_key, n), shape),
        brownian_key, _ = jax.random.split(key),

    exactly the increment that `mlem_jax.mlem_solve` and `mlem_jax.em_solve` draw for
    step `n` with the same `key`, `t0`, `t1`, `num_steps` and `y0.shape`. So a
    `diffrax.diffeqsolve` driven by this path is pathwise comparable with the
    functional solvers, and with `MLEMSolver(..., key=key)` it reproduces
    `mlem_solve(..., key=key)`.

    Evaluating an increment costs one normal draw per grid step it covers, with no
    tree search: about the cost of the hand-written scan, where
    `diffrax.VirtualBrownianTree` costs ~10× more at small sizes. Unlike
    `diffrax.UnsafeBrownianPath` it is deterministic in `(key, grid)` and supports
    reverse-mode autodiff (`diffrax.RecursiveCheckpointAdjoint`, `DirectAdjoint`).

    !!! warning "Query it on its grid only"

        Between grid points the path is **linearly interpolated**, so it is a
        Brownian motion only at the grid times: an increment over a fraction of a
        step has too little variance (over a whole solve on a grid offset by half a
        step, a quadratic variation of about 1/4 of the true one). Use it with steps
        on its grid: `diffrax.ConstantStepSize` with `dt0` a multiple of `h`, or
        `diffrax.StepTo` with grid times. Off-grid times known before tracing give a
        `UserWarning`; traced ones (inside `diffeqsolve`) cannot be checked. Times
        outside `[t0, t1]` (beyond 1% of a step) raise an error, also under `jit`
        (`eqx.error_if`).

    Queries are resolved on the grid: the step index of a time is computed from the
    time itself (`(t − t0)/h`, snapped to the nearest grid point within 1% of a step).
    `evaluate(s, u)` over several grid steps is the exact sum of their increments (a
    coarser step on the same path).

    **Arguments:**

    - `shape`: the shape of one increment, usually `y0.shape`.
    - `key`: the solve's PRNG key (not yet split); pass the same key to
        `MLEMSolver` and to the functional solvers.
    - `t0`, `t1`: the ends of the grid, in the solve's direction (`t1 < t0` for a
        reverse-time solve, as in `mlem_solve`).
    - `num_steps`: the number of grid steps, a positive int.
    - `dtype`: the floating dtype of the increments (default: the default float
        dtype, float32 unless x64 is enabled); use `y0.dtype`.

    **Example:**

    ```python
    path = mj.StepBrownianPath(y0.shape, key, t0=1.0, t1=0.0, num_steps=200)
    noise = diffrax.ControlTerm(
        lambda t, y, args: lineax.DiagonalLinearOperator(g(t, y, args)), path)
    ```
    """

    key: PRNGKeyArray
    grid_t0: Array
    grid_t1: Array
    shape: tuple[int, ...] = eqx.field(static=True)
    dtype: np.dtype = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)

    def __init__(
        self,
        shape: tuple[int, ...],
        key: PRNGKeyArray,
        *,
        t0: ArrayLike,
        t1: ArrayLike,
        num_steps: int,
        dtype: DTypeLike | None = None,
    ):
        name = "StepBrownianPath"
        try:
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError) as e:
            what = "a tuple of ints (e.g. y0.shape)"
            raise checks.fail(name, "shape", what, shape, TypeError) from e
        num_steps = check_num_steps(name, num_steps)
        dtype = jnp.dtype(jnp.zeros((), dtype).dtype if dtype is None else dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise checks.fail(name, "dtype", "a floating dtype", dtype, TypeError)
        t0 = jnp.asarray(t0, dtype)
        t1 = jnp.asarray(t1, dtype)
        if t0.shape != () or t1.shape != ():
            raise ValueError("StepBrownianPath: `t0` and `t1` must be scalars.")
        t0c, t1c = concrete_or_none(t0), concrete_or_none(t1)
        if (
            t0c is not None
            and t1c is not None
            and not (np.isfinite(t0c) and np.isfinite(t1c) and t0c != t1c)
        ):
            got = f"{float(t0c)}, {float(t1c)}"
            raise ValueError(
                f"{name}: `t0` and `t1` must be finite and differ; got {got}."
            )
        self.key, _ = split_key(key)
        self.grid_t0 = t0
        self.grid_t1 = t1
        self.shape = shape
        self.dtype = dtype
        self.num_steps = int(num_steps)

    @property
    def t0(self):
        return jnp.minimum(self.grid_t0, self.grid_t1)

    @property
    def t1(self):
        return jnp.maximum(self.grid_t0, self.grid_t1)

    @property
    def levy_area(self):
        return diffrax.BrownianIncrement

    @property
    def step_size(self) -> Array:
        """The signed grid step `h = (t1 − t0)/num_steps`, as the functional core."""
        return (self.grid_t1 - self.grid_t0) / self.num_steps

    def evaluate(self, t0, t1=None, left: bool = True, use_levy: bool = False):
        """`W(t1) − W(t0)`, or `W(t0)` (with `W = 0` at the earlier grid end) when
        `t1` is None. See the class docstring for how times map to grid steps."""
        del left
        if t1 is None:
            t0, t1 = self.t0, t0
        t0 = jax.lax.stop_gradient(jnp.asarray(t0))
        t1 = jax.lax.stop_gradient(jnp.asarray(t1))
        a, b = self._position(t0), self._position(t1)
        lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
        w = jnp.where(b >= a, 1, -1).astype(self.dtype) * self._covered(lo, hi)
        if use_levy:
            return diffrax.BrownianIncrement(dt=(t1 - t0).astype(self.dtype), W=w)
        return w

    def _position(self, t) -> Array:
        """`t` in units of grid steps from `grid_t0`: `n` at `t_n`, in `[0, N]`."""
        with jax.numpy_dtype_promotion("standard"):
            dtype = jnp.result_type(t, self.dtype)
        h = self.step_size.astype(dtype)
        x = (t.astype(dtype) - self.grid_t0.astype(dtype)) / h
        n = jnp.round(x)
        off_grid = jnp.abs(x - n) > _SNAP
        xc = concrete_or_none(x)
        if xc is not None and np.any(np.abs(xc - np.round(xc)) > _SNAP):
            warnings.warn(
                f"StepBrownianPath: time {np.asarray(t).tolist()} is not on the path's "
                f"grid (step {np.asarray(h).item()}); between grid points the "
                "path is linearly interpolated and under-dispersed. Query it at grid "
                "times only.",
                stacklevel=4,
            )
        x = jnp.where(off_grid, x, n)
        x = eqx.error_if(
            x,
            (x < -_SNAP) | (x > self.num_steps + _SNAP),
            "StepBrownianPath: a time outside the path's [t0, t1] was queried; the "
            "path is only defined on its grid.",
        )
        return jnp.clip(x, 0, self.num_steps)

    def _increment(self, n) -> Array:
        return step_increment(self.key, n, self.shape, self.step_size, self.dtype)

    def _covered(self, lo, hi) -> Array:
        """`F(hi) − F(lo)` for positions `lo <= hi`, `F` the path in step units."""
        first = jnp.floor(lo).astype(jnp.int32)
        last = jnp.ceil(hi).astype(jnp.int32)
        one_step = (last - first == 1) & (lo == first) & (hi == last)

        def _sum():
            def body(m, acc):
                mf = m.astype(lo.dtype)
                weight = jnp.clip(jnp.minimum(hi, mf + 1) - jnp.maximum(lo, mf), 0, 1)
                return acc + weight.astype(self.dtype) * self._increment(m)

            return jax.lax.fori_loop(
                first, last, body, jnp.zeros(self.shape, self.dtype)
            )

        # The common query, one whole grid step, is one draw and no loop.
        return jax.lax.cond(one_step, lambda: self._increment(first), _sum)
