"""The CLI's calibration and budget helpers (mlem_jax.cli._budget)."""


def test_damaged_shipped_calibration_falls_back_to_pilots(monkeypatch, capsys):
    # A damaged installation's calibration.json must not cost a traceback: the CLI
    # says so and runs the calibration pilots instead.
    import equinox as eqx
    import jax

    import mlem_jax as mj
    import mlem_jax.pretrained as pretrained
    from mlem_jax.cli import ladder_calibration
    from mlem_jax.pretrained import load_ladder_levels

    def broken(path):
        raise ValueError(f"{path!r} is not a valid calibration (JSONDecodeError: x).")

    monkeypatch.setattr(pretrained, "load_calibration", broken)
    ladder = load_ladder_levels(None, 2)
    # The shipped ladder's two cheapest levels: the pilots run on whatever ladder
    # they are given, and two small networks compile in a fraction of five's time.
    ladder = eqx.tree_at(
        lambda lad: lad.levels,
        ladder,
        mj.Levels(ladder.levels.fns[:2], ladder.levels.costs[:2]),
    )
    y0 = ladder.sde.prior_sample(jax.random.key(0), (2, *ladder.shape))
    cal = ladder_calibration(ladder, y0, jax.random.key(1), pilot_steps=8)
    err = capsys.readouterr().err
    assert "is not a valid calibration" in err and "calibration pilots instead" in err
    assert cal.num_levels == 2 and cal.num_steps == 8
