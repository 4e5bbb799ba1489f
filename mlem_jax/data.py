"""Image datasets for diffusion models, as float32 arrays in [−1, 1] of shape (N, C, H, W).

* `digits`: scikit-learn's 8×8 handwritten digits (shipped with scikit-learn).
* `patches`: random crops of the photographs scikit-learn ships (`china.jpg`,
  `flower.jpg`).
* `folder`: every PNG/JPEG image in a folder (e.g. a downloaded CelebA), centre-cropped
  to a square and resized.

Nothing needs the network. Every loader is deterministic given its arguments, and
`split="train" | "test" | "all"` returns a fixed, disjoint held-out part for metrics.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Any

import numpy as np
from jaxtyping import Float

from . import _checks as checks
from ._misc import missing_extra

try:
    from PIL import Image
except ModuleNotFoundError as e:
    raise missing_extra(e, "diffusion", "mlem_jax.data") from e

__all__ = [
    "load_dataset",
    "digits",
    "digits_labels",
    "patches",
    "folder",
    "digits_mixture",
    "digits_mixture_samples",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "image_grid",
    "save_image_grid",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_SPLITS = ("train", "test", "all")


def _check_split(where: str, split: str, test_fraction: float | None = None) -> None:
    """Refuse a `split` not in `_SPLITS` and a `test_fraction` not in (0, 1)."""
    checks.choice(where, "split", split, _SPLITS)
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        raise checks.fail(where, "test_fraction", "in (0, 1)", test_fraction)


def _split_indices(n: int, split: str, test_fraction: float, seed: int) -> np.ndarray:
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    if split == "all":
        return np.arange(n)
    return np.sort(perm[:n_test] if split == "test" else perm[n_test:])


def _to_unit_range(x: np.ndarray, max_value: float) -> np.ndarray:
    return (x.astype(np.float32) / np.float32(max_value)) * 2.0 - 1.0


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, H, W) float images in [0, 1] with PIL's bicubic filter."""
    out = [
        np.asarray(
            Image.fromarray(img.astype(np.float32), mode="F").resize(
                (size, size), Image.Resampling.BICUBIC
            )
        )
        for img in images
    ]
    return np.clip(np.stack(out), 0.0, 1.0)


def digits(
    size: int | None = None,
    pad: int = 0,
    split: str = "all",
    test_fraction: float = 0.1,
) -> Float[np.ndarray, " n 1 h w"]:
    """The 1797 8×8 handwritten digits of `sklearn.datasets.load_digits`.

    **Arguments:**

    - `size`: resize to `size × size` (bicubic) if given; otherwise 8×8.
    - `pad`: pixels of background (−1) added on every side, after resizing; e.g.
      `pad=4` turns 8×8 into 16×16.
    - `split`: `"train"`, `"test"` or `"all"`; the test part is a fixed random
      `test_fraction` of the images.
    - `test_fraction`: size of the held-out part.

    **Returns:**

    A float32 array `(N, 1, H, W)` in `[−1, 1]`.
    """
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as e:
        raise missing_extra(e, "diffusion", "mlem_jax.data") from e

    checks.integer("digits", "size", size, none_ok=True)
    checks.integer("digits", "pad", pad, minimum=0)
    _check_split("digits", split, test_fraction)
    images = np.asarray(load_digits().images) / 16.0  # type: ignore[attr-defined]  # (N, 8, 8) in [0, 1]
    idx = _split_indices(images.shape[0], split, test_fraction, seed=0)
    images = images[idx]
    if size is not None and size != 8:
        images = _resize(images, int(size))
    if pad:
        images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    return _to_unit_range(images, 1.0)[:, None]


def digits_labels(split: str = "all", test_fraction: float = 0.1) -> np.ndarray:
    """The class (0–9) of each image `digits(split=split, test_fraction=...)` returns,
    in the same order: an int array `(N,)`."""
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as e:
        raise missing_extra(e, "diffusion", "mlem_jax.data") from e

    _check_split("digits_labels", split, test_fraction)
    target = np.asarray(load_digits().target)  # type: ignore[attr-defined]
    return target[_split_indices(target.shape[0], split, test_fraction, seed=0)]


def _sample_photos() -> list[np.ndarray]:
    try:
        from sklearn.datasets import load_sample_images
    except ModuleNotFoundError as e:
        raise missing_extra(e, "diffusion", "mlem_jax.data") from e

    return [np.asarray(img) for img in load_sample_images().images]


