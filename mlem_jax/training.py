"""Training score networks and whole UNet ladders, with atomic, resumable checkpoints.

A *ladder directory* holds everything needed to sample with ML-EM:

    manifest.json        architecture, SDE, dataset, training config, per-level results
    level_0.eqx, ...     EMA weights of each level (Equinox `tree_serialise_leaves`)
    checkpoints/         in-progress training state (removed when a level finishes)

Weights are the only large files (a few MB for a digits ladder), so a finished ladder
directory can be shipped as is and read back with [`mlem_jax.training.load_ladder`][].
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks as checks
from ._env import versions
from ._io import atomic_write as atomic_write, write_json as _write_json
from ._misc import missing_extra
from .diffusion import (
    VPSDE,
    distillation_loss,
    drift_flops,
    dsm_loss,
    reverse_drift,
)
from .nn import UNet, count_params
from .nn._ladder import check_widths
from .pretrained import (  # the ladder-directory format, read and written here
    FORMAT_VERSION as FORMAT_VERSION,
    MANIFEST as MANIFEST,
    _build_unet,
    _read_weights,
    load_ladder as load_ladder,
    num_classes_from_manifest as num_classes_from_manifest,
    param_from_manifest as param_from_manifest,
    read_manifest as read_manifest,
    sde_from_manifest as sde_from_manifest,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "train_ladder",
    "distill_ladder",
    "load_ladder",
    "read_manifest",
    "param_from_manifest",
    "num_classes_from_manifest",
    "sde_from_manifest",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write",
    "MANIFEST",
    "FORMAT_VERSION",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation hyperparameters, shared by every level of a ladder.

    **Arguments:**

    - `steps`: optimiser steps.
    - `batch_size`: images per step (drawn with replacement).
    - `learning_rate`: peak AdamW learning rate (linear warm-up, then cosine decay to
      10% of the peak).
    - `warmup_steps`: warm-up length.
    - `weight_decay`: AdamW decoupled weight decay.
    - `grad_clip`: global-norm gradient clipping threshold.
    - `ema_decay`: decay of the exponential moving average of the weights (with the
      usual `min(decay, (1 + n) / (10 + n))` ramp); the EMA weights are the result.
    - `checkpoint_every`: steps between checkpoints (0: only at the end).
    - `t_min`: smallest diffusion time in the loss.
    - `label_dropout`: class-conditional training only (a model with
      `num_classes` and `labels` given): the fraction of labels replaced by the
      null label `num_classes` at every step, so that the network also learns the
      unconditional prediction (classifier-free guidance needs both).
    """

    steps: int = 2000
    batch_size: int = 128
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    t_min: float = 1e-5
    label_dropout: float = 0.1

    def __post_init__(self):
        where = "TrainConfig"
        checks.integer(where, "steps", self.steps)
        checks.integer(where, "batch_size", self.batch_size)
        checks.integer(where, "warmup_steps", self.warmup_steps, minimum=0)
        checks.integer(where, "checkpoint_every", self.checkpoint_every, minimum=0)
        checks.number(where, "learning_rate", self.learning_rate)
        # The global-norm clipping threshold: <= 0 would flip the gradient (ascent)
        # or freeze training.
        checks.number(where, "grad_clip", self.grad_clip)
        checks.number(where, "weight_decay", self.weight_decay, zero_ok=True)
        # `label_dropout` 1 would never train the conditional prediction.
        for name in ("ema_decay", "t_min", "label_dropout"):
            value, low = getattr(self, name), "(" if name == "t_min" else "["
            if not (0 <= value < 1 and (low == "[" or value > 0)):
                raise checks.fail(where, name, f"in {low}0, 1)", value)


def _config_record(config: TrainConfig, conditional: bool) -> dict[str, Any]:
    """`config` as JSON for a manifest; `label_dropout` only where it is used, so an
    unconditional ladder's record is what it was before conditioning existed."""
    record = dataclasses.asdict(config)
    if not conditional:
        record.pop("label_dropout")
    return record


class TrainResult(eqx.Module):
    """What [`mlem_jax.training.train`][] returns.

    - `model`: the EMA weights (use these for sampling).
    - `raw_model`: the last iterate.
    - `losses`: training loss at every step, shape `(steps,)`.
    """

    model: Any
    raw_model: Any
    losses: Float[Array, " steps"]


def _optimizer(config: TrainConfig) -> optax.GradientTransformation:
    return _cached_optimizer(
        config.learning_rate,
        config.warmup_steps,
        config.steps,
        config.weight_decay,
        config.grad_clip,
    )


