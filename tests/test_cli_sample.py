"""The `sample` command of `mlem-jax` (mlem_jax.cli._sample).

Commands run in-process through `main([...])` so that compiled solves are shared.
"""

import numpy as np
import pytest
from helpers import png

from mlem_jax.__main__ import main

# 4 images of 8×8, tiled 2×2, enlarged 4× with 1-pixel borders: 2·(32 + 1) + 1.
GRID_SIDE = 67


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