def patches(
    size: int = 16,
    num: int = 10_000,
    grey: bool = True,
    downscale: int = 4,
    split: str = "train",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Float[np.ndarray, " n c h w"]:
    """Random crops of the two photographs shipped with scikit-learn.

    The photographs (427×640, `china.jpg` and `flower.jpg`) are first shrunk by
    `downscale` (area averaging) so that a small patch holds more structure. The
    bottom `test_fraction` of each photograph's rows is reserved for `split="test"`,
    so train and test crops never overlap.

    **Arguments:**

    - `size`: patch side in pixels.
    - `num`: number of patches (split evenly between the two photographs).
    - `grey`: greyscale (1 channel) if true, RGB (3 channels) otherwise.
    - `downscale`: integer shrink factor applied to the photographs first.
    - `split`: `"train"`, `"test"` or `"all"` (crops anywhere).
    - `test_fraction`: fraction of rows reserved for the test split.
    - `seed`: seed of the crop positions.

    **Returns:**

    A float32 array `(num, C, size, size)` in `[−1, 1]`.
    """
    _check_split("patches", split, test_fraction)
    for name, value in (("size", size), ("num", num), ("downscale", downscale)):
        checks.integer("patches", name, value)
    rng = np.random.default_rng([seed, _SPLITS.index(split)])
    photos = []
    for photo in _sample_photos():
        img = Image.fromarray(photo)
        if grey:
            img = img.convert("L")
        w, h = img.size
        img = img.resize((w // downscale, h // downscale), Image.Resampling.BOX)
        arr = np.asarray(img, dtype=np.float32)
        photos.append(arr[..., None] if arr.ndim == 2 else arr)
    out = []
    counts = [num // len(photos) + (i < num % len(photos)) for i in range(len(photos))]
    for arr, count in zip(photos, counts, strict=True):
        h, w = arr.shape[:2]
        cut = int(round(h * (1.0 - test_fraction)))
        lo, hi = {"train": (0, cut), "test": (cut, h), "all": (0, h)}[split]
        if hi - lo < size or w < size:
            region = f"the {split!r} region ({hi - lo}×{w} pixels after downscale)"
            raise checks.fail("patches", "size", f"at most {region}", size)
        ys = rng.integers(lo, hi - size + 1, count)
        xs = rng.integers(0, w - size + 1, count)
        out.extend(arr[y : y + size, x : x + size] for y, x in zip(ys, xs, strict=True))
    batch = np.stack(out).transpose(0, 3, 1, 2)
    return _to_unit_range(batch, 255.0)


def _centre_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def folder(
    path: str | os.PathLike,
    size: int = 64,
    grey: bool = False,
    recursive: bool = False,
    limit: int | None = None,
    split: str = "all",
    test_fraction: float = 0.1,
) -> Float[np.ndarray, " n c size size"]:
    """Every PNG/JPEG image in a folder, centre-cropped to a square and resized.

    Files are read in sorted order. Files whose extension is not `.png`, `.jpg` or
    `.jpeg` (any case) are not images for this loader; they are counted in a warning.
    Image files that cannot be decoded (corrupt, truncated) are **skipped and counted
    in a warning** that names the first few; if no image can be read, a `ValueError`
    is raised.

    **Arguments:**

    - `path`: the folder.
    - `size`: output side in pixels (Lanczos resampling after the centre crop).
    - `grey`: greyscale (1 channel) if true, RGB (3 channels) otherwise.
    - `recursive`: also read images in sub-folders.
    - `limit`: read at most this many images (the first in sorted order).
    - `split`, `test_fraction`: as in [`mlem_jax.data.digits`][].

    **Returns:**

    A float32 array `(N, C, size, size)` in `[−1, 1]`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"folder: `path` {path!r} does not exist.")
    if not os.path.isdir(path):
        raise checks.fail("folder", "path", "a folder", path, NotADirectoryError)
    checks.integer("folder", "size", size)
    checks.integer("folder", "limit", limit, none_ok=True)
    _check_split("folder", split, test_fraction)
    if recursive:
        files = sorted(
            os.path.join(root, f) for root, _, names in os.walk(path) for f in names
        )
    else:
        files = sorted(
            os.path.join(path, f)
            for f in os.listdir(path)
            if os.path.isfile(os.path.join(path, f))
        )
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    others = len(files) - len(images)
    if not images:
        what = "a folder of images; it holds no image files"
        what += f" ({', '.join(IMAGE_EXTENSIONS)})"
        raise checks.fail("folder", "path", f"{what}, {len(files)} others", path)
    if others:
        exts = ", ".join(IMAGE_EXTENSIONS)
        _warn(path, f"ignored {others} file(s) without an image extension ({exts})")
    if limit is not None:
        images = images[: int(limit)]
    mode = "L" if grey else "RGB"
    arrays, bad = [], []
    for f in images:
        try:
            with Image.open(f) as img:
                img.load()
                img = _centre_square(img.convert(mode))
                img = img.resize((size, size), Image.Resampling.LANCZOS)
                arr = np.asarray(img, dtype=np.float32)
        except (OSError, SyntaxError, ValueError) as e:  # PIL's decode errors
            bad.append(f"{os.path.basename(f)} ({type(e).__name__})")
            continue
        arrays.append(arr[None] if grey else arr.transpose(2, 0, 1))
    named = f"{', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}"
    if not arrays:
        what = f"a folder of images that can be read (none of {len(images)} can"
        raise checks.fail("folder", "path", f"{what}: {named})", path)
    if bad:
        skipped = f"skipped {len(bad)} of {len(images)} image file(s)"
        _warn(path, f"{skipped} that could not be read: {named}")
    data = _to_unit_range(np.stack(arrays), 255.0)
    return data[_split_indices(data.shape[0], split, test_fraction, seed=0)]


def _warn(path: str, what: str) -> None:
    """A warning about the folder `path` read by `folder`, shown at its caller."""
    warnings.warn(f"folder {path!r}: {what}.", stacklevel=3)


_MIXTURE_DEFAULTS = {"n_components": 256, "rank": 8, "reg_covar": 1e-2, "seed": 0}


def digits_mixture(
    n_components: int = 256, rank: int = 8, reg_covar: float = 1e-2, seed: int = 0
):
    """A Gaussian mixture fitted to all 1797 8×8 digits, to serve as a TRUE data
    distribution (`mlem_jax.diffusion.GaussianMixture`: exact samples, exact
    log-density and exact score under the VP-SDE).

    scikit-learn's `GaussianMixture` (full covariances, `reg_covar` added to each,
    k-means initialisation with `random_state=seed`) is fitted to the flattened
    images in `[−1, 1]`; each covariance is then replaced by its probabilistic-PCA
    approximation of rank `rank`: the top `rank` eigenvectors, with the mean of the
    other eigenvalues as the isotropic floor `c_k` (at least `reg_covar`). With
    ~7 images per component the fitted covariances have rank below 8, so the default
    `rank` keeps them whole. Deterministic for given arguments and scikit-learn
    version; cached in the process. With the default arguments the shipped
    `digits_mixture` ladder's mixture is read instead (`mlem_jax.pretrained.mixture()`,
    the same arrays, checked when it was shipped).

    **Arguments:**

    - `n_components`: the number of components `K` (the difficulty dial).
    - `rank`: the rank `r` of each covariance's low-rank part.
    - `reg_covar`: the variance added to every covariance's diagonal (the floor).
    - `seed`: scikit-learn's `random_state`.

    **Returns:** a `GaussianMixture` of event shape `(1, 8, 8)`, float32.
    """
    where = "digits_mixture"
    n_components = checks.integer(where, "n_components", n_components)
    rank = checks.integer(where, "rank", rank)
    if rank > 64:
        raise checks.fail(where, "rank", "at most the 64 pixels", rank)
    if n_components > 1797:
        most = "at most the 1797 digits"
        raise checks.fail(where, "n_components", most, n_components)
    reg_covar = checks.number(where, "reg_covar", reg_covar)
    return _fit_digits_mixture(n_components, rank, reg_covar, seed)


@functools.lru_cache(maxsize=4)
def _fit_digits_mixture(n_components, rank, reg_covar, seed):
    fit = {
        "n_components": n_components,
        "rank": rank,
        "reg_covar": reg_covar,
        "seed": seed,
    }
    shipped = _shipped_mixture(fit)
    if shipped is not None:
        return shipped
    try:
        from sklearn.mixture import GaussianMixture as SkMixture
    except ModuleNotFoundError as e:
        raise missing_extra(e, "diffusion", "mlem_jax.data") from e
    from .diffusion import GaussianMixture

    x = digits().reshape(-1, 64).astype(np.float64)
    fit = SkMixture(
        n_components,
        covariance_type="full",
        reg_covar=reg_covar,
        random_state=seed,
        max_iter=200,
    ).fit(x)
    covariances: Any = fit.covariances_
    weights: Any = fit.weights_
    means: Any = fit.means_
    evals, evecs = np.linalg.eigh(covariances)  # ascending
    evals, evecs = evals[:, ::-1], evecs[:, :, ::-1]
    floor = np.maximum(evals[:, rank:].mean(1), reg_covar) if rank < 64 else None
    if floor is None:
        floor = np.full(n_components, reg_covar)
    variances = np.maximum(evals[:, :rank] - floor[:, None], 0.0)
    return GaussianMixture.from_arrays(
        weights, means, evecs[:, :, :rank], variances, floor, (1, 8, 8)
    )


def _shipped_mixture(fit: dict[str, Any]):
    """The shipped ladder's mixture if it was fitted with these arguments (the same
    arrays a fit gives with the scikit-learn version that shipped it, without the
    ~15 s fit), else None."""
    from . import pretrained

    for name in pretrained.MIXTURE_NAMES:
        path = os.path.join(pretrained.PRETRAINED_DIR, name, pretrained.MIXTURE)
        if os.path.isfile(path):
            mixture, info = pretrained.read_mixture(path)
            if info.get("fit") == fit:
                return mixture
    return None


def digits_mixture_samples(
    num: int = 4096, split: str = "train", **mixture_kwargs: Any
) -> Float[np.ndarray, " n 1 8 8"]:
    """`num` exact draws from [`digits_mixture`][]`(**mixture_kwargs)`, as an image
    array like `digits()` returns (values are not clipped to `[−1, 1]`).

    The draws are a fixed function of `num`, `split` and the mixture: `"train"`,
    `"test"` and `"all"` use three different keys, so held-out draws never repeat
    training ones. For unlimited fresh training data pass the mixture itself to
    `mlem_jax.training.train` / `train_ladder` instead.
    """
    import jax.random as jr

    _check_split("digits_mixture_samples", split)
    checks.integer("digits_mixture_samples", "num", num)
    mixture = digits_mixture(**mixture_kwargs)
    key = jr.fold_in(jr.key(20260), _SPLITS.index(split))
    return np.asarray(mixture.sample(key, num), np.float32)


DATASETS = {
    "digits": digits,
    "patches": patches,
    "folder": folder,
    "digits_mixture": digits_mixture_samples,
}


def load_dataset(name: str, **kwargs: Any) -> Float[np.ndarray, " n c h w"]:
    """Load a dataset by name: `"digits"`, `"patches"`, `"folder"` or
    `"digits_mixture"` (exact draws from [`digits_mixture`][]).

    **Arguments:**

    - `name`: the dataset name.
    - `**kwargs`: passed to the loader (e.g. `path=` and `size=` for `"folder"`).

    **Returns:**

    A float32 array `(N, C, H, W)` in `[−1, 1]`.
    """
    checks.choice("load_dataset", "name", name, sorted(DATASETS))
    return DATASETS[name](**kwargs)


# --------------------------------------------------------------------- image grids

GRID_PIXELS = 512
"""The width in pixels `image_grid` aims at when `scale` is not given."""


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """(n, c, h, w) in [−1, 1] → (n, h, w, c) uint8."""
    x = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255)
    return np.round(x).astype(np.uint8).transpose(0, 2, 3, 1)


def image_grid(
    images: Float[np.ndarray, " n c h w"],
    ncol: int | None = None,
    scale: int | None = None,
) -> np.ndarray:
    """Tile images in `[−1, 1]` into one uint8 picture, `(H, W)` for one channel or
    `(H, W, 3)`, enlarged `scale`× (nearest neighbour) with a 1-pixel grey border.

    **Arguments:**

    - `images`: shape `(n, channels, height, width)`, channels 1 or 3, values in
        `[−1, 1]` (clipped); NaN is refused.
    - `ncol`: images per row (default `ceil(sqrt(n))`).
    - `scale`: a positive int (default: the largest that keeps the grid at most
        about `GRID_PIXELS` = 512 pixels wide, at least 1: 64 digits of 8×8 give
        a 521×521 grid).
    """
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        what = "of shape (n, channels, height, width) with n >= 1 and 1 or 3 channels"
        raise checks.fail("image_grid", "images", what, x.shape)
    if not np.all(np.isfinite(x)):
        raise ValueError("image_grid: `images` holds NaN or inf values.")
    n, _, h, w = x.shape
    checks.integer("image_grid", "ncol", ncol, none_ok=True)
    checks.integer("image_grid", "scale", scale, none_ok=True)
    ncol = int(ncol or math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    if scale is None:
        scale = max(1, GRID_PIXELS // (ncol * (w + 1)))
    x = _to_uint8(x)
    c = x.shape[-1]
    x = np.repeat(np.repeat(x, scale, axis=1), scale, axis=2)
    h, w = h * scale, w * scale
    grid = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), 128, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[
            1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w
        ] = x[i]
    return grid[..., 0] if c == 1 else grid


def save_image_grid(
    images: Float[np.ndarray, " n c h w"],
    path: str | os.PathLike,
    ncol: int | None = None,
    scale: int | None = None,
) -> None:
    """Write `image_grid(images, ncol, scale)` as a PNG file at `path`, atomically
    (a failure leaves any previous file as it was).

    ```python
    x, info = mlem_jax.diffusion.sample(...)            # (64, 1, 8, 8)
    mlem_jax.data.save_image_grid(x, "samples.png")     # 521×521 pixels
    ```
    """
    from ._io import atomic_write

    picture = Image.fromarray(image_grid(images, ncol, scale))
    try:
        atomic_write(os.fspath(path), lambda f: picture.save(f, format="PNG"))
    except OSError as e:
        message = f"save_image_grid: cannot write `path` {os.fspath(path)!r}"
        raise type(e)(e.errno, f"{message} ({e.strerror})") from e
