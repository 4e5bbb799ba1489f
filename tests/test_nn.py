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
    the identity-then-zero map); perturb every weight so all paths are active."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jr.split(jr.key(9), len(leaves))
    leaves = [p + 0.1 * jr.normal(k, p.shape) for p, k in zip(leaves, keys)]
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
    with pytest.raises(ValueError, match="vmap over a batch axis"):
        net(0.5, jnp.zeros((2, 1, 8, 8)))


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
