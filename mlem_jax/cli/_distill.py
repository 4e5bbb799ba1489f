"""`mlem-jax distill`: distil a ladder's top level into its cheaper levels."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ._common import (
    check_ladder,
    check_output_dir,
    interrupted,
    nonnegative_int,
    positive_float,
    positive_int,
    seed,
    unit_interval,
)


def add_parser(sub: Any) -> None:
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
    p.add_argument("--steps", type=positive_int, default=1500)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--warmup-steps", type=nonnegative_int, default=50)
    p.add_argument("--ema-decay", type=unit_interval, default=0.995)
    p.add_argument("--checkpoint-every", type=nonnegative_int, default=250)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .. import data as mdata
    from ..pretrained import pretrained_path
    from ..training import TrainConfig, distill_ladder, load_ladder

    source = pretrained_path() if args.ladder == "shipped" else args.ladder
    check_ladder(parser, source)
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
        return interrupted(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        parser.error(str(e).replace("`out_dir`", "--out"))
    for lv in out["levels"][:-1]:
        print(
            f"level {lv['level']}: width {lv['width']}, held-out distillation loss "
            f"{lv['distill_eval_loss_before']:.4g} -> {lv['distill_eval_loss']:.4g}"
        )
    print(f"distilled ladder written to {args.out}")
    return 0
