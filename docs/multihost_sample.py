"""Sample the shipped `digits` ladder with ML-EM on every device of every process.

Run one copy per process (see docs/multihost.md). Each process writes the rows its
own devices hold, `samples.<process>.npz` (global row indices, samples, every
device's level counts); `--gather` makes process 0 write all rows to `samples.npz`.

    python docs/multihost_sample.py                     # SLURM, TPU pod: auto-detected
    python docs/multihost_sample.py --coordinator 10.0.0.1:1234 --num-processes 2 \
        --process-id 0                                  # anywhere else, one per process
"""

import argparse
import os

import jax

parser = argparse.ArgumentParser()
parser.add_argument("--coordinator", help="host:port of process 0 (default: detect)")
parser.add_argument("--num-processes", type=int)
parser.add_argument("--process-id", type=int)
parser.add_argument("--per-device", type=int, default=64, help="samples per device")
parser.add_argument("--steps", type=int, default=64)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--gather", action="store_true")
parser.add_argument("--out", default=".")
parser.add_argument("--cpu-gloo", action="store_true", help="CPU processes (tests)")
args = parser.parse_args()
if args.cpu_gloo:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
# Before anything touches a device. Without arguments JAX detects SLURM, Open MPI and
# Cloud TPU pods itself.
jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import mlem_jax as mj  # noqa: E402
from mlem_jax import pretrained  # noqa: E402

devices = jax.device_count()  # every process's devices
batch = args.per_device * devices
ladder = pretrained.load_ladder_levels(None, args.per_device)  # costs per shard
path = os.path.join(pretrained.pretrained_path("digits"), pretrained.CALIBRATION)
cal = pretrained.load_calibration(path)
# ML-EM rates for a budget of steps/4 top-level evaluations, 2% floor (as the CLI).
schedule = cal.schedule(
    budget=args.steps / 4 * cal.level_costs()[-1],
    num_steps=args.steps,
    min_probability=0.02,
)
k_y0, k_solve = jax.random.split(jax.random.key(args.seed))
# The same global batch on every process; sample i's noise depends on (seed, i) only.
y0 = ladder.sde.prior_sample(k_y0, (batch, *ladder.shape))
mesh = jax.make_mesh((devices,), ("batch",))
y1, info = mj.mlem_solve_sharded(
    ladder.levels,
    schedule,
    ladder.sde.diffusion,
    y0,
    mesh=mesh,
    t0=pretrained.T0,
    t1=pretrained.T1,
    num_steps=args.steps,
    key=k_solve,
)
counts = np.asarray(info.evaluations)  # (devices, levels), on every process
if args.gather:
    samples = np.asarray(multihost_utils.process_allgather(y1, tiled=True))
    if jax.process_index() == 0:
        np.savez(os.path.join(args.out, "samples.npz"), samples=samples, counts=counts)
else:
    rows, samples = mj.process_rows(y1)
    name = f"samples.{jax.process_index()}.npz"
    np.savez(os.path.join(args.out, name), rows=rows, samples=samples, counts=counts)
print(
    f"process {jax.process_index()}/{jax.process_count()}: {samples.shape[0]} of "
    f"{batch} samples, level evaluations per device {counts.tolist()}"
)
jax.distributed.shutdown()
