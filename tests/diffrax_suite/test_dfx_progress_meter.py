# Copied from diffrax 0.7.2 (https://github.com/patrick-kidger/diffrax, tag v0.7.2,
# commit b3a1885), Copyright Patrick Kidger, Apache License 2.0 (LICENSE-diffrax in this
# folder). Changed: MLEMSolver variants plugged in where a solver is named; a curated
# subset (see README.md in this folder for what is left out and why).
"""From diffrax's test/test_progress_meter.py (the tests name Dopri5, with constant
steps; the solver is swapped)."""

import diffrax
import jax
import jax.numpy as jnp
import pytest
from dfx_helpers import variants


# The meter's output depends on the step grid only: the random three-level variant.
# diffrax also runs jit(solve) and jit(vmap(solve)); kept: solve and vmap(solve) over
# t0 (the step counter is batched), for time.
@variants("three_levels_random")
def test_text_progress_meter(variant, capfd):
    def solve(t0):
        return diffrax.diffeqsolve(
            terms=diffrax.ODETerm(lambda t, y, args: -0.2 * y),
            solver=variant.solver(),
            t0=t0,
            t1=5,
            dt0=0.01,
            y0=1.0,
            progress_meter=diffrax.TextProgressMeter(minimum_increase=0.0999),
        )

    solve(2.0)
    jax.effects_barrier()
    captured = capfd.readouterr()
    expected = "%\n".join(f"{x:.2f}" for x in jnp.linspace(0, 100, num=11)) + "%\n"
    assert captured.out == expected

    jax.vmap(solve)(jnp.arange(3.0))
    jax.effects_barrier()
    captured = capfd.readouterr()
    expected = "%\n".join(f"{x:.2f}" for x in jnp.linspace(0, 100, num=11)) + "%\n"
    assert captured.out == expected


# diffrax: TqdmProgressMeter and TextProgressMeter; kept: TextProgressMeter (the
# tqdm one only differs in its output format).
@pytest.mark.parametrize("progress_meter", [diffrax.TextProgressMeter()])
@variants("one_level")
def test_grad_progress_meter(progress_meter, variant, capfd):
    def solve(p):
        term = diffrax.ODETerm(lambda t, y, args: -y)
        y0 = p * jnp.array([2.0, 3.0])
        sol = diffrax.diffeqsolve(
            term,
            variant.solver(),
            t0=0,
            t1=1,
            dt0=0.1,
            y0=y0,
            progress_meter=progress_meter,
        )
        return sol.ys[-1, 0]  # pyright: ignore

    capfd.readouterr()
    jax.grad(solve)(jnp.array(1.0))
    jax.effects_barrier()
    captured = capfd.readouterr()

    if isinstance(progress_meter, diffrax.TextProgressMeter):
        true_out = (
            "0.00%\n10.00%\n20.00%\n30.00%\n40.00%\n50.00%\n60.00%"
            "\n70.00%\n80.00%\n90.00%\n100.00%\n"
        )
        assert captured.out == true_out
