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

from ._env import versions
from ._io import atomic_write as atomic_write, write_json as _write_json
from ._misc import missing_extra
from .diffusion import (
    VPSDE,
    VPLinear,
    distillation_loss,
    drift_flops,
    dsm_loss,
    reverse_drift,
)
from .nn import UNet, count_params

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

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


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
        for name in ("steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.warmup_steps < 0 or self.checkpoint_every < 0:
            raise ValueError("`warmup_steps` and `checkpoint_every` must be >= 0.")
        if not (self.learning_rate > 0 and np.isfinite(self.learning_rate)):
            raise ValueError(
                "`learning_rate` must be a positive finite number, got "
                f"{self.learning_rate}."
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"`ema_decay` must lie in [0, 1), got {self.ema_decay}.")
        if not (self.grad_clip > 0 and np.isfinite(self.grad_clip)):
            # <= 0 would flip the gradient (ascent) or freeze training.
            raise ValueError(
                "`grad_clip` must be a positive finite number (the global-norm "
                f"clipping threshold), got {self.grad_clip}."
            )
        if not (self.weight_decay >= 0 and np.isfinite(self.weight_decay)):
            raise ValueError(
                f"`weight_decay` must be finite and >= 0, got {self.weight_decay}."
            )
        if not 0 < self.t_min < 1:
            raise ValueError(f"`t_min` must lie in (0, 1), got {self.t_min}.")
        if not 0 <= self.label_dropout < 1:
            # 1 would never train the conditional prediction.
            raise ValueError(
                "`label_dropout` must lie in [0, 1) (the fraction of labels "
                f"replaced by the null label), got {self.label_dropout}."
            )


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
        raise ValueError(
            f"checkpoint {path!r} does not match the model and training config it is "
            f"loaded into: {what} ({type(e).__name__}: {e}). Delete it to restart "
            "that level from scratch; finished levels are kept."
        ) from None


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


def _check_source(name: str, data) -> tuple[int, ...]:
    shape = getattr(data, "event_shape", None)
    if not (isinstance(shape, tuple) and len(shape) == 3):
        raise ValueError(
            f"`{name}`: a data source must have an `event_shape` (C, H, W); got "
            f"{shape!r}."
        )
    return shape


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
    num_classes = _check_labels("labels", model, data, labels)
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


def _check_labels(name: str, model, data, labels) -> int | None:
    """The model's `num_classes` after checking that `labels` fit it and `data`."""
    num_classes = getattr(model, "num_classes", None)
    if labels is None:
        if num_classes is not None:
            raise ValueError(
                f"`{name}`: the model is class-conditional (num_classes="
                f"{num_classes}) but no labels were given; pass the class of each "
                "training image (e.g. mlem_jax.data.digits_labels())."
            )
        return None
    if num_classes is None:
        raise ValueError(
            f"`{name}` given but the model is unconditional; build it with "
            "`num_classes` (e.g. UNet(..., num_classes=10)) to train on labels."
        )
    if _is_source(data):
        raise ValueError(
            f"`{name}`: class-conditional training needs an image array `data`, not "
            "a data source."
        )
    values = np.asarray(labels)
    if values.shape != (data.shape[0],) or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(
            f"`{name}` must be integers of shape (N,) = ({data.shape[0]},), one class "
            f"per image; got dtype {values.dtype} and shape {values.shape}."
        )
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"`{name}` must lie in [0, {num_classes}) (the model's num_classes; "
            f"{num_classes} is the null label); got values in [{values.min()}, "
            f"{values.max()}]."
        )
    return num_classes


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


