"""`mlem-jax sample` across processes: joining a `jax.distributed` run, the mesh over
every process's devices, and what every process must agree on.

One copy of the command runs per process (per host, or per accelerator), each with
the same arguments but `--process-id`. They build the same starting noise and
schedule, split the global batch over a mesh of every device of every process
(`mlem_jax.mlem_solve_sharded`), and each writes the rows its own devices hold
(`OUT` with a `.process<i>` suffix, with the rows' global indices), or process 0
gathers and writes every row (`--gather`).

What must be identical on every process is made so, or checked:

- measured level seconds (`--cost seconds` without `--level-ms`) are measured on
  process 0 and broadcast, bit for bit;
- the arguments (but `--process-id`, `--out`, `--coordinator`, `--ladder`'s path and
  `--no-progress`), the ladder's weights and the starting noise `y0` are compared
  through a digest gathered from every process before any solve, and the schedule
  after calibration: a process that differs stops every process with one message;
- a process that stops on a usage error before that comparison tells the others,
  which stop too, instead of waiting for it in a collective.

Only process 0 prints (tables, FLOPs, the progress bar, warnings); errors print
everywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _common
from ._common import nonnegative_int, positive_int

DRAWS = ("independent", "shared")

# The arguments that may differ between the processes of one run.
_PER_PROCESS = {
    "process_id",
    "out",
    "coordinator",
    "ladder",  # its path: the weights themselves are compared
    "no_progress",
    "join_timeout",
    "argv",
    "func",
    "parser",
}


def coordinator(text: str) -> str:
    """`--coordinator`: `HOST:PORT` (the port an integer in 1..65535) or `auto`."""
    if text.strip().lower() == "auto":
        return "auto"
    host, sep, port = text.rpartition(":")
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT (e.g. 10.0.0.1:12355) or `auto`, got {text!r}"
        )
    return text


def add_options(parser: argparse.ArgumentParser) -> None:
    """`--draws` and the options that join a `jax.distributed` run."""
    parser.add_argument(
        "--draws",
        choices=DRAWS,
        default="independent",
        help="with more than one device: independent, each device draws its own "
        "levels (key fold_in(level key, d) on device d of the mesh); shared, every "
        "device makes the single-device draws, so the samples are those of --devices "
        "1 up to the networks' batched rounding (mlem_jax.mlem_solve_sharded)",
    )
    group = parser.add_argument_group(
        "several processes (jax.distributed; see docs/multihost.md)",
        "Run one copy of the command per process, with the same arguments but "
        "--process-id: the batch is split over every device of every process.",
    )
    group.add_argument(
        "--coordinator",
        type=coordinator,
        help="join a jax.distributed run: HOST:PORT of process 0's coordinator (with "
        "--num-processes and --process-id), or `auto`: jax.distributed.initialize "
        "detects them (SLURM, Open MPI, a Cloud TPU pod)",
    )
    group.add_argument(
        "--num-processes",
        type=positive_int,
        help="with --coordinator: how many processes the run has",
    )
    group.add_argument(
        "--process-id",
        type=nonnegative_int,
        help="with --coordinator: this process's index, 0..num-processes-1 (process "
        "0 runs the coordinator, measures, and prints)",
    )
    group.add_argument(
        "--join-timeout",
        type=positive_int,
        default=300,
        help="seconds to wait for every process to join; past it JAX ends the "
        "process (DEADLINE_EXCEEDED)",
    )
    group.add_argument(
        "--gather",
        action="store_true",
        help="process 0 gathers every row and writes OUT and its .npz alone (default: "
        "each process writes its own rows to OUT with a .process<i> suffix, e.g. "
        "samples.process0.png and samples.process0.npz, with their global indices)",
    )


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse inconsistent distributed options before anything starts."""
    given = [
        flag
        for flag, value in (
            ("--num-processes", args.num_processes),
            ("--process-id", args.process_id),
            ("--gather", args.gather or None),
        )
        if value is not None
    ]
    if args.coordinator is None:
        if given:
            parser.error(
                f"{given[0]} applies to a distributed run: give --coordinator "
                "HOST:PORT (process 0's address) or --coordinator auto"
            )
        return
    if args.coordinator != "auto" and (
        args.num_processes is None or args.process_id is None
    ):
        parser.error(
            f"--coordinator {args.coordinator} needs --num-processes and --process-id "
            "(or --coordinator auto, to detect all three under SLURM, Open MPI or on a "
            "TPU pod)"
        )
    if args.process_id is not None and args.num_processes is not None:
        if args.process_id >= args.num_processes:
            parser.error(
                f"--process-id {args.process_id} is out of range for --num-processes "
                f"{args.num_processes}: expected 0..{args.num_processes - 1}"
            )
    if args.sampler not in (None, "em"):  # None: the default, em unless guided
        parser.error(
            "--coordinator applies to --sampler em only (ML-EM split over the devices "
            "of every process)"
        )


