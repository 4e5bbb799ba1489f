"""Sharded sampling (`mlem_solve_sharded`, `MLEMSolver` in a `shard_map`) on 8 forced
host devices.

The devices exist only if `XLA_FLAGS=--xla_force_host_platform_device_count=8` is set
before JAX initialises, so `tests/shard_checks.py` computes everything in one
subprocess (one JAX start, each program compiled once) and the tests below assert on
its JSON. The subprocess compiles with XLA's backend optimisation off: the programs
are tiny and compile time is most of their cost; both sides of every comparison are
compiled with the same flags.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EPS32 = 2.0**-23


@pytest.fixture(scope="module")
def checks() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        "--xla_force_host_platform_device_count=8 "
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    )
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "shard_checks.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rounding(scale: float, steps: int = 16) -> float:
    # A few float32 roundings of the state per step, accumulated over the solve.
    return 8 * steps * EPS32 * max(scale, 1.0)


def test_all_p1_equals_euler_maruyama_on_1_2_4_8_devices(checks):
    tol = _rounding(checks["em_scale"])
    assert set(checks["p1_max_diff"]) == {"1", "2", "4", "8"}
    for devices, diff in checks["p1_max_diff"].items():
        assert diff <= tol, (devices, diff, tol)


def test_independent_draws_are_those_of_the_documented_device_key(checks):
    # Device d's rows equal a single-device solve with key fold_in(key, d) on its
    # rows of the global Brownian increments, and its counts equal that solve's.
    assert checks["indep_rows_max_diff"] <= _rounding(checks["em_scale"])
    assert checks["indep_counts_equal_single"]
    assert checks["devices_differ"]  # the devices really drew differently


def test_per_device_counts_equal_the_draws(checks):
    # Recomputed from the documented uniforms: needed_l = B_l or B_{l+1}.
    assert checks["indep_counts_equal_draws"]
    assert checks["indep_total_ok"]


def test_shared_draws_equal_the_single_device_solve(checks):
    assert checks["shared_max_diff"] <= _rounding(checks["em_scale"])
    assert checks["shared_counts_equal"]


def test_diffrax_mlem_solver_in_shard_map_matches(checks):
    assert checks["diffrax_max_diff"] <= _rounding(checks["em_scale"])
    assert checks["diffrax_counts_equal"]


def test_added_mse_of_the_batch_mean_falls_like_one_over_devices(checks):
    # Closed form (see shard_checks.py): E‖ē‖² = E‖e‖² / devices, no bias, so each
    # device count's Monte Carlo mean must lie within 5 standard errors of it.
    theory = checks["mse_theory_1"]
    for devices, (mean, se) in checks["mse"].items():
        expected = theory / int(devices)
        assert abs(mean - expected) <= 5 * se, (devices, mean, expected, se)
    # And the fall itself: 8 devices against 1, each measured independently.
    m1, s1 = checks["mse"]["1"]
    m8, s8 = checks["mse"]["8"]
    assert abs(8 * m8 - m1) <= 5 * math.hypot(8 * s8, s1)
    assert m8 < m1 / 2  # shared draws would leave it at m1


def test_shared_gradient_equals_single_device_gradient(checks):
    assert checks["grad_max_diff"] <= 1e-5 * max(checks["grad_scale"], 1.0)


@pytest.mark.parametrize(
    "case, words",
    [
        ("indivisible", ["`y0`", "size 12", "divisible", "'batch' (8)"]),
        ("no_axis", ["`mesh`", "('data',)", "`axis_name`", "got 'batch'"]),
        ("batched_key", ["`key`", "single PRNG key", "shape (8,)"]),
        ("draws", ["`draws`", '"independent" or "shared"', "'per-sample'"]),
        ("mesh", ["TypeError", "`mesh`", "jax.sharding.Mesh", "list"]),
        ("scalar", ["`y0`", "leading batch axis", "scalar"]),
        ("pytree", ["TypeError", "`y0`", "single array", "dict"]),
    ],
)
def test_bad_input_messages(checks, case, words):
    message = checks["errors"][case]
    assert message is not None, f"{case}: no error raised"
    assert message.startswith(("ValueError", "TypeError"))
    assert "mlem_solve_sharded" in message
    for word in words:
        assert word in message, (case, word, message)


# --------------------------------------------------- CLI `sample --devices` choice
# In this process JAX has its one device; the device count is patched instead (no
# compile: only the choice and its messages are tested here).


def _parser():
    import argparse

    return argparse.ArgumentParser(prog="mlem-jax sample")


@pytest.mark.parametrize(
    "local, devices, num, expected",
    [
        (1, "all", 64, (1, None)),
        (8, "all", 64, (8, None)),
        (8, "all", 6, (6, "using 6 of the 8 local devices")),
        (8, "all", 7, (7, "using 7 of the 8 local devices")),
        (8, "all", 5, (5, "using 5 of the 8 local devices")),
        (8, 4, 64, (4, None)),
    ],
)
def test_sample_devices_choice(monkeypatch, local, devices, num, expected):
    from mlem_jax.cli import _sample

    monkeypatch.setattr(_sample.jax, "local_device_count", lambda: local)
    n, note = _sample.sample_devices(_parser(), devices, num)
    assert n == expected[0]
    assert (note is None) == (expected[1] is None)
    if note is not None:
        assert expected[1] in note and f"--num {num}" in note


@pytest.mark.parametrize(
    "local, devices, num, words",
    [
        (1, 2, 64, ["--devices 2", "only 1 local device", "device_count=2"]),
        (8, 3, 64, ["--devices 3 must divide --num (64)"]),
    ],
)
def test_sample_devices_errors(monkeypatch, capsys, local, devices, num, words):
    from mlem_jax.cli import _sample

    monkeypatch.setattr(_sample.jax, "local_device_count", lambda: local)
    with pytest.raises(SystemExit):
        _sample.sample_devices(_parser(), devices, num)
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)


def test_devices_argument_parses_all_or_a_positive_int():
    import argparse

    from mlem_jax.cli._sample import parse_devices

    assert parse_devices("all") == "all" and parse_devices("ALL") == "all"
    assert parse_devices("4") == 4
    for bad in ("0", "-2", "two"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected `all` or"):
            parse_devices(bad)


def test_process_rows_on_several_devices(checks):
    # Copies over a second mesh axis count once; a split along two axes is refused.
    assert checks["process_rows_copies"]
    message = checks["errors"]["rows_2d"]
    assert message is not None and message.startswith("ValueError")
    for word in ["process_rows", "shape (6, 4)", "other than `axis` (0)", "(3, 2)"]:
        assert word in message, (word, message)


def test_process_rows_on_one_process():
    import jax.numpy as jnp
    import numpy as np

    import mlem_jax as mj

    x = jnp.arange(12.0).reshape(3, 4)
    for axis in (0, 1):
        rows, values = mj.process_rows(x, axis)
        np.testing.assert_array_equal(rows, np.arange(x.shape[axis]))
        np.testing.assert_array_equal(values, x)
    with pytest.raises(TypeError, match=r"process_rows: `x` must be a jax.Array"):
        mj.process_rows(np.ones(3))  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match=r"`axis` must be an int in \[0, 2\)"):
        mj.process_rows(x, 2)


# ------------------------------------------------ two processes (jax.distributed)
# Two CPU processes started here, 2 forced host devices each, talking through JAX's
# gloo CPU collectives on 127.0.0.1: one mesh over the 4 devices of both. Each runs
# tests/multiprocess_checks.py (both draws modes, one JAX start each) and prints its
# results; the processes are killed if they overrun and on any failure.

MP_TIMEOUT_S = 180


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes() -> list[dict]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        "--xla_force_host_platform_device_count=2 "
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    )
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["JAX_PLATFORMS"] = "cpu"
    port = _free_port()
    script = str(ROOT / "tests" / "multiprocess_checks.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(port), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=MP_TIMEOUT_S)
            assert p.returncode == 0, stderr[-4000:]
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return sorted(results, key=lambda r: r["process"])


DRAWS = ["shared", "independent"]


def test_two_processes_hold_their_own_rows(two_processes):
    # Process p holds the rows of its own devices' mesh positions, and together the
    # two hold every row once.
    rows = []
    for r in two_processes:
        for draws in DRAWS:
            mine = [i for d in r[draws]["local_positions"] for i in (2 * d, 2 * d + 1)]
            assert r[draws]["rows"] == mine
        rows += r["shared"]["rows"]
    assert sorted(rows) == list(range(8))


@pytest.mark.parametrize("draws", DRAWS)
def test_two_processes_equal_the_single_process_solves(two_processes, draws):
    # Shared draws: the single-process mlem_solve, bit for bit (the per-element
    # arithmetic is the same). Independent: device d's rows are the single solve with
    # key fold_in(key, d) on its rows of the global increments (those drawn outside
    # the solve, equal to one rounding of the scale: see mlem_jax._brownian).
    for r in two_processes:
        res = r[draws]
        if draws == "shared":
            assert res["whole_max_diff"] == 0.0
        assert res["max_diff"] <= _rounding(res["scale"], 8)
        assert res["gathered_max_diff"] <= _rounding(res["scale"], 8)


@pytest.mark.parametrize("draws", DRAWS)
def test_two_processes_counts_are_the_documented_draws(two_processes, draws):
    first, second = two_processes
    # Replicated: both processes see every device's counts, the same ones.
    assert first[draws]["evaluations"] == second[draws]["evaluations"]
    counts = first[draws]["evaluations"]
    assert len(counts) == 4
    assert counts == first[draws]["draws_counts"] == first[draws]["single_counts"]
    if draws == "shared":
        assert all(c == counts[0] for c in counts)
    else:  # four independent level streams, one per device of the global mesh
        assert len({tuple(c) for c in counts}) > 1


@pytest.mark.parametrize("draws", DRAWS)
def test_two_processes_gradients_flow(two_processes, draws):
    for r in two_processes:
        res = r[draws]
        assert res["grad_scale"] > 0
        # Sums of sin over the batch: a few float32 roundings of each term.
        tol = 1e-5 * max(res["grad_scale"], 1.0)
        assert res["grad_c_max_diff"] <= tol
        assert res["grad_y0_max_diff"] <= tol


def test_two_processes_per_sample_noise(two_processes):
    # The sharded solve's Brownian path of each sample, in two processes, is that of
    # the single-process solve with a batch of 64 and of 1, bit for bit.
    for r in two_processes:
        assert r["path_equal_batch64"]
        assert r["path_equal_batch1"]
        assert r["path_rows_differ"]


def test_two_processes_indivisible_batch(two_processes):
    message = two_processes[0]["indivisible"]
    assert message is not None
    for word in ["mlem_solve_sharded", "`y0`", "size 6", "divisible", "(4)"]:
        assert word in message


def test_per_sample_noise_on_1_2_4_devices(checks):
    # Sample i's Brownian path (the running sum of the solver's own increments) in a
    # sharded batch of 64 (and 12) is bit for bit that of a single-device batch of
    # 64, on 1, 2 and 4 devices, in both draws modes; two samples' paths differ.
    paths = checks["per_sample_paths"]
    assert set(paths) == {
        "1/independent/64",
        "2/independent/64",
        "4/independent/64",
        "4/shared/12",
    }
    assert all(paths.values()), paths
    assert checks["per_sample_rows_differ"]
