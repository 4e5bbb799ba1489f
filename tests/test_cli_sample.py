"""The `sample` command of `mlem-jax` (mlem_jax.cli._sample).

Commands run in-process through `main([...])` so that compiled solves are shared.
"""

import numpy as np
import pytest
from helpers import png

from mlem_jax.__main__ import main

# 4 images of 8×8, tiled 2×2 with 1-pixel borders, enlarged 28× (the largest
# scale keeping the grid within 512 pixels: 512 // (2 · 9)): 2·(224 + 1) + 1.
GRID_SIDE = 451


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
    size, pixels = png(out)
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


def test_sample_noise_belongs_to_the_sample(tmp_path):
    # `--num 8` and `--num 3` with one seed: the first 3 start from the same noise
    # (bit for bit) and end at the same samples up to the UNet's batched rounding.
    argv = ["sample", "--method", "em", "--steps", "8", "--seed", "3"]
    for num in (8, 3):
        out = tmp_path / f"n{num}.png"
        assert main([*argv, "--num", str(num), "--out", str(out)]) == 0
    big, small = np.load(tmp_path / "n8.npz"), np.load(tmp_path / "n3.npz")
    np.testing.assert_array_equal(small["y0"], big["y0"][:3])
    np.testing.assert_allclose(small["samples"], big["samples"][:3], atol=1e-5)
    assert not np.allclose(big["samples"][3], big["samples"][4], atol=1e-2)


@pytest.mark.parametrize(
    "sampler, method",
    [("sde-dpm++2m", "single"), ("ddim", "mlem"), ("heun", "single")],
)
def test_sample_runs_a_named_sampler_single_or_multilevel(
    sampler, method, tmp_path, capsys
):
    """`--sampler NAME` runs `mlem_jax.diffusion.sample` with the top network
    (`--method single`) or `mlem_sample` over the ladder (`--method mlem`, here
    with fixed probabilities: all ones is the top network's sampler)."""
    import jax

    import mlem_jax.diffusion as md
    from mlem_jax.pretrained import load_ladder

    out = tmp_path / "s.png"
    argv = ["sample", "--sampler", sampler, "--method", method, "--steps", "4"]
    argv += ["--num", "2", "--grid", "logsnr", "--no-progress", "--out", str(out)]
    if method == "mlem":
        argv += ["--probs", "1,1,1,1,1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{sampler} {method}: 4 steps, 2 samples" in printed
    arrays = np.load(tmp_path / "s.npz")
    evals = arrays["evaluations"].tolist()
    per_step = 2 if sampler == "heun" else 1
    assert evals == ([4] * 5 if method == "mlem" else [0, 0, 0, 0, 4 * per_step])
    assert str(arrays["sampler"]) == sampler and str(arrays["grid"]) == "logsnr"
    # The same samples as the library's own call on the same prior draws (with
    # every probability 1 the telescope is the top network: the same samples).
    models, _ = load_ladder()
    k_level = jax.random.split(jax.random.key(0), 4)[3]
    kw = dict(t0=1.0, t1=1e-3, num_steps=4, grid="logsnr", key=k_level)
    ref, _ = md.sample(
        models[-1], md.VPLinear(), md.sampler(sampler), arrays["y0"], **kw
    )
    np.testing.assert_allclose(arrays["samples"], ref, rtol=1e-4, atol=1e-4)


def test_sample_calibrates_a_named_samplers_multilevel_version(tmp_path, capsys):
    """Without --probs, `--method mlem` calibrates the ladder along the sampler's
    own grid (`calibrate_sampler`) and prints the levels used, 1-based."""
    out = tmp_path / "s.png"
    argv = ["sample", "--sampler", "dpm++2m", "--steps", "8", "--num", "2"]
    argv += ["--pilot-steps", "8", "--cost", "flops", "--budget", "4"]
    assert main([*argv, "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rates minimise FLOPs" in printed
    used = printed.split("levels used: ")[1].split()[0].split(",")
    assert "(1-based, cheapest = 1" in printed and used[-1] == "5"
    evals = np.load(tmp_path / "s.npz")["evaluations"]
    assert evals[int(used[0]) - 1] == 8 and 0 < evals[4] < 8


def test_sample_stitch_and_hybrid(tmp_path, capsys):
    """`--method stitch` is T-Stitch (level 1 for the first half of the steps, the
    top level after); `--method hybrid` samples with the shipped calibration's
    `Calibration.hybrid` at the budget."""
    out = tmp_path / "s.png"
    argv = ["sample", "--steps", "8", "--num", "2", "--no-progress"]
    assert (
        main([*argv, "--method", "stitch", "--stitch", "2,0.25", "--out", str(out)])
        == 0
    )
    assert np.load(tmp_path / "s.npz")["evaluations"].tolist() == [0, 2, 0, 0, 6]
    capsys.readouterr()
    argv += ["--method", "hybrid", "--cost", "flops", "--budget", "4"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "hybrid schedule: " in printed and "verdict: " in printed
    evaluations = np.load(tmp_path / "s.npz")["evaluations"]
    assert evaluations.sum() > 0 and np.all(evaluations <= 8)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--stitch", "0,0.5"], "a level >= 1 and a fraction in [0, 1]"),
        (["--stitch", "1,1.5"], "a level >= 1 and a fraction in [0, 1]"),
        (["--stitch", "one"], "expected LEVEL,FRACTION"),
        (["--stitch", "9,0.5"], "--stitch: level 9 is not in a ladder of 5 levels"),
    ],
)
def test_sample_stitch_bad_input(extra, message, tmp_path, capsys):
    argv = ["sample", "--method", "stitch", "--steps", "4", "--num", "2"]
    with pytest.raises(SystemExit) as e:
        main([*argv, *extra, "--out", str(tmp_path / "s.png")])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()
