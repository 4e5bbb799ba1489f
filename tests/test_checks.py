"""The argument-check vocabulary: each rule accepts what it documents and names
the function and the argument in its error."""

import numpy as np
import pytest

from mlem_jax import _checks as checks


def test_integer_accepts_python_and_numpy_ints():
    assert checks.integer("f", "n", 3) == 3
    assert type(checks.integer("f", "n", np.int64(3))) is int
    assert checks.integer("f", "n", 0, minimum=0) == 0
    assert checks.integer("f", "n", None, none_ok=True) is None


@pytest.mark.parametrize(
    "value, error, message",
    [
        (0, ValueError, "f: `n` must be a positive int; got 0."),
        (True, TypeError, "f: `n` must be a positive int; got True."),
        (2.0, TypeError, "f: `n` must be a positive int; got 2.0."),
        (None, TypeError, "f: `n` must be a positive int; got None."),
    ],
)
def test_integer_errors_name_the_argument(value, error, message):
    with pytest.raises(error) as e:
        checks.integer("f", "n", value)
    assert str(e.value) == message


def test_integer_minimum_and_none_in_message():
    with pytest.raises(ValueError, match=r"`n` must be an int ≥ 2; got 1"):
        checks.integer("f", "n", 1, minimum=2)
    with pytest.raises(ValueError, match=r"a positive int or None; got -1"):
        checks.integer("f", "n", -1, none_ok=True)


def test_number():
    assert checks.number("f", "x", 2) == 2.0
    assert checks.number("f", "x", np.float32(0.5)) == 0.5
    assert checks.number("f", "x", np.asarray(1.5)) == 1.5
    assert checks.number("f", "x", 0.0, zero_ok=True) == 0.0
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "1", [1.0], None):
        with pytest.raises(ValueError, match=r"^f: `x` must be a positive finite"):
            checks.number("f", "x", bad)
    with pytest.raises(ValueError, match=r"^`x` must be a non-negative finite number"):
        checks.number("", "x", -1.0, zero_ok=True)


def test_choice_instance_function():
    assert checks.choice("f", "mode", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"f: `mode` must be one of 'a', 'b'; got 'c'"):
        checks.choice("f", "mode", "c", ("a", "b"))
    with pytest.raises(ValueError, match=r"got \['a'\]"):
        checks.choice("f", "mode", ["a"], ("a", "b"))
    assert checks.instance("f", "x", 1, int, "an int") == 1
    with pytest.raises(TypeError, match=r"^f: `x` must be an int; got str\.$"):
        checks.instance("f", "x", "1", int, "an int")
    assert checks.function("f", "g", len, "a callable") is len
    with pytest.raises(TypeError, match=r"^f: `g` must be a callable g\(t\); got int"):
        checks.function("f", "g", 3, "a callable g(t)")
