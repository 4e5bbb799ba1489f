"""Sharded sampling: one ML-EM solve of a batch split over the devices of a mesh.

On one device every step draws one Bernoulli per level for the whole batch, so that
each level's `lax.cond` is a real branch. Across devices each device can draw its
own levels for its own shard and still branch for real: the level noise of the
batch then averages over the devices, at no extra cost. `mlem_solve_sharded` does
this with `jax.shard_map`; `device_key` and `ShardedPath` do the same for
`diffrax.diffeqsolve` with `MLEMSolver` inside a `shard_map` of your own.

**Randomness.** With `brownian_key, level_key = jax.random.split(key)` (the layout of
`mlem_jax._brownian`):

- Brownian increments: those of the single-device solve with the same `key` and the
  global `y0.shape`. Each device draws step `n`'s increment for the global batch and
  keeps its own rows, so element `i` of the batch gets the same increments whatever
  the device count.
- Level draws, `draws="independent"` (the default): device `d` (its index on the
  mesh axis) draws its levels as a single-device solve with key
  `device_key(key, d) = jax.random.fold_in(key, d)` would, i.e. from the level
  stream `jax.random.split(jax.random.fold_in(key, d))[1]`.
- Level draws, `draws="shared"`: every device uses `level_key`, the single-device
  draws, so the result equals `mlem_solve(..., key=key)` on one device.

Sample `i`'s Brownian increments are therefore a function of `(key, i)` (and the
grid and sample shape) only: the same whether it is solved alone, in a batch of any
size, on any number of devices or processes (see `mlem_jax._brownian`). Each device
draws the global batch's increment and keeps its rows, so the draws cost `devices`
times their share; next to a network drift this is small, but at pod scale
(hundreds of devices, large images) pass `brownian=` or keep `devices × batch`
moderate.

**Several processes.** Under `jax.distributed` (one process per host or per
accelerator) the same call works on a mesh over every process's devices, e.g.
`jax.make_mesh((jax.device_count(),), ("batch",))`: every process runs the same
program with the same `key`, `y0` (the global batch, identical on every process, or
a global `jax.Array` made with `jax.make_array_from_process_local_data`) and
arguments. Each process then holds its own rows of `y1` (`process_rows(y1)` gives
their indices and values, to write one file per process); to collect every row on
every process use `jax.experimental.multihost_utils.process_allgather(y1,
tiled=True)`. The per-device counts in `ShardedSolveInfo` are replicated: every
process can read all of them. Shared draws give the single-process result (bit for
bit on CPU in the tests: the per-element arithmetic is the same), independent draws
one level stream per device of the global mesh (`fold_in(key, d)`, `d` the device's
position on the mesh axis). See `docs/multihost.md`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from . import _checks as checks
from ._brownian import split_key
from ._integrate import EulerMaruyama, integrate
from ._levels import Levels
from ._misc import check_key
from ._schedules import AbstractSchedule
from ._solve import DiffusionFn, SolveOptions, check_ladder, solve_problem

DRAWS = ("independent", "shared")


def device_key(key: PRNGKeyArray, axis_name: Hashable) -> PRNGKeyArray:
    """The key of this device's level draws, inside `jax.shard_map`: the documented
    per-device key `jax.random.fold_in(key, jax.lax.axis_index(axis_name))`.

    Give it to `MLEMSolver(schedule, key=device_key(key, "batch"))` inside a
    `shard_map` for independent level draws per device, the same draws as
    `mlem_solve_sharded(..., key=key, draws="independent")` makes on that device.
    Keep building the Brownian path from `key` itself (see `ShardedPath`).
    """
    check_key("device_key", key)
    return jax.random.fold_in(key, jax.lax.axis_index(axis_name))


class ShardedPath(diffrax.AbstractPath):
    """This device's rows of a Brownian path of the global batch, inside
    `jax.shard_map`.

    Wrap a path whose increments have the global shape `(batch, ...)` (e.g.
    `mlem_jax.StepBrownianPath(global_shape, key, ...)` or a
    `diffrax.VirtualBrownianTree`); `evaluate` returns rows `[d·b, (d+1)·b)` of its
    increment on device `d` of `axis_name`, `b = batch / devices`. Every element of
    the batch then sees the same Brownian motion as in the single-device solve.
    Each device evaluates the whole path and keeps its rows: the path's draws cost
    `devices` times their share (cheap next to a network drift).

    **Arguments:**

    - `path`: a diffrax path with array increments of the global batch shape.
    - `axis_name`: the mesh axis the batch is split over.
    """

    path: diffrax.AbstractPath
    axis_name: Hashable = eqx.field(static=True)

    def __init__(self, path: diffrax.AbstractPath, axis_name: Hashable):
        what = "a diffrax path (e.g. mlem_jax.StepBrownianPath)"
        checks.instance("ShardedPath", "path", path, diffrax.AbstractPath, what)
        self.path = path
        self.axis_name = axis_name

    @property
    def t0(self):  # pyright: ignore[reportIncompatibleVariableOverride]
        return self.path.t0

    @property
    def t1(self):  # pyright: ignore[reportIncompatibleVariableOverride]
        return self.path.t1

    @property
    def levy_area(self):
        return getattr(self.path, "levy_area", diffrax.BrownianIncrement)

    def evaluate(self, t0, t1=None, left: bool = True, use_levy: bool = False):
        out = self.path.evaluate(t0, t1, left, use_levy)  # pyright: ignore[reportCallIssue]
        take = lambda x: _rows(x, self.axis_name)  # noqa: E731
        if isinstance(out, diffrax.AbstractBrownianIncrement):
            return eqx.tree_at(lambda o: o.W, out, take(out.W))
        return jax.tree.map(take, out)


def _rows(x: Array, axis_name: Hashable) -> Array:
    """Rows `[d·b, (d+1)·b)` of `x` on device `d` of `axis_name`."""
    devices = jax.lax.axis_size(axis_name)
    if x.ndim == 0 or x.shape[0] % devices:
        want = (
            f"a leading batch axis divisible by the {devices} devices of {axis_name!r}"
        )
        raise ValueError(
            f"ShardedPath: the path's increments have shape {x.shape}; expected {want}."
        )
    b = x.shape[0] // devices
    return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(axis_name) * b, b, 0)


class _Shard(eqx.Module):
    """What the single-device integrator needs to run one shard (see `_solve`)."""

    axis_name: Hashable = eqx.field(static=True)
    num_devices: int = eqx.field(static=True)
    draws: str = eqx.field(static=True)

    def global_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[0] * self.num_devices, *shape[1:])

    def slice(self, x: Array) -> Array:
        return _rows(x, self.axis_name)

    def level_key(self, key: PRNGKeyArray) -> PRNGKeyArray:
        if self.draws == "independent":
            key = jax.random.fold_in(key, jax.lax.axis_index(self.axis_name))
        _, level_key = split_key(key)
        return level_key


class ShardedSolveInfo(eqx.Module):
    """What a sharded solve did, per device and in total.

    **Fields:**

    - `evaluations`: shape `(devices, k)`: how many times device `d` evaluated level
        `l` on its shard of the batch (a shard evaluation costs `1/devices` of a
        whole-batch one).
    - `total_evaluations`: shape `(k,)`, the sum over devices.
    - `cost`: shape `(devices,)`, each device's realised cost `Σ_l costs[l] ·
        evaluations[d, l]` (in the units of `levels.costs`, per shard evaluation).
    - `total_cost`: the sum over devices.
    - `ts`: the times of the saved states when `saveat` was given, else `None`.
    - `num_steps`: the number of steps taken.
    - `draws`: `"independent"` or `"shared"`.
    """

    evaluations: Int[Array, "devices k"]
    total_evaluations: Int[Array, " k"]
    cost: Float[Array, " devices"]
    total_cost: Float[Array, ""]
    ts: Float[Array, " n"] | None
    num_steps: int = eqx.field(static=True)
    draws: str = eqx.field(static=True)

    @property
    def num_devices(self) -> int:
        return self.evaluations.shape[0]


def mlem_solve_sharded(
    levels: Levels,
    schedule: AbstractSchedule,
    diffusion: DiffusionFn | None,
    y0: ArrayLike,
    *,
    mesh: Mesh,
    t0: float | ArrayLike,
    t1: float | ArrayLike,
    num_steps: int,
    key: PRNGKeyArray,
    axis_name: Hashable = "batch",
    draws: str = "independent",
    args: Any = None,
    brownian: Array | diffrax.AbstractBrownianPath | None = None,
    saveat: diffrax.SaveAt | None = None,
    checkpoint: bool | str = True,
) -> tuple[Array, ShardedSolveInfo]:
    """`mlem_solve` with the batch axis of `y0` split over the devices of a mesh axis.

    Runs `mlem_solve` on each device's shard of `y0` under `jax.shard_map`, with no
    communication between devices during the solve. The Brownian increments of every
    element are those of the single-device solve with the same `key` (each device
    draws a step's increment for the global batch and keeps its rows).

    **Level draws.** `draws="independent"` (the default): device `d` draws its
    levels from its own key `jax.random.fold_in(key, d)` (as a single-device solve
    with that key would; see `device_key`). The devices' level noises are
    independent, so the variance that ML-EM adds to a batch average falls like
    `1/devices` at the same cost: the reason to shard ML-EM at all, hence the
    default. The result is reproducible for a given key and device count, and with
    every `p_l = 1` it is Euler–Maruyama whatever the count. `draws="shared"`: every
    device uses the single-device draws, so the result equals `mlem_solve(...,
    key=key)` on one device (to float rounding) for any device count: for
    reproducibility across machines.

    **Arguments:** as `mlem_solve`, plus

    - `mesh`: a `jax.sharding.Mesh` (e.g. `jax.make_mesh((n,), ("batch",))`).
    - `axis_name`: the mesh axis the batch is split over (default `"batch"`); the
        leading axis of `y0` must be divisible by its size. Other mesh axes hold
        copies of the same solve.
    - `draws`: `"independent"` or `"shared"`, as above.
    - `brownian`: as `mlem_solve`, of the global shape: an array of increments
        `(num_steps, *y0.shape)` is split along its batch axis; a diffrax path is
        evaluated whole on each device, which keeps its rows.

    `levels`, `schedule`, `diffusion` and `args` are the same on every device
    (replicated; an `args` with a per-sample batch axis is not split).

    **Returns:** `(y1, info)` as `mlem_solve` (`y1` sharded over `axis_name`), with
    a `ShardedSolveInfo`: per-device and total evaluation counts and costs.

    Works under `jax.jit` and `jax.grad` (pathwise; gradients with respect to
    replicated parameters are summed over the devices once, at the end). The
    `shard_map` runs with `check_vma=False`: with independent draws a level's
    `lax.cond` branches differently on each device, and JAX's varying-axes typing
    would put the gradient's cross-device sum inside that branch, where devices
    that skip it never join (a deadlock).
    """
    name = "mlem_solve_sharded"
    check_ladder(name, levels, schedule)
    y0, shard = _check_shard(y0, mesh, axis_name, draws)
    options = SolveOptions(t0, t1, num_steps, key, args, brownian, saveat, checkpoint)
    # Checked once, for the global batch; each device runs its shard of it.
    problem = solve_problem(name, levels.fns, schedule, diffusion, y0, options)
    ys, evaluations, ts = _sharded(EulerMaruyama(diffusion), problem, mesh, shard)
    tdtype = problem.grid.t0.dtype
    cost = evaluations.astype(tdtype) @ jnp.asarray(levels.costs, tdtype)
    info = ShardedSolveInfo(
        evaluations=evaluations,
        total_evaluations=evaluations.sum(axis=0, dtype=evaluations.dtype),
        cost=cost,
        total_cost=cost.sum(),
        ts=ts,
        num_steps=problem.grid.num_steps,
        draws=draws,
    )
    return ys, info


def _check_shard(y0, mesh, axis_name, draws) -> tuple[Array, _Shard]:
    """`mlem_solve_sharded`'s own checks (the rest are `solve_problem`'s): `y0` as
    one array whose batch axis splits over `axis_name` of `mesh`, and the `_Shard`."""
    name = "mlem_solve_sharded"
    checks.choice(name, "draws", draws, DRAWS, '"independent" or "shared"')
    what = 'a jax.sharding.Mesh (e.g. jax.make_mesh((n,), ("batch",)))'
    checks.instance(name, "mesh", mesh, Mesh, what)
    if axis_name not in mesh.axis_names:
        what = (
            f"name an axis of `mesh` {tuple(mesh.axis_names)} to split the batch over"
        )
        raise checks.fail(name, "axis_name", what, axis_name)
    devices = int(mesh.shape[axis_name])
    try:
        y0 = jnp.asarray(y0)
    except (TypeError, ValueError) as e:
        what = "a single array with the batch in its leading axis"
        raise checks.fail(name, "y0", what, type(y0).__name__, TypeError) from e
    if y0.ndim == 0 or y0.shape[0] % devices:
        got = "a scalar" if y0.ndim == 0 else f"one of size {y0.shape[0]}"
        what = f"mesh axis {axis_name!r} ({devices}); pad the batch to a multiple"
        what = f"a leading batch axis divisible by the devices of {what}"
        raise ValueError(f"{name}: `y0` must have {what}; got {got}.")
    return y0, _Shard(axis_name, devices, draws)


@eqx.filter_jit
def _sharded(stepper, problem, mesh, shard):
    axis = shard.axis_name
    brownian = problem.brownian
    is_array = brownian is not None and not isinstance(brownian, diffrax.AbstractPath)
    y_spec = P(axis)
    w_spec = P(None, axis) if is_array else P()
    y0 = _place(problem.y0, mesh, y_spec)
    if is_array:
        assert isinstance(brownian, jax.Array)
        brownian = _place(brownian, mesh, w_spec)

    def body(y0_shard, w):
        own = dataclasses.replace(
            problem,
            y0=y0_shard,
            brownian=w if is_array else problem.brownian,
            shard=shard,
        )
        ys, needed, _, ts = integrate(stepper, own)
        return ys, needed.sum(axis=0, dtype=jnp.int32)[None], ts

    ys_spec = y_spec if problem.save is None else P(None, axis)
    run = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(y_spec, w_spec),
        out_specs=(ys_spec, P(axis), P()),
        check_vma=False,
    )
    ys, evaluations, ts = run(y0, brownian if is_array else jnp.zeros((), y0.dtype))
    # The per-device counts are tiny: hand them back replicated, so that they
    # index like any array (an explicitly sharded one refuses `evaluations[d]`).
    return ys, _place(evaluations, mesh, P()), ts


def process_rows(x: Array, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """This process's rows of an array split along `axis` over a mesh (e.g. `y1` of
    `mlem_solve_sharded` under `jax.distributed`), as NumPy arrays.

    **Arguments:**

    - `x`: a `jax.Array` (sharded or not; its rows may live on other processes).
    - `axis`: the batch axis (0 for `y1`; 1 for the states saved with `saveat`,
        shape `(saves, batch, ...)`).

    **Returns:** `(indices, rows)`: the sorted global indices along `axis` of the
    rows held by this process's devices (each once, also where other mesh axes hold
    copies), and those rows, `rows.shape[axis] == len(indices)`. On one process this
    is every row: `(np.arange(n), np.asarray(x))`.
    """
    checks.instance("process_rows", "x", x, jax.Array, "a jax.Array")
    if isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < x.ndim:
        what = f"an int in [0, {x.ndim}) for an array of shape {x.shape}"
        raise checks.fail("process_rows", "axis", what, axis)
    n = x.shape[axis]
    blocks: dict[int, tuple[int, Any]] = {}
    for shard in x.addressable_shards:
        others = [d for j, d in enumerate(shard.data.shape) if j != axis]
        if others != [d for j, d in enumerate(x.shape) if j != axis]:
            why = f"split along axes other than `axis` ({axis}) too: a shard has shape"
            raise ValueError(
                f"process_rows: `x` (shape {x.shape}) is {why} {shard.data.shape}."
            )
        start, stop, _ = shard.index[axis].indices(n)
        blocks.setdefault(start, (stop, shard.data))
    starts = sorted(blocks)
    indices = np.concatenate([np.arange(a, blocks[a][0]) for a in starts])
    rows = np.concatenate([np.asarray(blocks[a][1]) for a in starts], axis=axis)
    return indices, rows


def _place(x: Array, mesh: Mesh, spec: P) -> Array:
    """`x` laid out as `spec` on `mesh`: `jax.reshard` on explicit mesh axes (which
    `shard_map` requires to match), a sharding constraint on automatic ones."""
    sharding = NamedSharding(mesh, spec)
    if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        return jax.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)
