"""The package under runtime type checking, as diffrax runs its own tests
(`--jaxtyping-packages=diffrax,beartype.beartype`): jaxtyping's import hook with
beartype on mlem_jax and diffrax, around a few typical solves."""

import pathlib
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("beartype")

# The hook must act before mlem_jax and diffrax are first imported, so it runs in a
# fresh interpreter.
SCRIPT = textwrap.dedent(
    """
    import jaxtyping

    with jaxtyping.install_import_hook(["mlem_jax", "diffrax"], "beartype.beartype"):
        import diffrax
        import mlem_jax as mj

    import jax
    import jax.numpy as jnp
    import lineax as lx

    # The hook is active: a wrong argument type is caught by beartype.
    try:
        mj.em_solve(lambda t, y, a: y, None, jnp.ones(2), t0=0.0, t1=1.0,
                    num_steps="2", key=jax.random.key(0))
    except jaxtyping.TypeCheckError:
        pass
    else:
        raise AssertionError("the import hook did not check mlem_jax")

    key = jax.random.key(0)
    f = lambda t, y, a: jax.tree.map(lambda x: -x, y)
    levels = mj.Levels(fns=(f, f), costs=(1.0, 2.0))
    sched = mj.FixedProbabilities((1.0, 0.5))  # a tuple, as users write it
    y0 = {"a": jnp.ones(2), "b": jnp.zeros(3)}
    # PyTree ML-EM with ConstantStepSize, saving the solver state.
    diffrax.diffeqsolve(
        mj.MultilevelTerm(levels), mj.MLEMSolver(sched, key=key), 0.0, 1.0, 0.25, y0,
        saveat=diffrax.SaveAt(t1=True, solver_state=True),
    )
    # diffrax's ODETerm: one level, StepTo.
    diffrax.diffeqsolve(
        diffrax.ODETerm(f), mj.MLEMSolver(mj.Rates([2.0]), key=key), 0.0, 1.0, None,
        y0, stepsize_controller=diffrax.StepTo(ts=jnp.linspace(0.0, 1.0, 5)),
    )
    # An SDE in reverse time with StepBrownianPath.
    path = mj.StepBrownianPath((2,), key, t0=1.0, t1=0.0, num_steps=4)
    noise = diffrax.ControlTerm(
        lambda t, y, a: lx.DiagonalLinearOperator(jnp.ones(2)), path
    )
    diffrax.diffeqsolve(
        diffrax.MultiTerm(mj.MultilevelTerm(levels), noise),
        mj.MLEMSolver(sched, key=key), 1.0, 0.0, -0.25, jnp.ones(2),
    )
    # The functional solvers on a PyTree, with SaveAt and given increments.
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), y0)
    dw = mj.brownian_increments(key, like, t0=0.0, t1=1.0, num_steps=4)
    g = lambda t, y, a: 0.5
    mj.mlem_solve(levels, sched, g, y0, t0=0.0, t1=1.0, num_steps=4, key=key,
                  brownian=dw, saveat=diffrax.SaveAt(ts=jnp.array([0.5]), t1=True))
    print("typechecked")
    """
)


def test_solves_pass_runtime_type_checking():
    root = pathlib.Path(__file__).resolve().parents[1]
    # `-c` puts the working directory first on sys.path: the mlem_jax under test.
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "typechecked" in result.stdout