@functools.lru_cache(maxsize=32)
def _cached_optimizer(lr, warmup_steps, steps, weight_decay, grad_clip):
    # Cached so that equal hyperparameters give the *same* object, a static argument
    # of `_train_step` that then hits the compilation cache.
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        lr,
        max(1, min(warmup_steps, steps - 1)),
        max(steps, 2),
        end_value=0.1 * lr,
    )
    return optax.chain(
        optax.clip_by_global_norm(grad_clip),
        optax.adamw(schedule, weight_decay=weight_decay),
    )


class _State(eqx.Module):
    params: Any
    ema: Any
    opt_state: Any
    step: Array
    losses: Array


def _initial_state(params, optimizer, steps) -> _State:
    return _State(
        params=params,
        ema=params,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        losses=jnp.full((steps,), jnp.nan, jnp.float32),
    )


def save_checkpoint(path: str | os.PathLike, state: Any) -> None:
    """Serialise a pytree with `eqx.tree_serialise_leaves`, atomically."""
    atomic_write(path, lambda f: eqx.tree_serialise_leaves(f, state))


def load_checkpoint(path: str | os.PathLike, like: Any) -> Any:
    """Read a pytree written by [`save_checkpoint`][] into the structure of `like`.

    Raises a `ValueError` naming the file if it does not match `like` (a checkpoint
    from a different architecture or config).
    """
    path = os.fspath(path)
    try:
        return eqx.tree_deserialise_leaves(path, like)
    except Exception as e:  # equinox/numpy raise assorted errors on mismatch
        buffer = io.BytesIO()
        eqx.tree_serialise_leaves(buffer, like)
        expected, size = buffer.tell(), os.path.getsize(path)
        what = (
            f"it is corrupt, truncated to {size} of the {expected} bytes expected (or "
            "written by a different architecture)"
            if size < expected
            else "it is corrupt or was written by a different architecture or "
            "TrainConfig"
        )
        what = f"{what} ({type(e).__name__}: {e}). Delete it to restart that level"
        loaded = "the model and training config it is loaded into"
        fix = "from scratch; finished levels are kept"
        message = f"checkpoint {path!r} does not match {loaded}: {what} {fix}."
        raise ValueError(message) from None


@eqx.filter_jit
def _train_step(
    state: _State,
    static: Any,
    data: Any,
    key: PRNGKeyArray,
    optimizer: optax.GradientTransformation,
    sde: VPSDE,
    batch_size: int,
    ema_decay: float,
    t_min: float,
    teacher: Any = None,
    labels: Any = None,
    label_dropout: float = 0.0,
    null_label: int = 0,
) -> _State:
    # A module-level filter_jit (hashable static arguments: the model's non-array
    # part, the cached optimizer, the SDE and three numbers) so that training the
    # same architecture twice (a resume, a second run) compiles once: the UNet's
    # backward pass is by far the slowest thing to compile.
    k_batch, k_loss = jr.split(jr.fold_in(key, state.step))
    y = None
    if _is_source(data):  # fresh exact draws every step
        x0 = data.sample(k_batch, batch_size)
    else:
        index = jr.randint(k_batch, (batch_size,), 0, data.shape[0])
        x0 = data[index]
        if labels is not None:
            # Label dropout: the null label trains the unconditional prediction.
            drop = jr.bernoulli(jr.fold_in(k_batch, 1), label_dropout, (batch_size,))
            y = jnp.where(drop, null_label, labels[index])

    def loss_fn(params):
        model = eqx.combine(params, static)
        if teacher is None:
            return dsm_loss(sde, model, x0, k_loss, t_min, y)
        return distillation_loss(sde, model, teacher, x0, k_loss, t_min, y)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    n = state.step.astype(jnp.float32)
    d = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
    ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state.ema, params)
    losses = state.losses.at[state.step].set(loss.astype(state.losses.dtype))
    return _State(params, ema, opt_state, state.step + 1, losses)


def _is_source(data) -> bool:
    """Whether `data` is a data source (an `eqx.Module` with `sample(key, n)` and
    `event_shape`, e.g. `mlem_jax.diffusion.GaussianMixture`) rather than images."""
    return isinstance(data, eqx.Module) and callable(getattr(data, "sample", None))


