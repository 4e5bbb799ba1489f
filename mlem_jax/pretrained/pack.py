"""Pack a trained ladder directory for shipping: weights in float16.

    python -m mlem_jax.pretrained.pack SRC_LADDER_DIR DEST_DIR

Copies `manifest.json` (dropping checkpoint bookkeeping, recording `weights_dtype`)
and rewrites every `level_*.eqx` with its floating arrays cast to float16. Files are
written atomically.
"""

from __future__ import annotations

import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp

from .._io import atomic_write, write_json
from . import load_ladder


def _half(x):
    if eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.float16)
    return x


def pack(src: str, dest: str) -> None:
    """Write `src`'s ladder to `dest` with float16 weights.

    **Arguments:**

    - `src`: a ladder directory written by `mlem-jax train`.
    - `dest`: the directory to write (created if needed).
    """
    from ..training import MANIFEST

    models, manifest = load_ladder(src)
    os.makedirs(dest, exist_ok=True)
    for model, entry in zip(models, manifest["levels"], strict=True):
        half = jax.tree_util.tree_map(_half, model)
        atomic_write(
            os.path.join(dest, entry["file"]),
            lambda f, half=half: eqx.tree_serialise_leaves(f, half),
        )
    manifest = dict(manifest, weights_dtype="float16")
    write_json(os.path.join(dest, MANIFEST), manifest)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    pack(sys.argv[1], sys.argv[2])
