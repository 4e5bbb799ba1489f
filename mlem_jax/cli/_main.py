"""The `mlem-jax` parser, one subparser per command, and the entry point."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from . import _demo, _distill, _sample, _train

# A value such as "-1,2" after an option looks like an option to argparse (only
# plain negative numbers do not); such lists are joined to their option.
_NEGATIVE_LIST = re.compile(r"^-[0-9.][0-9.,eE+\- ]*$")


def _join_negative_lists(argv: list[str]) -> list[str]:
    out: list[str] = []
    for token in argv:
        if (
            out
            and out[-1].startswith("--")
            and "=" not in out[-1]
            and _NEGATIVE_LIST.match(token)
        ):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The `mlem-jax` argument parser, one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="mlem-jax",
        description="Multilevel Euler–Maruyama (ML-EM) for diffusion models in JAX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for command in (_train, _distill, _sample, _demo):
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with `argv` (default `sys.argv[1:]`); returns the exit status.

    Usage errors exit with status 2 and a message naming the bad argument.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_join_negative_lists(argv))
    args.argv = argv
    return args.func(args, args.parser)
