"""`mlem-jax train`: train a UNet ladder on a dataset and write a ladder directory."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    add_command,
    add_training_options,
    check_output_dir,
    int_list,
    interrupted,
    nonnegative_int,
    positive_float,
    positive_int,
    train_config,
)


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "train",
        run,
        summary="train a UNet ladder on a dataset",
        description=(
            "Train every level of a UNet ladder (one width per level) with denoising "
            "score matching on a VP-SDE, and write a ladder directory (weights + "
            "manifest.json). Rerunning the same command resumes an interrupted run."
        ),
    )
    _add_data_options(p.add_argument_group("data"))
    _add_model_options(p.add_argument_group("model"))
    add_training_options(
        p.add_argument_group("training"),
        steps=2000,
        lr=2e-3,
        warmup_steps=100,
        ema_decay=0.999,
        regularisation=True,
    )


def _add_data_options(d: Any) -> None:
    d.add_argument(
        "--dataset",
        choices=("digits", "patches", "folder", "digits_mixture"),
        default="digits",
        help="training images: scikit-learn's 8x8 digits, crops of its sample "
        "photographs, the images of --data-dir, or digits_mixture: a Gaussian "
        "mixture fitted to the digits, sampled afresh for every batch "
        "(mlem_jax.data.digits_mixture)",
    )
    d.add_argument(
        "--components",
        type=positive_int,
        default=256,
        help="digits_mixture: number of mixture components",
    )
    d.add_argument("--data-dir", help="image folder, for --dataset folder")
    d.add_argument(
        "--size", type=positive_int, help="image side (default: 8 digits, 16 others)"
    )
    d.add_argument("--grey", action="store_true", help="greyscale (patches, folder)")
    d.add_argument("--num", type=positive_int, default=10_000, help="patches count")
    d.add_argument(
        "--pad", type=nonnegative_int, default=0, help="digits: border padding"
    )
    d.add_argument("--limit", type=positive_int, help="folder: max images read")
    d.add_argument(
        "--conditional",
        action="store_true",
        help="digits only: train class-conditional UNets (10 classes, the null label "
        "10; label dropout --label-dropout), for guided sampling (sample --class "
        "--guidance)",
    )


def _add_model_options(m: Any) -> None:
    m.add_argument(
        "--widths",
        type=int_list,
        default=(8, 12, 16, 24, 32),
        help="UNet base widths of the ladder's levels, cheapest first (one network "
        "per width)",
    )
    m.add_argument(
        "--channel-mults",
        type=int_list,
        default=(1, 2),
        help="channel multiplier per resolution of every UNet",
    )
    m.add_argument(
        "--num-res-blocks",
        type=positive_int,
        default=1,
        help="residual blocks per resolution",
    )
    m.add_argument(
        "--attn-resolutions",
        type=int_list,
        default=None,
        help="spatial sizes with self-attention, e.g. 8 (default: none)",
    )
    m.add_argument(
        "--beta-min",
        type=positive_float,
        default=0.1,
        help="VP-SDE noise rate beta(t) at t = 0",
    )
    m.add_argument(
        "--beta-max",
        type=positive_float,
        default=20.0,
        help="VP-SDE noise rate beta(t) at t = 1",
    )


def _dataset_kwargs(args: argparse.Namespace, parser: argparse.ArgumentParser):
    if args.dataset == "digits":
        if args.size is not None and args.size != 8:
            return {"size": args.size, "pad": args.pad}
        return {"pad": args.pad}
    if args.dataset == "digits_mixture":
        return {"n_components": args.components}
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


def _labels(mdata, kwargs) -> dict[str, Any]:
    """The digits' classes, for `train_ladder`/`distill_ladder`'s `labels` (the
    digits' kwargs only resize and pad, so the images' order is unchanged)."""
    del kwargs
    return {
        "labels": mdata.digits_labels(split="train"),
        "eval_labels": mdata.digits_labels(split="test"),
    }


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .. import data as mdata
    from ..diffusion import VPSDE
    from ..training import train_ladder

    kwargs = _dataset_kwargs(args, parser)
    if args.conditional and args.dataset != "digits":
        parser.error(
            f"--conditional needs labelled data: --dataset digits (got {args.dataset})"
        )
    check_output_dir(parser, "--out", args.out)
    try:
        config = train_config(args)
        sde = VPSDE(beta_min=args.beta_min, beta_max=args.beta_max)
        train_data = (
            mdata.digits_mixture(**kwargs)  # a fresh batch every step
            if args.dataset == "digits_mixture"
            else mdata.load_dataset(args.dataset, split="train", **kwargs)
        )
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
            **(_labels(mdata, kwargs) if args.conditional else {}),
        )
    except KeyboardInterrupt:
        return interrupted(args)
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
