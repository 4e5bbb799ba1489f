"""What the commands of the `mlem-jax` CLI share: argument types, the checks made
before any compute (a readable ladder, writable outputs, enough memory), ladder
loading, warnings and the Ctrl-C message of the training commands."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .._misc import missing_extra
from ..pretrained import Ladder, load_ladder_levels

# --------------------------------------------------------------------------- types


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def stitch_spec(text: str) -> tuple[int, float]:
    """`LEVEL,FRACTION` for `sample --stitch`: a 1-based level and a fraction of
    the steps in [0, 1]."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        level, fraction = int(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LEVEL,FRACTION (e.g. 1,0.5), got {text!r}"
        ) from None
    if level < 1 or not 0.0 <= fraction <= 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a level >= 1 and a fraction in [0, 1], got {text!r}"
        )
    return level, fraction


def _checked(
    parse: Callable[[str], Any], holds: Callable[[Any], bool], expected: str
) -> Callable[[str], Any]:
    """An argument type: `parse`'s value where `holds(value)`, else the usage error
    `expected` (a template of the value)."""

    def convert(text: str):
        value = parse(text)
        if not holds(value):
            raise argparse.ArgumentTypeError(expected.format(value))
        return value

    return convert


positive_int = _checked(
    _parse_int, lambda v: v >= 1, "expected a positive integer, got {}"
)
positive_float = _checked(
    _parse_float,
    lambda v: v > 0 and math.isfinite(v),
    "expected a positive number, got {}",
)
nonnegative_int = _checked(
    _parse_int, lambda v: v >= 0, "expected an integer >= 0, got {}"
)
nonnegative_float = _checked(
    _parse_float,
    lambda v: v >= 0 and math.isfinite(v),
    "expected a finite number >= 0, got {}",
)
seed = _checked(
    _parse_int,
    lambda v: -(2**63) <= v < 2**63,
    "expected an integer between -2**63 and 2**63 - 1, got {}",
)
unit_interval = _checked(
    _parse_float, lambda v: 0 <= v <= 1, "expected a number in [0, 1], got {}"
)
probability = _checked(
    _parse_float, lambda v: 0 < v <= 1, "probabilities must lie in (0, 1], got {}"
)


def comma_list(convert: Callable[[str], Any]) -> Callable[[str], tuple]:
    """An argument type: comma-separated values, each read by `convert`."""

    def parse(text: str) -> tuple:
        items = [v for v in text.replace(" ", "").split(",") if v]
        if not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}"
            )
        return tuple(convert(v) for v in items)

    return parse


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 8,16,32, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


# ----------------------------------------------------------------------- parsers


def add_command(
    sub: Any, name: str, run: Callable[..., int], *, summary: str, description: str
) -> argparse.ArgumentParser:
    """The subparser of the command `name` (defaults shown in its `--help`), which
    `main` runs as `run(args, parser)`."""
    p = sub.add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.set_defaults(func=run, parser=p)
    return p


def add_ladder_option(p: Any) -> None:
    """`--ladder` of the sampling commands (`sample`, `demo`)."""
    p.add_argument(
        "--ladder",
        help="ladder directory, or a shipped ladder's name: digits (the default), "
        "digits_wide",
    )


def add_calibration_options(p: Any) -> None:
    """`--pilot-steps` and `--no-progress`, the last options of the sampling
    commands; `check_pilot_steps` refuses too few pilot steps."""
    p.add_argument(
        "--pilot-steps", type=positive_int, default=32, help="calibration pilot steps"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def check_pilot_steps(parser: argparse.ArgumentParser, pilot_steps: int) -> None:
    if pilot_steps < 8:
        parser.error(f"--pilot-steps must be at least 8, got {pilot_steps}")


# ------------------------------------------------------------------------ ladders


def check_ladder(parser: argparse.ArgumentParser, path: str | None) -> None:
    """Refuse a `--ladder` that is not a readable ladder (manifest and weight files
    present and well formed), before any work."""
    from ..pretrained import resolve_ladder
    from ..training import read_manifest

    if path is None:
        return
    try:
        read_manifest(resolve_ladder(path)[0])
    except (ValueError, FileNotFoundError) as e:
        parser.error(f"--ladder: {str(e).replace('`path`: ', '')}")


def load_ladder(
    parser: argparse.ArgumentParser, path: str | None, batch: int
) -> Ladder:
    """`load_ladder_levels`, a damaged ladder (truncated weights, say) being a usage
    error that names the bad file."""
    try:
        return load_ladder_levels(path, batch)
    except (ValueError, FileNotFoundError) as e:
        parser.error(f"--ladder: {str(e).replace('`path`: ', '')}")


# ------------------------------------------------------------------------ outputs


def _unwritable(path: str) -> str | None:
    """Why a file or folder cannot be created at `path` (its nearest existing
    ancestor must be a writable folder), or None if it can."""
    probe = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe!r} is a file, not a folder"
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".mlem-jax-write-test.")
    except OSError as e:
        return f"{probe!r} is not writable ({e.strerror})"
    os.close(fd)
    os.remove(tmp)
    return None


def check_output_file(parser: argparse.ArgumentParser, flag: str, path: str) -> None:
    """Refuse, before any compute, an output file that could not be written."""
    if not path:
        parser.error(f"{flag}: give a file name (got an empty string)")
    if os.path.isdir(path):
        parser.error(f"{flag}: {path!r} is a directory; give a file name")
    reason = _unwritable(path)
    if reason:
        parser.error(f"{flag}: cannot write {path!r}: {reason}")


