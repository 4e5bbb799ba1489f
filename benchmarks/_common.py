"""Shared benchmark plumbing: the environment record, timing and atomic result files
(the package's own), and the README table updater."""

from __future__ import annotations

# The package's timer and atomic writer, for the scripts too.
from mlem_jax._cost import median_seconds as median_seconds
from mlem_jax._env import environment as environment
from mlem_jax._io import atomic_write, write_json as write_json


def replace_readme_block(readme: str, name: str, content: str) -> bool:
    """Replace the text between the README's `<!-- name:start -->` and
    `<!-- name:end -->` markers with `content`, atomically; `False` (and no write)
    if the markers are missing."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    with open(readme) as f:
        text = f.read()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    text = head + start + "\n" + content + "\n" + end + tail
    atomic_write(readme, lambda f: f.write(text), mode="w")
    return True