def _build_unet(image_shape, width, unet_kwargs, key) -> UNet:
    kw: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in unet_kwargs.items()
    }
    return UNet(tuple(image_shape), width, key=key, **kw)


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
    sde = VPSDE() if sde is None else sde
    out_dir = os.fspath(out_dir)
    if _is_source(data):
        image_shape = _check_source("data", data)
    else:
        data = np.asarray(data, np.float32)
        if data.ndim != 4:
            raise ValueError(f"`data` must have shape (N, C, H, W), got {data.shape}.")
        image_shape = tuple(data.shape[1:])
    widths = tuple(int(w) for w in widths)
    if (
        not widths
        or any(b <= a for a, b in zip(widths, widths[1:], strict=False))
        or widths[0] < 1
    ):
        raise ValueError(
            f"`widths` must be positive and strictly increasing, got {widths}."
        )
    unet_kwargs = dict(unet_kwargs or {})
    if labels is not None:
        values = np.asarray(labels)
        if values.size == 0 or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(
                f"`labels` must be a non-empty integer array; got dtype {values.dtype} "
                f"and shape {values.shape}."
            )
        unet_kwargs.setdefault("num_classes", int(values.max()) + 1)
    elif "num_classes" in unet_kwargs:
        raise ValueError(
            "`unet_kwargs` asks for a class-conditional UNet (num_classes) but no "
            "`labels` were given."
        )
    spec = _ladder_spec(image_shape, widths, unet_kwargs, config, sde, seed, dataset)
    if labels is not None:
        spec["num_classes"] = unet_kwargs["num_classes"]
        # Refused before anything is written.
        _check_labels("labels", _Classes(spec["num_classes"]), data, labels)
    # Everything that can be refused is refused before anything is written.
    _check_out_dir("out_dir", out_dir)
    # One width suffices: the others share the architecture's down/upsampling.
    _check_unet(image_shape, widths[0], unet_kwargs)
    manifest_path = os.path.join(out_dir, MANIFEST)
    manifest = _read_resumable(out_dir)
    created = None  # set on a first run: whether it made `out_dir`
    if manifest is not None:
        if manifest.get("spec") != json.loads(json.dumps(spec)):
            raise ValueError(
                f"`out_dir` {out_dir!r} already holds a ladder trained with different "
                "arguments; use a new directory (or delete it) to train this one."
            )
    else:
        created = not os.path.exists(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        manifest = {
            "format_version": FORMAT_VERSION,
            "spec": spec,
            "versions": versions(),
            # None: a data source, a fresh batch every step.
            "num_train_images": None if _is_source(data) else int(data.shape[0]),
            "levels": [],
        }
        _write_json(manifest_path, manifest)
    try:
        return _train_levels(
            out_dir,
            manifest,
            data,
            widths,
            unet_kwargs,
            config,
            sde,
            seed,
            eval_data,
            flops_batch,
            progress,
            labels,
            eval_labels,
        )
    except BaseException:
        if created is not None:  # a failed first run leaves nothing behind
            _remove_if_no_work(out_dir, manifest, created)
        raise


class _Classes:
    """Stands in for a model with `num_classes` in `_check_labels`."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes


def num_classes_from_manifest(manifest: dict[str, Any]) -> int | None:
    """The number of classes of a class-conditional ladder (its null label), or
    `None` for an unconditional one."""
    k = manifest["spec"].get("unet", {}).get("num_classes")
    return None if k is None else int(k)


def _remove_if_no_work(out_dir: str, manifest: dict, created: bool) -> None:
    """After a failed first run: remove the manifest it wrote if no level finished
    and no checkpoint was written (nothing to resume), and the directory if this run
    created it and it is empty."""
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    if manifest["levels"] or (os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir)):
        return
    if os.path.isdir(ckpt_dir):
        os.rmdir(ckpt_dir)
    manifest_path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    if created and not os.listdir(out_dir):
        os.rmdir(out_dir)


def _train_levels(
    out_dir,
    manifest,
    data,
    widths,
    unet_kwargs,
    config,
    sde,
    seed,
    eval_data,
    flops_batch,
    progress,
    labels=None,
    eval_labels=None,
):
    manifest_path = os.path.join(out_dir, MANIFEST)
    image_shape = (
        _check_source("data", data) if _is_source(data) else tuple(data.shape[1:])
    )
    base = jr.key(seed)
    data_j = data if _is_source(data) else jnp.asarray(data)
    models = []
    for lvl, width in enumerate(widths):
        weights = f"level_{lvl}.eqx"
        init = _build_unet(image_shape, width, unet_kwargs, jr.fold_in(base, 2 * lvl))
        if lvl < len(manifest["levels"]):
            models.append(_read_weights(os.path.join(out_dir, weights), init, lvl))
            continue
        ckpt = os.path.join(out_dir, "checkpoints", f"level_{lvl}.ckpt")
        wall, cpu = time.perf_counter(), time.process_time()
        result = train(
            init,
            data_j,
            key=jr.fold_in(base, 2 * lvl + 1),
            config=config,
            sde=sde,
            checkpoint_path=ckpt,
            progress=f"level {lvl} (width {width})" if progress else False,
            labels=labels,
        )
        model = result.model
        jax.block_until_ready(model)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        save_checkpoint(os.path.join(out_dir, weights), model)
        losses = np.asarray(result.losses)
        tail = max(1, config.steps // 10)
        y = jnp.zeros((flops_batch, *image_shape), jnp.float32)
        flops = drift_flops(reverse_drift(sde, model), y)
        entry = {
            "level": lvl,
            "width": width,
            "file": weights,
            "params": count_params(model),
            "flops": flops,
            "flops_batch": flops_batch,
            "flops_per_image": flops / flops_batch,
            "steps": config.steps,
            "final_loss": float(np.mean(losses[-tail:])),
            # Of this process only (a resumed level counts its last run); includes
            # compilation.
            "train_wall_s": round(wall, 1),
            "train_cpu_s": round(cpu, 1),
            "loss_curve": [float(x) for x in np.mean(losses.reshape(-1, tail), 1)]
            if config.steps % tail == 0
            else None,
        }
        if eval_data is not None:
            entry["eval_loss"] = _eval_loss(
                sde,
                model,
                jnp.asarray(eval_data, jnp.float32),
                jr.key(EVAL_KEY),
                labels=eval_labels if labels is not None else None,
            )
        manifest["levels"].append(entry)
        _write_json(manifest_path, manifest)
        os.remove(ckpt)
        models.append(model)
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    if os.path.isdir(ckpt_dir) and not os.listdir(ckpt_dir):
        os.rmdir(ckpt_dir)
    return tuple(models), manifest


def _check_out_dir(name: str, out_dir: str) -> None:
    """Refuse an output directory that cannot be created or written, before work."""
    probe = os.path.abspath(out_dir)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise NotADirectoryError(
            f"`{name}`: {out_dir!r} exists and is not a directory."
        )
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise NotADirectoryError(
            f"`{name}`: {out_dir!r} cannot be created: {probe!r} is a file."
        )
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".mlem-jax-write-test.")
    except OSError as e:
        raise ValueError(
            f"`{name}`: {out_dir!r} cannot be written ({probe!r}: {e.strerror})."
        ) from None
    os.close(fd)
    os.remove(tmp)


def _check_unet(image_shape, width, unet_kwargs) -> None:
    """Trace (without compute) one UNet of `width` on one image: refuses image sizes
    and hyperparameters the architecture cannot take, before anything is written."""
    try:
        model = _build_unet(image_shape, width, unet_kwargs, jr.key(0))
        out = eqx.filter_eval_shape(
            lambda m, x: m(jnp.zeros(()), x),
            model,
            jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32),
        )
    except Exception as e:
        raise ValueError(
            f"a UNet of width {width} with {unet_kwargs or 'default settings'} cannot "
            f"take images of shape {tuple(image_shape)} ({type(e).__name__}: {e}); "
            "use a larger image size or fewer `channel_mults`."
        ) from None
    if out.shape != tuple(image_shape):
        raise ValueError(
            f"a UNet of width {width} maps images of shape {tuple(image_shape)} to "
            f"{out.shape}; use an image side divisible by 2**(len(channel_mults) - 1)."
        )


def _read_resumable(out_dir: str) -> dict[str, Any] | None:
    """The manifest of an earlier run in `out_dir` to resume, or None if there is
    none. A manifest with no finished level and no checkpoint holds no work (a run
    stopped before its first checkpoint): it is not kept against new arguments."""
    manifest_path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(manifest_path):
        return None
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"`out_dir`: {manifest_path!r} is damaged ({e}); delete it (or the "
            "directory) and train again."
        ) from None
    if not isinstance(manifest, dict):
        raise ValueError(
            f"`out_dir`: {manifest_path!r} is not a ladder manifest; use a new "
            "directory or delete it."
        )
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
    source, out_dir = os.fspath(source), os.fspath(out_dir)
    models, manifest = load_ladder(source)
    if len(models) < 2:
        raise ValueError(f"`source` {source!r} has a single level: nothing to distil.")
    expected = tuple(manifest["spec"]["image_shape"])
    if _is_source(data):
        shape = _check_source("data", data)
        if shape != expected:
            raise ValueError(
                f"`data`: the source's event_shape {shape} is not the ladder's "
                f"image shape {expected}."
            )
    else:
        data = np.asarray(data, np.float32)
        if data.ndim != 4 or tuple(data.shape[1:]) != expected:
            raise ValueError(
                f"`data` must have shape (N, *{expected}), got {data.shape}."
            )
    sde = sde_from_manifest(manifest)
    conditional = num_classes_from_manifest(manifest) is not None
    if conditional:
        _check_labels("labels", models[0], data, labels)
    elif labels is not None:
        raise ValueError(
            f"`labels` given but `source` {source!r} is an unconditional ladder."
        )
    record = {
        "source_levels": [lv.get("final_loss") for lv in manifest["levels"]],
        "teacher_level": len(models) - 1,
        "config": _config_record(config, conditional),
        "seed": seed,
        "warm_start": True,
    }
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(manifest_path):
        try:
            with open(manifest_path) as f:
                out = json.load(f)
            if not isinstance(out, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(
                f"`out_dir`: {manifest_path!r} is damaged ({e}); delete it (or the "
                "directory) and distil again."
            ) from None
        if out.get("distillation") != json.loads(json.dumps(record)) or out.get(
            "spec"
        ) != manifest.get("spec"):
            raise ValueError(
                f"`out_dir` {out_dir!r} already holds a ladder distilled from a "
                "different source or with different arguments; use a new directory."
            )
    else:
        out = dict(manifest, distillation=record, versions=versions())
        out["levels"] = [dict(lv) for lv in manifest["levels"]]
        _write_json(manifest_path, out)
    teacher = models[-1]
    top = out["levels"][-1]
    save_checkpoint(os.path.join(out_dir, top["file"]), teacher)
    held_out = None if eval_data is None else jnp.asarray(eval_data, jnp.float32)
    data_j = data if _is_source(data) else jnp.asarray(data)
    result = []
    for lvl, (model, entry) in enumerate(
        zip(models[:-1], out["levels"][:-1], strict=True)
    ):
        weights = os.path.join(out_dir, entry["file"])
        if entry.get("distilled"):
            result.append(eqx.tree_deserialise_leaves(weights, model))
            continue
        before = (
            _eval_loss(
                sde,
                model,
                held_out,
                jr.key(DISTILL_EVAL_KEY),
                teacher=teacher,
                labels=eval_labels,
            )
            if held_out is not None
            else None
        )
        ckpt = os.path.join(out_dir, "checkpoints", f"level_{lvl}.ckpt")
        trained = train(
            model,
            data_j,
            key=jr.fold_in(jr.key(seed), lvl),
            config=config,
            sde=sde,
            checkpoint_path=ckpt,
            progress=f"distil level {lvl}" if progress else False,
            teacher=teacher,
            labels=labels,
        )
        save_checkpoint(weights, trained.model)
        losses = np.asarray(trained.losses)
        entry.update(
            distilled=True,
            distill_loss=float(np.mean(losses[-max(1, config.steps // 10) :])),
        )
        if held_out is not None:
            entry["distill_eval_loss_before"] = before
            entry["distill_eval_loss"] = _eval_loss(
                sde,
                trained.model,
                held_out,
                jr.key(DISTILL_EVAL_KEY),
                teacher=teacher,
                labels=eval_labels,
            )
        _write_json(manifest_path, out)
        os.remove(ckpt)
        result.append(trained.model)
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    if os.path.isdir(ckpt_dir) and not os.listdir(ckpt_dir):
        os.rmdir(ckpt_dir)
    return (*result, teacher), out


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _positive_ints(x, length=None) -> bool:
    return (
        isinstance(x, list)
        and len(x) > 0
        and (length is None or len(x) == length)
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in x)
    )


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ladder directory's manifest, without loading any weights.

    Raises `FileNotFoundError` if `path` is not a ladder directory, and a
    `ValueError` naming the bad file, what is wrong with it and what to do for a
    manifest that is not valid JSON, misses a field, has a field of the wrong type,
    or lists a weights file that is missing or empty.
    """
    path = os.fspath(path)
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"`path`: {path!r} is not a directory.")
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(
            f"`path`: {path!r} is not a ladder directory (no {MANIFEST}); write one "
            "with `mlem-jax train --out DIR`."
        )
    redo = (
        "the ladder directory is damaged: restore it from a copy, or retrain it "
        "(`mlem-jax train` with the same arguments resumes what is left)"
    )

    def bad(what: str) -> ValueError:
        return ValueError(f"{manifest_path!r} {what}; {redo}.")

    try:
        with open(manifest_path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"is not valid JSON ({e})") from None
    except OSError as e:
        raise ValueError(f"{manifest_path!r} cannot be read: {e}.") from None
    if not isinstance(manifest, dict):
        raise bad(f"holds a JSON {type(manifest).__name__}, not a ladder manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        if "format_version" not in manifest:
            raise bad("has no `format_version`: it is not a ladder manifest")
        raise ValueError(
            f"{manifest_path!r} has format_version {version!r}; this mlem_jax reads "
            f"{FORMAT_VERSION}. Use the mlem_jax version that wrote it, or retrain."
        )
    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        raise bad("has no `spec` object")
    checks = (
        ("image_shape", lambda v: _positive_ints(v, 3), "3 positive ints"),
        ("widths", _positive_ints, "a list of positive ints"),
        ("unet", lambda v: isinstance(v, dict), "an object"),
        ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool), "an int"),
        (
            "sde",
            lambda v: (
                isinstance(v, dict)
                and _number(v.get("beta_min"))
                and _number(v.get("beta_max"))
                and 0 < v["beta_min"] < v["beta_max"]
            ),
            "an object with 0 < beta_min < beta_max",
        ),
    )
    for name, ok, expected in checks:
        if not ok(spec.get(name)):
            raise bad(f"has spec.{name} = {spec.get(name)!r}; expected {expected}")
    levels = manifest.get("levels")
    if not isinstance(levels, list):
        raise bad("has no `levels` list")
    if not levels:
        raise ValueError(
            f"ladder {path!r} has no finished level yet ({MANIFEST} lists none); "
            "finish training it (rerun the same `mlem-jax train` command) or delete "
            "the directory."
        )
    for i, entry in enumerate(levels):
        where = f"levels[{i}]"
        if not isinstance(entry, dict):
            raise bad(f"has {where} = {entry!r}; expected an object")
        if entry.get("level") != i or isinstance(entry.get("level"), bool):
            raise bad(f"has {where}.level = {entry.get('level')!r}; expected {i}")
        if not _positive_ints([entry.get("width")]):
            raise bad(f"has {where}.width = {entry.get('width')!r}; expected an int")
        if i < len(spec["widths"]) and entry["width"] != spec["widths"][i]:
            raise bad(
                f"has {where}.width = {entry['width']!r} but spec.widths[{i}] = "
                f"{spec['widths'][i]!r}; they must agree"
            )
        if not (_number(entry.get("flops_per_image")) and entry["flops_per_image"] > 0):
            raise bad(
                f"has {where}.flops_per_image = {entry.get('flops_per_image')!r}; "
                "expected a positive number"
            )
        file = entry.get("file")
        if not (isinstance(file, str) and file and os.path.basename(file) == file):
            raise bad(f"has {where}.file = {file!r}; expected a file name")
        weights = os.path.join(path, file)
        if not os.path.isfile(weights):
            raise ValueError(
                f"level {i}'s weights {weights!r} (listed in {MANIFEST}) are missing; "
                f"{redo}."
            )
        if os.path.getsize(weights) == 0:
            raise ValueError(f"level {i}'s weights {weights!r} are empty; {redo}.")
    return manifest


