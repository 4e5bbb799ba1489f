"""The PNG outputs of the `sample` and `demo` commands: image grids and figures."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._io import atomic_write
from .._misc import missing_extra


def image_grid(images: np.ndarray, ncol: int | None = None, scale=None) -> np.ndarray:
    """`mlem_jax.data.image_grid` (the public writer is `save_image_grid`)."""
    try:
        from ..data import image_grid as grid
    except ModuleNotFoundError as e:
        raise missing_extra(e, "diffusion", "writing PNG files") from e
    return grid(images, ncol, scale)


def save_png(array: np.ndarray, path: str) -> None:
    """Write a uint8 picture as a PNG, atomically."""
    try:
        from PIL import Image
    except ModuleNotFoundError as e:
        raise missing_extra(e, "diffusion", "writing PNG files") from e

    image = Image.fromarray(array)
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def save_figure(fig, path: str) -> None:
    """Write a matplotlib figure as a PNG, atomically."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))


def npz_path(out: str) -> str:
    """The `.npz` the `sample` command writes beside its PNG `out`."""
    return os.path.splitext(out)[0] + ".npz"


def write_samples(args: Any, x: np.ndarray, **arrays: Any) -> None:
    """Write what a `sample` run drew: the `.npz` of the samples `x`, the run's
    `arrays` and the arguments that reproduce it (sampler, grid, steps, seed), then
    the PNG grid `args.out`."""
    atomic_write(
        npz_path(args.out),
        lambda f: np.savez(
            f,
            samples=x,
            sampler=args.sampler,
            grid=args.grid,
            steps=args.steps,
            seed=args.seed,
            **arrays,
        ),
    )
    save_png(image_grid(x), args.out)
