"""Shared benchmark plumbing: the environment record, timing and atomic result files
(the package's own), and the updater of the result tables in docs/results.md."""

from __future__ import annotations

import os

# The package's timer and atomic writer, for the scripts too.
from mlem_jax._cost import median_seconds as median_seconds
from mlem_jax._env import environment as environment
from mlem_jax._io import atomic_write, write_json as write_json

# The page whose tables the benchmark scripts rewrite (between `<!-- name:start -->`
# and `<!-- name:end -->` markers).
RESULTS_PAGE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "results.md"
)


def replace_results_block(page: str, name: str, content: str) -> bool:
    """Replace the text between the page's `<!-- name:start -->` and
    `<!-- name:end -->` markers with `content`, atomically; `False` (and no write)
    if the markers are missing."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    with open(page) as f:
        text = f.read()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    text = head + start + "\n" + content + "\n" + end + tail
    atomic_write(page, lambda f: f.write(text), mode="w")
    return True