def train(
    model: eqx.Module,
    data: Float[Array, " n *shape"] | Any,
    *,
    key: PRNGKeyArray,
    config: TrainConfig = TrainConfig(),
    sde: VPSDE | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool | str = True,
    callback: Callable[[int, float], None] | None = None,
    teacher: eqx.Module | None = None,
    labels: Any = None,
) -> TrainResult:
    """Train a noise-prediction network with denoising score matching (or, with a
    `teacher`, distil the teacher into it).

    AdamW with warm-up and cosine decay, global-norm gradient clipping, and an EMA of
    the weights. Step `n` draws its batch and noise from `jr.fold_in(key, n)`, so a run
    is a deterministic function of `(model, data, key, config)` and a run resumed
    from a checkpoint is **bitwise identical** to an uninterrupted one.

    **Arguments:**

    - `model`: the initial network `ε_θ(t, x)` (e.g. a `mlem_jax.nn.UNet`).
    - `data`: training images `(N, *shape)`, e.g. from `mlem_jax.data`, drawn with
      replacement; or a data source (an `eqx.Module` with `sample(key, n)`, e.g.
      `mlem_jax.data.digits_mixture()`), which draws a fresh batch every step.
    - `key`: a JAX PRNG key for batches and noise.
    - `config`: a [`mlem_jax.training.TrainConfig`][].
    - `sde`: the forward SDE (default `VPSDE()`).
    - `checkpoint_path`: if given, the full training state is written there
      atomically every `config.checkpoint_every` steps and at the end, and training
      resumes from it if the file exists.
    - `progress`: show a tqdm progress bar with the loss (a string sets its label).
    - `callback`: called as `callback(step, loss)` after every step (e.g. logging; an
      exception raised there stops training, keeping the last checkpoint).
    - `teacher`: if given, a network `ε_T(t, x)` the model learns to reproduce
      ([`mlem_jax.diffusion.distillation_loss`][], same noised inputs as the DSM loss)
      instead of the noise itself.
    - `labels`: for a class-conditional model (a `UNet(..., num_classes=K)`), the
      class of each training image, integers in `[0, K)` of shape `(N,)` (e.g.
      `mlem_jax.data.digits_labels()`); each step replaces a fraction
      `config.label_dropout` of the batch's labels by the null label `K`, so the
      one network learns both the conditional and the unconditional prediction.
      Required for a conditional model, refused for an unconditional one.

    **Returns:**

    A [`mlem_jax.training.TrainResult`][] with the EMA model, last iterate and losses.
    """
    try:
        from tqdm.auto import tqdm
    except ModuleNotFoundError as e:
        raise missing_extra(e, "diffusion", "mlem_jax.training") from e

    sde = VPSDE() if sde is None else sde
    if not _is_source(data):
        data = jnp.asarray(data)
    num_classes = _check_labels("train", model, data, labels)
    if labels is not None:
        labels = jnp.asarray(labels, jnp.int32)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimizer = _optimizer(config)
    state = _initial_state(params, optimizer, config.steps)
    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        state = load_checkpoint(checkpoint_path, state)

    start = int(state.step)
    label = progress if isinstance(progress, str) else "train"
    bar = tqdm(
        total=config.steps, initial=start, desc=label, disable=not progress, leave=True
    )
    every = max(1, config.steps // 200)
    try:
        for n in range(start, config.steps):
            state = _train_step(
                state,
                static,
                data,
                key,
                optimizer,
                sde,
                config.batch_size,
                config.ema_decay,
                config.t_min,
                teacher,
                labels,
                config.label_dropout if labels is not None else 0.0,
                num_classes or 0,
            )
            if callback is not None or (n + 1) % every == 0:
                loss = float(state.losses[n])
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if callback is not None:
                    callback(n + 1, loss)
            bar.update(1)
            done = n + 1 == config.steps
            if checkpoint_path is not None and (
                done
                or (config.checkpoint_every and (n + 1) % config.checkpoint_every == 0)
            ):
                save_checkpoint(checkpoint_path, state)
    finally:
        bar.close()
    return TrainResult(
        model=eqx.combine(state.ema, static),
        raw_model=eqx.combine(state.params, static),
        losses=state.losses,
    )


def _check_labels(where: str, model, data, labels) -> int | None:
    """The model's `num_classes` after checking that `labels` fit it and `data`."""
    k = getattr(model, "num_classes", None)
    if labels is None and k is not None:
        what = (
            "the class of each training image for a class-conditional model "
            f"(num_classes={k}), e.g. mlem_jax.data.digits_labels()"
        )
        raise checks.fail(where, "labels", what, None)
    if labels is None:
        return None
    if k is None:
        what = "None for an unconditional model (build it with `num_classes`)"
        raise checks.fail(where, "labels", what, type(labels).__name__)
    if _is_source(data):
        what = "an image array, not a data source, for class-conditional training"
        raise checks.fail(where, "data", what, type(data).__name__)
    values, n = np.asarray(labels), data.shape[0]
    if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
        got = f"{values.dtype} of shape {values.shape}"
        raise checks.fail(where, "labels", f"integers of shape (N,) = ({n},)", got)
    if values.size and (values.min() < 0 or values.max() >= k):
        what = f"in [0, {k}) (the model's num_classes; {k} is the null label)"
        got = f"values in [{values.min()}, {values.max()}]"
        raise checks.fail(where, "labels", what, got)
    return k


# The held-out losses' noise draws: fixed, not derived from `seed`, so that the
# losses of every level, of every run and of a ladder before and after distillation
# are measured on the same draws and compare directly.
EVAL_KEY = 1234
DISTILL_EVAL_KEY = 4321


def _eval_loss(
    sde, model, data, key, batch_size=256, batches=4, teacher=None, labels=None
) -> float:
    """DSM loss of `model` (distillation loss towards `teacher`, if given) on fixed
    held-out batches (the same draws for every level); with `labels`, conditional
    on the images' true classes."""
    if teacher is None:
        loss = eqx.filter_jit(
            lambda sde, m, x0, k, y: dsm_loss(sde, m, x0, k, labels=y)
        )
    else:
        loss = eqx.filter_jit(
            lambda sde, m, x0, k, y: distillation_loss(sde, m, teacher, x0, k, labels=y)
        )
    total = 0.0
    for i in range(batches):
        kb, kl = jr.split(jr.fold_in(key, i))
        index = jr.randint(kb, (batch_size,), 0, data.shape[0])
        y = None if labels is None else jnp.asarray(labels, jnp.int32)[index]
        total += float(loss(sde, model, data[index], kl, y))
    return total / batches


def _ladder_spec(image_shape, widths, unet_kwargs, config, sde, seed, dataset):
    """The part of the manifest that must match for a resume to be valid."""
    return {
        "image_shape": list(image_shape),
        "widths": [int(w) for w in widths],
        "unet": {
            k: list(v) if isinstance(v, tuple) else v for k, v in unet_kwargs.items()
        },
        "sde": {"name": "VPSDE", "beta_min": sde.beta_min, "beta_max": sde.beta_max},
        "train": _config_record(config, "num_classes" in unet_kwargs),
        "seed": int(seed),
        "dataset": dataset,
    }


@dataclasses.dataclass(frozen=True)
class _Run:
    """A checked run of `train_ladder` or `distill_ladder`: the directory it writes,
    what each level trains on and how (`image_shape`, `widths`, `unet_kwargs` and
    `flops_batch` are `train_ladder`'s only)."""

    out_dir: str
    data: Any  # an image array (jnp) or a data source
    config: TrainConfig
    sde: VPSDE
    seed: int
    eval_data: Any  # float32 images (jnp) or None
    eval_labels: Any
    progress: bool
    labels: Any
    image_shape: tuple[int, ...] = ()
    widths: tuple[int, ...] = ()
    unet_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    flops_batch: int = 1

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.out_dir, MANIFEST)

    def checkpoint(self, level: int) -> str:
        return os.path.join(self.out_dir, "checkpoints", f"level_{level}.ckpt")

    def fit(self, model, level: int, key, label: str, teacher=None) -> TrainResult:
        """`train` one level, checkpointing into this run's directory."""
        return train(
            model,
            self.data,
            key=key,
            config=self.config,
            sde=self.sde,
            checkpoint_path=self.checkpoint(level),
            progress=label if self.progress else False,
            teacher=teacher,
            labels=self.labels,
        )

    def held_out_loss(self, model, key, teacher=None) -> float | None:
        """`model`'s loss on `eval_data` (None without it)."""
        if self.eval_data is None:
            return None
        data, labels = self.eval_data, self.eval_labels
        return _eval_loss(self.sde, model, data, key, teacher=teacher, labels=labels)


