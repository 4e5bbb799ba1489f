"""The shipped pretrained ladders (mlem_jax.pretrained)."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlem_jax.diffusion import ladder_drifts
from mlem_jax.pretrained import (
    CALIBRATION,
    load_calibration,
    load_ladder,
    pretrained_path,
    save_calibration,
)
from mlem_jax.training import sde_from_manifest

# name -> (size limit in bytes, least FLOPs span from the cheapest to the top level)
SHIPPED = {"digits": (4e6, 8), "digits_wide": (5e6, 100), "digits_mixture": (3e6, 100)}


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def shipped(request):
    name = request.param
    return (*load_ladder(None if name == "digits" else name), name)


def test_shipped_ladder_is_small_and_loads_as_float32(shipped):
    models, manifest, name = shipped
    path = pretrained_path(name)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    assert size < SHIPPED[name][0]  # "a few MB at most"
    assert len(models) >= 4 and len(models) == len(manifest["levels"])
    assert manifest["weights_dtype"] == "float16"
    widths = [lv["width"] for lv in manifest["levels"]]
    assert widths == sorted(widths)
    for m in models:
        leaves = [x for x in jax.tree_util.tree_leaves(m) if hasattr(x, "dtype")]
        floats = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
        assert floats and all(x.dtype == jnp.float32 for x in floats)
    with pytest.raises(ValueError, match="name"):
        pretrained_path("cifar")


def test_drift_error_to_the_top_level_falls_along_the_ladder(shipped):
    models, manifest, name = shipped
    sde = sde_from_manifest(manifest)
    fns = ladder_drifts(sde, models)
    shape = tuple(manifest["spec"]["image_shape"])
    steps, batch = 8, 16
    key_y0, key_w = jax.random.split(jax.random.key(0))
    # Reverse-SDE Euler–Maruyama with the top level (a Python loop of one compiled
    # step: far quicker to compile than a scan over UNets), every level's drift
    # compared with the top one on the visited states.
    drifts = jax.jit(lambda t, y: jnp.stack([f(t, y, None) for f in fns]))
    ts = np.linspace(1.0, 1e-3, steps + 1)
    y = sde.prior_sample(key_y0, (batch, *shape))
    sq = np.zeros(len(fns))
    for n in range(steps):
        t, h = ts[n], ts[n + 1] - ts[n]
        f = drifts(jnp.float32(t), y)
        sq += np.asarray(jnp.mean(jnp.sum((f - f[-1]) ** 2, axis=(2, 3, 4)), axis=1))
        dw = np.sqrt(abs(h)) * jax.random.normal(jax.random.fold_in(key_w, n), y.shape)
        y = y + h * f[-1] + sde.diffusion(t, y) * dw
    errors = np.sqrt(sq / steps)
    assert errors[-1] == 0.0 and np.all(np.isfinite(errors))
    # Every wider network is closer to the top one: e_1 > e_2 > ... > e_{k-1} > 0.
    assert np.all(np.diff(errors[:-1]) < 0), errors
    assert errors[-2] > 0
    # ...and the ladder spans a real range of costs.
    flops = [lv["flops_per_image"] for lv in manifest["levels"]]
    assert np.all(np.diff(flops) > 0) and flops[-1] / flops[0] > SHIPPED[name][1]


def test_shipped_calibration_gives_schedules_at_a_budget():
    _, manifest = load_ladder(None)
    cal = load_calibration(os.path.join(pretrained_path(), CALIBRATION))
    assert cal is not None and cal.num_levels == len(manifest["levels"])
    top = cal.costs[-1]
    cheap = cal.predict(cal.schedule(budget=10 * top, num_steps=64), 64)
    rich = cal.predict(cal.schedule(budget=40 * top, num_steps=64), 64)
    np.testing.assert_allclose(cheap.cost, 10 * top, rtol=1e-3)
    np.testing.assert_allclose(rich.cost, 40 * top, rtol=1e-3)
    # More budget buys less added variance.
    assert rich.error < cheap.error
    assert load_calibration(os.path.join(pretrained_path(), "missing.json")) is None


def test_shipped_calibration_reads_as_it_always_has(tmp_path):
    # `load_calibration` reads through `Calibration.from_json`; the shipped file must
    # give the fields the loader gave before (arrays as float64, tuples, no grid),
    # and `save_calibration` must write back the same values.
    import json

    from mlem_jax import Calibration

    path = os.path.join(pretrained_path(), CALIBRATION)
    cal = load_calibration(path)
    with open(path) as f:
        fields = json.load(f)
    for name in ("times", "variances", "sensitivity", "drift_errors"):
        fields[name] = np.asarray(fields[name], np.float64)
    fields["pair_variances"] = np.asarray(fields["pair_variances"], np.float64)
    for name in ("costs", "warnings"):
        fields[name] = tuple(fields[name])
    before = Calibration(**fields)
    assert cal is not None and cal.grid is None and before.grid is None
    for name, value in vars(before).items():
        np.testing.assert_array_equal(getattr(cal, name), value, err_msg=name)
    save_calibration(
        cal.with_seconds([1.0] * cal.num_levels), tmp_path / "c.json", cal.costs
    )
    again = load_calibration(tmp_path / "c.json")
    assert again is not None and again.seconds is None and again.costs == cal.costs
    np.testing.assert_array_equal(again.pair_variances, cal.pair_variances)


def test_a_damaged_calibration_file_is_named_with_the_fix(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text('{"times": [0, 1]}')
    with pytest.raises(ValueError, match="KeyError") as e:
        load_calibration(path)
    assert str(path) in str(e.value) and "calibrate_shipped" in str(e.value)


def test_a_shipped_ladder_is_named_and_a_directory_of_that_name_wins(
    tmp_path, monkeypatch
):
    from mlem_jax.pretrained import resolve_ladder

    assert resolve_ladder(None) == (pretrained_path("digits"), "digits")
    assert resolve_ladder("digits_wide") == (
        pretrained_path("digits_wide"),
        "digits_wide",
    )
    assert resolve_ladder(str(tmp_path)) == (str(tmp_path), None)
    assert resolve_ladder("shipped") == (pretrained_path("digits"), "digits")
    monkeypatch.chdir(tmp_path)
    # An unrelated folder of that name does not hide the shipped ladder...
    (tmp_path / "digits_wide").mkdir()
    assert resolve_ladder("digits_wide") == (
        pretrained_path("digits_wide"),
        "digits_wide",
    )
    # ... a ladder directory of that name does.
    (tmp_path / "digits_wide" / "manifest.json").write_text("{}")
    assert resolve_ladder("digits_wide") == ("digits_wide", None)


def test_shipped_networks_plug_into_the_samplers():
    """`load_ladder`'s networks are f(t, y, args) on a batch: `md.sample` takes
    them as they are, with the parametrisation of the manifest, and gives what
    the per-image network vmapped over the batch gives."""
    import mlem_jax.diffusion as md
    from mlem_jax.training import param_from_manifest

    models, manifest = load_ladder("digits_wide")
    param = param_from_manifest(manifest)
    assert param == md.VPLinear(beta_min=0.1, beta_max=20.0)
    y0 = jax.random.normal(jax.random.key(0), (2, 1, 8, 8))
    kw = dict(t0=1.0, t1=1e-3, num_steps=2)
    x, info = md.sample(models[0], param, md.DPMSolverPP2M(), y0, **kw)
    per_image = lambda t, y, args: jax.vmap(models[0], in_axes=(None, 0))(t, y)  # noqa: E731
    ref, _ = md.sample(per_image, param, md.DPMSolverPP2M(), y0, **kw)
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-5)
    assert x.shape == y0.shape and info.evaluations.tolist() == [2]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_calibration_gives_the_clis_verdict(name):
    # Both shipped ladders store a calibration with Euler–Maruyama's own error,
    # so `sample` can say whether ML-EM is worth it at its step count.
    from mlem_jax.cli._budget import ladder_verdict

    cal = load_calibration(os.path.join(pretrained_path(name), CALIBRATION))
    assert cal is not None and cal.em_error is not None and cal.em_error > 0
    assert 0.25 <= cal.em_order <= 2.0
    seconds = cal.with_seconds(np.asarray(cal.costs) / cal.costs[-1])
    verdict = ladder_verdict(seconds, "seconds", 64)
    assert verdict is not None and set(verdict.speedups) == {"seconds", "flops"}
    # With seconds proportional to FLOPs both costs give the same speedups.
    np.testing.assert_allclose(
        verdict.speedups["seconds"], verdict.speedups["flops"], rtol=1e-6
    )
    assert "over Euler–Maruyama with the top level" in str(verdict)
    assert ladder_verdict(dataclasses.replace(cal, em_error=None), "flops", 64) is None


def test_quality_of_every_shipped_ladder(tmp_path):
    import equinox as eqx
    import jax.random as jr

    from mlem_jax import diffusion as md, pretrained

    q = pretrained.quality("digits_mixture")
    assert isinstance(q, md.MixtureQuality)
    mixture = pretrained.mixture("digits_mixture")
    assert mixture.num_components == 256 and mixture.event_shape == (1, 8, 8)
    x = eqx.filter_jit(lambda m, k: m.sample(k, 512))(mixture, jr.key(7))
    gap, se = q(x)
    assert abs(gap) < 4 * se  # exact draws: 0 within the error
    noisy = x + 0.1 * jr.normal(jr.key(8), x.shape)
    d, d_se = q.difference(noisy, x)
    assert d > 10 * d_se
    # The digits ladders' classifier KID (a short training keeps this test quick).
    for name in ("digits", "digits_wide"):
        assert isinstance(pretrained.quality(name, steps=5), md.SampleQuality)
    with pytest.raises(
        ValueError, match="quality: `name` must be one of 'digits', .*; got 'cifar'"
    ):
        pretrained.quality("cifar")
    with pytest.raises(ValueError, match="takes no keyword arguments"):
        pretrained.quality("digits_mixture", steps=5)
    with pytest.raises(
        ValueError,
        match="mixture: `name` must be one of 'digits_mixture'; got 'digits'",
    ):
        pretrained.mixture("digits")
    bad = tmp_path / "mixture.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="mixture.npz' is not a mixture written by"):
        pretrained.read_mixture(bad)


def test_one_ladder_loader_for_directories_and_shipped_names():
    from mlem_jax import pretrained, training

    # The reading half of the format is one set of functions, re-exported by training.
    for name in ("load_ladder", "read_manifest", "sde_from_manifest", "MANIFEST"):
        assert getattr(training, name) is getattr(pretrained, name)
    manifest = pretrained.read_manifest("digits_wide")
    assert manifest == pretrained.read_manifest(pretrained_path("digits_wide"))
    assert manifest["spec"]["widths"] == [4, 8, 16, 24, 48]
