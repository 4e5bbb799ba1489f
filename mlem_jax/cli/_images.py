"""The PNG outputs of the `sample` and `demo` commands: image grids and figures."""

from __future__ import annotations

import math

import numpy as np

from .._io import atomic_write
from .._misc import missing_extra


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """(n, c, h, w) in [−1, 1] → (n, h, w, c) uint8."""
    x = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255)
    return np.round(x).astype(np.uint8).transpose(0, 2, 3, 1)


def image_grid(
    images: np.ndarray, ncol: int | None = None, scale: int = 4
) -> np.ndarray:
    """Tile `(n, c, h, w)` images in `[−1, 1]` into one uint8 `(H, W)` or `(H, W, 3)`
    picture, `scale`× enlarged (nearest neighbour), with a 1-pixel grey border."""
    x = _to_uint8(images)
    n, h, w, c = x.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    x = np.repeat(np.repeat(x, scale, axis=1), scale, axis=2)
    h, w = h * scale, w * scale
    grid = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), 128, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[
            1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w
        ] = x[i]
    return grid[..., 0] if c == 1 else grid


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
