"""`mlem_jax._misc`: the one rule for `num_steps`, shared by every grid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax as mj
from mlem_jax._misc import check_num_steps

KEY = jax.random.key(0)


def test_check_num_steps_accepts_python_and_numpy_integers():
    assert check_num_steps("f", 8) == 8
    out = check_num_steps("f", np.int64(8))
    assert out == 8 and type(out) is int


@pytest.mark.parametrize(
    "bad, error, words",
    [
        (True, TypeError, "must be a positive int; got True"),
        (8.0, TypeError, "must be a positive int; got 8.0"),
        (np.float32(8), TypeError, "must be a positive int"),
        ("8", TypeError, "must be a positive int; got '8'"),
        (0, ValueError, "must be a positive int; got 0"),
        (np.int32(-2), ValueError, r"must be a positive int; got np.int32\(-2\)"),
    ],
)
def test_check_num_steps_refuses_the_rest_naming_the_caller(bad, error, words):
    with pytest.raises(error, match=f"^f: `num_steps` {words}"):
        check_num_steps("f", bad)


# Every public function with a grid: NumPy integers in, bools and floats out, the
# error naming the function (the five rules of before disagreed on `np.integer`).
GRIDS = {
    "brownian_increments": lambda n: mj.brownian_increments(
        KEY, (2,), t0=0.0, t1=1.0, num_steps=n
    ),
    "StepBrownianPath": lambda n: mj.StepBrownianPath(
        (2,), KEY, t0=0.0, t1=1.0, num_steps=n
    ),
    "em_solve": lambda n: mj.em_solve(
        lambda t, y, a: -y, None, jnp.ones(2), t0=0.0, t1=1.0, num_steps=n, key=KEY
    ),
    "time_in_scan": lambda n: mj.time_in_scan(
        lambda t, y, a: -y, 0.5, jnp.ones(2), num_steps=n, repeats=1
    ),
}


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_every_grid_takes_numpy_integers_and_refuses_bools(name):
    GRIDS[name](np.int64(2))
    with pytest.raises(TypeError, match=f"{name}: `num_steps` must be a positive int"):
        GRIDS[name](True)
    with pytest.raises(TypeError, match=f"{name}: `num_steps` must be a positive int"):
        GRIDS[name](2.0)
