"""The one atomic writer (`mlem_jax._io`), used by every file the package writes."""

import json
import os
import stat

import numpy as np
import pytest

from mlem_jax._io import atomic_write, write_json


def test_atomic_write_never_leaves_a_half_written_file(tmp_path):
    path = tmp_path / "file.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def fails(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fails)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["file.bin"]


def test_atomic_write_creates_the_folder_and_honours_the_umask(tmp_path):
    path = tmp_path / "new" / "deeper" / "file.txt"
    old = os.umask(0o022)
    try:
        atomic_write(path, lambda f: f.write("text"), mode="w")
    finally:
        os.umask(old)
    assert path.read_text() == "text"
    # Readable by others (as a shipped file must be), not mkstemp's private 0600.
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_json_is_indented_with_a_final_newline(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": [1, 2]})
    assert path.read_text() == json.dumps({"a": [1, 2]}, indent=2) + "\n"
    with pytest.raises(TypeError):  # a value json cannot write: nothing written
        write_json(path, {"b": object()})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    write_json(path, {"b": np.float32(1.5)}, default=float)
    assert json.loads(path.read_text()) == {"b": 1.5}


def test_training_keeps_its_public_name():
    import mlem_jax.training as mt

    assert mt.atomic_write is atomic_write
