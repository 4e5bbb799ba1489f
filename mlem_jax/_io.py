"""File output shared by every layer: the one atomic writer."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any


def atomic_write(
    path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb"
) -> None:
    """Write a file atomically: `write(f)` into a temporary file in the same folder,
    flush and fsync it, then `os.replace` it onto `path`. A reader (or a crash) never
    sees a half-written file.

    **Arguments:**

    - `path`: the file to write; its folder is created if needed.
    - `write`: called once with the open temporary file.
    - `mode`: `"wb"` (default) or `"w"` for text.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make shipped files private
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> None:
    """`obj` as indented JSON with a final newline, written with `atomic_write`;
    `dumps_kwargs` go to `json.dumps` (`default=float`, say)."""
    text = json.dumps(obj, indent=2, **dumps_kwargs) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")
