"""An Equinox UNet for diffusion models on small images (DDPM / score-SDE layout)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .. import _checks as checks
from .._misc import concrete_or_none


def _num_groups(channels: int, max_groups: int) -> int:
    # GroupNorm needs the group count to divide the channel count (widths like 12 or
    # 24 are common in a ladder), and groups of one channel would be instance norm,
    # which erases per-channel information; take the largest divisor not above
    # `max_groups` that leaves at least 4 channels per group.
    best = 1
    for g in range(1, max_groups + 1):
        if channels % g == 0 and channels // g >= 4:
            best = g
    return best


_Layer = TypeVar("_Layer", bound=eqx.Module)


def _zero(layer: _Layer) -> _Layer:
    """Zero the weights and bias of a layer (residual branches start as identity)."""
    weight = jnp.zeros_like(layer.weight)  # type: ignore[attr-defined]
    layer = eqx.tree_at(lambda m: m.weight, layer, weight)
    if getattr(layer, "bias", None) is not None:
        bias = jnp.zeros_like(layer.bias)  # type: ignore[attr-defined]
        layer = eqx.tree_at(lambda m: m.bias, layer, bias)
    return layer


def _materialise(tree: Any, key: PRNGKeyArray) -> Any:
    """Concrete weights for a tree of abstract (`eqx.filter_eval_shape`) layers.

    Linear and convolution weights and biases are `U(−1/√fan_in, 1/√fan_in)` (the
    Equinox / PyTorch default), GroupNorm scales 1 and offsets 0, and the last
    convolution of every residual branch (`conv2`) and the output convolution
    (`conv_out`) are zero. All draws are slices of one `jr.uniform` array.
    """
    with_path, treedef = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)
    )
    sizes = [
        math.prod(leaf.shape) if isinstance(leaf, jax.ShapeDtypeStruct) else 0
        for _, leaf in with_path
    ]
    noise = np.asarray(jr.uniform(key, (max(sum(sizes), 1),), minval=-1.0, maxval=1.0))
    out, offset = [], 0
    for (path, leaf), size in zip(with_path, sizes, strict=True):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            out.append(leaf)
            continue
        draw = noise[offset : offset + size].reshape(leaf.shape)
        offset += size
        parent = tree
        for entry in path[:-1]:
            parent = _child(parent, entry)
        names = [getattr(e, "name", getattr(e, "key", None)) for e in path]
        if isinstance(parent, eqx.nn.Embedding):
            value = (
                draw  # class embeddings: U(−1, 1), the scale of the time MLP's output
            )
        elif isinstance(parent, eqx.nn.GroupNorm):
            value = (
                np.ones(leaf.shape) if names[-1] == "weight" else np.zeros(leaf.shape)
            )
        elif "conv_out" in names or (len(names) > 1 and names[-2] == "conv2"):
            value = np.zeros(leaf.shape)
        elif isinstance(parent, (eqx.nn.Linear, eqx.nn.Conv)):
            weight = parent.weight
            fan_in = math.prod(weight.shape[1:])
            value = draw / math.sqrt(fan_in)
        else:
            raise TypeError(f"no initialiser for leaf at {jax.tree_util.keystr(path)}")
        out.append(jnp.asarray(value, leaf.dtype))
    return jax.tree.unflatten(treedef, out)


def _child(obj: Any, entry: Any) -> Any:
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return getattr(obj, entry.name)
    if isinstance(entry, jax.tree_util.SequenceKey):
        return obj[entry.idx]
    if isinstance(entry, jax.tree_util.DictKey):
        return obj[entry.key]
    raise TypeError(f"unexpected pytree path entry {entry!r}")


# Channels-last internals. The parameters are ordinary `eqx.nn.Conv2d` / `GroupNorm`
# layers (weights OIHW, as saved in every ladder), but activations flow as (h, w, c)
# and convolutions run with HWIO kernels. Inside `lax.scan` / `while` loops XLA:CPU
# keeps the layout it is given: a channels-first convolution there falls back to a
# naive elemental kernel, ~10× slower than the same convolution outside a loop
# (measured: digits top level, batch 16, 80 ms vs 8 ms a step), while a
# channels-last one with an HWIO kernel uses the fast library path in both places.


def conv_hwc(
    layer: eqx.nn.Conv2d, x: Float[Array, "h w c"]
) -> Float[Array, "h2 w2 c2"]:
    """Apply an `eqx.nn.Conv2d` (weights OIHW) to a channels-last image."""
    if layer.padding_mode != "ZEROS" or layer.groups != 1:
        got = f"got padding_mode={layer.padding_mode!r}, groups={layer.groups}"
        raise NotImplementedError(f"conv_hwc: zero padding and groups=1 only; {got}.")
    kernel = jnp.transpose(layer.weight, (2, 3, 1, 0))  # OIHW -> HWIO
    out = jax.lax.conv_general_dilated(
        x[None],
        kernel,
        window_strides=layer.stride,
        padding=layer.padding,
        rhs_dilation=layer.dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )[0]
    if layer.use_bias:
        out = out + layer.bias.reshape(-1)  # type: ignore[union-attr]
    return out


def group_norm_hwc(
    layer: eqx.nn.GroupNorm, x: Float[Array, "h w c"]
) -> Float[Array, "h w c"]:
    """`eqx.nn.GroupNorm` (same statistics, eps and affine) on a channels-last image."""
    orig_dtype = x.dtype
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.result_type(x.dtype, jnp.float32)
    x = x.astype(dtype)
    h, w, c = x.shape
    g = layer.groups
    y = x.reshape(h, w, g, c // g)
    mean = jnp.mean(y, axis=(0, 1, 3), keepdims=True)
    var = jnp.maximum(jnp.var(y, axis=(0, 1, 3), keepdims=True), 0.0)
    out = ((y - mean) * jax.lax.rsqrt(var + layer.eps)).reshape(h, w, c)
    if layer.channelwise_affine:
        out = layer.weight.astype(dtype) * out + layer.bias.astype(dtype)  # type: ignore[union-attr]
    return out.astype(orig_dtype)


def sinusoidal_embedding(t: Float[ArrayLike, ""], dim: int) -> Float[Array, " dim"]:
    """Transformer-style sinusoidal embedding of a scalar time.

    **Arguments:**

    - `t`: a scalar time; diffusion time in `[0, 1]` is scaled by 1000 first so that
      the frequencies cover the interval as in DDPM.
    - `dim`: the (even) embedding dimension.

    **Returns:**

    An array of shape `(dim,)`: `[sin(1000 t ω_i), cos(1000 t ω_i)]`.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / max(half - 1, 1))
    angle = 1000.0 * jnp.asarray(t) * freqs
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)])


