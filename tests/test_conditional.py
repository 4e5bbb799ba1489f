"""Class-conditional networks and guided sampling end to end (issue 27): the
conditional UNet and its labels, label dropout, conditional ladders saved and
loaded, and the class-accuracy metric (the CLI: test_cli_guided.py).
The guidance estimators themselves, on analytic scores: test_guidance.py."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mlem_jax import diffusion as md, training
from mlem_jax.data import digits, digits_labels
from mlem_jax.nn import UNet

K = 10


def _perturbed(net, key):
    """`net` with noise on every weight: an untrained UNet (zero output and
    residual convolutions) predicts zero whatever its labels."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jr.split(key, len(leaves))
    leaves = [
        x + 0.1 * jr.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)
    ]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


@pytest.fixture(scope="module")
def cond_net():
    net = UNet((1, 8, 8), 4, channel_mults=(1, 2), num_res_blocks=1, num_classes=K,
               key=jr.key(0))  # fmt: skip
    return _perturbed(net, jr.key(1))


_call = eqx.filter_jit(lambda net, x, labels: net(0.4, x, labels))


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_conditional_unet_labels_and_null_label(cond_net):
    x = jr.normal(jr.key(2), (3, 1, 8, 8))
    by_int = _call(cond_net, x, 3)
    _close(by_int, _call(cond_net, x, jnp.array([3, 3, 3])))
    # Per-image labels: each row as if alone.
    mixed = _call(cond_net, x, jnp.array([3, 5, K]))
    _close(mixed[1], _call(cond_net, x[1], 5))
    _close(mixed[0], by_int[0])
    # The label changes the prediction; `None` is the null label K.
    assert float(jnp.max(jnp.abs(by_int - _call(cond_net, x, 5)))) > 1e-3
    _close(_call(cond_net, x, None), _call(cond_net, x, K))
    _close(mixed[2], _call(cond_net, x, None)[2])


def test_conditional_unet_bad_labels(cond_net):
    x = jnp.zeros((2, 1, 8, 8))
    with pytest.raises(
        ValueError, match=r"`args` holds a class label outside \[0, 10\)"
    ):
        cond_net(0.5, x, 11)
    with pytest.raises(ValueError, match="`args`.*outside"):
        cond_net(0.5, x, jnp.array([0, -1]))
    with pytest.raises(TypeError, match="`args`.*integer dtype"):
        cond_net(0.5, x, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"`args`.*shape \(\) or \(2,\)"):
        cond_net(0.5, x, jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match="`num_classes` must be a positive int"):
        UNet((1, 8, 8), 4, num_classes=0, key=jr.key(0))
    # Traced: an error at run time, not a silently clipped index.
    jitted = eqx.filter_jit(lambda n, y: n(0.5, x, y))
    with pytest.raises(Exception, match="outside"):
        jax.block_until_ready(jitted(cond_net, jnp.array([0, 12])))


def test_unconditional_unet_ignores_args_and_has_no_embedding():
    net = _perturbed(UNet((1, 8, 8), 4, key=jr.key(0)), jr.key(1))
    assert net.num_classes is None and net.class_embed is None
    x = jr.normal(jr.key(2), (2, 1, 8, 8))
    _close(_call(net, x, None), _call(net, x, 7))


def test_cfg_with_a_conditional_unet(cond_net):
    """w = 0 gives the null-label prediction, w = 1 the conditional one: the
    guidance convention through `cfg_levels` on a real UNet."""
    x = jr.normal(jr.key(3), (2, 1, 8, 8))
    labels = jnp.array([1, 2])
    joint = eqx.filter_jit(lambda g, x, y: g.joint(0.4, x, y))
    for w, expected in (
        (0.0, _call(cond_net, x, K)),
        (1.0, _call(cond_net, x, labels)),
    ):
        levels = md.cfg_levels(cond_net, 1.0, scale=w, num_classes=K)
        c, guided = joint(levels.fns[1], x, labels)
        _close(guided, expected)
        _close(c, _call(cond_net, x, labels))


def _tiny_data(n=64):
    return digits(split="train")[:n], digits_labels(split="train")[:n]


def _embed_rows(model):
    return np.asarray(model.class_embed.weight)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_label_dropout_trains_the_null_label(dropout):
    """All images labelled 3: with dropout the null row K (and row 3) learn, the
    other classes' rows get no gradient; without it the null row is untouched."""
    x, _ = _tiny_data()
    labels = np.full((x.shape[0],), 3)
    net = UNet((1, 8, 8), 4, num_res_blocks=1, num_classes=K, key=jr.key(0))
    config = training.TrainConfig(
        steps=6, batch_size=16, warmup_steps=0, weight_decay=0.0, label_dropout=dropout
    )
    out = training.train(net, x, key=jr.key(1), config=config, labels=labels,
                         progress=False)  # fmt: skip
    before, after = _embed_rows(net), _embed_rows(out.raw_model)
    changed = np.any(before != after, axis=1)
    assert changed[3]
    assert not changed[[0, 1, 2, 4, 5, 6, 7, 8, 9]].any()
    assert changed[K] == (dropout > 0)


