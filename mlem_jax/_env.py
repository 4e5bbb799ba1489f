"""What a result is recorded with: package versions and the machine it ran on."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from typing import Any

import jax

PACKAGES = (
    "mlem_jax",
    "jax",
    "jaxlib",
    "equinox",
    "diffrax",
    "lineax",
    "optax",
    "numpy",
)
"""The distributions whose versions `versions` records."""


def versions() -> dict[str, str | None]:
    """Python's version and the installed version of each of `PACKAGES` (`None`
    for one that is not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    """The platform, CPU model, CPU count and affinity, JAX backend and devices."""
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
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def environment(seed: int | None = None) -> dict[str, Any]:
    """The record every benchmark result carries: UTC date, `machine()`, Python
    version, `versions()` and the seed."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "python": platform.python_version(),
        "versions": versions(),
        "seed": seed,
    }
