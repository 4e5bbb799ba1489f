"""The code passes the project's linter and formatter (configured in pyproject.toml),
so CI fails on a lint error or unformatted code like on a failing test."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PATHS = ["mlem_jax", "tests", "benchmarks", "examples"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff")
    cmd = [exe] if exe else [sys.executable, "-m", "ruff"]
    return subprocess.run(
        [*cmd, *args, *PATHS], cwd=ROOT, capture_output=True, text=True
    )


@pytest.mark.parametrize("args", [("check",), ("format", "--check")])
def test_ruff(args):
    result = _ruff(*args)
    assert result.returncode == 0, (
        f"`ruff {' '.join(args)}` failed:\n{result.stdout}{result.stderr}"
    )
