"""Shared benchmark plumbing: environment record, timing, atomic result files."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata

import jax

# One atomic writer for the package and its scripts.
from mlem_jax._io import atomic_write, write_json as write_json


def environment(seed: int) -> dict:
    """Machine, backend, versions and seed, recorded with every result."""
    versions = {}
    for name in ("jax", "jaxlib", "equinox", "diffrax", "optax", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu,
            "cpu_count": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
        },
        "python": platform.python_version(),
        "versions": versions,
        "seed": seed,
    }


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock of `fn()` (blocking on its result) over `repeats` runs,
    after one untimed warm-up run that compiles it."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
