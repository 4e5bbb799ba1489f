"""The `mlem-jax` entry point and its parsers (mlem_jax.cli._main): help, and bad
arguments of every command refused with a message naming them. The commands
themselves: tests/test_cli_<command>.py."""

import pytest

from mlem_jax.__main__ import main


@pytest.mark.parametrize("command", ["train", "distill", "sample", "demo"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: mlem-jax {command}" in out and "--out" in out


@pytest.mark.parametrize(
    "argv, named",
    [
        (["sample", "--steps", "0"], "--steps"),
        (["sample", "--steps", "-3"], "--steps"),
        (["sample", "--num", "x"], "--num"),
        (["sample", "--method", "rk4"], "--method"),
        (["sample", "--probs", "1,1.5,0.2,0.1,0.1"], "--probs"),
        (["sample", "--probs", "1,0,0.2,0.1,0.1"], "--probs"),
        (["sample", "--probs", "1,0.5"], "--probs"),
        (["sample", "--method", "em", "--probs", "1,1,1,1,1"], "--probs"),
        (["sample", "--out", "samples.jpg"], "--out"),
        (["sample", "--ladder", "/nonexistent/ladder"], "--ladder"),
        (["demo", "--ladder", "/nonexistent/ladder"], "--ladder"),
        (["demo", "--ref-steps", "100", "--em-steps", "8,16"], "--ref-steps"),
        (["demo", "--scales", "1,-2"], "--scales"),
        (["demo", "--em-steps", ""], "--em-steps"),
        (["demo", "--min-probability", "1.5"], "--min-probability"),
        (["distill", "--ladder", "/nonexistent/ladder", "--out", "x"], "--ladder"),
        (["distill", "--out", "x", "--steps", "0"], "--steps"),
        (["train", "--dataset", "cifar", "--out", "x"], "--dataset"),
        (["nonsense"], "nonsense"),
    ],
)
def test_bad_arguments_exit_with_a_message_naming_them(argv, named, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "usage: mlem-jax" in err


def test_ladder_directory_without_manifest_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--ladder", str(tmp_path)])
    assert e.value.code == 2
    assert "manifest.json" in capsys.readouterr().err


# Batch 4 and 8 steps as in the sample test: the EM and ML-EM programs are shared.


def test_help_lists_train(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "train" in capsys.readouterr().out
