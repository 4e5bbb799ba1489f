"""`benchmarks/accelerator.py --quick` runs (so the accelerator benchmark cannot rot):
its records and FLOP bookkeeping, on the two cheapest networks of the shipped
`digits` ladder with two methods, 4 steps, batch 2."""

import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import accelerator  # noqa: E402


def test_quick_run_records_flops_seconds_and_the_device(tmp_path, capsys):
    out = tmp_path / "acc.json"
    argv = [
        "--quick",
        "--methods",
        "DPM++(2M) ODE,T-Stitch EM,ML-EM",
        "--out",
        str(out),
    ]
    assert accelerator.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["device"]["platform"] == "cpu" and result["device"]["kind"]
    assert result["environment"]["versions"]["jax"]
    (entry,) = result["results"]
    assert (entry["ladder"], entry["levels"], entry["batch"]) == ("digits", 2, 2)
    assert entry["stitch_fraction"] == 0.5
    flops = np.asarray(entry["flops_per_image"])
    steps = entry["steps"]
    runs = {(r["method"], tuple(r["networks"])): r for r in entry["runs"]}
    assert set(runs) == {
        ("DPM++(2M) ODE", (1,)),
        ("T-Stitch EM", (0, 1)),
        ("ML-EM", (0, 1)),
    }
    for run in runs.values():
        assert run["finite"] and run["seconds"] > 0
        np.testing.assert_allclose(run["flops"], np.dot(run["evaluations"], flops) * 2)
    assert runs[("DPM++(2M) ODE", (1,))]["evaluations"] == [0, steps]
    assert runs[("DPM++(2M) ODE", (1,))]["top_equivalent_evaluations"] == steps
    ml = runs[("ML-EM", (0, 1))]["evaluations"]
    assert ml[0] == steps and 0 <= ml[1] <= steps  # the base level runs every step
    # The stitch: the cheapest network for the first half, the top one after.
    assert runs[("T-Stitch EM", (0, 1))]["evaluations"] == [steps // 2, steps // 2]
    assert "wrote" in capsys.readouterr().out


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        accelerator.main(["--quick", "--methods", "EM,Stitching"])
    assert "--methods: no method 'Stitching'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        accelerator.main(["--quick", "--levels", "1"])
    assert "--levels must be at least 2" in capsys.readouterr().err
