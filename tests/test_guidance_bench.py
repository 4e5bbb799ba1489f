"""`benchmarks/guidance.py`'s bookkeeping (outside the package): the "not
significantly worse" test on accuracy and KID, the matched comparison, its ratios
and the summary table on a small made-up result; and its quick settings are a
sub-case of the full ones."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from guidance import (  # noqa: E402
    QUICK,
    SETTINGS,
    _not_worse,
    error_table,
    matched,
    matched_error,
    pathwise_error,
    table,
)


def _run(family, steps, top_eq, acc, kid, seconds=None, blowups=0):
    return dict(
        family=family,
        describe=f"{family} {top_eq:g} x{steps}",
        steps=steps,
        flops=10.0 * top_eq,
        top_equivalent=top_eq,
        seconds=top_eq / 10 if seconds is None else seconds,
        accuracy=(acc, 0.01),
        kid=(kid, 0.001),
        class_kid=(kid, 0.002),
        blowups=blowups,
    )


def test_not_worse_uses_two_combined_standard_errors():
    ref = _run("full CFG", 32, 64, 0.90, 0.010)
    se = 2 * 2**0.5 * 0.01
    assert _not_worse(_run("x", 32, 10, 0.90 - 0.9 * se, 0.010), ref)
    assert not _not_worse(_run("x", 32, 10, 0.90 - 1.1 * se, 0.010), ref)
    assert not _not_worse(_run("x", 32, 10, 0.95, 0.010 + 0.004), ref)
    assert _not_worse(_run("x", 32, 10, 0.95, 0.005), ref)  # better is fine
    assert not _not_worse(_run("x", 32, 10, 0.95, 0.005, blowups=1), ref)


def test_matched_picks_the_cheapest_run_per_family_and_its_ratios():
    runs = [
        _run("full CFG", 32, 64, 0.90, 0.010),
        _run("full CFG", 16, 32, 0.89, 0.011),
        _run("full CFG", 8, 16, 0.80, 0.020),  # worse: not matched
        _run("interval", 32, 48, 0.90, 0.010),
        _run("interval", 32, 40, 0.70, 0.010),  # worse accuracy
        _run("randomised guidance", 32, 20, 0.90, 0.0105, seconds=4.0),
        _run("randomised guidance + ladder", 32, 8, 0.91, 0.010),
    ]
    m = matched(runs, 32)
    assert m["reference"] == "full CFG 64 x32"
    assert m["full CFG"]["top_equivalent"] == 32
    assert m["interval"]["top_equivalent"] == 48
    assert m["T-Stitch CFG"] is None
    r = m["ratios"]
    assert r["randomised vs full CFG"]["flops"] == pytest.approx(32 / 20)
    assert r["randomised vs full CFG"]["seconds"] == pytest.approx(3.2 / 4.0)
    assert r["randomised vs best interval"]["flops"] == pytest.approx(48 / 20)
    assert r["ladder vs full CFG"]["flops"] == pytest.approx(4.0)
    assert r["ladder vs T-Stitch CFG"] is None
    text = table(dict(runs=runs, matched=m))
    assert "T-Stitch CFG: none matches" in text
    assert "randomised vs full CFG: 1.60x in FLOPs, 0.80x in seconds" in text


def test_quick_settings_are_small():
    assert QUICK["samples"] < SETTINGS["samples"]
    assert QUICK["ref_steps"] in QUICK["cfg_steps"]
    assert SETTINGS["ref_steps"] in SETTINGS["cfg_steps"]


def _erred(family, steps, top_eq, error, seconds=None):
    return dict(_run(family, steps, top_eq, 0.9, 0.01, seconds), error=(error, 0.001))


def test_matched_error_picks_the_cheapest_run_at_most_as_far_from_the_reference():
    runs = [
        _erred("full CFG", 16, 32, 0.20),
        _erred("full CFG", 32, 64, 0.10),
        _erred("interval", 32, 48, 0.12),  # too far at 0.10, fine at 0.20
        _erred("interval", 16, 24, 0.19),
        _erred("randomised guidance", 32, 30, 0.09, seconds=5.0),
        _erred("randomised guidance", 48, 40, 0.05),
    ]
    rows = matched_error(runs)
    assert [r["target"] for r in rows] == ["full CFG 32 x16", "full CFG 64 x32"]
    coarse, fine = rows
    assert coarse["interval"]["top_equivalent"] == 24
    assert fine["interval"] is None
    assert fine["randomised guidance"]["top_equivalent"] == 30
    assert fine["ratios"]["randomised vs full CFG"]["flops"] == pytest.approx(64 / 30)
    assert fine["ratios"]["randomised vs full CFG"]["seconds"] == pytest.approx(
        6.4 / 4.0
    )  # the x48 run is faster
    assert fine["ratios"]["randomised vs best interval"] is None
    text = error_table(rows)
    assert "2.13x / 1.60x s" in text


def test_pathwise_error_and_its_standard_error():
    """RMS distance over samples; its standard error by the delta method, checked
    against the spread of the estimate over many independent batches."""
    rng = np.random.default_rng(0)
    ref = np.zeros((400, 1, 2, 2))
    estimates = [pathwise_error(rng.normal(size=ref.shape), ref)[0] for _ in range(200)]
    rms, se = pathwise_error(rng.normal(size=ref.shape), ref)
    assert rms == pytest.approx(2.0, rel=5 * se / 2.0)  # E‖z‖² = 4 for 4 pixels
    assert se == pytest.approx(np.std(estimates), rel=0.25)
