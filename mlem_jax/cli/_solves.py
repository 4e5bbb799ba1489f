"""The solves the `sample` and `demo` commands time: Euler–Maruyama and the
single-network sampler with the top level, ML-EM over a ladder, and ML-EM split over
local devices.

Each is an `eqx.filter_jit` function of the `Levels` and the SDE: the networks'
weights are arguments of the compiled program, never constants folded into it (which
would cost XLA minutes per compile), and a second call with the same shapes reuses
the program equinox compiled for the first. Every solve keeps the level draws
unbatched (DESIGN §2): the batch of images lives in `y0`, with one level key per solve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import FixedProbabilities, Levels, em_solve, mlem_solve, mlem_solve_sharded
from .._cost import timed_run
from ..pretrained import T0, T1, Ladder

SINGLE_SAMPLER = "SDE-DPM++(1)"
"""The single-network sampler the demo runs beside Euler–Maruyama: on the shipped
ladder's reverse SDE it beats Euler–Maruyama with the top network at every step
count (`benchmarks/samplers.py`)."""


class _EpsNet(eqx.Module):
    """A per-image ε-network as the batched `f(t, y, args)` samplers take."""

    model: Any

    def __call__(self, t, y, args):
        del args
        return jax.vmap(self.model, in_axes=(None, 0))(t, y)


def _path(num_steps: int, key, dw) -> dict[str, Any]:
    """The keywords every solve here shares: the sampling interval, the steps and
    the Brownian increments `dw` (the level draws from `key`)."""
    return dict(t0=T0, t1=T1, num_steps=num_steps, key=key, brownian=dw)


@eqx.filter_jit
def _em(levels: Levels, sde, y0, dw, key, num_steps: int):
    path = _path(num_steps, key, dw)
    return em_solve(levels.top, sde.diffusion, y0, cost=levels.costs[-1], **path)


@eqx.filter_jit
def _mlem(
    levels: Levels,
    sde,
    schedule,
    y0,
    dw,
    key,
    num_steps: int,
    mesh=None,
    draws: str = "independent",
):
    """ML-EM over `levels`; split over `mesh`'s devices (`mlem_solve_sharded`, with
    `draws` level draws) when one is given."""
    path = _path(num_steps, key, dw)
    if mesh is None:
        return mlem_solve(levels, schedule, sde.diffusion, y0, **path)
    return mlem_solve_sharded(
        levels, schedule, sde.diffusion, y0, mesh=mesh, draws=draws, **path
    )


@eqx.filter_jit
def _sampler(levels: Levels, sde, y0, dw, num_steps: int):
    from ..diffusion import SDEDPMSolverPP1, VPLinear, sample

    top: Any = levels.top  # a `ReverseDrift` of an `EpsilonScore`
    return sample(
        _EpsNet(top.score.model),
        VPLinear(beta_min=sde.beta_min, beta_max=sde.beta_max),
        SDEDPMSolverPP1(),
        y0,
        t0=T0,
        t1=T1,
        num_steps=num_steps,
        brownian=dw,
        cost=levels.costs[-1],
    )


def eps_networks(ladder: Ladder, levels: Sequence[int] | None = None) -> Levels:
    """The ladder's ε-networks (each an `f(t, y, args)` on a batch) as `Levels` with
    the ladder's FLOP costs, for the samplers of `mlem_jax.diffusion`; `levels`:
    0-based indices of a sub-ladder (default every level)."""
    idx = range(ladder.levels.num_levels) if levels is None else levels
    fns: Any = ladder.levels.fns
    return Levels(
        tuple(fns[i].score.model for i in idx),
        tuple(ladder.levels.costs[i] for i in idx),
    )


@eqx.filter_jit
def _diffusion(networks: Levels, param, sampler, schedule, y0, dw, key, steps, grid):
    """`sample` with the top network (`schedule` None) or `mlem_sample` over
    `networks`; `dw`: Brownian increments on the uniform grid, or None (the noise
    then comes from `key`)."""
    from ..diffusion import mlem_sample, sample

    kw: dict[str, Any] = dict(t0=T0, t1=T1, num_steps=steps, grid=grid, brownian=dw)
    if schedule is None:
        return sample(
            networks.top, param, sampler, y0, key=key, cost=networks.costs[-1], **kw
        )
    return mlem_sample(networks, schedule, param, sampler, y0, key=key, **kw)


def run_diffusion(
    ladder: Ladder, param, sampler, schedule, y0, dw, key, steps: int, grid, levels
):
    """A `mlem_jax.diffusion` sampler on the ladder: the top network alone
    (`schedule` None) or its multilevel version over `levels` (0-based; None:
    every level). Returns `(y1, evaluations of every level of the ladder,
    seconds)`."""
    k = ladder.levels.num_levels
    idx = [k - 1] if schedule is None else list(range(k) if levels is None else levels)
    (y1, info), secs = _timed(
        _diffusion,
        eps_networks(ladder, idx),
        param,
        sampler,
        schedule,
        y0,
        dw if sampler.stochastic and grid == "uniform" else None,
        key,
        steps,
        grid,
    )
    evaluations = np.zeros(k, np.int64)
    evaluations[idx] = np.asarray(info.evaluations)
    return y1, evaluations, secs


def _timed(solve: Callable[..., Any], *args) -> tuple[Any, float]:
    """`(solve(*args), wall-clock seconds of one run after compilation)`."""
    return timed_run(lambda: solve(*args))


def _sub_ladder(ladder: Ladder, levels: Sequence[int] | None) -> Levels:
    if levels is None:
        return ladder.levels
    return Levels(
        tuple(ladder.levels.fns[i] for i in levels),
        tuple(ladder.levels.costs[i] for i in levels),
    )


def run_em(ladder: Ladder, y0, dw, key, num_steps: int):
    """Euler–Maruyama with the top level; returns `(y1, info, seconds)`."""
    (y1, info), secs = _timed(_em, ladder.levels, ladder.sde, y0, dw, key, num_steps)
    return y1, info, secs


def run_sampler(ladder: Ladder, y0, dw, num_steps: int):
    """`SINGLE_SAMPLER` (SDE-DPM-Solver++(1)) with the top network on the
    increments `dw` (uniform grid, as Euler–Maruyama's); returns `(y1, info,
    seconds)`. Needs a ladder of ε-networks (`ReverseDrift` of `EpsilonScore`)."""
    (y1, info), secs = _timed(_sampler, ladder.levels, ladder.sde, y0, dw, num_steps)
    return y1, info, secs


def run_mlem(ladder: Ladder, schedule, y0, dw, key, num_steps: int, levels=None):
    """ML-EM over the ladder's `levels` (0-based indices; default every level);
    returns `(y1, evaluations of every level of the ladder, seconds)`."""
    (y1, info), secs = _timed(
        _mlem, _sub_ladder(ladder, levels), ladder.sde, schedule, y0, dw, key, num_steps
    )
    evaluations = np.zeros(ladder.levels.num_levels, np.int64)
    idx = list(range(ladder.levels.num_levels) if levels is None else levels)
    evaluations[idx] = np.asarray(info.evaluations)
    return y1, evaluations, secs


def run_sharded(
    ladder: Ladder,
    schedule,
    y0,
    dw,
    key,
    num_steps: int,
    levels,
    devices: int,
    mesh=None,
    draws: str = "independent",
):
    """The solve of `sample` split over `devices` local devices (or over `mesh`,
    e.g. every device of every process) with `mlem_solve_sharded` and `draws` level
    draws; Euler–Maruyama (`schedule` None) as its one-level case with `p = 1`.
    Returns `(y1, evaluations of every level of the ladder in whole-batch units (the
    mean over devices), per-device counts (devices, k), seconds)`; `y1` is a NumPy
    array, or a `jax.Array` whose rows live on several processes."""
    k = ladder.levels.num_levels
    if schedule is None:
        levels, schedule = [k - 1], FixedProbabilities(jnp.ones((1,), jnp.float32))
    idx = list(range(k) if levels is None else levels)
    if mesh is None:
        local = jax.local_devices()[:devices]
        mesh = jax.make_mesh((devices,), ("batch",), devices=local)
    (y1, info), secs = _timed(
        _mlem,
        _sub_ladder(ladder, idx),
        ladder.sde,
        schedule,
        y0,
        dw,
        key,
        num_steps,
        mesh,
        draws,
    )
    per_device = np.zeros((devices, k), np.int64)
    per_device[:, idx] = np.asarray(info.evaluations)  # replicated on every process
    if y1.is_fully_addressable:
        y1 = np.asarray(y1)
    return y1, per_device.mean(axis=0), per_device, secs
