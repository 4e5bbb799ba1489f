"""`mlem_jax.Levels`: the ladder of drifts and their costs."""

import pytest

import mlem_jax as mj


def f(t, y, args):
    return -y


def test_levels_fields():
    levels = mj.Levels(fns=[f, f], costs=[1, 4.5])
    assert levels.num_levels == 2
    assert levels.costs == (1.0, 4.5)
    assert levels.top is f


@pytest.mark.parametrize(
    "fns, costs, error, match",
    [
        ((), (), ValueError, "`fns` must be at least one level"),
        ((f, f), (1.0,), ValueError, "`costs` has 1 entries but `fns` has 2"),
        (
            (f,),
            (0.0,),
            ValueError,
            r"`costs\[0\]` must be a positive finite number; got 0.0",
        ),
        (
            (f, f),
            (1.0, -2.0),
            ValueError,
            r"`costs\[1\]` must be a positive finite number; got -2.0",
        ),
        ((f,), (float("inf"),), ValueError, r"`costs\[0\]` must be .*; got inf"),
        ((f,), (float("nan"),), ValueError, r"`costs\[0\]` must be .*; got nan"),
        (
            (f, 3),
            (1.0, 2.0),
            TypeError,
            r"`fns\[1\]` must be a callable f\(t, y, args\); got int",
        ),
        ((f,), ("a",), TypeError, r"`costs\[0\]` must be a number.*; got 'a'"),
        ((f, f), ("1", "8"), TypeError, r"`costs\[0\]` must be a number.*; got '1'"),
        ((f, f), (1.0, True), TypeError, r"`costs\[1\]` must be a number.*; got True"),
        ((f,), 3.0, TypeError, "`costs` must be a sequence of numbers"),
    ],
)
def test_levels_validation(fns, costs, error, match):
    with pytest.raises(error, match=match):
        mj.Levels(fns=fns, costs=costs)


def test_levels_single_function_refused():
    with pytest.raises(TypeError, match="not a single function"):
        mj.Levels(fns=f, costs=(1.0,))
