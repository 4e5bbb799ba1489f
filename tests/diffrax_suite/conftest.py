# Parts of this folder are copied from diffrax 0.7.2's tests
# (https://github.com/patrick-kidger/diffrax, tag v0.7.2, commit b3a1885),
# Copyright Patrick Kidger, licensed under the Apache License 2.0 (LICENSE-diffrax
# in this folder). Changes: MLEMSolver plugged in where the tests name a solver.
"""Fixtures: the MLEMSolver variant under test, and diffrax's `getkey`."""

import jax.random as jr
import pytest
from dfx_helpers import VARIANTS, Variant


@pytest.fixture(params=VARIANTS, ids=lambda v: v.name)
def variant(request) -> Variant:
    return request.param


@pytest.fixture
def getkey():
    # As diffrax's test/conftest.py.
    key = jr.PRNGKey(0)

    def _getkey():
        nonlocal key
        key, subkey = jr.split(key)
        return subkey

    return _getkey