def _held_out(eval_data):
    return None if eval_data is None else jnp.asarray(eval_data, jnp.float32)


def _ladder_data(where: str, data, expected: tuple | None = None):
    """`(data, image_shape)`: images `(N, C, H, W)` as float32, or a data source,
    checked (against the image shape `expected`, if given)."""
    shape: Any
    if _is_source(data):
        shape = getattr(data, "event_shape", None)
        ok = isinstance(shape, tuple) and len(shape) == 3
    else:
        data = np.asarray(data, np.float32)
        shape, ok = data.shape, data.ndim == 4
    if not ok or (expected is not None and tuple(shape[-3:]) != expected):
        s = "(C, H, W)" if expected is None else str(expected)
        images = "(N, C, H, W)" if expected is None else f"(N, *{s})"
        what = f"images of shape {images} or a data source of event_shape {s}"
        raise checks.fail(where, "data", what, shape)
    return data, tuple(shape[-3:])


def _unet_kwargs(where: str, unet_kwargs, labels) -> dict[str, Any]:
    """`unet_kwargs` with the `num_classes` that `labels` ask for."""
    unet_kwargs = dict(unet_kwargs or {})
    if labels is None and "num_classes" in unet_kwargs:
        what = "given for a class-conditional UNet (`unet_kwargs` has num_classes)"
        raise checks.fail(where, "labels", what, None)
    if labels is None:
        return unet_kwargs
    values = np.asarray(labels)
    if values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        got = f"{values.dtype} of shape {values.shape}"
        raise checks.fail(where, "labels", "a non-empty integer array", got)
    unet_kwargs.setdefault("num_classes", int(values.max()) + 1)
    return unet_kwargs


