"""The CLI's calibration and budget helpers (mlem_jax.cli._budget)."""


def test_damaged_shipped_calibration_falls_back_to_pilots(monkeypatch, capsys):
    # A damaged installation's calibration.json must not cost a traceback: the CLI
    # says so and runs the calibration pilots instead.
    import jax

    import mlem_jax.pretrained as pretrained
    from mlem_jax.cli import ladder_calibration
    from mlem_jax.pretrained import load_ladder_levels

    def broken(path):
        raise ValueError(f"{path!r} is not a valid calibration (JSONDecodeError: x).")

    monkeypatch.setattr(pretrained, "load_calibration", broken)
    ladder = load_ladder_levels(None, 2)
    y0 = ladder.sde.prior_sample(jax.random.key(0), (2, *ladder.shape))
    cal = ladder_calibration(ladder, y0, jax.random.key(1), pilot_steps=8)
    err = capsys.readouterr().err
    assert "is not a valid calibration" in err and "calibration pilots instead" in err
    assert cal.num_levels == ladder.levels.num_levels and cal.num_steps == 8
