"""Per-step cost of a UNet inside `lax.scan` vs a Python loop of compiled steps.

XLA:CPU keeps the layout a loop body is given. A channels-first (NCHW) convolution
inside a `while` loop falls back to a naive elemental kernel, while the same
convolution outside a loop is re-laid-out to channels-last and runs on the fast
library path; `mlem_jax.nn.UNet` therefore runs channels-last inside (NHWC
activations, HWIO kernels). This script records, in one run:

1. one 3×3 convolution (batch 16, 32 channels, 8×8) in each layout, per step, in a
   scan and in a Python loop;
2. an Euler step of the shipped digits ladder's top level (batch 16) per step, in
   `mlem_jax.em_solve` (a scan) and in a Python loop of one compiled step.

    python benchmarks/unet_scan.py   # writes benchmarks/results/unet_scan.json
"""

from __future__ import annotations

import os
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from _common import environment, write_json  # noqa: E402
from _harness import ladder_problem  # noqa: E402

import mlem_jax as mj  # noqa: E402

STEPS = 64
REPEATS = 5


def per_step(fn, x) -> float:
    """Best of REPEATS runs of `fn(x)` (after a compiling run), per step, in ms."""
    jax.block_until_ready(fn(x))
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        best = min(best, time.perf_counter() - start)
    return 1e3 * best / STEPS


def looped(step):
    def run(x):
        for _ in range(STEPS):
            x = step(x)
        return x

    return run


def scanned(step):
    return jax.jit(
        lambda x: jax.lax.scan(lambda c, _: (step(c), None), x, None, length=STEPS)[0]
    )


def conv_case(layout: str) -> dict:
    key = jax.random.key(0)
    if layout == "NCHW":
        x = jax.random.normal(key, (16, 32, 8, 8))
        w = jax.random.normal(jax.random.fold_in(key, 1), (32, 32, 3, 3))
        dims = ("NCHW", "OIHW", "NCHW")
    else:
        x = jax.random.normal(key, (16, 8, 8, 32))
        w = jax.random.normal(jax.random.fold_in(key, 1), (3, 3, 32, 32))
        dims = ("NHWC", "HWIO", "NHWC")

    def step(c):
        out = jax.lax.conv_general_dilated(c, w, (1, 1), "SAME", dimension_numbers=dims)
        return jnp.tanh(out) * 0.1

    loop = per_step(looped(jax.jit(step)), x)
    scan = per_step(scanned(step), x)
    return dict(layout=layout, loop_ms=loop, scan_ms=scan, scan_over_loop=scan / loop)


def unet_case() -> dict:
    problem = ladder_problem(None, batch=16)
    top = problem.levels.top
    h = (problem.t1 - problem.t0) / STEPS

    @eqx.filter_jit
    def step(y):
        return y + h * top(0.5, y, None)

    solve = eqx.filter_jit(
        lambda y: mj.em_solve(
            top,
            None,
            y,
            t0=problem.t0,
            t1=problem.t1,
            num_steps=STEPS,
            key=jax.random.key(0),
        )[0]
    )
    loop = per_step(looped(step), problem.y0)
    scan = per_step(solve, problem.y0)
    return dict(
        level="digits top (width 32)",
        batch=16,
        loop_ms=loop,
        em_solve_ms=scan,
        scan_over_loop=scan / loop,
    )


def main():
    result = dict(
        benchmark="unet_scan",
        steps=STEPS,
        convolution=[conv_case("NCHW"), conv_case("NHWC")],
        unet=unet_case(),
        environment=environment(0),
    )
    for row in result["convolution"]:
        print(
            f"conv {row['layout']}: loop {row['loop_ms']:.3f} ms/step, "
            f"scan {row['scan_ms']:.3f} ms/step ({row['scan_over_loop']:.2f}x)"
        )
    u = result["unet"]
    print(
        f"UNet top level: loop {u['loop_ms']:.2f} ms/step, em_solve "
        f"{u['em_solve_ms']:.2f} ms/step ({u['scan_over_loop']:.2f}x)"
    )
    out = os.path.join(os.path.dirname(__file__), "results", "unet_scan.json")
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
