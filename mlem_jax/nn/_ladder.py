"""A ladder of UNets of increasing width: the levels f^1, ..., f^k of ML-EM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.random as jr
from jaxtyping import PRNGKeyArray

from .. import _checks as checks
from ._unet import UNet


def unet_ladder(
    image_shape: tuple[int, int, int],
    widths: Sequence[int] = (8, 12, 16, 24, 32),
    *,
    key: PRNGKeyArray,
    **unet_kwargs: Any,
) -> tuple[UNet, ...]:
    """Build `k = len(widths)` UNets for one image shape, narrowest first.

    Every UNet shares the architecture (`channel_mults`, `num_res_blocks`, attention)
    and differs only in `base_width`; the cost of one evaluation grows about as
    `width ** 2`, so a width ratio of 1.4–2 between neighbours gives the 2–4× cost
    growth per level that ML-EM is designed for.

    **Arguments:**

    - `image_shape`: `(channels, height, width)`.
    - `widths`: strictly increasing `base_width` of each level.
    - `key`: a JAX PRNG key; level `l` is initialised with `jr.fold_in(key, l)`, so a
      level's initialisation does not depend on how many levels there are.
    - `**unet_kwargs`: passed to [`mlem_jax.nn.UNet`][] (`channel_mults`,
      `num_res_blocks`, `attn_resolutions`, `num_groups`, `num_heads`).

    **Returns:**

    A tuple of `UNet`s.
    """
    widths = check_widths("unet_ladder", widths)
    return tuple(
        UNet(image_shape, w, key=jr.fold_in(key, i), **unet_kwargs)
        for i, w in enumerate(widths)
    )


def check_widths(where: str, widths: Sequence[int]) -> tuple[int, ...]:
    """`widths` as a tuple of ints if they are positive and strictly increasing
    (a ladder's `base_width`s, narrowest first)."""
    widths = tuple(int(w) for w in widths)
    increasing = all(a < b for a, b in zip(widths, widths[1:], strict=False))
    if not (widths and widths[0] >= 1 and increasing):
        what = "a non-empty list of positive ints, strictly increasing"
        raise checks.fail(where, "widths", what, widths)
    return widths


def count_params(model: Any) -> int:
    """Number of scalar parameters (inexact array leaves) in a pytree."""
    return int(
        sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    )
