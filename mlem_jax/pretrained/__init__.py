"""Pretrained UNet ladders shipped with mlem_jax, and a loader for ladder directories.

The `digits` ladder (5 levels, UNet widths 8, 12, 16, 24, 32, on the 8×8 digits of
`sklearn.datasets.load_digits`, VP-SDE) was trained with

    mlem-jax train --dataset digits --widths 8,12,16,24,32 --channel-mults 1,2 \
        --num-res-blocks 1 --steps 1500 --batch-size 128 --lr 2e-3 \
        --warmup-steps 100 --ema-decay 0.995 --checkpoint-every 250 --seed 0 \
        --out /tmp/mlem_ladders/digits

(the `digits` entry of `benchmarks/train_ladders.py`), then packed with
`python -m mlem_jax.pretrained.pack /tmp/mlem_ladders/digits mlem_jax/pretrained/digits`,
which stores every weight in float16 (half the size; `load_ladder` casts back to
float32).
"""

from __future__ import annotations

import json
import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

PRETRAINED_DIR = os.path.dirname(os.path.abspath(__file__))
NAMES = ("digits",)


def pretrained_path(name: str = "digits") -> str:
    """The directory of the shipped ladder `name` (one of `NAMES`)."""
    if name not in NAMES:
        raise ValueError(
            f"`name`: no pretrained ladder {name!r}; available: {', '.join(NAMES)}."
        )
    return os.path.join(PRETRAINED_DIR, name)


def _cast_filter(f, x):
    """Deserialise an array leaf and cast it to the dtype of the skeleton's leaf, so
    float16 files load as the float32 networks they were trained as."""
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        return jnp.asarray(np.load(f), dtype=x.dtype)
    return eqx.default_deserialise_filter_spec(f, x)


def load_ladder(path: str | os.PathLike | None = None) -> tuple[tuple, dict[str, Any]]:
    """Read a ladder directory: a shipped one or one written by `mlem-jax train`.

    Like `mlem_jax.training.load_ladder`, but weights stored in a lower precision
    (the shipped ladders use float16) are cast back to the networks' float32.

    **Arguments:**

    - `path`: a ladder directory (with `manifest.json`); `None` loads the shipped
      `digits` ladder.

    **Returns:**

    `(models, manifest)`: the networks, narrowest first, and the manifest dict.
    """
    from ..training import FORMAT_VERSION, MANIFEST, _build_unet

    path = pretrained_path() if path is None else os.fspath(path)
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"`--ladder`: {path!r} is not a directory.")
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(
            f"`--ladder`: {path!r} is not a ladder directory (no {MANIFEST}); "
            "write one with `mlem-jax train --out DIR`."
        )
    with open(manifest_path) as f:
        manifest = json.load(f)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{manifest_path!r} has format_version {manifest.get('format_version')}, "
            f"this mlem_jax reads {FORMAT_VERSION}."
        )
    if not manifest.get("levels"):
        raise ValueError(f"`--ladder`: {path!r} has no finished level yet.")
    spec = manifest["spec"]
    base = jr.key(spec["seed"])
    models = tuple(
        eqx.tree_deserialise_leaves(
            os.path.join(path, entry["file"]),
            _build_unet(
                spec["image_shape"],
                entry["width"],
                spec["unet"],
                jr.fold_in(base, 2 * entry["level"]),
            ),
            filter_spec=_cast_filter,
        )
        for entry in manifest["levels"]
    )
    return models, manifest
