"""The `train` command of `mlem-jax` (mlem_jax.cli._train)."""

import json

import pytest

from mlem_jax.__main__ import main

# Same model and optimiser settings as tests/test_training.py: no new compilation.
TRAIN = [
    "train",
    "--dataset",
    "digits",
    "--widths",
    "4",
    "--steps",
    "40",
    "--batch-size",
    "32",
    "--lr",
    "0.01",
    "--warmup-steps",
    "5",
    "--no-progress",
]


def test_train_command_writes_a_ladder(tmp_path, capsys):
    out = tmp_path / "ladder"
    assert main([*TRAIN, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "level 0: width 4" in printed and f"ladder written to {out}" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["dataset"] == {"name": "digits", "kwargs": {"pad": 0}}
    assert manifest["spec"]["widths"] == [4]
    assert manifest["spec"]["train"]["steps"] == 40
    assert manifest["levels"][0]["final_loss"] < 0.5
    # Rerunning resumes: the finished level is loaded, not retrained.
    assert main([*TRAIN, "--out", str(out)]) == 0


def _error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_train_command_bad_input(tmp_path, capsys):
    out = ["--out", str(tmp_path / "x")]
    err = _error(["train", "--dataset", "mnist", *out], capsys)
    assert "argument --dataset: invalid choice: 'mnist'" in err
    err = _error(["train", "--dataset", "folder", *out], capsys)
    assert "--dataset folder needs --data-dir" in err
    err = _error(
        ["train", "--dataset", "folder", "--data-dir", str(tmp_path / "no"), *out],
        capsys,
    )
    assert "does not exist" in err
    err = _error(["train", "--widths", "8,a", *out], capsys)
    assert "argument --widths: expected comma-separated integers" in err
    err = _error(["train", "--widths", "8,4", *out], capsys)
    assert "strictly increasing" in err
    err = _error(["train", "--steps", "0", *out], capsys)
    assert "argument --steps: expected a positive integer" in err
    err = _error(["train"], capsys)
    assert "the following arguments are required: --out" in err
    err = _error([], capsys)
    assert "required: command" in err