def check_output_dir(
    parser: argparse.ArgumentParser, flag: str, path: str, files: Sequence[str] = ()
) -> None:
    """Refuse, before any compute, an output folder that could not be created or
    written, or in which one of `files` is a directory."""
    if not path:
        parser.error(f"{flag}: give a folder name (got an empty string)")
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"{flag}: {path!r} exists and is not a folder")
    reason = _unwritable(os.path.join(path, "x"))
    if reason:
        parser.error(f"{flag}: cannot write into {path!r}: {reason}")
    for name in files:
        if os.path.isdir(os.path.join(path, name)):
            parser.error(f"{flag}: {os.path.join(path, name)!r} is a directory")


# ------------------------------------------------------------------------- memory


def available_memory() -> float:
    """Bytes of memory available to a new allocation (Linux `MemAvailable`, else the
    physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def check_memory(
    parser: argparse.ArgumentParser, what: str, nbytes: float, advice: str
) -> None:
    """Refuse a run whose estimated memory `nbytes` exceeds half of what is
    available (the rest is the networks, XLA's buffers and the OS)."""
    available = available_memory()
    if nbytes > available / 2:
        parser.error(
            f"{what} needs about {nbytes / 2**30:.3g} GiB of memory, more than half of "
            f"the {available / 2**30:.3g} GiB available; {advice}"
        )


# ----------------------------------------------------------------------- messages


_QUIET = threading.Event()


def quiet_warnings() -> None:
    """Silence `warn` for the rest of the process (the processes of a distributed
    `sample` other than 0, whose warnings would repeat process 0's)."""
    _QUIET.set()


def warn(message: str) -> None:
    if not _QUIET.is_set():
        print(f"mlem-jax: warning: {message}", file=sys.stderr)


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr over `total` stages (disabled: a no-op bar)."""
    try:
        from tqdm.auto import tqdm
    except ModuleNotFoundError as e:
        raise missing_extra(e, "diffusion", f"{desc}'s progress bar") from e
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


_INTERRUPTED = threading.Event()


def raise_if_interrupted() -> None:
    """Raise `KeyboardInterrupt` if Ctrl-C came during an `interruptible` command
    and something swallowed it: called just before writing outputs, so that an
    interrupted run never writes (or overwrites) them."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


def interruptible(command: str, work: Callable[[], int], outputs: str) -> int:
    """Run `work()` (a sampling command) so that Ctrl-C ends it with one line and
    status 130, writing nothing: outputs are written only at the end, after
    `raise_if_interrupted`, and each atomically."""
    _INTERRUPTED.clear()
    previous = None

    def handler(signum, frame):
        del signum, frame
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, handler)
    try:
        return work()
    except KeyboardInterrupt:
        print(
            f"\nmlem-jax: {command} interrupted; nothing was written ({outputs} are "
            "written only when it finishes)",
            file=sys.stderr,
        )
        return 130
    finally:
        _INTERRUPTED.clear()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def interrupted(args: argparse.Namespace) -> int:
    """Ctrl-C during training: one line saying what is kept and how to resume."""
    command = shlex.join(["mlem-jax", *args.argv])
    ckpt = os.path.join(args.out, "checkpoints")
    print(
        f"\nmlem-jax: interrupted; finished levels are in {args.out} and the "
        f"current level's last checkpoint in {ckpt}; resume with: {command}",
        file=sys.stderr,
    )
    return 130


def add_training_options(
    group: Any,
    *,
    steps: int,
    lr: float,
    warmup_steps: int,
    ema_decay: float,
    regularisation: bool = False,
) -> None:
    """The options `train` and `distill` share, with each command's defaults: the
    ladder directory to write, the `TrainConfig` fields (`regularisation` adds
    `--weight-decay` and `--grad-clip`, which `distill` leaves at their defaults),
    the seed and the progress bars. Read back by `train_config`."""
    group.add_argument("--out", required=True, help="ladder directory to write")
    group.add_argument(
        "--steps", type=positive_int, default=steps, help="optimiser steps per level"
    )
    group.add_argument(
        "--batch-size", type=positive_int, default=128, help="images per step"
    )
    group.add_argument(
        "--lr",
        dest="learning_rate",
        metavar="LR",
        type=positive_float,
        default=lr,
        help="peak AdamW learning rate (linear warm-up, then cosine decay)",
    )
    group.add_argument(
        "--warmup-steps",
        type=nonnegative_int,
        default=warmup_steps,
        help="linear learning-rate warm-up steps",
    )
    if regularisation:
        group.add_argument(
            "--weight-decay",
            type=nonnegative_float,
            default=1e-4,
            help="decoupled weight decay (AdamW)",
        )
        group.add_argument(
            "--grad-clip",
            type=positive_float,
            default=1.0,
            help="global-norm gradient clipping threshold (> 0)",
        )
    group.add_argument(
        "--ema-decay",
        type=unit_interval,
        default=ema_decay,
        help="decay of the weights' exponential moving average (the saved networks)",
    )
    group.add_argument(
        "--checkpoint-every",
        type=nonnegative_int,
        default=250,
        help="steps between checkpoints (0: only at the end)",
    )
    group.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="PRNG seed of initialisation, batches and noise",
    )
    group.add_argument(
        "--label-dropout",
        type=float,
        default=0.1,
        help="class-conditional ladders: fraction of labels replaced by the null "
        "label at every step (trains the unconditional prediction CFG needs)",
    )
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def train_config(args: argparse.Namespace):
    """The `TrainConfig` of the options `add_training_options` added (each named as
    the field it sets)."""
    from ..training import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
