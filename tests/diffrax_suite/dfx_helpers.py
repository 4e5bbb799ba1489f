# Parts of this folder are copied from diffrax 0.7.2's tests
# (https://github.com/patrick-kidger/diffrax, tag v0.7.2, commit b3a1885),
# Copyright Patrick Kidger, licensed under the Apache License 2.0 (LICENSE-diffrax
# in this folder). Changes: MLEMSolver plugged in where the tests name a solver.
"""Helpers for the vendored diffrax tests: the MLEMSolver variants and diffrax's
own test helpers."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import pytest

# The ladder wrapper below rewrites the terms diffeqsolve hands the solver, which
# arrive wrapped in diffrax's WrapTerm (unexported), as in mlem_jax._solver.
from diffrax._term import WrapTerm

import mlem_jax as mj

KEY = jr.key(2024)
# A three-level ladder made from any drift f: f^l = c_l f, so the telescope is
# unbiased for f^3 = f and, with p < 1, the drift is random.
LADDER = (0.5, 0.8, 1.0)


def _three_levels(term: diffrax.ODETerm) -> mj.MultilevelTerm:
    def level(c):
        return lambda t, y, a: jtu.tree_map(lambda v: c * v, term.vf(t, y, a))

    return mj.MultilevelTerm(mj.Levels(tuple(map(level, LADDER)), (1.0, 2.0, 4.0)))


def _as_ladders(terms):
    def convert(term):
        if isinstance(term, WrapTerm) and isinstance(term.term, diffrax.ODETerm):
            return WrapTerm(_three_levels(term.term), term.direction)
        if isinstance(term, diffrax.ODETerm):
            return _three_levels(term)
        return term

    return jtu.tree_map(
        convert, terms, is_leaf=lambda x: isinstance(x, (WrapTerm, diffrax.ODETerm))
    )


class ThreeLevelMLEM(diffrax.AbstractItoSolver):
    """MLEMSolver on diffrax's unchanged terms with every ODETerm(f) read as the
    ladder (0.5 f, 0.8 f, f): how the tests exercise three levels."""

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation
    inner: mj.MLEMSolver

    def order(self, terms):
        return self.inner.order(terms)

    def strong_order(self, terms):
        return self.inner.strong_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.inner.init(_as_ladders(terms), t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        terms = _as_ladders(terms)
        return self.inner.step(terms, t0, t1, y0, args, solver_state, made_jump)

    def func(self, terms, t0, y0, args):
        return self.inner.func(terms, t0, y0, args)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    probs: tuple

    @property
    def exact(self) -> bool:
        """Every p = 1: the solve is Euler's (to rounding), so tests comparing with
        Euler's exact values apply."""
        return all(p == 1 for p in self.probs)

    def drift_sd(self, dt: float) -> float:
        """The standard deviation, relative to |f|, that the random telescope adds
        over unit time with steps dt: sqrt(dt · Σ_l (1/p_l − 1)(c_l − c_{l−1})²)."""
        if len(self.probs) == 1:
            return (dt * (1 / self.probs[0] - 1)) ** 0.5
        gaps = [c - b for b, c in zip((0.0, *LADDER[:-1]), LADDER)]
        return (dt * sum((1 / p - 1) * g**2 for p, g in zip(self.probs, gaps))) ** 0.5

    def solver(self):
        inner = mj.MLEMSolver(mj.FixedProbabilities(self.probs), key=KEY)
        return inner if len(self.probs) == 1 else ThreeLevelMLEM(inner)


VARIANTS = (
    Variant("one_level", (1.0,)),
    Variant("three_levels", (1.0, 1.0, 1.0)),
    Variant("three_levels_random", (1.0, 0.5, 0.25)),
)


# The slowest tests (vmapped event loops, ~8 s a case) run the one-level ladder
# (exactly Euler) and the random three-level one: the three-level ladder at p = 1
# takes the same code paths as both, and the suite must stay within its budget.
HEAVY_VARIANTS = pytest.mark.parametrize(
    "variant",
    [v for v in VARIANTS if v.name != "three_levels"],
    ids=lambda v: v.name,
)


def variants(*names: str):
    """Run a test with the named variants only (for time: the cheapest set that
    exercises what the test checks)."""
    return pytest.mark.parametrize(
        "variant", [v for v in VARIANTS if v.name in names], ids=lambda v: v.name
    )


def exact_only(variant: Variant):
    if not variant.exact:
        pytest.skip("compares with Euler's exact values; p < 1 makes the drift random")


def _no_nan(x):
    # As diffrax's test/helpers.py.
    if eqx.is_array(x):
        return x.at[jnp.isnan(x)].set(8.9568)  # arbitrary magic value
    return x


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8, equal_nan=False):
    # As diffrax's test/helpers.py.
    if equal_nan:
        x = jtu.tree_map(_no_nan, x)
        y = jtu.tree_map(_no_nan, y)
    return bool(eqx.tree_equal(x, y, typematch=True, rtol=rtol, atol=atol))


def random_pytree(key, treedef, dtype):
    # As diffrax's test/helpers.py.
    keys = jr.split(key, treedef.num_leaves)
    leaves = []
    for key in keys:
        dimkey, sizekey, valuekey = jr.split(key, 3)
        num_dims = jr.randint(dimkey, (), 0, 5).item()
        dim_sizes = jr.randint(sizekey, (num_dims,), 0, 5)
        leaves.append(jr.normal(valuekey, tuple(dim_sizes.tolist()), dtype=dtype))
    return jtu.tree_unflatten(treedef, leaves)


treedefs = [jtu.tree_structure(x) for x in (0, None, {"a": [0, 0], "b": 0})]
