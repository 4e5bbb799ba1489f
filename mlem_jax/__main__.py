"""`python -m mlem_jax …` and the `mlem-jax` console script."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mlem-jax` command; see [`mlem_jax.cli`][].

    Without the `cli` extra installed, prints which extra to install and returns 1.
    """
    from ._misc import require_extra

    try:
        require_extra("cli", "the mlem-jax command")
        from .cli import main as cli_main

        return cli_main(argv)
    except ModuleNotFoundError as e:
        if not str(e).startswith("mlem_jax:"):  # not a missing extra: a real bug
            raise
        print(f"mlem-jax: error: {str(e).removeprefix('mlem_jax: ')}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
