"""`benchmarks/mixture_claim.py`'s matched-quality bookkeeping (no networks: the
full script compiles five UNets, far beyond a unit test; `--quick` runs it on two).
Paired differences as `MixtureQuality.difference`, the cheapest run within 2
standard errors of a target, and the speedups over the best single network."""

import math
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import mixture_claim  # noqa: E402


def test_paired_difference_is_the_gap_difference_with_the_paired_stderr():
    rng = np.random.default_rng(0)
    lp_b = rng.normal(size=400)
    lp_a = lp_b - 0.3 + 0.1 * rng.normal(size=400)  # a is 0.3 nats worse
    d, se = mixture_claim.paired(lp_a, lp_b)
    diff = lp_b - lp_a
    assert d == diff.mean() and 0.25 < d < 0.35
    np.testing.assert_allclose(se, diff.std(ddof=1) / math.sqrt(400))


def _runs():
    rng = np.random.default_rng(1)
    base = rng.normal(size=256)
    noise = 0.05 * rng.normal(size=(6, 256))
    # gap(run) − gap(target) = offsets (lower log-density = worse).
    offsets = [0.0, 0.0, 1.0, 0.001, 0.5, -0.2]
    lps = {i: base - offsets[i] + (noise[i] if i else 0) for i in range(6)}
    runs = [
        dict(id=0, m=2, family="single", level=1, steps=16, flops=16.0, seconds=4.0),
        dict(id=1, m=2, family="single", level=0, steps=16, flops=2.0, seconds=1.0),
        dict(id=2, m=2, family="stitch", level=None, steps=16, flops=3.0, seconds=1.0),
        dict(id=3, m=2, family="ml", level=None, steps=16, flops=5.0, seconds=3.0),
        dict(id=4, m=2, family="ml", level=None, steps=16, flops=1.0, seconds=0.5),
        dict(id=5, m=2, family="hybrid", level=None, steps=16, flops=8.0, seconds=0.1),
    ]
    for r in runs:
        r["name"] = f"run {r['id']}"
        r["gap"] = -float(lps[r["id"]].mean())
    return runs, lps


def test_matched_is_the_cheapest_run_not_significantly_worse():
    runs, lps = _runs()
    target = runs[0]
    ml = [r for r in runs if r["family"] == "ml"]
    best = mixture_claim.matched(ml, target, lps)
    assert best["id"] == 3  # run 4 is cheaper but 0.5 nats (≫ 2 SE) worse
    assert best["minus_target"] < 2 * best["minus_target_stderr"]
    assert mixture_claim.matched([runs[2]], target, lps) is None
    assert mixture_claim.matched(runs, target, lps, key="seconds")["id"] == 5


def test_summary_speedups_are_over_the_best_single_network():
    runs, lps = _runs()
    (row,) = mixture_claim.summarise(runs, lps, [2], [16])
    # The cheaper single network (run 1) matches the target: the baseline is 2 FLOPs.
    assert row["single_flops"] == 2.0 and row["single_flops_run"] == "run 1"
    assert row["stitch_flops"] is None and row["stitch_speedup_flops"] is None
    assert row["ml_flops"] == 5.0 and row["ml_speedup_flops"] == 2.0 / 5.0
    assert row["hybrid_speedup_seconds"] == 1.0 / 0.1
    assert mixture_claim.summarise(runs, lps, [3], [16]) == []  # no target run