class ResBlock(eqx.Module):
    """Residual block: GroupNorm → SiLU → conv → GroupNorm modulated by the time
    embedding (scale and shift, as in improved DDPM) → SiLU → conv, plus a skip."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    time_proj: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, groups: int, *, key: PRNGKeyArray
    ):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.norm1 = eqx.nn.GroupNorm(_num_groups(in_ch, groups), in_ch)
        self.conv1 = eqx.nn.Conv2d(in_ch, out_ch, 3, padding=1, key=k1)
        self.time_proj = eqx.nn.Linear(emb_dim, 2 * out_ch, key=k2)
        self.norm2 = eqx.nn.GroupNorm(_num_groups(out_ch, groups), out_ch)
        self.conv2 = _zero(eqx.nn.Conv2d(out_ch, out_ch, 3, padding=1, key=k3))
        self.skip = None if in_ch == out_ch else eqx.nn.Conv2d(in_ch, out_ch, 1, key=k4)

    def __call__(
        self, x: Float[Array, "h w c"], emb: Float[Array, " e"]
    ) -> Float[Array, "h w c2"]:
        """`x` is channels-last (see `conv_hwc`)."""
        h = conv_hwc(self.conv1, jax.nn.silu(group_norm_hwc(self.norm1, x)))
        # Scale-shift after the norm: a shift added before it would be removed by the
        # normalisation whenever a group holds a single channel.
        scale, shift = jnp.split(self.time_proj(jax.nn.silu(emb)), 2)
        h = group_norm_hwc(self.norm2, h) * (1 + scale) + shift
        h = conv_hwc(self.conv2, jax.nn.silu(h))
        if self.skip is not None:
            x = conv_hwc(self.skip, x)
        return x + h


class AttentionBlock(eqx.Module):
    """Pre-norm multi-head self-attention over the pixels of a feature map."""

    norm: eqx.nn.GroupNorm
    attn: eqx.nn.MultiheadAttention

    def __init__(self, channels: int, groups: int, num_heads: int, *, key):
        self.norm = eqx.nn.GroupNorm(_num_groups(channels, groups), channels)
        self.attn = eqx.nn.MultiheadAttention(num_heads, channels, key=key)

    def __call__(self, x: Float[Array, "h w c"]) -> Float[Array, "h w c"]:
        """`x` is channels-last (see `conv_hwc`)."""
        h, w, c = x.shape
        z = group_norm_hwc(self.norm, x).reshape(h * w, c)
        z = self.attn(z, z, z)
        return x + z.reshape(h, w, c)


@dataclasses.dataclass(frozen=True)
class _Builder:
    """Builds the layers of `unet`, whose hyperparameters (its static fields) are
    set, with at most `num_groups` GroupNorm groups and `num_heads` attention
    heads."""

    unet: UNet
    num_groups: int
    num_heads: int

    def layers(self, key: PRNGKeyArray) -> dict[str, Any]:
        """Every layer of the UNet, by field name (randomly initialised; `UNet`
        builds them abstractly and draws the weights in `_materialise`)."""
        u = self.unet
        n = 64 + 4 * len(u.channel_mults) * (u.num_res_blocks + 2)
        keys = iter(jr.split(key, n))
        c, base, emb = u.image_shape[0], u.base_width, u.embed_dim
        fields: dict[str, Any] = {
            "time_mlp": (
                eqx.nn.Linear(base, emb, key=next(keys)),
                eqx.nn.Linear(emb, emb, key=next(keys)),
            ),
            "conv_in": eqx.nn.Conv2d(c, base, 3, padding=1, key=next(keys)),
        }
        down, skip_chs = self._down(keys)
        fields.update(down)
        ch, g = skip_chs[-1], self.num_groups
        fields["mid_res"] = (
            ResBlock(ch, ch, emb, g, key=next(keys)),
            ResBlock(ch, ch, emb, g, key=next(keys)),
        )
        fields["mid_attn"] = (
            AttentionBlock(ch, g, self.num_heads, key=next(keys))
            if u.attn_resolutions
            else None
        )
        fields.update(self._up(keys, skip_chs))
        ch = u.base_width * u.channel_mults[0]
        fields["norm_out"] = eqx.nn.GroupNorm(_num_groups(ch, g), ch)
        fields["conv_out"] = _zero(eqx.nn.Conv2d(ch, c, 3, padding=1, key=next(keys)))
        if u.num_classes is not None:
            # One row per class and one for the null label `num_classes`.
            rows = u.num_classes + 1
            fields["class_embed"] = eqx.nn.Embedding(rows, emb, key=next(keys))
        return fields

    def _attn(self, ch: int, res: int, keys) -> AttentionBlock | None:
        u = self.unet
        if res in u.attn_resolutions:
            return AttentionBlock(ch, self.num_groups, self.num_heads, key=next(keys))
        return None

    def _down(self, keys) -> tuple[dict[str, Any], list[int]]:
        """The way down, and the channels of each skip connection it leaves."""
        u = self.unet
        res_blocks, attn, downsample = [], [], []
        ch, res, emb = u.base_width, u.image_shape[1], u.embed_dim
        skip_chs = [ch]
        for i, mult in enumerate(u.channel_mults):
            out = u.base_width * mult
            for _ in range(u.num_res_blocks):
                block = ResBlock(ch, out, emb, self.num_groups, key=next(keys))
                res_blocks.append(block)
                attn.append(self._attn(out, res, keys))
                ch = out
                skip_chs.append(ch)
            if i < len(u.channel_mults) - 1:
                conv = eqx.nn.Conv2d(ch, ch, 3, stride=2, padding=1, key=next(keys))
                downsample.append(conv)
                skip_chs.append(ch)
                res //= 2
        layers = {"down_res": res_blocks, "down_attn": attn, "downsample": downsample}
        return {k: tuple(v) for k, v in layers.items()}, skip_chs

    def _up(self, keys, skip_chs: list[int]) -> dict[str, Any]:
        """The way up, taking the skip connections of `_down` (consumed)."""
        u = self.unet
        res_blocks, attn, upsample = [], [], []
        ch, emb = skip_chs[-1], u.embed_dim
        res = u.image_shape[1] // 2 ** (len(u.channel_mults) - 1)
        for i, mult in reversed(list(enumerate(u.channel_mults))):
            out = u.base_width * mult
            for _ in range(u.num_res_blocks + 1):
                in_ch = ch + skip_chs.pop()
                block = ResBlock(in_ch, out, emb, self.num_groups, key=next(keys))
                res_blocks.append(block)
                attn.append(self._attn(out, res, keys))
                ch = out
            if i > 0:
                upsample.append(eqx.nn.Conv2d(ch, ch, 3, padding=1, key=next(keys)))
                res *= 2
        layers = {"up_res": res_blocks, "up_attn": attn, "upsample": upsample}
        return {k: tuple(v) for k, v in layers.items()}


class UNet(eqx.Module):
    """A UNet `ε_θ(t, x)` for images of shape `(channels, height, width)`.

    The layout is the one of DDPM / score-SDE models: a sinusoidal time embedding fed
    through an MLP into every residual block; at each resolution `num_res_blocks`
    residual blocks (GroupNorm, SiLU, 3×3 convolutions) and optional self-attention;
    strided-convolution downsampling and nearest-neighbour upsampling with skip
    connections; a zero-initialised output convolution, so an untrained network
    predicts zero.

    The network acts on one image or on a batch `(batch, *image_shape)`, and takes
    `args` as its third argument, so it is an `f(t, y, args)` that the samplers of
    `mlem_jax.diffusion` take as it is: an unconditional UNet ignores it.

    **Class conditioning.** With `num_classes=K` the UNet is class-conditional: a
    learned class embedding (`K + 1` rows) is added to the time embedding, and the
    class labels reach it through `args` (diffrax's convention): an int, or an
    integer array of shape `()` (one class for the whole batch) or `(batch,)` (one
    per image). The label `K` is the *null label*: trained with label dropout
    (`TrainConfig.label_dropout`), it gives the unconditional prediction, so one
    network serves both halves of classifier-free guidance
    (`mlem_jax.diffusion.cfg_levels(..., num_classes=K)`). `args=None` means the
    null label, so a conditional UNet also plugs into every unconditional tool.

    **Arguments:**

    - `image_shape`: `(channels, height, width)`; height and width must be divisible
      by `2 ** (len(channel_mults) - 1)`.
    - `base_width`: number of channels at the first resolution; the size knob of a
      ladder (cost grows about as `base_width ** 2`).
    - `channel_mults`: channel multiplier at each resolution; one resolution per entry.
    - `num_res_blocks`: residual blocks per resolution on the way down (one more on
      the way up, as in DDPM).
    - `attn_resolutions`: spatial sizes (e.g. `(8,)`) at which to add self-attention;
      attention is also used in the middle block when this is non-empty.
    - `num_groups`: maximum number of GroupNorm groups (fewer when needed to keep at
      least 4 channels per group).
    - `num_heads`: attention heads.
    - `num_classes`: the number of classes `K` of a class-conditional UNet (see
      above); `None` (default) for an unconditional one.
    - `key`: a JAX PRNG key for the initialisation.

    **Example:**

    ```python
    net = UNet((1, 8, 8), base_width=16, channel_mults=(1, 2), key=jr.key(0))
    eps = net(0.5, x)  # x: (1, 8, 8)
    cond = UNet((1, 8, 8), base_width=16, num_classes=10, key=jr.key(0))
    eps = cond(0.5, x, 3)  # class 3; cond(0.5, x, 10): the unconditional prediction
    ```
    """

    image_shape: tuple[int, int, int] = eqx.field(static=True)
    base_width: int = eqx.field(static=True)
    channel_mults: tuple[int, ...] = eqx.field(static=True)
    num_res_blocks: int = eqx.field(static=True)
    attn_resolutions: tuple[int, ...] = eqx.field(static=True)
    embed_dim: int = eqx.field(static=True)
    num_classes: int | None = eqx.field(static=True)

    time_mlp: tuple[eqx.nn.Linear, eqx.nn.Linear]
    conv_in: eqx.nn.Conv2d
    down_res: tuple[ResBlock, ...]
    down_attn: tuple[AttentionBlock | None, ...]
    downsample: tuple[eqx.nn.Conv2d, ...]
    mid_res: tuple[ResBlock, ResBlock]
    mid_attn: AttentionBlock | None
    up_res: tuple[ResBlock, ...]
    up_attn: tuple[AttentionBlock | None, ...]
    upsample: tuple[eqx.nn.Conv2d, ...]
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d
    class_embed: eqx.nn.Embedding | None

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        base_width: int = 32,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (),
        num_groups: int = 8,
        num_heads: int = 1,
        num_classes: int | None = None,
        *,
        key: PRNGKeyArray,
    ):
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise checks.fail("UNet", "image_shape", "(C, H, W), positive", shape)
        if len(channel_mults) < 1:
            raise checks.fail("UNet", "channel_mults", "non-empty", channel_mults)
        factor = 2 ** (len(channel_mults) - 1)
        if shape[1] % factor or shape[2] % factor:
            what = "(C, H, W) with H and W divisible by 2 ** (len(channel_mults) - 1)"
            raise checks.fail("UNet", "image_shape", f"{what} = {factor}", shape)
        self.image_shape = shape  # type: ignore[assignment]
        self.base_width = checks.integer("UNet", "base_width", base_width)
        self.channel_mults = tuple(int(m) for m in channel_mults)
        self.num_res_blocks = checks.integer("UNet", "num_res_blocks", num_res_blocks)
        self.attn_resolutions = tuple(int(r) for r in attn_resolutions)
        self.embed_dim = 4 * self.base_width
        what = (
            "a positive int (a class-conditional UNet) or None (an unconditional one)"
        )
        self.num_classes = checks.integer(
            "UNet", "num_classes", num_classes, none_ok=True, what=what
        )
        # Build with abstract shapes only, then draw every weight from one random
        # array: initialising layer by layer compiles one small XLA program per
        # distinct weight shape, seconds per UNet on a CPU.
        fields = _materialise(
            eqx.filter_eval_shape(_Builder(self, num_groups, num_heads).layers, key),
            key,
        )
        for name, value in fields.items():
            setattr(self, name, value)
        if self.num_classes is None:
            self.class_embed = None

    def __call__(
        self,
        t: Float[ArrayLike, ""],
        x: Float[Array, "*batch c h w"],
        args: Any = None,
    ) -> Float[Array, "*batch c h w"]:
        """**Arguments:**

        - `t`: scalar diffusion time in `[0, 1]`.
        - `x`: one image of shape `image_shape`, or a batch of them, shape
            `(batch, *image_shape)` (each image is then predicted on its own).
        - `args`: an unconditional UNet ignores it; it makes the network an
            `f(t, y, args)` as the samplers of `mlem_jax.diffusion` (`sample`,
            `mlem_sample`) and the solvers call it, so a loaded network plugs in as
            it is. A class-conditional UNet (`num_classes=K`) reads its class
            labels from it: an int or an integer array of shape `()` or `(batch,)`,
            each in `[0, K]` (`K`: the null label, the unconditional prediction);
            `None` is the null label.

        **Returns:**

        An array shaped like `x` (the predicted noise `ε`).
        """
        batched = (
            x.ndim == len(self.image_shape) + 1 and x.shape[1:] == self.image_shape
        )
        if not batched and x.shape != self.image_shape:
            what = f"of shape {self.image_shape} or (batch, {str(self.image_shape)[1:]}"
            raise checks.fail("UNet", "x", what, x.shape)
        if self.num_classes is None:
            if batched:
                return jax.vmap(self._eps, in_axes=(None, 0, None))(t, x, None)
            return self._eps(t, x, None)
        labels = self._labels(args, x.shape[0] if batched else None)
        if batched:
            axis = None if labels.ndim == 0 else 0
            return jax.vmap(self._eps, in_axes=(None, 0, axis))(t, x, labels)
        return self._eps(t, x, labels)

    def _labels(self, args: Any, batch: int | None) -> Int[Array, "*batch"]:
        """`args` checked as class labels (or the null label) for this input."""
        k = self.num_classes
        assert k is not None
        if args is None:
            return jnp.asarray(k, jnp.int32)
        what = "the class labels, an int or an integer array of shape () or (batch,)"
        try:
            labels = jnp.asarray(args)
        except TypeError:
            got = type(args).__name__
            raise checks.fail("UNet", "args", what, got, TypeError) from None
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            what = "class labels of an integer dtype"
            raise checks.fail("UNet", "args", what, str(labels.dtype), TypeError)
        shapes = ((),) if batch is None else ((), (batch,))
        if labels.shape not in shapes:
            what = "class labels of shape " + " or ".join(map(str, shapes))
            raise checks.fail("UNet", "args", what, labels.shape)
        message = (
            f"UNet: `args` holds a class label outside [0, {k}) that is not the null "
            f"label {k}."
        )
        value = concrete_or_none(labels)
        if value is not None:  # checked now, in NumPy (also while tracing)
            value = np.asarray(value)
            if np.any((value < 0) | (value > k)):
                raise ValueError(f"{message} Got {value.tolist()}.")
            return labels
        return eqx.error_if(labels, jnp.any((labels < 0) | (labels > k)), message)

    def _eps(self, t, x, labels):
        emb = sinusoidal_embedding(jnp.asarray(t, x.dtype), self.base_width)
        emb = self.time_mlp[1](jax.nn.silu(self.time_mlp[0](emb.astype(x.dtype))))
        if self.class_embed is not None:
            emb = emb + self.class_embed.weight[labels].astype(emb.dtype)

        # Channels-last inside (see `conv_hwc`); (c, h, w) at the boundary.
        h = conv_hwc(self.conv_in, jnp.transpose(x, (1, 2, 0)))
        hs = [h]
        nb = self.num_res_blocks
        for i in range(len(self.channel_mults)):
            for j in range(nb):
                h = self.down_res[i * nb + j](h, emb)
                if (a := self.down_attn[i * nb + j]) is not None:
                    h = a(h)
                hs.append(h)
            if i < len(self.downsample):
                h = conv_hwc(self.downsample[i], h)
                hs.append(h)

        h = self.mid_res[0](h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid_res[1](h, emb)

        k = 0
        for i in reversed(range(len(self.channel_mults))):
            for _ in range(nb + 1):
                h = self.up_res[k](jnp.concatenate([h, hs.pop()], axis=-1), emb)
                if (a := self.up_attn[k]) is not None:
                    h = a(h)
                k += 1
            if i > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=0), 2, axis=1)
                h = conv_hwc(self.upsample[len(self.channel_mults) - 1 - i], h)

        h = conv_hwc(self.conv_out, jax.nn.silu(group_norm_hwc(self.norm_out, h)))
        return jnp.transpose(h, (2, 0, 1))
