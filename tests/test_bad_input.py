"""Bad input to the library: a clear error naming the argument, never a silently
wrong result (issue 16). The CLI's cases are in tests/test_cli_errors.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax as mj

KEY = jax.random.key(0)
Y0 = jnp.ones((4, 2))


def _good(t, y, args):
    return -y


def test_numpy_scalar_cost_is_accepted_and_strings_refused():
    for cost in (np.float32(2), np.int64(2), np.asarray(2.0), jnp.float32(2)):
        _, info = mj.em_solve(
            _good, None, Y0, t0=0.0, t1=1.0, num_steps=3, key=KEY, cost=cost
        )
        assert float(info.cost) == 6.0
    for cost in ("2", True, np.ones(2), np.nan, -1.0):
        with pytest.raises(ValueError, match="`cost` must be a positive finite"):
            mj.em_solve(
                _good, None, Y0, t0=0.0, t1=1.0, num_steps=3, key=KEY, cost=cost
            )


CAL = dict(
    t0=0.0,
    t1=1.0,
    num_steps=8,
    key=KEY,
    num_bins=2,
    pilot_keys=0,
    measure_costs=False,
)


def test_calibrate_names_nan_in_y0_or_the_drift_and_a_bad_reference():
    shift = lambda c: lambda t, y, a: -y + c  # noqa: E731
    levels = mj.Levels((shift(0.0), shift(0.1), shift(0.2)), (1.0, 4.0, 16.0))
    with pytest.raises(ValueError, match="calibrate: `y0` holds 8 non-finite value"):
        mj.calibrate(levels, None, jnp.full((4, 2), jnp.nan), **CAL)
    nan_top = mj.Levels((_good, lambda t, y, a: y * jnp.nan), (1.0, 2.0))
    with pytest.raises(ValueError, match="top level's drift or the diffusion"):
        mj.calibrate(nan_top, None, Y0, **CAL)
    nan_low = mj.Levels((lambda t, y, a: y * jnp.nan, _good), (1.0, 2.0))
    with pytest.raises(ValueError, match="drift of level 1 returns NaN"):
        mj.calibrate(nan_low, None, Y0, **CAL)
    with pytest.raises(ValueError, match=r"calibrate: `reference` returned shape"):
        mj.calibrate(levels, None, Y0, reference=lambda t, y, a: jnp.ones(3), **CAL)


def test_calibrate_warns_when_levels_do_not_differ():
    levels = mj.Levels((_good, _good, _good), (1.0, 4.0, 16.0))
    with pytest.warns(UserWarning, match="levels 1 and 2, 2 and 3 do not differ"):
        cal = mj.calibrate(levels, None, Y0, **CAL)
    assert any("do not differ" in w for w in cal.warnings)
    assert "warning: gamma could not be fitted" in str(cal)
