"""`mlem-jax distill`: distil a ladder's top level into its cheaper levels."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ._common import (
    add_command,
    add_training_options,
    check_ladder,
    check_output_dir,
    interrupted,
    train_config,
)


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "distill",
        run,
        summary="distil a ladder's top level into its cheaper levels",
        description=(
            "Fine-tune every level below the top of a ladder to reproduce the top "
            "level (the teacher) on noised training images, starting from the "
            "trained weights, and write a new ladder directory. Neighbouring levels "
            "then differ far less, which is what ML-EM's cost depends on. Rerunning "
            "the same command resumes an interrupted run."
        ),
    )
    p.add_argument(
        "--ladder",
        default="digits",
        help="source ladder directory, or a shipped ladder's name: digits, "
        "digits_wide (`shipped` is digits)",
    )
    add_training_options(p, steps=1500, lr=1e-3, warmup_steps=50, ema_decay=0.995)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .. import data as mdata
    from ..pretrained import resolve_ladder
    from ..training import distill_ladder, load_ladder, num_classes_from_manifest
    from ._train import _labels

    check_ladder(parser, args.ladder)
    source = resolve_ladder(args.ladder)[0]
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
        conditional = num_classes_from_manifest(manifest) is not None
        if conditional and dataset["name"] != "digits":
            parser.error(
                f"--ladder: {source!r} is class-conditional on {dataset['name']!r}; "
                "only the digits have labels"
            )
        config = train_config(args)
        _, out = distill_ladder(
            source,
            args.out,
            mdata.digits_mixture(**kwargs)  # a fresh batch every step
            if dataset["name"] == "digits_mixture"
            else mdata.load_dataset(dataset["name"], split="train", **kwargs),
            config=config,
            seed=args.seed,
            eval_data=mdata.load_dataset(dataset["name"], split="test", **kwargs),
            progress=not args.no_progress,
            **(_labels(mdata, kwargs) if conditional else {}),
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
