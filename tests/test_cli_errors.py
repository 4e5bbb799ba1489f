"""Bad input to the `mlem-jax` CLI (issue 16): exit status 2, a message naming the
argument, and nothing written: no output, no partial file, no lost work.

Commands run in-process through `main([...])`; the shipped ladder is copied once
and damaged in as many ways as the fuzz test can think of.
"""

import json
import os
import random
import re
import shutil

import numpy as np
import pytest

from mlem_jax import training
from mlem_jax.__main__ import main
from mlem_jax.pretrained import load_ladder, pretrained_path


def _files(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, _, fs in os.walk(root)
        for f in fs
    )


def _refused(argv, capsys, root=None):
    """Run `argv`; assert exit status 2 and that `root` is left as it was."""
    before = _files(root) if root is not None else None
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if root is not None:
        assert _files(root) == before
    return err


@pytest.fixture(scope="module")
def ladder_copy(tmp_path_factory):
    """A pristine copy of the shipped ladder (without its calibration)."""
    root = tmp_path_factory.mktemp("shipped")
    dst = root / "ladder"
    shutil.copytree(pretrained_path(), dst)
    (dst / "calibration.json").unlink()
    return dst


def _damaged(ladder_copy, tmp_path, name, damage):
    path = tmp_path / name
    shutil.copytree(ladder_copy, path)
    damage(path)
    return path


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path, obj):
    (path / "manifest.json").write_text(json.dumps(obj))


