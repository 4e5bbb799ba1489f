"""The `demo` command of `mlem-jax` (mlem_jax.cli._demo and its report).

Commands run in-process through `main([...])` so that compiled solves are shared.
"""

import json

import numpy as np
from helpers import png

from mlem_jax.__main__ import main

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
        size, pixels = png(out0 / name)
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
