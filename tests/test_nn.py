"""Tests for mlem_jax.nn: UNet shapes, ladder growth, FLOP counting."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import mlem_jax.nn as mnn

# One compiled caller for every test (t as an array, so new times do not recompile).
_call = eqx.filter_jit(lambda net, t, x: net(t, x))


def _randomise(net):
    """Residual branches and the output conv start at zero (an untrained network is
    the identity-then-zero map); perturb every weight so all paths are active.
    NumPy draws: JAX would compile one random op per weight shape (~25 s on a CPU)."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(9)
    leaves = [
        jnp.asarray(np.asarray(p) + 0.1 * rng.standard_normal(p.shape), p.dtype)
        for p in leaves
    ]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


@pytest.mark.parametrize(
    "shape, mults, attn",
    [
        ((1, 8, 8), (1, 2), ()),
        ((3, 16, 16), (1, 2, 2), (8,)),
        ((2, 12, 20), (1, 2), (6,)),
    ],
)
def test_unet_output_shape_equals_input(shape, mults, attn):
    net = mnn.UNet(shape, 8, mults, 1, attn, key=jr.key(0))
    x = jr.normal(jr.key(1), shape)
    t1, t2 = jnp.asarray(0.3), jnp.asarray(0.7)
    out = _call(net, t1, x)
    assert out.shape == shape
    # Zero-initialised output layer: an untrained network predicts exactly zero.
    assert jnp.all(out == 0)
    net = _randomise(net)
    out_a, out_b = _call(net, t1, x), _call(net, t2, x)
    assert out_a.shape == shape and bool(jnp.all(jnp.isfinite(out_a)))
    assert not jnp.allclose(out_a, out_b)  # the time embedding reaches the output
    assert not jnp.allclose(out_a, _call(net, t1, 2 * x))


def test_unet_batched_equals_per_image():
    net = _randomise(mnn.UNet((1, 8, 8), 8, (1, 2), 1, key=jr.key(0)))
    xs = jr.normal(jr.key(1), (3, 1, 8, 8))
    batched = eqx.filter_jit(lambda n, x: jax.vmap(n, in_axes=(None, 0))(0.5, x))(
        net, xs
    )
    for i in range(3):
        np.testing.assert_allclose(
            batched[i], _call(net, jnp.asarray(0.5), xs[i]), rtol=1e-5, atol=1e-6
        )
    # The network takes a batch itself, and an ignored `args`: an f(t, y, args)
    # as the samplers call it.
    direct = eqx.filter_jit(lambda n, x: n(0.5, x, {"ignored": 1}))(net, xs)
    np.testing.assert_allclose(direct, batched, rtol=1e-5, atol=1e-6)


def test_unet_init_is_deterministic():
    a = mnn.UNet((1, 8, 8), 4, key=jr.key(3))
    b = mnn.UNet((1, 8, 8), 4, key=jr.key(3))
    c = mnn.UNet((1, 8, 8), 4, key=jr.key(4))
    leaves = lambda m: jax.tree.leaves(eqx.filter(m, eqx.is_array))
    assert all(bool(jnp.all(x == y)) for x, y in zip(leaves(a), leaves(b)))
    assert not all(bool(jnp.all(x == y)) for x, y in zip(leaves(a), leaves(c)))


def test_unet_bad_input():
    with pytest.raises(
        ValueError, match="divisible by 2 \\*\\* \\(len\\(channel_mults\\)"
    ):
        mnn.UNet((1, 10, 10), 8, (1, 2, 2), key=jr.key(0))
    with pytest.raises(ValueError, match="image_shape"):
        mnn.UNet((8, 8), 8, key=jr.key(0))
    with pytest.raises(ValueError, match="base_width"):
        mnn.UNet((1, 8, 8), 0, key=jr.key(0))
    net = mnn.UNet((1, 8, 8), 4, (1, 2), 1, key=jr.key(0))
    with pytest.raises(
        ValueError, match=r"`x` must be of shape \(1, 8, 8\) or \(batch, 1, 8, 8\)"
    ):
        net(0.5, jnp.zeros((2, 1, 6, 6)))


def test_ladder_params_and_flops_grow():
    widths = (4, 8, 16)
    ladder = mnn.unet_ladder((1, 8, 8), widths, key=jr.key(0), num_res_blocks=1)
    assert tuple(m.base_width for m in ladder) == widths
    y = jnp.zeros((1, 1, 8, 8))
    params = [mnn.count_params(m) for m in ladder]
    flops = [
        mnn.count_flops(lambda m, y: jax.vmap(m, in_axes=(None, 0))(0.5, y), m, y)
        for m in ladder
    ]
    # Convolutions dominate and scale as width**2, norms/biases as width: doubling
    # the width multiplies both counts by a factor in (2, 4].
    for seq in (params, flops):
        ratios = np.array(seq[1:]) / np.array(seq[:-1])
        assert np.all(ratios > 2.0) and np.all(ratios <= 4.0), ratios


def test_ladder_levels_do_not_depend_on_ladder_length():
    short = mnn.unet_ladder((1, 8, 8), (4, 8), key=jr.key(0), num_res_blocks=1)
    long = mnn.unet_ladder((1, 8, 8), (4, 8, 12), key=jr.key(0), num_res_blocks=1)
    for a, b in zip(short, long[:2]):
        assert all(
            bool(jnp.all(x == y))
            for x, y in zip(
                jax.tree.leaves(eqx.filter(a, eqx.is_array)),
                jax.tree.leaves(eqx.filter(b, eqx.is_array)),
            )
        )