def train_ladder(
    out_dir: str | os.PathLike,
    data: Float[np.ndarray, " n c h w"] | Any,
    *,
    widths: Sequence[int] = (8, 12, 16, 24, 32),
    unet_kwargs: dict[str, Any] | None = None,
    config: TrainConfig = TrainConfig(),
    sde: VPSDE | None = None,
    seed: int = 0,
    dataset: dict[str, Any] | None = None,
    eval_data: Float[np.ndarray, " m c h w"] | None = None,
    flops_batch: int = 1,
    progress: bool = True,
    labels: Any = None,
    eval_labels: Any = None,
) -> tuple[tuple[UNet, ...], dict[str, Any]]:
    """Train every level of a UNet ladder on one dataset and write a ladder directory.

    Level `l` (width `widths[l]`) is initialised with `jr.fold_in(jr.key(seed), 2 l)`
    and trained with `jr.fold_in(jr.key(seed), 2 l + 1)`. After each level the
    manifest is rewritten atomically, so an interrupted run restarted with the same
    arguments skips finished levels and resumes the current one from its checkpoint.
    Restarting with different arguments in the same directory raises a `ValueError`.

    **Arguments:**

    - `out_dir`: the ladder directory (created if needed).
    - `data`: training images `(N, C, H, W)` in `[−1, 1]`.
    - `widths`: strictly increasing UNet `base_width`s, one per level.
    - `unet_kwargs`: other [`mlem_jax.nn.UNet`][] hyperparameters (JSON-able).
    - `config`: a [`mlem_jax.training.TrainConfig`][].
    - `sde`: the forward SDE (default `VPSDE()`).
    - `seed`: the seed of everything random.
    - `dataset`: a JSON-able description of the data, recorded in the manifest (e.g.
      `{"name": "digits", "kwargs": {}}`).
    - `eval_data`: held-out images; if given, each level's DSM loss on them (with the
      same noise draws for every level and run, from the fixed `jr.key(EVAL_KEY)`)
      is recorded as `eval_loss`.
    - `flops_batch`: batch size at which FLOPs of one drift evaluation are measured
      and recorded (`flops`, and `flops_per_image`).
    - `progress`: show progress bars.
    - `labels`: the class of each training image, integers `(N,)` in `[0, K)`
      (e.g. `mlem_jax.data.digits_labels(split="train")`): trains a
      class-conditional ladder (`UNet(..., num_classes=K)`, with label dropout
      `config.label_dropout`; see [`train`][]). `K` is
      `unet_kwargs["num_classes"]` if given, else `max(labels) + 1`; the manifest
      records it as `spec.unet.num_classes` (and `spec.num_classes`), and
      [`load_ladder`][] rebuilds conditional networks from it.
    - `eval_labels`: the classes of `eval_data`, for a conditional held-out loss.

    **Returns:**

    The trained (EMA) models, narrowest first, and the manifest as a dict.
    """
    where = "train_ladder"
    sde = VPSDE() if sde is None else sde
    data, image_shape = _ladder_data(where, data)
    widths = check_widths(where, widths)
    unet_kwargs = _unet_kwargs(where, unet_kwargs, labels)
    spec = _ladder_spec(image_shape, widths, unet_kwargs, config, sde, seed, dataset)
    if labels is not None:
        spec["num_classes"] = unet_kwargs["num_classes"]
        _check_labels(where, _Classes(spec["num_classes"]), data, labels)
    # Everything that can be refused is refused before anything is written.
    _check_out_dir(where, os.fspath(out_dir))
    # One width suffices: the others share the architecture's down/upsampling.
    _check_unet(image_shape, widths[0], unet_kwargs)
    run = _Run(
        out_dir=os.fspath(out_dir),
        data=data if _is_source(data) else jnp.asarray(data),
        config=config,
        sde=sde,
        seed=seed,
        eval_data=_held_out(eval_data),
        eval_labels=eval_labels if labels is not None else None,
        progress=progress,
        labels=labels,
        image_shape=image_shape,
        widths=widths,
        unet_kwargs=unet_kwargs,
        flops_batch=checks.integer(where, "flops_batch", flops_batch),
    )
    manifest, created = _open_ladder(run, spec)
    try:
        return _train_levels(run, manifest)
    except BaseException:
        if created is not None:  # a failed first run leaves nothing behind
            _remove_if_no_work(run.out_dir, manifest, created)
        raise


