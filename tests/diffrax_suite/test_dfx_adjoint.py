# Copied from diffrax 0.7.2 (https://github.com/patrick-kidger/diffrax, tag v0.7.2,
# commit b3a1885), Copyright Patrick Kidger, Apache License 2.0 (LICENSE-diffrax in this
# folder). Changed: MLEMSolver variants plugged in where a solver is named; a curated
# subset (see README.md in this folder for what is left out and why).
"""From diffrax's test/test_adjoint.py."""

from collections.abc import Callable
from typing import cast

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import pytest
from jaxtyping import Array


def test_closure_fixed(variant):
    # diffrax runs this with BacksolveAdjoint, which ML-EM refuses (by name).
    mlp = eqx.nn.MLP(1, 1, 8, 2, key=jr.PRNGKey(0))

    class VectorField(eqx.Module):
        model: Callable

        def __call__(self, t, y, args):
            del t, args
            return self.model(y)

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def run(model):
        f = VectorField(model)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(f),
            variant.solver(),
            0,
            1,
            0.1,
            jnp.array([1.0]),
            adjoint=diffrax.BacksolveAdjoint(),
        )
        return jnp.sum(cast(Array, sol.ys))

    with pytest.raises(TypeError, match="diffrax.BacksolveAdjoint is not supported"):
        run(mlp)


def test_backprop_ts(variant):
    mlp = eqx.nn.MLP(1, 1, 8, 2, key=jr.PRNGKey(0))

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def run(model):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, args: model(y)),
            variant.solver(),
            0,
            1,
            0.1,
            jnp.array([1.0]),
            saveat=diffrax.SaveAt(ts=jnp.linspace(0, 1, 5)),
        )
        return jnp.sum(cast(Array, sol.ys))

    run(mlp)
