"""Tests for mlem_jax.training: loss decrease, determinism, checkpoints, resume, ladders.

Every test trains the same tiny UNet with the same config, so the training step is
compiled once for the whole test session.
"""

import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import mlem_jax.data as mdata
import mlem_jax.training as mt
from mlem_jax.nn import UNet

CONFIG = mt.TrainConfig(
    steps=40, batch_size=32, learning_rate=1e-2, warmup_steps=5, checkpoint_every=10
)
UNET = dict(channel_mults=(1, 2), num_res_blocks=1)


def _model(width=4):
    return UNet((1, 8, 8), width, key=jr.key(0), **UNET)


def _arrays(tree):
    return jax.tree.leaves(eqx.filter(tree, eqx.is_array))


def _identical(a, b):
    la, lb = _arrays(a), _arrays(b)
    return len(la) == len(lb) and all(bool(jnp.all(x == y)) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def data():
    return jnp.asarray(mdata.digits(split="train"))


@pytest.fixture(scope="module")
def reference(data):
    return mt.train(_model(), data, key=jr.key(1), config=CONFIG, progress=False)


def test_training_lowers_the_loss(reference):
    losses = np.asarray(reference.losses)
    assert losses.shape == (CONFIG.steps,) and np.all(np.isfinite(losses))
    # The output layer starts at zero, so the first loss is E‖ε‖²/d = 1 up to Monte
    # Carlo error over 32·64 normal draws (std √(2/2048)).
    assert abs(losses[0] - 1.0) < 5 * np.sqrt(2 / (32 * 64))
    # A network that learned nothing stays at 1; trained, it must at least halve it.
    assert losses[-10:].mean() < 0.5


def test_training_is_deterministic(data, reference):
    again = mt.train(_model(), data, key=jr.key(1), config=CONFIG, progress=False)
    np.testing.assert_array_equal(again.losses, reference.losses)
    assert _identical(again.model, reference.model)
    assert _identical(again.raw_model, reference.raw_model)
    other = mt.train(_model(), data, key=jr.key(2), config=CONFIG, progress=False)
    assert not np.array_equal(other.losses, reference.losses)


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_continues_from_saved_step(tmp_path, data, reference):
    ckpt = tmp_path / "run.ckpt"

    def stop_at_25(step, loss):
        if step == 25:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        mt.train(
            _model(),
            data,
            key=jr.key(1),
            config=CONFIG,
            progress=False,
            checkpoint_path=ckpt,
            callback=stop_at_25,
        )
    params, _ = eqx.partition(_model(), eqx.is_inexact_array)
    state = mt.load_checkpoint(
        ckpt, mt._initial_state(params, mt._optimizer(CONFIG), 40)
    )
    assert int(state.step) == 20  # the last checkpoint before the interruption
    assert np.all(np.isfinite(state.losses[:20])) and np.all(
        np.isnan(state.losses[20:])
    )
    assert [f for f in os.listdir(tmp_path) if f != "run.ckpt"] == []  # no temp files

    seen = []
    resumed = mt.train(
        _model(),
        data,
        key=jr.key(1),
        config=CONFIG,
        progress=False,
        checkpoint_path=ckpt,
        callback=lambda step, loss: seen.append(step),
    )
    assert seen == list(range(21, 41))
    # Per-step randomness is fold_in(key, step): the resumed run is bitwise the
    # uninterrupted one.
    np.testing.assert_array_equal(resumed.losses, reference.losses)
    assert _identical(resumed.model, reference.model)


def test_checkpoint_round_trip_and_mismatch(tmp_path, reference):
    path = tmp_path / "model.eqx"
    mt.save_checkpoint(path, reference.model)
    loaded = mt.load_checkpoint(path, _model())
    assert _identical(loaded, reference.model)
    with pytest.raises(
        ValueError, match="does not match the model and training config"
    ):
        mt.load_checkpoint(path, UNet((1, 8, 8), 8, key=jr.key(0), **UNET))


LADDER_KWARGS = dict(
    widths=(4,),
    unet_kwargs={"channel_mults": [1, 2], "num_res_blocks": 1},
    config=CONFIG,
    seed=3,
    dataset={"name": "digits", "kwargs": {}},
    progress=False,
)


@pytest.fixture(scope="module")
def one_level_ladder(tmp_path_factory, data):
    """A one-level ladder directory, its models and manifest: written once, checked
    by one test and refused as a distillation source by another."""
    out = tmp_path_factory.mktemp("one_level") / "ladder"
    test = mdata.digits(split="test")
    models, manifest = mt.train_ladder(
        out, np.asarray(data), eval_data=test, **LADDER_KWARGS
    )
    return out, models, manifest


def test_train_ladder_writes_a_resumable_ladder_directory(data, one_level_ladder):
    out, models, manifest = one_level_ladder
    kwargs = LADDER_KWARGS
    assert sorted(os.listdir(out)) == ["level_0.eqx", "manifest.json"]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    (level,) = on_disk["levels"]
    assert level["width"] == 4 and level["file"] == "level_0.eqx"
    assert level["params"] == sum(x.size for x in _arrays(models[0]))
    assert level["flops"] > level["params"]  # at least one multiply-add per weight
    assert level["final_loss"] < 0.5 and 0 < level["eval_loss"] < 1.0
    assert on_disk["spec"]["image_shape"] == [1, 8, 8]
    assert {"jax", "equinox", "optax"} <= set(on_disk["versions"])

    loaded, manifest2 = mt.load_ladder(out)
    assert _identical(loaded, models) and manifest2 == on_disk
    assert mt.sde_from_manifest(manifest2) == mt.VPSDE()
    # Rerunning with the same arguments finds every level finished: nothing retrains.
    again, _ = mt.train_ladder(out, np.asarray(data), **kwargs)
    assert _identical(again, models)
    with pytest.raises(ValueError, match="not one holding a ladder trained with other"):
        mt.train_ladder(out, np.asarray(data), **dict(kwargs, seed=4))


def test_ladder_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a ladder directory"):
        mt.load_ladder(tmp_path)
    with pytest.raises(ValueError, match="strictly increasing"):
        mt.train_ladder(tmp_path, np.zeros((4, 1, 8, 8)), widths=(8, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        mt.train_ladder(tmp_path, np.zeros((4, 8, 8)))


def test_train_config_bad_values():
    with pytest.raises(ValueError, match="`steps` must be a positive int"):
        mt.TrainConfig(steps=0)
    with pytest.raises(ValueError, match="`ema_decay` must be in \\[0, 1\\)"):
        mt.TrainConfig(ema_decay=1.0)
    for name, value in (
        ("grad_clip", -1.0),
        ("grad_clip", 0.0),
        ("learning_rate", float("inf")),
        ("weight_decay", -1e-4),
        ("t_min", 0.0),
    ):
        with pytest.raises(ValueError, match=f"`{name}` must"):
            mt.TrainConfig(**{name: value})


def test_distill_ladder_brings_levels_towards_the_top(tmp_path, data):
    source, out = tmp_path / "source", tmp_path / "distilled"
    test = mdata.digits(split="test")
    mt.train_ladder(
        source,
        np.asarray(data),
        widths=(4, 8),
        unet_kwargs={"channel_mults": [1, 2], "num_res_blocks": 1},
        config=CONFIG,
        seed=5,
        progress=False,
    )
    config = mt.TrainConfig(
        steps=40, batch_size=32, learning_rate=3e-3, warmup_steps=5, checkpoint_every=0
    )
    kwargs = dict(config=config, seed=0, eval_data=test, progress=False)
    models, manifest = mt.distill_ladder(source, out, np.asarray(data), **kwargs)
    src_models, src_manifest = mt.load_ladder(source)
    loaded, on_disk = mt.load_ladder(out)
    assert _identical(loaded, models)
    assert _identical(models[-1], src_models[-1])  # the teacher is copied unchanged
    assert not _identical(models[0], src_models[0])
    (level,) = on_disk["levels"][:-1]
    assert level["distilled"] and level["flops"] == src_manifest["levels"][0]["flops"]
    # Held-out distillation loss, same draws before and after: it must fall.
    assert level["distill_eval_loss"] < 0.8 * level["distill_eval_loss_before"]
    assert on_disk["distillation"]["teacher_level"] == 1
    # Rerunning finds the level finished; other arguments in the same folder refuse.
    again, _ = mt.distill_ladder(source, out, np.asarray(data), **kwargs)
    assert _identical(again, models)
    with pytest.raises(ValueError, match="not one holding a ladder distilled"):
        mt.distill_ladder(source, out, np.asarray(data), **dict(kwargs, seed=1))
    with pytest.raises(
        ValueError, match=r"`data` must be images of shape \(N, \*\(1, 8, 8\)\)"
    ):
        mt.distill_ladder(source, tmp_path / "x", np.zeros((4, 1, 6, 6)), **kwargs)


def test_distill_ladder_needs_two_levels(tmp_path, data, one_level_ladder):
    one, _, _ = one_level_ladder
    with pytest.raises(
        ValueError, match="`source` must be a ladder of two levels or more"
    ):
        mt.distill_ladder(one, tmp_path / "out", np.asarray(data))