class _Classes:
    """Stands in for a model with `num_classes` in `_check_labels`."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes


def _open_ladder(run: _Run, spec: dict) -> tuple[dict[str, Any], bool | None]:
    """`(manifest, created)`: the manifest of an earlier run with the same `spec`,
    to resume (`created` None), or a new one, written (`created`: whether this run
    made `out_dir`)."""
    manifest = _read_resumable(run.out_dir)
    if manifest is not None:
        if manifest.get("spec") != json.loads(json.dumps(spec)):
            what = (
                "a new directory, not one holding a ladder trained with other arguments"
            )
            raise checks.fail("train_ladder", "out_dir", what, run.out_dir)
        return manifest, None
    created = not os.path.exists(run.out_dir)
    os.makedirs(run.out_dir, exist_ok=True)
    manifest = {
        "format_version": FORMAT_VERSION,
        "spec": spec,
        "versions": versions(),
        # None: a data source, a fresh batch every step.
        "num_train_images": None if _is_source(run.data) else int(run.data.shape[0]),
        "levels": [],
    }
    _write_json(run.manifest_path, manifest)
    return manifest, created


def _remove_empty_checkpoints(out_dir: str) -> None:
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    if os.path.isdir(ckpt_dir) and not os.listdir(ckpt_dir):
        os.rmdir(ckpt_dir)


def _remove_if_no_work(out_dir: str, manifest: dict, created: bool) -> None:
    """After a failed first run: remove the manifest it wrote if no level finished
    and no checkpoint was written (nothing to resume), and the directory if this run
    created it and it is empty."""
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    if manifest["levels"] or (os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir)):
        return
    _remove_empty_checkpoints(out_dir)
    manifest_path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    if created and not os.listdir(out_dir):
        os.rmdir(out_dir)


def _train_levels(run: _Run, manifest: dict) -> tuple[tuple[UNet, ...], dict]:
    """Train the levels `manifest` does not list yet, recording each when done."""
    base = jr.key(run.seed)
    models = []
    for lvl, width in enumerate(run.widths):
        weights = f"level_{lvl}.eqx"
        key = jr.fold_in(base, 2 * lvl)
        init = _build_unet(run.image_shape, width, run.unet_kwargs, key)
        if lvl < len(manifest["levels"]):
            models.append(_read_weights(os.path.join(run.out_dir, weights), init, lvl))
            continue
        wall, cpu = time.perf_counter(), time.process_time()
        key, label = jr.fold_in(base, 2 * lvl + 1), f"level {lvl} (width {width})"
        result = run.fit(init, lvl, key, label)
        model = result.model
        jax.block_until_ready(model)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        save_checkpoint(os.path.join(run.out_dir, weights), model)
        losses = np.asarray(result.losses)
        steps, batch = run.config.steps, run.flops_batch
        tail = max(1, steps // 10)
        y = jnp.zeros((batch, *run.image_shape), jnp.float32)
        flops = drift_flops(reverse_drift(run.sde, model), y)
        entry = {
            "level": lvl,
            "width": width,
            "file": weights,
            "params": count_params(model),
            "flops": flops,
            "flops_batch": batch,
            "flops_per_image": flops / batch,
            "steps": steps,
            "final_loss": float(np.mean(losses[-tail:])),
            # Of this process only (a resumed level counts its last run); includes
            # compilation.
            "train_wall_s": round(wall, 1),
            "train_cpu_s": round(cpu, 1),
            "loss_curve": [float(x) for x in np.mean(losses.reshape(-1, tail), 1)]
            if steps % tail == 0
            else None,
        }
        if run.eval_data is not None:
            entry["eval_loss"] = run.held_out_loss(model, jr.key(EVAL_KEY))
        manifest["levels"].append(entry)
        _write_json(run.manifest_path, manifest)
        os.remove(run.checkpoint(lvl))
        models.append(model)
    _remove_empty_checkpoints(run.out_dir)
    return tuple(models), manifest


def _check_out_dir(where: str, out_dir: str) -> None:
    """Refuse an output directory that cannot be created or written, before work."""
    probe = os.path.abspath(out_dir)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise checks.fail(where, "out_dir", "a directory", out_dir, NotADirectoryError)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = f"a directory that can be created ({probe!r} is a file)"
        raise checks.fail(where, "out_dir", what, out_dir, NotADirectoryError)
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".mlem-jax-write-test.")
    except OSError as e:
        what = f"a directory that can be written ({probe!r}: {e.strerror})"
        raise checks.fail(where, "out_dir", what, out_dir) from None
    os.close(fd)
    os.remove(tmp)


def _check_unet(image_shape, width, unet_kwargs) -> None:
    """Trace (without compute) one UNet of `width` on one image: refuses image sizes
    and hyperparameters the architecture cannot take, before anything is written."""
    shape = tuple(image_shape)
    try:
        model = _build_unet(shape, width, unet_kwargs, jr.key(0))
        eqx.filter_eval_shape(
            lambda m, x: m(jnp.zeros(()), x),
            model,
            jax.ShapeDtypeStruct(shape, jnp.float32),
        )
    except Exception as e:
        unet = f"a UNet of width {width} with {unet_kwargs or 'default settings'}"
        why = f"{type(e).__name__}: {e}; use a larger image size or fewer channel_mults"
        unet += f" cannot take images of shape {shape}"
        raise ValueError(f"{unet} ({why}).") from None


def _read_out_manifest(manifest_path: str, again: str) -> dict[str, Any]:
    """The JSON object in an output directory's manifest (`again`: the command that
    rewrites a damaged one)."""
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        why = f"({e}); delete it (or the directory) and {again} again"
        raise ValueError(f"`out_dir`: {manifest_path!r} is damaged {why}.") from None
    return manifest


def _read_resumable(out_dir: str) -> dict[str, Any] | None:
    """The manifest of an earlier run in `out_dir` to resume, or None if there is
    none. A manifest with no finished level and no checkpoint holds no work (a run
    stopped before its first checkpoint): it is not kept against new arguments."""
    manifest_path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(manifest_path):
        return None
    manifest = _read_out_manifest(manifest_path, "train")
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    has_ckpt = os.path.isdir(ckpt_dir) and bool(os.listdir(ckpt_dir))
    if not manifest.get("levels") and not has_ckpt:
        return None
    return manifest


def distill_ladder(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    data: Float[np.ndarray, " n c h w"] | Any,
    *,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    eval_data: Float[np.ndarray, " m c h w"] | None = None,
    progress: bool = True,
    labels: Any = None,
    eval_labels: Any = None,
) -> tuple[tuple[UNet, ...], dict[str, Any]]:
    """Distil a ladder's top level into its cheaper levels, and write a new ladder.

    Each level below the top starts from its trained weights in `source` and is
    trained on [`mlem_jax.diffusion.distillation_loss`][] towards the top level (the
    teacher, copied unchanged). Independently trained levels each carry their own
    training error, so neighbouring levels differ by about as much as the cheapest
    does from the top; after distillation they differ by their (smaller, capacity-
    bound) distillation errors, which is what ML-EM's cost `(Σ_l sqrt(V_l C_l))²`
    depends on.

    Level `l` trains with `jr.fold_in(jr.key(seed), l)`. The manifest (the source's,
    plus a `distillation` record and, per level, `distill_loss` and
    `distill_eval_loss`) is rewritten after each level, atomically; rerunning the
    same call skips finished levels and resumes the current one from its
    checkpoint.

    **Arguments:**

    - `source`: a ladder directory ([`train_ladder`][] or a shipped one).
    - `out_dir`: the new ladder directory.
    - `data`: training images `(N, C, H, W)` (the source's dataset).
    - `config`: a [`TrainConfig`][] (a smaller learning rate than for training from
      scratch, e.g. `1e-3`, suits the warm start).
    - `eval_data`: held-out images for `distill_eval_loss` (before and after, on the
      same noise draws, from the fixed `jr.key(DISTILL_EVAL_KEY)`).
    - `progress`: show progress bars.
    - `labels`, `eval_labels`: the classes of `data` and `eval_data`, required for
      a class-conditional ladder: the students learn the teacher's conditional and
      (through label dropout, `config.label_dropout`) unconditional predictions.

    **Returns:** the new ladder's models, narrowest first, and its manifest.
    """
    where, source = "distill_ladder", os.fspath(source)
    models, manifest = load_ladder(source)
    if len(models) < 2:
        what = "a ladder of two levels or more (nothing to distil in one)"
        raise checks.fail(where, "source", what, source)
    expected = tuple(manifest["spec"]["image_shape"])
    data, _ = _ladder_data(where, data, expected)
    _check_labels(where, models[0], data, labels)
    run = _Run(
        out_dir=os.fspath(out_dir),
        data=data if _is_source(data) else jnp.asarray(data),
        config=config,
        sde=sde_from_manifest(manifest),
        seed=seed,
        eval_data=_held_out(eval_data),
        eval_labels=eval_labels,
        progress=progress,
        labels=labels,
    )
    out = _open_distilled(run, manifest, len(models) - 1)
    teacher = models[-1]
    save_checkpoint(os.path.join(run.out_dir, out["levels"][-1]["file"]), teacher)
    students = _distill_levels(run, models, out)
    return (*students, teacher), out


def _open_distilled(run: _Run, manifest: dict, teacher_level: int) -> dict[str, Any]:
    """The distilled ladder's manifest: an earlier run's of the same distillation,
    to resume, or the source's with a `distillation` record, written."""
    conditional = num_classes_from_manifest(manifest) is not None
    record = {
        "source_levels": [lv.get("final_loss") for lv in manifest["levels"]],
        "teacher_level": teacher_level,
        "config": _config_record(run.config, conditional),
        "seed": run.seed,
        "warm_start": True,
    }
    os.makedirs(run.out_dir, exist_ok=True)
    if not os.path.exists(run.manifest_path):
        out: dict[str, Any] = dict(manifest, distillation=record, versions=versions())
        out["levels"] = [dict(lv) for lv in manifest["levels"]]
        _write_json(run.manifest_path, out)
        return out
    out = _read_out_manifest(run.manifest_path, "distil")
    same = out.get("distillation") == json.loads(json.dumps(record))
    if not (same and out.get("spec") == manifest.get("spec")):
        what = (
            "a new directory, not one holding a ladder distilled from a different "
            "source or with different arguments"
        )
        raise checks.fail("distill_ladder", "out_dir", what, run.out_dir)
    return out


def _distill_levels(run: _Run, models: Sequence, out: dict) -> list:
    """Distil the top of `models` into each level below it that `out` does not
    mark distilled yet, recording each when done; the students, narrowest first."""
    teacher = models[-1]
    students = []
    levels = zip(models[:-1], out["levels"][:-1], strict=True)
    for lvl, (model, entry) in enumerate(levels):
        weights = os.path.join(run.out_dir, entry["file"])
        if entry.get("distilled"):
            students.append(eqx.tree_deserialise_leaves(weights, model))
            continue
        before = run.held_out_loss(model, jr.key(DISTILL_EVAL_KEY), teacher)
        key, label = jr.fold_in(jr.key(run.seed), lvl), f"distil level {lvl}"
        result = run.fit(model, lvl, key, label, teacher)
        trained = result.model
        save_checkpoint(weights, trained)
        losses = np.asarray(result.losses)
        tail = max(1, run.config.steps // 10)
        entry.update(distilled=True, distill_loss=float(np.mean(losses[-tail:])))
        if run.eval_data is not None:
            entry["distill_eval_loss_before"] = before
            key = jr.key(DISTILL_EVAL_KEY)
            entry["distill_eval_loss"] = run.held_out_loss(trained, key, teacher)
        _write_json(run.manifest_path, out)
        os.remove(run.checkpoint(lvl))
        students.append(trained)
    _remove_empty_checkpoints(run.out_dir)
    return students