def global_devices(
    devices: int | str, num: int, device_count: int, process_count: int
) -> int:
    """How many devices a distributed run splits `--num` samples over: every device
    of every process (`devices` must be `all` or that count, and divide `num`);
    a `ValueError` saying what to change otherwise."""
    where = f"{device_count} device(s) on {process_count} process(es)"
    if devices != "all" and devices != device_count:
        raise ValueError(
            f"--devices {devices}: a distributed run splits the batch over every "
            f"device of every process ({where}); give --devices all or {device_count}"
        )
    if num % device_count:
        raise ValueError(
            f"--num {num}: the global batch must be divisible by the mesh of {where}; "
            f"give a multiple of {device_count}"
        )
    return device_count


def process_out(out: str, process: int) -> str:
    """`OUT` of process `process` without `--gather`: `samples.png` ->
    `samples.process1.png` (its .npz beside it)."""
    stem, ext = os.path.splitext(out)
    return f"{stem}.process{process}{ext}"


def _digest(*trees: Any) -> np.ndarray:
    """A 128-bit digest (4 uint32) of the array leaves of `trees` (values, dtypes
    and shapes) and of their plain Python leaves; other leaves (functions) count by
    their type only, as their repr holds an address."""
    import jax

    h = hashlib.sha256()
    for tree in trees:
        for leaf in jax.tree.leaves(tree):
            if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
                a = np.asarray(leaf)
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(np.ascontiguousarray(a).tobytes())
            elif leaf is None or isinstance(leaf, (bool, int, float, str, tuple)):
                h.update(repr(leaf).encode())
            else:
                h.update(type(leaf).__name__.encode())
    return np.frombuffer(h.digest()[:16], np.uint32).copy()


def compared_args(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments every process of a run must share."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in _PER_PROCESS}


class Distributed:
    """This process's place in a `jax.distributed` run of `mlem-jax sample`."""

    def __init__(self, parser: argparse.ArgumentParser, args: argparse.Namespace):
        import jax

        self.parser = parser
        self.index = jax.process_index()
        self.count = jax.process_count()
        self.gather = bool(args.gather)
        self.out = args.out  # as given, before `join` names this process's file
        self.agreed = False

    @property
    def writes(self) -> bool:
        """Whether this process writes files (every one, or process 0 with
        `--gather`)."""
        return not self.gather or self.index == 0

    def _all_gather(self, row: np.ndarray) -> np.ndarray:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(row)).reshape(
            self.count, -1
        )

    def _agree(self, failed: bool, digests: Sequence[np.ndarray] = ()) -> np.ndarray:
        self.agreed = True
        width = 1 + 4 * 3
        row = np.zeros(width, np.uint32)
        row[0] = failed
        if digests:
            row[1:] = np.concatenate(digests)
        return self._all_gather(row)

    def guarded(self, work: Callable[[], int]) -> int:
        """`work()`; a process that stops before `agree` (a usage error, Ctrl-C)
        joins the others' `agree` with a failure, so that every process stops."""
        try:
            status = work()
        except BaseException:
            if not self.agreed:
                self._agree(failed=True)
            raise
        if not self.agreed:
            self._agree(failed=True)
        return status

    def agree(self, args: argparse.Namespace, ladder: Any, y0: Any) -> None:
        """Every process's arguments, ladder weights and starting noise equal
        process 0's: a usage error on every process otherwise (called by every
        process once, before any other collective)."""
        import equinox as eqx

        rows = self._agree(
            False,
            [
                _digest(repr(compared_args(args))),
                _digest(eqx.filter((ladder.levels, ladder.sde), eqx.is_array)),
                _digest(y0),
            ],
        )
        failed = [i for i in range(self.count) if rows[i, 0]]
        if failed:
            self.parser.error(
                f"process(es) {_names(failed)} of {self.count} stopped before sampling "
                "(see their own error message); stopping every process"
            )
        what = ("arguments", "ladder weights", "starting noise y0")
        for j, name in enumerate(what):
            cols = slice(1 + 4 * j, 5 + 4 * j)
            differ = [
                i for i in range(self.count) if np.any(rows[i, cols] != rows[0, cols])
            ]
            if differ:
                hint = {
                    "arguments": "every process must get the same arguments but "
                    "--process-id (and --out, --coordinator)",
                    "ladder weights": "every process must load the same ladder",
                    "starting noise y0": "the same --seed gave other noise: the "
                    "processes' JAX versions or PRNG settings differ",
                }[name]
                self.parser.error(
                    f"process(es) {_names(differ)} of {self.count} differ from process "
                    f"0 in their {name}: {hint}"
                )

    def check_same(self, what: str, *trees: Any) -> None:
        """A usage error on every process unless `trees` are identical on all."""
        rows = self._all_gather(_digest(*trees))
        differ = [i for i in range(self.count) if np.any(rows[i] != rows[0])]
        if differ:
            self.parser.error(
                f"process(es) {_names(differ)} of {self.count} computed another {what} "
                "than process 0 (a calibration that is not reproducible across the "
                "processes): give --probs, or --cost flops, or --level-ms"
            )

    def seconds(self, measure: Callable[[], Any], k: int) -> list[float]:
        """Level seconds measured on process 0 (`measure()`, `k` values) and
        broadcast bit for bit, so that every process builds the same schedule."""
        from jax.experimental import multihost_utils

        values = np.zeros(k, np.float64)
        if self.index == 0:
            values[:] = np.asarray(measure(), np.float64)
        # As uint32 words: without jax_enable_x64 a float64 would travel as float32.
        bits = multihost_utils.broadcast_one_to_all(values.view(np.uint32))
        return np.asarray(bits, np.uint32).view(np.float64).tolist()

    def rows(self, y1: Any) -> tuple[np.ndarray, np.ndarray]:
        """`(global row indices, rows)` this process writes: its own devices' rows
        (`mlem_jax.process_rows`), or every row with `--gather`."""
        from jax.experimental import multihost_utils

        from .. import process_rows

        if isinstance(y1, np.ndarray):  # every row is here (one process)
            return np.arange(y1.shape[0]), y1
        if self.gather:
            x = np.asarray(multihost_utils.process_allgather(y1, tiled=True))
            return np.arange(x.shape[0]), x
        return process_rows(y1)

    def mesh(self, devices: int):
        """A mesh over the first `devices` devices of every process (all of them)."""
        import jax

        return jax.make_mesh((devices,), ("batch",), devices=jax.devices()[:devices])

    def devices(self, devices: int | str, num: int) -> int:
        import jax

        try:
            return global_devices(devices, num, jax.device_count(), self.count)
        except ValueError as e:
            self.parser.error(str(e))

    def describe(self) -> str:
        """The line saying who wrote what."""
        if self.gather:
            return f"process 0 gathered the rows of all {self.count} processes"
        return (
            f"each of the {self.count} processes wrote its own rows "
            f"({process_out(self.out, 0)}, ...; their global indices in `rows`)"
        )


