"""Command-line interface: `mlem-jax <command> …` (or `python -m mlem_jax …`).

Commands:

- `train`: train a UNet ladder on a dataset and write a ladder directory.
- `distill`: distil a ladder's top level into its cheaper levels (a new ladder).
- `sample`, `bench`, `demo`: see `mlem_jax._commands`.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from ._commands import (
    _nonnegative_float,
    _nonnegative_int,
    _positive_float,
    _positive_int,
    _seed,
    _unit_interval,
    check_output_dir,
)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 8,16,32, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a UNet ladder on a dataset",
        description=(
            "Train every level of a UNet ladder (one width per level) with denoising "
            "score matching on a VP-SDE, and write a ladder directory (weights + "
            "manifest.json). Rerunning the same command resumes an interrupted run."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--dataset", choices=("digits", "patches", "folder"), default="digits"
    )
    d.add_argument("--data-dir", help="image folder, for --dataset folder")
    d.add_argument(
        "--size", type=_positive_int, help="image side (default: 8 digits, 16 others)"
    )
    d.add_argument("--grey", action="store_true", help="greyscale (patches, folder)")
    d.add_argument("--num", type=_positive_int, default=10_000, help="patches count")
    d.add_argument(
        "--pad", type=_nonnegative_int, default=0, help="digits: border padding"
    )
    d.add_argument("--limit", type=_positive_int, help="folder: max images read")

    m = p.add_argument_group("model")
    m.add_argument("--widths", type=_int_list, default=(8, 12, 16, 24, 32))
    m.add_argument("--channel-mults", type=_int_list, default=(1, 2))
    m.add_argument("--num-res-blocks", type=_positive_int, default=1)
    m.add_argument("--attn-resolutions", type=_int_list, default=None)
    m.add_argument("--beta-min", type=_positive_float, default=0.1)
    m.add_argument("--beta-max", type=_positive_float, default=20.0)

    t = p.add_argument_group("training")
    t.add_argument("--out", required=True, help="ladder directory to write")
    t.add_argument("--steps", type=_positive_int, default=2000)
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--lr", type=_positive_float, default=2e-3)
    t.add_argument("--warmup-steps", type=_nonnegative_int, default=100)
    t.add_argument("--weight-decay", type=_nonnegative_float, default=1e-4)
    t.add_argument(
        "--grad-clip",
        type=_positive_float,
        default=1.0,
        help="global-norm gradient clipping threshold (> 0)",
    )
    t.add_argument("--ema-decay", type=_unit_interval, default=0.999)
    t.add_argument("--checkpoint-every", type=_nonnegative_int, default=250)
    t.add_argument("--seed", type=_seed, default=0)
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_run_train, parser=p)


def _dataset_kwargs(args: argparse.Namespace, parser: argparse.ArgumentParser):
    if args.dataset == "digits":
        if args.size is not None and args.size != 8:
            return {"size": args.size, "pad": args.pad}
        return {"pad": args.pad}
    if args.dataset == "patches":
        return {"size": args.size or 16, "num": args.num, "grey": args.grey}
    if args.data_dir is None:
        parser.error(
            "--dataset folder needs --data-dir PATH (a folder of PNG/JPEG images)"
        )
    kwargs = {"path": args.data_dir, "size": args.size or 64, "grey": args.grey}
    if args.limit is not None:
        kwargs["limit"] = args.limit
    return kwargs


def _run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import data as mdata
    from .diffusion import VPSDE
    from .training import TrainConfig, train_ladder

    kwargs = _dataset_kwargs(args, parser)
    check_output_dir(parser, "--out", args.out)
    try:
        config = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            warmup_steps=args.warmup_steps,
            weight_decay=args.weight_decay,
            grad_clip=args.grad_clip,
            ema_decay=args.ema_decay,
            checkpoint_every=args.checkpoint_every,
        )
        sde = VPSDE(beta_min=args.beta_min, beta_max=args.beta_max)
        train_data = mdata.load_dataset(args.dataset, split="train", **kwargs)
        test_data = mdata.load_dataset(args.dataset, split="test", **kwargs)
        unet = {
            "channel_mults": list(args.channel_mults),
            "num_res_blocks": args.num_res_blocks,
        }
        if args.attn_resolutions:
            unet["attn_resolutions"] = list(args.attn_resolutions)
        _, manifest = train_ladder(
            args.out,
            train_data,
            widths=args.widths,
            unet_kwargs=unet,
            config=config,
            sde=sde,
            seed=args.seed,
            dataset={"name": args.dataset, "kwargs": kwargs},
            eval_data=test_data,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        return _interrupted(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        parser.error(str(e).replace("`out_dir`", "--out"))
    for lv in manifest["levels"]:
        print(
            f"level {lv['level']}: width {lv['width']}, {lv['params']} params, "
            f"{lv['flops_per_image']:.3g} FLOPs/image, final loss {lv['final_loss']:.4f}"
            + (f", held-out loss {lv['eval_loss']:.4f}" if "eval_loss" in lv else "")
        )
    print(f"ladder written to {args.out}")
    return 0


def _add_distill(sub: Any) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a ladder's top level into its cheaper levels",
        description=(
            "Fine-tune every level below the top of a ladder to reproduce the top "
            "level (the teacher) on noised training images, starting from the "
            "trained weights, and write a new ladder directory. Neighbouring levels "
            "then differ far less, which is what ML-EM's cost depends on. Rerunning "
            "the same command resumes an interrupted run."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--ladder", default="shipped", help="source ladder directory, or 'shipped'"
    )
    p.add_argument("--out", required=True, help="ladder directory to write")
    p.add_argument("--steps", type=_positive_int, default=1500)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--lr", type=_positive_float, default=1e-3)
    p.add_argument("--warmup-steps", type=_nonnegative_int, default=50)
    p.add_argument("--ema-decay", type=_unit_interval, default=0.995)
    p.add_argument("--checkpoint-every", type=_nonnegative_int, default=250)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_run_distill, parser=p)


def _run_distill(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import data as mdata
    from ._commands import _check_ladder
    from .pretrained import pretrained_path
    from .training import TrainConfig, distill_ladder, load_ladder

    source = pretrained_path() if args.ladder == "shipped" else args.ladder
    _check_ladder(parser, source)
    check_output_dir(parser, "--out", args.out)
    if os.path.abspath(args.out) == os.path.abspath(source):
        parser.error("--out must differ from --ladder (the source is read throughout)")
    try:
        try:
            _, manifest = load_ladder(source)
        except ValueError as e:
            parser.error(f"--ladder: {e}")
        dataset = manifest["spec"].get("dataset") or {}
        if not isinstance(dataset, dict) or "name" not in dataset:
            parser.error(
                f"--ladder: {source!r} does not record its dataset (spec.dataset in "
                "manifest.json), so there is nothing to distil on"
            )
        kwargs = dataset.get("kwargs", {})
        config = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            warmup_steps=args.warmup_steps,
            ema_decay=args.ema_decay,
            checkpoint_every=args.checkpoint_every,
        )
        _, out = distill_ladder(
            source,
            args.out,
            mdata.load_dataset(dataset["name"], split="train", **kwargs),
            config=config,
            seed=args.seed,
            eval_data=mdata.load_dataset(dataset["name"], split="test", **kwargs),
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        return _interrupted(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        parser.error(str(e).replace("`out_dir`", "--out"))
    for lv in out["levels"][:-1]:
        print(
            f"level {lv['level']}: width {lv['width']}, held-out distillation loss "
            f"{lv['distill_eval_loss_before']:.4g} -> {lv['distill_eval_loss']:.4g}"
        )
    print(f"distilled ladder written to {args.out}")
    return 0


def _interrupted(args: argparse.Namespace) -> int:
    """Ctrl-C during training: one line saying what is kept and how to resume."""
    command = shlex.join(["mlem-jax", *args.argv])
    ckpt = os.path.join(args.out, "checkpoints")
    print(
        f"\nmlem-jax: interrupted; finished levels are in {args.out} and the "
        f"current level's last checkpoint in {ckpt}; resume with: {command}",
        file=sys.stderr,
    )
    return 130


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
    _add_train(sub)
    _add_distill(sub)
    from ._commands import add_commands

    add_commands(sub)
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