def test_ladder_bad_widths():
    with pytest.raises(ValueError, match="strictly increasing"):
        mnn.unet_ladder((1, 8, 8), (8, 8), key=jr.key(0))
    with pytest.raises(ValueError, match="positive ints"):
        mnn.unet_ladder((1, 8, 8), (), key=jr.key(0))


def test_count_flops_matches_matmul_count():
    m, k, n = 16, 32, 8
    a, b = jnp.ones((m, k)), jnp.ones((k, n))
    assert mnn.count_flops(lambda a, b: a @ b, a, b) == pytest.approx(2 * m * k * n)


def test_count_params_counts_every_weight():
    lin = eqx.nn.Linear(5, 3, key=jr.key(0))
    assert mnn.count_params(lin) == 5 * 3 + 3
    assert mnn.count_params((lin, jnp.zeros(4, jnp.int32))) == 18  # ints are not params


def test_sinusoidal_embedding():
    e = mnn.sinusoidal_embedding(0.0, 8)
    np.testing.assert_allclose(e, np.r_[np.zeros(4), np.ones(4)])
    assert mnn.sinusoidal_embedding(0.5, 8).shape == (8,)


def _channels_first_reference(net, t, x):
    """The UNet forward pass written directly with the Equinox layers' own
    (channels-first) `__call__`s: an independent check of the channels-last code."""

    def res(block, h, emb):
        out = block.conv1(jax.nn.silu(block.norm1(h)))
        scale, shift = jnp.split(block.time_proj(jax.nn.silu(emb)), 2)
        out = block.norm2(out) * (1 + scale[:, None, None]) + shift[:, None, None]
        out = block.conv2(jax.nn.silu(out))
        return (h if block.skip is None else block.skip(h)) + out

    def attn(block, h):
        if block is None:
            return h
        c, hh, ww = h.shape
        z = block.norm(h).reshape(c, hh * ww).T
        return h + block.attn(z, z, z).T.reshape(c, hh, ww)

    emb = mnn.sinusoidal_embedding(t, net.base_width)
    emb = net.time_mlp[1](jax.nn.silu(net.time_mlp[0](emb)))
    h = net.conv_in(x)
    hs, nb, levels = [h], net.num_res_blocks, len(net.channel_mults)
    for i in range(levels):
        for j in range(nb):
            h = attn(net.down_attn[i * nb + j], res(net.down_res[i * nb + j], h, emb))
            hs.append(h)
        if i < levels - 1:
            h = net.downsample[i](h)
            hs.append(h)
    h = res(net.mid_res[1], attn(net.mid_attn, res(net.mid_res[0], h, emb)), emb)
    k = 0
    for i in reversed(range(levels)):
        for _ in range(nb + 1):
            h = res(net.up_res[k], jnp.concatenate([h, hs.pop()]), emb)
            h = attn(net.up_attn[k], h)
            k += 1
        if i > 0:
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = net.upsample[levels - 1 - i](h)
    return net.conv_out(jax.nn.silu(net.norm_out(h)))


@pytest.mark.parametrize(
    "shape, mults, attn",
    [((1, 8, 8), (1, 2), ()), ((3, 8, 12), (1, 2), (4,))],
)
def test_unet_channels_last_equals_equinox_layers(shape, mults, attn):
    net = _randomise(mnn.UNet(shape, 8, mults, 1, attn, key=jr.key(0)))
    x = jr.normal(jr.key(1), shape)
    t = jnp.asarray(0.4)
    np.testing.assert_allclose(
        _call(net, t, x),
        eqx.filter_jit(_channels_first_reference)(net, t, x),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "cin, cout, size, stride, padding",
    [(3, 5, 3, 1, 1), (4, 4, 3, 2, 1), (6, 2, 1, 1, 0)],
)
def test_conv_and_group_norm_channels_last(cin, cout, size, stride, padding):
    conv = eqx.nn.Conv2d(cin, cout, size, stride=stride, padding=padding, key=jr.key(2))
    x = jr.normal(jr.key(3), (cin, 8, 6))
    got = mnn.conv_hwc(conv, jnp.transpose(x, (1, 2, 0)))
    np.testing.assert_allclose(
        jnp.transpose(got, (2, 0, 1)), conv(x), rtol=1e-5, atol=1e-5
    )
    norm = eqx.nn.GroupNorm(2, 8)
    norm = eqx.tree_at(
        lambda n: (n.weight, n.bias), norm, (jnp.arange(8.0), -jnp.ones(8))
    )
    y = 3.0 + jr.normal(jr.key(4), (8, 5, 4))
    got = mnn.group_norm_hwc(norm, jnp.transpose(y, (1, 2, 0)))
    np.testing.assert_allclose(
        jnp.transpose(got, (2, 0, 1)), norm(y), rtol=1e-5, atol=1e-5
    )


def test_conv_hwc_refuses_unsupported_layers():
    conv = eqx.nn.Conv2d(4, 4, 3, groups=2, key=jr.key(0))
    with pytest.raises(NotImplementedError, match="groups=1"):
        mnn.conv_hwc(conv, jnp.zeros((6, 6, 4)))
