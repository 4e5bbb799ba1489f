"""The `sample` and `demo` commands of `mlem-jax` (mlem_jax.cli).

Commands run in-process through `main([...])` so that compiled solves are shared.
"""

import json

import numpy as np
import pytest
from PIL import Image

from mlem_jax.__main__ import main

# 4 images of 8×8, tiled 2×2, enlarged 4× with 1-pixel borders: 2·(32 + 1) + 1.
GRID_SIDE = 67


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


def _png(path):
    with Image.open(path) as im:
        im.load()
        return im.size, np.asarray(im)


@pytest.mark.parametrize("method", ["em", "mlem"])
def test_sample_writes_png_and_arrays(method, tmp_path, capsys):
    out = tmp_path / f"{method}.png"
    argv = ["sample", "--method", method, "--steps", "8", "--num", "4"]
    if method == "mlem":
        # Seconds-optimal rates from given timings: reproducible (measured ones
        # vary from run to run, and the rates with them).
        argv += ["--level-ms", "2,4,5,7,13", "--levels", "all"]
    assert main([*argv, "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "evaluations per level" in printed and "FLOPs" in printed
    assert "wall-clock" in printed
    size, pixels = _png(out)
    assert size == (GRID_SIDE, GRID_SIDE)
    assert pixels.std() > 0  # not a blank picture
    arrays = np.load(tmp_path / f"{method}.npz")
    samples, evals = arrays["samples"], arrays["evaluations"]
    assert samples.shape == (4, 1, 8, 8) and np.all(np.isfinite(samples))
    assert evals.shape == (5,)
    if method == "em":
        assert evals.tolist() == [0, 0, 0, 0, 8]
    else:
        # Level 1 runs every step; the others fire rarely, never more often.
        assert evals[0] == 8 and np.all(evals[1:] <= 8)
    # Deterministic for a seed; another seed gives other samples.
    again = tmp_path / "again.png"
    assert main([*argv, "--seed", "3", "--out", str(again)]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again.npz")["samples"], samples)
    other = tmp_path / "other.png"
    assert main([*argv, "--seed", "4", "--out", str(other)]) == 0
    assert not np.allclose(np.load(tmp_path / "other.npz")["samples"], samples)


# Batch 4 and 8 steps as in the sample test: the EM and ML-EM programs are shared.
DEMO = [
    "demo",
    "--batch",
    "4",
    "--ref-steps",
    "16",
    "--em-steps",
    "4,8",
    "--mlem-steps",
    "8",
    "--scales",
    "1,4",
    "--budget",
    "4",
    "--cost",
    "flops",
    "--levels",
    "all",
    "--no-progress",
]


def _demo(tmp_path, seed, capsys):
    out = tmp_path / f"demo{seed}"
    assert main([*DEMO, "--seed", str(seed), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    return out, printed, json.loads((out / "results.json").read_text())


def test_demo_computes_its_table(tmp_path, capsys):
    out0, printed, r0 = _demo(tmp_path, 0, capsys)
    _, _, r1 = _demo(tmp_path, 1, capsys)
    for label in (
        "reference",
        "EM 4",
        "EM 8",
        "SDE-DPM 4",
        "SDE-DPM 8",
        "ML-EM 8 x1",
        "ML-EM 8 x4",
    ):
        assert label in printed
    for name in ("samples.png", "cost_error.png"):
        size, pixels = _png(out0 / name)
        assert min(size) > 200 and pixels.std() > 0

    for result in (r0, r1):
        runs = {r["label"]: r for r in result["runs"]}
        costs = result["config"]["level_flops_per_image"]
        for r in result["runs"]:
            flops = np.dot(r["evaluations"], np.asarray(costs) * 4)
            np.testing.assert_allclose(r["flops"], flops, rtol=1e-6)
            assert r["strong_error"] >= 0 and np.isfinite(r["distance"])
        # Euler–Maruyama: the top level once per step; error falls with the steps
        # (strong order 1/2 at least: halving h must shrink it).
        em = [runs[f"EM {n}"] for n in (4, 8)]
        assert [r["evaluations"][-1] for r in em] == [4, 8]
        errors = [r["strong_error"] for r in em]
        assert errors[0] > errors[1] > 0
        assert runs["reference"]["strong_error"] == 0
        # The single-network sampler beside EM: the top level once per step (the
        # 16-step reference is Euler–Maruyama's, so its distance to it need not
        # fall with the steps at this size).
        dpm = [runs[f"SDE-DPM {n}"] for n in (4, 8)]
        assert [r["evaluations"] for r in dpm] == [[0] * 4 + [4], [0] * 4 + [8]]
        assert all(r["sampler"] == "SDE-DPM++(1)" for r in dpm)
        # ML-EM: the base level every step; scaling rates up by 4 with the same
        # level key fires every level at least as often (monotone Bernoulli draws).
        m1, m4 = runs["ML-EM 8 x1"], runs["ML-EM 8 x4"]
        assert m1["evaluations"][0] == m4["evaluations"][0] == 8
        assert np.all(np.asarray(m4["evaluations"]) >= np.asarray(m1["evaluations"]))
        assert m4["predicted_top_equivalent"] > m1["predicted_top_equivalent"]
    # Other seed, other draws: the numbers are measured, not fixed.
    e0 = [r["strong_error"] for r in r0["runs"]]
    e1 = [r["strong_error"] for r in r1["runs"]]
    assert e0 != e1


def test_sample_measures_seconds_and_says_what_it_optimised(tmp_path, capsys):
    out = tmp_path / "s.png"
    argv = ["sample", "--steps", "8", "--num", "4", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "rates minimise seconds" in printed and "--level-ms" in printed
    assert "levels used: " in printed
    used = [int(i) - 1 for i in printed.split("levels used: ")[1].split()[0].split(",")]
    arrays = np.load(tmp_path / "s.npz")
    skipped = [i for i in range(5) if i not in used]
    assert used[-1] == 4 and np.all(arrays["evaluations"][skipped] == 0)
    assert str(arrays["cost"]) == "seconds"
    seconds = arrays["level_seconds"]
    assert seconds.shape == (5,) and np.all(seconds > 0)
    # The printed timings reproduce the run.
    ms = printed.split("--level-ms ")[1].split(")")[0]
    again = tmp_path / "again.png"
    assert main([*argv[:-2], "--level-ms", ms, "--out", str(again)]) == 0
    assert main([*argv[:-2], "--level-ms", ms, "--out", str(tmp_path / "b.png")]) == 0
    np.testing.assert_array_equal(
        np.load(tmp_path / "again.npz")["samples"],
        np.load(tmp_path / "b.npz")["samples"],
    )
    with pytest.raises(SystemExit) as e:
        main(
            [
                *argv[:-2],
                "--cost",
                "flops",
                "--level-ms",
                ms,
                "--out",
                str(tmp_path / "c.png"),
            ]
        )
    assert e.value.code == 2
    assert "--level-ms only applies to --cost seconds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*argv[:-2], "--level-ms", "1,2", "--out", str(tmp_path / "d.png")])
    assert "--level-ms needs 5 values" in capsys.readouterr().err