def load_ladder(path: str | os.PathLike) -> tuple[tuple[UNet, ...], dict[str, Any]]:
    """Read a ladder directory written by [`mlem_jax.training.train_ladder`][].

    **Arguments:**

    - `path`: the ladder directory.

    **Returns:**

    `(models, manifest)`: the finished levels' EMA networks, narrowest first, and the
    manifest dict (`manifest["spec"]` holds architecture, SDE and dataset).
    Build the SDE with `VPSDE(**{k: v for k, v in spec["sde"].items() if k != "name"})`.
    Weights stored in a lower precision (the shipped ladders use float16) are cast
    back to the networks' dtype.

    A damaged ladder (a manifest that is not valid JSON or misses a field, a weights
    file that is missing, empty, truncated or of another architecture) raises a
    `ValueError` naming the file and what to do (see [`read_manifest`][]).
    """
    path = os.fspath(path)
    manifest = read_manifest(path)
    spec = manifest["spec"]
    listed, planned = len(manifest["levels"]), len(spec["widths"])
    if listed != planned:
        # Fewer levels than widths: an unfinished training run, or a manifest that
        # lost an entry; either way the top network is not the ladder's top.
        raise ValueError(
            f"{os.path.join(path, MANIFEST)!r} lists {listed} level(s) but its "
            f"spec.widths names {planned} ({spec['widths']}): the training did not "
            "finish (rerun the same `mlem-jax train` command to resume it) or the "
            "manifest lost an entry (restore it from a copy)."
        )
    base = jr.key(spec["seed"])
    models = []
    for entry in manifest["levels"]:
        weights = os.path.join(path, entry["file"])
        try:
            skeleton = _build_unet(
                spec["image_shape"],
                entry["width"],
                spec["unet"],
                jr.fold_in(base, 2 * entry["level"]),
            )
        except Exception as e:  # bad UNet hyperparameters in spec.unet
            raise ValueError(
                f"{os.path.join(path, MANIFEST)!r}: spec.unet {spec['unet']!r} does "
                f"not describe a UNet for level {entry['level']} ({type(e).__name__}: "
                f"{e}); the manifest is damaged."
            ) from None
        models.append(_read_weights(weights, skeleton, entry["level"]))
    return tuple(models), manifest


