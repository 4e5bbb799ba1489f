"""`mlem-jax sample` across processes (mlem_jax.cli._distributed).

The real runs: CLI processes started here on 127.0.0.1 (a free port each run), 2
forced host devices each, talking through JAX's gloo CPU collectives, every process
killed if the runs overrun or fail. Phase 1, at once: two processes with measured
seconds (per-process files), two whose PRNG settings differ (refused), one that
waits for a second process that never comes (JAX's join timeout). Phase 2, at once:
the two processes again with `--gather`, and one process with `--devices 4` (the
single-process reference), both on phase 1's broadcast seconds (`--level-ms`). The
usage errors are checked in this process: they stop before JAX starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port, run_processes

from mlem_jax.__main__ import main
from mlem_jax.cli._distributed import global_devices, process_out

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # per phase (a bound, not a timing): ~20-110 s on 2 loaded cores
COMMON = ["--steps", "8", "--num", "8", "--seed", "3", "--draws", "shared"]


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    )
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.update(extra)
    return env


def _sample(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mlem_jax", "sample", *COMMON, "--no-progress"] + [
        "--out",
        str(out),
        *extra,
    ]


def _pair(out: Path, *extra: str, envs=None, num: int = 2) -> tuple[list, list]:
    port = str(free_port())
    join = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(num)]
    commands = [_sample(out, *join, "--process-id", str(i), *extra) for i in range(2)]
    return commands, envs or [_env(2), _env(2)]


def _level_ms(seconds) -> str:
    """`--level-ms` values giving back `seconds` bit for bit (ms / 1e3)."""
    out = []
    for s in seconds:
        ms = s * 1e3
        for candidate in (ms, np.nextafter(ms, np.inf), np.nextafter(ms, -np.inf)):
            if float(candidate) / 1e3 == s:
                ms = float(candidate)
                break
        out.append(repr(float(ms)))
    return ",".join(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("distributed")
    for name in ("own", "bad", "lone", "gather", "single"):  # "stop" is a file
        (tmp / name).mkdir()
    own, own_envs = _pair(tmp / "own" / "s.png", "--cost", "seconds")
    # JAX_THREEFRY_PARTITIONABLE=0 on one process: the same seed, other noise.
    bad, bad_envs = _pair(
        tmp / "bad" / "s.png",
        "--cost",
        "flops",
        envs=[_env(2), _env(2, JAX_THREEFRY_PARTITIONABLE="0")],
    )
    lone = _pair(tmp / "lone" / "s.png", "--join-timeout", "1")[0][:1]
    # Process 1's --out lies under a file: it stops on that usage error before
    # sampling, and process 0 must stop too rather than wait for it.
    (tmp / "stop").write_text("a file, not a folder")
    stop, stop_envs = _pair(tmp / "stop" / "s.png", "--cost", "flops")
    stop[0][stop[0].index("--out") + 1] = str(tmp / "lone" / "s0.png")
    # --coordinator auto outside a cluster (no SLURM, Open MPI or TPU variables).
    auto = _sample(tmp / "lone" / "a.png", "--coordinator", "auto")
    auto_env = {
        k: v
        for k, v in _env(2).items()
        if not k.startswith(("SLURM_", "OMPI_", "TPU_", "CLOUD_TPU"))
    }
    phase1 = run_processes(
        [*own, *bad, *lone, *stop, auto],
        [*own_envs, *bad_envs, _env(2), *stop_envs, auto_env],
        TIMEOUT_S,
    )
    result = {
        "tmp": tmp,
        "own": phase1[:2],
        "bad": phase1[2:4],
        "lone": phase1[4],
        "stop": phase1[5:7],
        "auto": phase1[7],
    }
    for code, _, stderr in result["own"]:
        assert code == 0, stderr[-4000:]
    seconds = np.load(tmp / "own" / "s.process0.npz")["level_seconds"]
    ms = ["--level-ms", _level_ms(seconds)]
    gather, gather_envs = _pair(tmp / "gather" / "s.png", *ms, "--gather")
    single = _sample(tmp / "single" / "s.png", "--devices", "4", *ms)
    phase2 = run_processes([*gather, single], [*gather_envs, _env(4)], TIMEOUT_S)
    for code, _, stderr in phase2:
        assert code == 0, stderr[-4000:]
    result["gather"], result["single"] = phase2[:2], phase2[2]
    return result


def _union(tmp: Path) -> dict[str, np.ndarray]:
    parts = [np.load(tmp / "own" / f"s.process{i}.npz") for i in range(2)]
    rows = np.concatenate([p["rows"] for p in parts])
    order = np.argsort(rows)
    return {
        "rows": rows,
        "samples": np.concatenate([p["samples"] for p in parts])[order],
        "y0": np.concatenate([p["y0"] for p in parts])[order],
    }


def test_each_process_writes_its_own_rows(runs):
    tmp = runs["tmp"]
    assert sorted(os.listdir(tmp / "own")) == [
        "s.process0.npz",
        "s.process0.png",
        "s.process1.npz",
        "s.process1.png",
    ]
    parts = [np.load(tmp / "own" / f"s.process{i}.npz") for i in range(2)]
    for i, p in enumerate(parts):
        # Process i's devices are positions 2i, 2i+1 of the mesh: 2 rows each.
        assert p["rows"].tolist() == list(range(4 * i, 4 * i + 4))
        assert p["samples"].shape == (4, 1, 8, 8)
        assert int(p["processes"]) == 2 and int(p["devices"]) == 4
        assert str(p["draws"]) == "shared"
    # The seconds that drive the schedule: measured on process 0, broadcast.
    seconds = [p["level_seconds"] for p in parts]
    assert seconds[0].shape == (5,) and np.all(seconds[0] > 0)
    np.testing.assert_array_equal(seconds[0], seconds[1])
    np.testing.assert_array_equal(
        parts[0]["device_evaluations"], parts[1]["device_evaluations"]
    )
    # Only process 0 prints.
    (_, out0, _), (_, out1, err1) = runs["own"]
    assert "FLOPs:" in out0 and "devices: 4 of 4 on 2 processes" in out0
    assert "each of the 2 processes wrote its own rows" in out0
    assert "FLOPs:" not in out1 and "warning" not in err1


def test_two_processes_equal_one_process_on_four_devices(runs):
    # The same mesh positions, shard sizes, keys and (shared) level draws as one
    # process with --devices 4: the same y0 and level counts bit for bit; the
    # samples to float32 rounding, not bitwise (XLA compiles the UNets' programs for
    # a 2-process and a 1-process mesh apart, and they round differently: up to
    # ~3e-6 at |x| ~ 3 measured; tests/multiprocess_checks.py's toy problems are
    # bitwise), the bound being the CLI's batched-rounding tolerance.
    tmp = runs["tmp"]
    union = _union(tmp)
    single = np.load(tmp / "single" / "s.npz")
    assert sorted(union["rows"].tolist()) == list(range(8))
    np.testing.assert_array_equal(union["y0"], single["y0"])
    np.testing.assert_array_equal(single["rows"], np.arange(8))
    own = np.load(tmp / "own" / "s.process0.npz")
    np.testing.assert_array_equal(own["level_seconds"], single["level_seconds"])
    np.testing.assert_array_equal(
        own["device_evaluations"], single["device_evaluations"]
    )
    scale = float(np.max(np.abs(single["samples"])))
    np.testing.assert_allclose(
        union["samples"], single["samples"], rtol=0, atol=1e-5 * max(scale, 1.0)
    )
    assert not np.allclose(union["samples"][0], union["samples"][1], atol=1e-2)


def test_gather_writes_one_file_with_every_row(runs):
    tmp = runs["tmp"]
    assert sorted(os.listdir(tmp / "gather")) == ["s.npz", "s.png"]
    gathered = np.load(tmp / "gather" / "s.npz")
    np.testing.assert_array_equal(gathered["rows"], np.arange(8))
    # The same processes and programs as the per-process run: bit for bit.
    np.testing.assert_array_equal(gathered["samples"], _union(tmp)["samples"])
    assert "process 0 gathered the rows of all 2 processes" in runs["gather"][0][1]


def test_processes_with_other_noise_are_refused(runs):
    for code, _, stderr in runs["bad"]:
        assert code == 2, stderr[-2000:]
        assert (
            "process(es) 1 of 2 differ from process 0 in their starting noise y0"
            in stderr
        ), stderr[-2000:]
        assert "PRNG settings differ" in stderr
    assert os.listdir(runs["tmp"] / "bad") == []


def test_a_process_that_stops_early_stops_the_others(runs):
    (code0, _, err0), (code1, _, err1) = runs["stop"]
    assert code1 == 2 and "is a file, not a folder" in err1, err1[-2000:]
    assert code0 == 2, err0[-2000:]
    assert "process(es) 1 of 2 stopped before sampling" in err0
    assert not (runs["tmp"] / "lone" / "s0.process0.npz").exists()


def test_auto_outside_a_cluster_says_what_to_give(runs):
    code, _, stderr = runs["auto"]
    assert code == 2, stderr[-2000:]
    assert "--coordinator auto: jax.distributed.initialize failed" in stderr
    assert "give --coordinator HOST:PORT --num-processes N --process-id I" in stderr


def test_a_missing_process_ends_the_wait(runs):
    # --num-processes 2 with one process started: JAX ends it after --join-timeout
    # (an abort, not a Python error), after the line saying what it waited for.
    code, _, stderr = runs["lone"]
    assert code != 0
    assert "as process 0 of 2; waiting up to --join-timeout 1 s" in stderr
    assert "DEADLINE_EXCEEDED" in stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--process-id", "0"], "--process-id applies to a distributed run: give "),
        (["--gather"], "--gather applies to a distributed run"),
        (
            ["--coordinator", "127.0.0.1:1234", "--num-processes", "2"],
            "--coordinator 127.0.0.1:1234 needs --num-processes and --process-id",
        ),
        (
            ["--coordinator", "auto", "--num-processes", "2", "--process-id", "2"],
            "--process-id 2 is out of range for --num-processes 2: expected 0..1",
        ),
        (["--coordinator", "nohost"], "expected HOST:PORT (e.g. 10.0.0.1:12355)"),
        (["--coordinator", "h:99999"], "or `auto`, got 'h:99999'"),
        (
            ["--coordinator", "auto", "--sampler", "ddim", "--method", "single"],
            "--coordinator applies to --sampler em only",
        ),
    ],
)
def test_distributed_bad_input(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--out", str(tmp_path / "s.png"), *extra])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_global_devices_and_names():
    assert global_devices("all", 8, 4, 2) == 4
    assert global_devices(4, 12, 4, 2) == 4
    with pytest.raises(ValueError, match=r"--num 6: the global batch must be "):
        global_devices("all", 6, 4, 2)
    with pytest.raises(ValueError, match=r"mesh of 4 device\(s\) on 2 process\(es\)"):
        global_devices("all", 6, 4, 2)
    with pytest.raises(ValueError, match=r"--devices 2: a distributed run splits"):
        global_devices(2, 8, 4, 2)
    assert process_out("out/s.png", 3) == "out/s.process3.png"