def test_train_label_errors():
    x, labels = _tiny_data()
    cond = UNet((1, 8, 8), 4, num_classes=K, key=jr.key(0))
    plain = UNet((1, 8, 8), 4, key=jr.key(0))
    config = training.TrainConfig(steps=1, batch_size=4)
    with pytest.raises(
        ValueError, match="`labels` must be the class of each training image"
    ):
        training.train(cond, x, key=jr.key(0), config=config, progress=False)
    with pytest.raises(
        ValueError, match="`labels` must be None for an unconditional model"
    ):
        training.train(plain, x, key=jr.key(0), config=config, labels=labels,
                       progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"`labels` must be in \[0, 10\)"):
        training.train(cond, x, key=jr.key(0), config=config, labels=labels + 5,
                       progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"`labels` must be integers of shape \(N,\)"):
        training.train(cond, x, key=jr.key(0), config=config, labels=labels[:-1],
                       progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="`label_dropout` must be in"):
        training.TrainConfig(label_dropout=1.0)


@pytest.fixture(scope="module")
def cond_ladder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    x, labels = _tiny_data(128)
    config = training.TrainConfig(steps=4, batch_size=16, warmup_steps=1,
                                  checkpoint_every=0)  # fmt: skip
    models, manifest = training.train_ladder(
        root / "ladder",
        x,
        widths=(2, 4),
        unet_kwargs={"channel_mults": [1, 2], "num_res_blocks": 1},
        config=config,
        dataset={"name": "digits", "kwargs": {"pad": 0}},
        eval_data=x[:32],
        labels=labels,
        eval_labels=labels[:32],
        progress=False,
    )
    return root / "ladder", models, manifest


def test_conditional_ladder_round_trip(cond_ladder):
    path, models, manifest = cond_ladder
    assert manifest["spec"]["num_classes"] == K
    assert manifest["spec"]["unet"]["num_classes"] == K
    assert manifest["spec"]["train"]["label_dropout"] == 0.1
    loaded, read = training.load_ladder(path)
    assert training.num_classes_from_manifest(read) == K
    x = jr.normal(jr.key(0), (3, 1, 8, 8))
    for a, b in zip(models, loaded, strict=True):
        assert b.num_classes == K
        y = jnp.array([1, 2, K])
        np.testing.assert_array_equal(_call(a, x, y), _call(b, x, y))
    # An unconditional ladder's manifest is as before conditioning existed.
    plain = training._ladder_spec((1, 8, 8), (2,), {}, training.TrainConfig(),
                                  md.VPSDE(), 0, None)  # fmt: skip
    assert "label_dropout" not in plain["train"] and "num_classes" not in plain


def test_distill_conditional_ladder(cond_ladder, tmp_path):
    path, _, _ = cond_ladder
    x, labels = _tiny_data(128)
    config = training.TrainConfig(steps=2, batch_size=8, warmup_steps=0)
    with pytest.raises(
        ValueError, match="`labels` must be the class of each training image"
    ):
        training.distill_ladder(path, tmp_path / "a", x, config=config,
                                progress=False)  # fmt: skip
    models, out = training.distill_ladder(
        path, tmp_path / "b", x, config=config, labels=labels, progress=False
    )
    assert out["levels"][0]["distilled"] and models[0].num_classes == K
    assert training.load_ladder(tmp_path / "b")[0][0].num_classes == K


def test_class_accuracy_known_answers():
    quality = md.digits_class_quality(steps=600)
    test, labels = digits(split="test"), digits_labels(split="test")
    a, se = quality.accuracy(test, labels)
    assert a >= 0.85  # an MLP on these digits reaches about 0.95
    assert se == pytest.approx(math.sqrt(a * (1 - a) / len(labels)))
    wrong, _ = quality.accuracy(test, (labels + 1) % 10)
    assert wrong <= 0.1
    # One class: real 3s labelled 3 are recognised, labelled 7 not.
    threes = test[labels == 3]
    assert quality.accuracy(threes, 3)[0] >= 0.8
    assert quality.accuracy(threes, 7)[0] <= 0.1
    # Per-class KID: real digits of the right class are data (within 5 SE) ...
    res = quality(test, labels)
    mean, err = res["class_kid"]
    assert abs(mean) <= 5 * err + 1e-9
    # ... digits paired with another class's reference are far from it.
    far, far_err = quality.class_kid(test, (labels + 1) % 10)["mean"]
    assert far - 5 * far_err > mean
    with pytest.raises(
        ValueError, match=r"`labels` must be non-negative integers below 10"
    ):
        quality.accuracy(test, labels + 10)
