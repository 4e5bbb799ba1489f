"""Tests for mlem_jax.diffusion's samplers by name (`SAMPLERS`, `sampler`)."""

import jax
import jax.numpy as jnp
import pytest

import mlem_jax.diffusion as md


def test_every_sampler_by_name_and_class_name():
    expected = {
        "ddim": md.DDIM,
        "dpm++2m": md.DPMSolverPP2M,
        "sde-dpm++1": md.SDEDPMSolverPP1,
        "sde-dpm++2m": md.SDEDPMSolverPP2M,
        "euler": md.Euler,
        "heun": md.Heun,
    }
    assert dict(md.SAMPLERS) == expected
    # Every concrete sampler of the package has a name.
    public = {
        getattr(md, n)
        for n in dir(md)
        if isinstance(getattr(md, n), type)
        and issubclass(getattr(md, n), md.AbstractSampler)
        and getattr(md, n) is not md.AbstractSampler
    }
    assert public == set(expected.values())
    for name, cls in expected.items():
        assert type(md.sampler(name)) is cls
        assert type(md.sampler(cls.__name__)) is cls
        assert type(md.sampler(f" {name.upper()} ")) is cls
    assert md.sampler("ddim", eta=0.5) == md.DDIM(eta=0.5)
    with pytest.raises(TypeError):
        md.SAMPLERS["mine"] = md.DDIM  # read-only


def test_bad_names_and_arguments_are_named():
    with pytest.raises(ValueError, match="`name` must be one of ddim, .*; got 'dpm3'"):
        md.sampler("dpm3")
    with pytest.raises(TypeError, match="`name` must be a string"):
        md.sampler(md.DDIM)
    with pytest.raises(
        TypeError, match=r"the arguments DPMSolverPP2M takes; got \['eta'\]"
    ):
        md.sampler("dpm++2m", eta=0.5)
    with pytest.raises(ValueError, match="`eta`"):
        md.sampler("ddim", eta=2.0)


def test_a_named_sampler_runs_as_its_class():
    net = lambda t, y, args: 0.5 * y  # noqa: E731
    y0 = jax.random.normal(jax.random.key(0), (2, 3))
    kw = dict(t0=1.0, t1=1e-3, num_steps=3, key=jax.random.key(1))
    a, _ = md.sample(net, md.VPLinear(), md.sampler("sde-dpm++2m"), y0, **kw)
    b, _ = md.sample(net, md.VPLinear(), md.SDEDPMSolverPP2M(), y0, **kw)
    assert jnp.array_equal(a, b)