def _read_weights(weights: str, skeleton, level: int):
    """Deserialise one level's weights into `skeleton`, all of the file and no more."""
    try:
        with open(weights, "rb") as f:
            model = eqx.tree_deserialise_leaves(
                f, skeleton, filter_spec=_cast_to_skeleton
            )
            trailing = f.read(1)
    except Exception as e:  # equinox/numpy raise assorted errors on bad files
        raise ValueError(
            f"level {level}'s weights {weights!r} are truncated or corrupt, or were "
            f"written for another architecture ({type(e).__name__}: {e}); restore "
            "the file from a copy or retrain the ladder."
        ) from None
    if trailing:
        raise ValueError(
            f"level {level}'s weights {weights!r} are longer than the architecture in "
            "the manifest: the file or the manifest is damaged; restore it from a "
            "copy or retrain the ladder."
        )
    return model


def _cast_to_skeleton(f, x):
    """Deserialise an array leaf with the dtype of the skeleton's leaf."""
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        return jnp.asarray(np.load(f), dtype=x.dtype)
    return eqx.default_deserialise_filter_spec(f, x)


def sde_from_manifest(manifest: dict[str, Any]) -> VPSDE:
    """The [`mlem_jax.diffusion.VPSDE`][] a ladder was trained with."""
    sde = manifest["spec"]["sde"]
    return VPSDE(beta_min=sde["beta_min"], beta_max=sde["beta_max"])


def param_from_manifest(manifest: dict[str, Any]):
    """The [`mlem_jax.diffusion.VPLinear`][] parametrisation of the VP-SDE a ladder
    was trained with: what `mlem_jax.diffusion.sample` and `mlem_sample` take with
    its networks (which predict `ε`)."""
    sde = manifest["spec"]["sde"]
    return VPLinear(beta_min=sde["beta_min"], beta_max=sde["beta_max"])
