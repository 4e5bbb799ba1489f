"""`mlem-jax sample --class --guidance [--guidance-interval]` (mlem_jax.cli._guided,
issue 27) on a tiny class-conditional ladder trained here: full CFG, the interval,
the multilevel guided sampler, and the errors, each naming its argument."""

import json

import numpy as np
import pytest

from mlem_jax import training
from mlem_jax.__main__ import main
from mlem_jax.data import digits, digits_labels


@pytest.fixture(scope="module")
def cond_ladder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    x, labels = digits(split="train")[:128], digits_labels(split="train")[:128]
    config = training.TrainConfig(
        steps=4, batch_size=16, warmup_steps=1, checkpoint_every=0
    )
    models, manifest = training.train_ladder(
        root / "ladder",
        x,
        widths=(2, 4),
        unet_kwargs={"channel_mults": [1, 2], "num_res_blocks": 1},
        config=config,
        dataset={"name": "digits", "kwargs": {"pad": 0}},
        labels=labels,
        progress=False,
    )
    return root / "ladder", models, manifest


def _refused(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_cli_guided_sampling(cond_ladder, tmp_path, capsys):
    path, _, _ = cond_ladder
    base = ["sample", "--ladder", str(path), "--steps", "8", "--num", "10",
            "--no-progress"]  # fmt: skip
    out = tmp_path / "g.png"
    assert main([*base, "--class", "3", "--guidance", "2.5", "--method", "single",
                 "--out", str(out)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "evaluations per level (the last: the unconditional prediction): 8 8" in text
    data = np.load(tmp_path / "g.npz")
    assert data["samples"].shape == (10, 1, 8, 8)
    assert (data["labels"] == 3).all() and float(data["guidance"]) == 2.5
    # An interval halves the guided evaluations on this grid.
    assert main([*base, "--class", "3", "--guidance", "2.5", "--method", "single",
                 "--guidance-interval", "0.3,0.7", "--out", str(out)]) == 0  # fmt: skip
    evals = np.load(tmp_path / "g.npz")["evaluations"]
    assert evals[0] == 8 and 0 < evals[1] < 8
    # The multilevel guided sampler with calibrated rates: cheaper than full CFG.
    assert main([*base, "--guidance", "2", "--method", "mlem", "--out", str(out)]) == 0
    data = np.load(tmp_path / "g.npz")
    assert len(data["evaluations"]) == 3
    assert (data["labels"] == np.arange(10) % 10).all()
    flops_cfg = (
        2
        * 8
        * json.loads((path / "manifest.json").read_text())["levels"][-1][
            "flops_per_image"
        ]
        * 10
    )
    assert float(data["flops"]) < flops_cfg


def test_cli_guidance_errors(cond_ladder, tmp_path, capsys):
    path, _, _ = cond_ladder
    out = str(tmp_path / "e.png")
    base = ["sample", "--ladder", str(path), "--steps", "8", "--num", "4",
            "--no-progress", "--out", out]  # fmt: skip
    err = _refused([*base, "--class", "10"], capsys)
    assert "--class 10 is not a class of this ladder: expected an int in [0, 10)" in err
    err = _refused([*base, "--class", "1", "--guidance", "nan"], capsys)
    assert "--guidance" in err and "finite number" in err
    err = _refused([*base, "--guidance", "2", "--method", "single", "--guidance-interval", "0.5,1.5"],
                   capsys)  # fmt: skip
    assert "--guidance-interval" in err and "within the time range" in err
    err = _refused([*base, "--guidance", "2", "--method", "single", "--guidance-interval", "0.7,0.2"],
                   capsys)  # fmt: skip
    assert "--guidance-interval" in err and "a < b" in err
    err = _refused([*base, "--guidance", "2", "--guidance-interval", "0.2,0.7"],
                   capsys)  # fmt: skip
    assert "--guidance-interval applies to --method single" in err
    err = _refused([*base, "--guidance", "2", "--sampler", "em"], capsys)
    assert "--sampler em does not take guidance" in err
    err = _refused([*base, "--guidance", "2", "--method", "stitch"], capsys)
    assert "--method stitch does not take guidance" in err
    err = _refused(["sample", "--ladder", "digits", "--class", "3", "--out", out],
                   capsys)  # fmt: skip
    assert "need a class-conditional ladder" in err and "unconditional" in err