def _names(indices: Sequence[int]) -> str:
    return ", ".join(str(i) for i in indices)


def join(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> Distributed | None:
    """Join the `jax.distributed` run `--coordinator` names (None without it):
    gloo CPU collectives, then `jax.distributed.initialize`, before anything touches
    a device. On processes other than 0, silences stdout, the progress bar and
    warnings; renames `args.out` to this process's file without `--gather`."""
    check_options(parser, args)
    if args.coordinator is None:
        return None
    import jax

    address = None if args.coordinator == "auto" else args.coordinator
    print(
        "mlem-jax: joining a jax.distributed run"
        + (f" at {address}" if address else " (detecting the cluster)")
        + (f" as process {args.process_id}" if args.process_id is not None else "")
        + (f" of {args.num_processes}" if args.num_processes is not None else "")
        + f"; waiting up to --join-timeout {args.join_timeout} s for every process",
        file=sys.stderr,
        flush=True,
    )
    # CPU processes talk through gloo (the default from JAX 0.5 on; harmless for
    # GPU and TPU processes, whose own collectives are NCCL's and ICI's).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            address,
            args.num_processes,
            args.process_id,
            initialization_timeout=args.join_timeout,
        )
    except (ValueError, RuntimeError) as e:
        parser.error(
            f"--coordinator {args.coordinator}: jax.distributed.initialize failed: "
            f"{e}"
            + (
                " (auto-detection found no SLURM, Open MPI or TPU-pod environment: "
                "give --coordinator HOST:PORT --num-processes N --process-id I)"
                if address is None
                else ""
            )
        )
    dist = Distributed(parser, args)
    if args.num_processes is not None and dist.count != args.num_processes:
        parser.error(
            f"--num-processes {args.num_processes}: the run has {dist.count} "
            "processes; give every process the same --num-processes"
        )
    if dist.index != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process's life)
        args.no_progress = True
        _common.quiet_warnings()
    if not args.gather:
        args.out = process_out(args.out, dist.index)
    return dist
