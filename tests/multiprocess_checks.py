"""One process of the two-process checks run by tests/test_shard.py.

`python multiprocess_checks.py PORT PROCESS_ID` joins a JAX distributed run of two
CPU processes (coordinator 127.0.0.1:PORT, gloo collectives), each with 2 forced host
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=2`, set by the test), so
the mesh spans 4 devices on 2 processes. It computes everything the tests assert on,
for both draws modes, and prints it as one JSON line; the assertions live in
test_shard.py.

Problem as in shard_checks.py: levels `f^l(t, y) = −y + c_l` (`c` as `args`), a
constant diffusion, a batch of 8, 8 steps. The single-process references run on this
process's first device, outside the mesh.
"""

from __future__ import annotations

import json
import sys


def main(port: int, process_id: int) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, process_id)

    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils

    import mlem_jax as mj
    from mlem_jax._brownian import split_key, step_uniforms

    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    assert jax.local_device_count() == 2
    out: dict = {"process": jax.process_index()}
    import time

    t_start = time.perf_counter()

    def lap(what):
        print(
            f"{what}: {time.perf_counter() - t_start:.1f}s", file=sys.stderr, flush=True
        )

    N, B, P2 = 8, 8, 0.3
    kw = dict(t0=0.0, t1=1.0, num_steps=N, checkpoint=False)
    c = jnp.asarray([[0.5, -0.25, 0.0, 1.0], [1.0, 0.25, -0.5, 0.0]], jnp.float32)
    levels = mj.Levels((lambda t, y, a: -y + a[0], lambda t, y, a: -y + a[1]), (1, 2))
    g = lambda t, y, a: 0.5  # noqa: E731
    mixed = mj.FixedProbabilities(jnp.asarray([1.0, P2]))
    y0 = jax.random.normal(jax.random.key(0), (B, 4))
    key = jax.random.key(42)
    mesh = jax.make_mesh((4,), ("batch",))  # every process's devices
    position = {dev.id: d for d, dev in enumerate(mesh.devices.flat)}
    b = B // 4

    def sharded(y0, c, draws):
        return mj.mlem_solve_sharded(
            levels, mixed, g, y0, mesh=mesh, key=key, draws=draws, args=c, **kw
        )

    def single(y0, c, key, brownian):
        return mj.mlem_solve(
            levels, mixed, g, y0, key=key, args=c, brownian=brownian, **kw
        )

    def with_loss(solve):
        # (loss, (y, counts)) for value_and_grad: the loss is a sum, so the sharded
        # gradient is the sum of the shards' gradients.
        def run(c, y0, *rest):
            y, info = solve(y0, c, *rest)
            return jnp.sum(jnp.sin(y)), (y, info.evaluations)

        return jax.jit(
            jax.value_and_grad(run, argnums=(0, 1), has_aux=True),
            static_argnums=2 if solve is sharded else (),
        )

    run_sharded, run_single = with_loss(sharded), with_loss(single)
    whole = jax.jit(
        lambda y0, c: mj.mlem_solve(levels, mixed, g, y0, key=key, args=c, **kw)
    )
    increments = mj.brownian_increments(key, (B, 4), t0=0.0, t1=1.0, num_steps=N)
    one = jax.local_devices()[0]
    for draws in ("shared", "independent"):
        res: dict = {}
        (_, (y, counts)), (gc, gy) = run_sharded(c, y0, draws)
        lap(f"{draws} sharded")
        rows, local = mj.process_rows(y)
        grow, gy_local = mj.process_rows(gy)
        res["rows"] = rows.tolist()
        res["evaluations"] = np.asarray(counts).tolist()
        keys = [
            key if draws == "shared" else jax.random.fold_in(key, d) for d in range(4)
        ]
        # The references: single solves on one local device, shard d with key
        # keys[d] on its rows of the global Brownian increments.
        with jax.default_device(one):
            ref = np.zeros((B, 4), np.float32)
            ref_gy = np.zeros((B, 4), np.float32)
            ref_gc = np.zeros(c.shape, np.float32)
            ref_counts = []
            for d in range(4):
                r = slice(d * b, (d + 1) * b)
                (_, (y_d, counts_d)), (gc_d, gy_d) = run_single(
                    c, y0[r], keys[d], increments[:, r]
                )
                ref[r], ref_gy[r] = np.asarray(y_d), np.asarray(gy_d)
                ref_gc += np.asarray(gc_d)
                ref_counts.append(np.asarray(counts_d).tolist())
            res["max_diff"] = float(np.max(np.abs(local - ref[rows])))
            if draws == "shared":  # bit for bit: the default stream, whole batch
                res["whole_max_diff"] = float(
                    np.max(np.abs(local - np.asarray(whole(y0, c)[0])[rows]))
                )
            res["scale"] = float(np.max(np.abs(ref)))
            res["single_counts"] = ref_counts
            # The documented draws, from the uniforms: needed_l = B_l or B_{l+1}.
            expected = []
            for d in range(4):
                _, level_key = split_key(keys[d])
                u = np.stack(
                    [
                        np.asarray(step_uniforms(level_key, n, 2, jnp.float32))
                        for n in range(N)
                    ]
                )
                fires = u < np.asarray([1.0, P2], np.float32)
                needed = fires | np.concatenate(
                    [fires[:, 1:], np.zeros((N, 1), bool)], 1
                )
                expected.append(needed.sum(0).tolist())
            res["draws_counts"] = expected
        lap(f"{draws} refs")
        # Each device's mesh position, so the test can check which rows live here.
        res["local_positions"] = sorted(position[dev.id] for dev in jax.local_devices())
        gathered = multihost_utils.process_allgather(y, tiled=True)
        res["gathered_max_diff"] = float(np.max(np.abs(np.asarray(gathered) - ref)))
        res["grad_c_max_diff"] = float(np.max(np.abs(np.asarray(gc) - ref_gc)))
        res["grad_y0_max_diff"] = float(np.max(np.abs(gy_local - ref_gy[grow])))
        res["grad_scale"] = float(np.max(np.abs(ref_gc)))
        out[draws] = res

    # Per-sample noise in two processes: zero drift, unit noise, y0 = 0, every state
    # saved, so the saved path is the running sum of the solver's own increments.
    zero = mj.Levels((lambda t, y, a: jnp.zeros_like(y),), (1,))
    steps = mj.FixedProbabilities(jnp.ones(1))
    save = __import__("diffrax").SaveAt(steps=True)
    unit = lambda t, y, a: 1.0  # noqa: E731
    pw = dict(t0=0.0, t1=1.0, num_steps=4, key=key, saveat=save, checkpoint=False)
    path, _ = mj.mlem_solve_sharded(
        zero, steps, unit, jnp.zeros((B, 3)), mesh=mesh, **pw
    )
    prow, plocal = mj.process_rows(path, axis=1)
    with jax.default_device(one):
        em = lambda n: np.asarray(  # noqa: E731
            mj.em_solve(zero.top, unit, jnp.zeros((n, 3)), **pw)[0]
        )
        p64, p1 = em(64), em(1)
    lap("paths")
    out["path_equal_batch64"] = bool(np.array_equal(plocal, p64[:, prow]))
    out["path_equal_batch1"] = bool(
        0 not in prow.tolist() or np.array_equal(plocal[:, :1], p1)
    )
    out["path_rows_differ"] = bool(np.all(plocal[:, 0] != plocal[:, 1]))

    # Bad input: a mesh that does not divide the global batch.
    try:
        sharded(y0[:6], c, "shared")
        out["indivisible"] = None
    except ValueError as e:
        out["indivisible"] = str(e)
    print(json.dumps(out), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    if "jax" in sys.modules:
        raise RuntimeError("multiprocess_checks must set XLA_FLAGS before JAX starts")
    main(int(sys.argv[1]), int(sys.argv[2]))