DAMAGES = {
    "garbage manifest": (
        lambda p: (p / "manifest.json").write_text("{not json"),
        "manifest.json' is not valid JSON",
    ),
    "empty object manifest": (
        lambda p: _write_manifest(p, {}),
        "has no `format_version`",
    ),
    "zero-byte weights": (
        lambda p: (p / "level_2.eqx").write_bytes(b""),
        "level 2's weights .*level_2.eqx' are empty",
    ),
    "truncated weights": (
        lambda p: (p / "level_4.eqx").write_bytes(
            (p / "level_4.eqx").read_bytes()[:1000]
        ),
        "level 4's weights .*level_4.eqx' are truncated or corrupt",
    ),
    "missing weights": (
        lambda p: (p / "level_0.eqx").unlink(),
        "level 0's weights .*level_0.eqx' .* are missing",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_ladder_is_named_by_every_command(
    damage, ladder_copy, tmp_path, capsys
):
    make, message = DAMAGES[damage]
    path = str(_damaged(ladder_copy, tmp_path, "bad", make))
    out = tmp_path / "out"
    for argv in (
        ["sample", "--out", str(out / "s.png"), "--steps", "8", "--num", "4"],
        ["demo", "--out", str(out), "--no-progress"],
        ["distill", "--out", str(out), "--no-progress"],
    ):
        err = _refused([*argv, "--ladder", path], capsys, tmp_path)
        assert "--ladder" in err
        assert pytest.importorskip("re").search(message, err), err
        assert "restore it from a copy, or retrain" in err or "retrain" in err
    assert not out.exists()


def test_output_paths_are_checked_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    (tmp_path / "dir.png").mkdir()
    cases = [
        (["sample", "--out", str(tmp_path / "dir.png")], "is a directory"),
        (["sample", "--out", str(a_file / "x.png")], "is a file, not a folder"),
        (["sample", "--out", "/proc/mlem-x.png"], "cannot write '/proc/mlem-x.png'"),
        (["demo", "--out", str(a_file)], "exists and is not a folder"),
        (["train", "--out", "/proc/mlem-x"], "--out: cannot write into '/proc/"),
        (["train", "--out", str(a_file / "x")], "--out: cannot write into"),
        (["distill", "--out", str(a_file)], "--out: .* exists and is not a folder"),
    ]
    for argv, message in cases:
        err = _refused(argv, capsys, tmp_path)
        assert "--out" in err
        assert pytest.importorskip("re").search(message, err), err
    assert a_file.read_text() == "keep me"


def test_bad_numbers_are_refused_with_their_flag(tmp_path, capsys):
    out = ["--out", str(tmp_path / "t")]
    cases = [
        (["train", "--grad-clip", "-1", *out], "argument --grad-clip: expected a pos"),
        (["train", "--grad-clip", "0", *out], "argument --grad-clip: expected a pos"),
        (["train", "--lr", "nan", *out], "argument --lr"),
        (["train", "--weight-decay", "-1", *out], "argument --weight-decay"),
        (["train", "--ema-decay", "2", *out], "argument --ema-decay"),
        (["train", "--seed", str(2**64), *out], "argument --seed: expected an int"),
        (["sample", "--seed", "9" * 30], "argument --seed"),
        # A negative-looking list reaches the list's own check.
        (["demo", "--scales", "-1,1"], "argument --scales: expected a positive"),
        (["demo", "--em-steps", "-8,16"], "argument --em-steps: expected a positive"),
        (
            ["sample", "--steps", "1000000000", "--num", "1", *out[:1], "x.png"],
            r"--steps 1000000000 with --num 1 needs about \d+ GiB of memory",
        ),
        (
            ["demo", "--ref-steps", str(2**30), "--em-steps", "8", "--mlem-steps", "8"],
            r"--ref-steps 1073741824 with --batch 16 needs about .* GiB",
        ),
    ]
    for argv, message in cases:
        err = _refused(argv, capsys, tmp_path)
        assert pytest.importorskip("re").search(message, err), err
    # The trainer itself refuses what would train by ascent or not at all.
    for clip in (-1.0, 0.0, float("inf")):
        with pytest.raises(ValueError, match="`grad_clip` must be a positive finite"):
            training.TrainConfig(grad_clip=clip)


def test_budget_out_of_range_is_refused_or_raised_with_a_warning(tmp_path, capsys):
    # FLOPs as the cost: the feasible range is then a closed form of the ladder's
    # FLOPs (with seconds it depends on the timings measured on this machine).
    base = ["sample", "--steps", "8", "--num", "4", "--seed", "3", "--cost", "flops"]
    err = _refused([*base, "--budget", "1e6", "--out", str(tmp_path / "a.png")], capsys)
    assert "--budget: 1e+06 top-level evaluations is more than" in err
    assert "feasible budgets lie between 1.25 and" in err
    assert not list(tmp_path.iterdir())
    out = tmp_path / "b.png"
    assert main([*base, "--budget", "0.5", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: --budget 0.5 top-level evaluations is below the cheapest" in err
    assert "raised to 1.25" in err
    # 8 steps are too few for this ladder: the samples are noise, and it says so.
    samples = np.load(tmp_path / "b.npz")["samples"]
    evaluations = np.load(tmp_path / "b.npz")["evaluations"]
    if evaluations[-1] == 0:
        assert "the top level was never evaluated" in err
    if np.abs(samples).max() > 2:
        assert "leave the data range [-1, 1] by far" in err
    assert "never evaluated" in err or "leave the data range" in err
    err = _refused(
        [
            "demo",
            "--budget",
            "1e6",
            "--cost",
            "flops",
            "--out",
            str(tmp_path / "d"),
            "--no-progress",
        ],
        capsys,
    )
    assert "--budget x --scales: 1e+06 x 1 = 1e+06 top-level evaluations" in err
    assert "feasible budgets lie between 10 and" in err
    assert not (tmp_path / "d").exists()


def test_refused_train_leaves_nothing_and_a_workless_manifest_is_replaced(
    tmp_path, capsys
):
    out = tmp_path / "ladder"
    err = _refused(
        ["train", "--size", "3", "--widths", "4", "--steps", "2", "--out", str(out)],
        capsys,
        tmp_path,
    )
    assert "cannot take images of shape (1, 3, 3)" in err
    assert not out.exists()
    # A directory left by an older run that stopped before its first checkpoint
    # (a manifest with no level, no checkpoint) is not held against new arguments.
    out.mkdir()
    _write_manifest(out, {"format_version": 1, "spec": {"widths": [3]}, "levels": []})
    assert training._read_resumable(str(out)) is None
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "level_0.ckpt").write_bytes(b"x")
    assert training._read_resumable(str(out))["spec"] == {"widths": [3]}
    (out / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="manifest.json' is damaged"):
        training._read_resumable(str(out))


def test_truncated_checkpoint_is_called_corrupt_with_the_way_out(tmp_path):
    state = {"w": np.ones((64, 64), np.float32), "b": np.zeros(3, np.float32)}
    path = tmp_path / "level_0.ckpt"
    training.save_checkpoint(path, state)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError) as info:
        training.load_checkpoint(path, state)
    message = str(info.value)
    assert "it is corrupt, truncated to 500 of the" in message
    assert "Delete it to restart that level from scratch" in message
    other = {"w": np.ones((80, 80), np.float32)}
    training.save_checkpoint(path, other)
    with pytest.raises(ValueError, match="different architecture or TrainConfig"):
        training.load_checkpoint(path, state)


def test_ctrl_c_during_train_prints_one_line_with_the_resume_command(
    tmp_path, capsys, monkeypatch
):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_ladder", interrupted)
    monkeypatch.setattr(training, "distill_ladder", interrupted)
    out = str(tmp_path / "ladder")
    argv = ["train", "--widths", "4", "--steps", "5", "--out", out]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "interrupted" in err and os.path.join(out, "checkpoints") in err
    assert err.endswith("resume with: mlem-jax " + " ".join(argv))
    assert main(["distill", "--out", out, "--no-progress"]) == 130
    assert "resume with: mlem-jax distill" in capsys.readouterr().err


def test_an_unknown_command_names_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--gamma", "3", "--quick"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bench'" in err and "sample" in err


# --------------------------------------------------------------------------- fuzz


def _mutations(manifest, rng):
    """Random damage to a valid manifest: a dropped key, a value of the wrong type,
    a wrong number, or garbage text."""
    kind = rng.choice(["drop", "retype", "number", "text", "level"])
    m = json.loads(json.dumps(manifest))
    if kind == "text":
        text = json.dumps(m)
        cut = rng.randrange(len(text))
        return rng.choice([text[:cut], text[:cut] + "\x00\xff garbage", ""])
    junk = rng.choice([None, "x", -1, 0, 1.5, [], {}, [1, 2], True, float("nan")])
    if kind == "level":
        entry = rng.choice(m["levels"])
        key = rng.choice(["level", "width", "file", "flops_per_image"])
        entry[key] = rng.choice([junk, "../manifest.json", "missing.eqx", 7])
    elif kind == "number":
        m[rng.choice(["format_version", "levels"])] = rng.choice([junk, 2, []])
    else:
        section = rng.choice([m, m["spec"], m["spec"]["sde"]])
        key = rng.choice(sorted(section))
        if kind == "drop":
            del section[key]
        else:
            section[key] = junk
    return json.dumps(m)


def test_fuzz_damaged_ladders_give_a_clean_error(ladder_copy, tmp_path):
    rng = random.Random(16)
    manifest = _manifest(ladder_copy)
    path = tmp_path / "fuzz"
    shutil.copytree(ladder_copy, path)
    errors = 0
    for i in range(60):
        (path / "manifest.json").write_text(_mutations(manifest, rng))
        try:
            models, _ = load_ladder(path)
        except (ValueError, FileNotFoundError) as e:
            errors += 1
            assert str(path) in str(e), (i, str(e))
        else:  # a harmless mutation (an unused key): the ladder must still be whole
            assert len(models) == len(manifest["levels"])
    assert errors >= 45
    _write_manifest(path, manifest)
    for i in range(6):
        level = rng.randrange(len(manifest["levels"]))
        weights = path / f"level_{level}.eqx"
        data = (ladder_copy / weights.name).read_bytes()
        weights.write_bytes(
            data[: rng.randrange(len(data))] if i % 3 else data + b"\x93NUMPY"
        )
        with pytest.raises(ValueError, match=f"level {level}'s weights"):
            load_ladder(path)
        weights.write_bytes(data)


def test_conflicting_flags_are_refused_before_any_work(tmp_path, capsys):
    out = ["--out", str(tmp_path / "s.png")]
    cases = [
        (["--budget", "8", "--probs", "1,1,1,1,1"], "--budget applies to calibrated"),
        (["--budget", "8", "--method", "em"], "--budget only applies to --method ml"),
        (["--level-ms", "1,2,3,4,5", "--method", "single"], "--level-ms only appl"),
        (["--level-ms", "1", "--probs", "1"], "--level-ms applies to calibrated"),
        (["--probs", "1,1,1,1,1", "--method", "em"], "--probs only applies to"),
        (["--grid", "logsnr"], "--grid applies to the mlem_jax.diffusion samplers"),
        (["--sampler", "heun"], "--sampler heun has no multilevel version"),
        (["--sampler", "ddim", "--devices", "2"], "--devices above 1 applies to"),
        (["--sampler", "dpm3"], "argument --sampler: invalid choice: 'dpm3'"),
        (["--probs", "1,1"], "--probs needs 5 values"),
        (["--level-ms", "1,2", "--cost", "flops"], "--level-ms only applies to --cost"),
    ]
    for argv, message in cases:
        err = _refused(["sample", *argv, *out], capsys, tmp_path)
        lines = err.strip().splitlines()
        assert message in lines[-1], err
        assert lines[-1].startswith("mlem-jax sample: error:")
    assert not (tmp_path / "s.png").exists()


def test_a_run_that_would_outgrow_memory_counts_the_activations(
    tmp_path, capsys, monkeypatch
):
    """`--num 100000` passed the Brownian-buffer estimate and grew past 8 GB."""
    from mlem_jax.cli import _common

    monkeypatch.setattr(_common, "available_memory", lambda: 8 * 2.0**30)
    argv = ["sample", "--method", "em", "--num", "100000", "--steps", "8"]
    err = _refused([*argv, "--out", str(tmp_path / "s.png")], capsys, tmp_path)
    assert re.search(r"--num 100000 needs about 1\d.\d* GiB .* lower --num", err), err


def test_ctrl_c_during_sample_or_demo_is_one_line_and_writes_nothing(
    tmp_path, capsys, monkeypatch
):
    from mlem_jax.cli import _demo, _sample

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_sample, "load_ladder", interrupted)
    monkeypatch.setattr(_demo, "load_ladder", interrupted)
    png = tmp_path / "s.png"
    assert main(["sample", "--out", str(png)]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "sample interrupted; nothing was written" in err and str(png) in err
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "results.json").write_text("earlier run")
    assert main(["demo", "--out", str(folder), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "demo interrupted" in err
    assert (folder / "results.json").read_text() == "earlier run"
    assert _files(tmp_path) == ["demo/results.json"]


def test_a_swallowed_ctrl_c_still_stops_the_writes(tmp_path, capsys, monkeypatch):
    """A Ctrl-C that something on the way caught (the run then went on and
    overwrote the outputs) is remembered: nothing is written."""
    import signal

    from mlem_jax.cli import _sample

    def swallowing(run):
        def wrapped(*args, **kwargs):
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                pass  # caught on the way; the run goes on
            return run(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(_sample, "run_em", swallowing(_sample.run_em))
    before = signal.getsignal(signal.SIGINT)
    png = tmp_path / "s.png"
    argv = ["sample", "--method", "em", "--steps", "2", "--num", "1", "--no-progress"]
    assert main([*argv, "--out", str(png)]) == 130
    assert "sample interrupted; nothing was written" in capsys.readouterr().err
    assert _files(tmp_path) == []
    # The handler is gone afterwards: Ctrl-C does what it did before.
    assert signal.getsignal(signal.SIGINT) == before


def test_every_option_has_help():
    import argparse

    from mlem_jax.cli._main import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [
        f"{name} {action.option_strings[-1]}"
        for name, command in sub.choices.items()
        for action in command._actions
        if action.option_strings and not action.help
    ]
    assert not missing


def test_distill_takes_the_ladder_names_sample_takes(capsys):
    from mlem_jax.pretrained import pretrained_path

    for name, path in [
        ("digits_wide", pretrained_path("digits_wide")),
        ("shipped", pretrained_path("digits")),
    ]:
        # Resolved to the shipped ladder: refused only because --out is its source.
        err = _refused(["distill", "--ladder", name, "--out", path], capsys)
        assert "--out must differ from --ladder" in err
    err = _refused(["sample", "--ladder", "shipped", "--out", "/proc/x.png"], capsys)
    assert "error: --out: cannot write" in err.strip().splitlines()[-1]


def test_a_manifest_that_lost_a_level_is_refused(ladder_copy, tmp_path, capsys):
    def drop_last(p):
        manifest = _manifest(p)
        manifest["levels"] = manifest["levels"][:-1]
        _write_manifest(p, manifest)

    path = _damaged(ladder_copy, tmp_path, "lost", drop_last)
    argv = ["sample", "--ladder", str(path), "--steps", "2", "--num", "1"]
    err = _refused([*argv, "--out", str(tmp_path / "s.png")], capsys, tmp_path)
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert (
        "--ladder: " in line and "lists 4 level(s) but its spec.widths names 5" in line
    )
    with pytest.raises(ValueError, match="lists 4 level"):
        load_ladder(str(path))

    def wrong_width(p):
        manifest = _manifest(p)
        manifest["levels"][1]["width"] = 99
        _write_manifest(p, manifest)

    path = _damaged(ladder_copy, tmp_path, "width", wrong_width)
    with pytest.raises(ValueError, match=r"levels\[1\].width = 99 but spec.widths"):
        training.read_manifest(str(path))
