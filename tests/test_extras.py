"""The optional extras: `import mlem_jax` and its solvers need none of them, and a
part of the package whose extra is missing says which extra to install. Checked in a
subprocess where the extras' modules cannot be imported (the wheel smoke test in
`.ci/wheel_smoke` checks the same with a real install without extras)."""

import subprocess
import sys
import textwrap

import pytest

from mlem_jax._misc import EXTRAS

# A meta-path finder that refuses every module of the extras, as if not installed.
BLOCK = textwrap.dedent(
    f"""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {sorted(m for ms in EXTRAS.values() for m in ms)!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_method_needs_no_extra():
    out = _run(
        """
        import jax, jax.numpy as jnp
        import mlem_jax as mj

        levels = mj.Levels(fns=(lambda t, y, a: -y, lambda t, y, a: -1.01 * y),
                           costs=(1.0, 4.0))
        y, info = mj.mlem_solve(levels, mj.FixedProbabilities((1.0, 0.5)),
                                lambda t, y, a: 0.1, jnp.ones((4, 2)), t0=0.0,
                                t1=1.0, num_steps=8, key=jax.random.key(0))
        assert y.shape == (4, 2) and int(info.num_steps) == 8
        import mlem_jax.diffusion  # samplers and SDEs need no extra either
        print("ok")
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize(
    "code, extra, what",
    [
        ("import mlem_jax.data", "diffusion", "mlem_jax.data"),
        (
            "from mlem_jax.diffusion import digits_quality; digits_quality()",
            "diffusion",
            "mlem_jax.data",
        ),
    ],
)
def test_missing_extra_names_it(code, extra, what):
    out = _run(code)
    assert out.returncode != 0
    assert f"pip install 'mlem_jax[{extra}]'" in out.stderr, out.stderr
    assert f"mlem_jax: {what}" in out.stderr


def test_cli_without_extra_says_what_to_install():
    out = _run(
        """
        import sys
        from mlem_jax.__main__ import main

        sys.exit(main(["sample", "--steps", "2", "--num", "2", "--out", "x.png"]))
        """
    )
    assert out.returncode == 1, out.stderr
    assert "mlem-jax: error: the mlem-jax command needs" in out.stderr
    assert "pip install 'mlem_jax[diffusion]'" in out.stderr
    assert "Traceback" not in out.stderr
