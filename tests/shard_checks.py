"""The sharded-sampling checks, run by tests/test_shard.py in a subprocess.

JAX must see 8 host devices, which `XLA_FLAGS=--xla_force_host_platform_device_count=8`
gives only if set before JAX initialises: hence a process of its own. It computes
every quantity the tests assert on and prints them as one JSON line; the assertions
live in test_shard.py.

The levels are `f^l(t, y) = −y + c_l` (`c` passed as `args`), so ML-EM's drift error
`(B_2/p_2 − 1)(c_2 − c_1)` does not depend on `y` or the Brownian motion: the
difference ML-EM − EM at `t1` is the same vector for every element of a shard,

    e = h (c_2 − c_1) Σ_n (1 − h)^{N−1−n} (B_{2,n}/p_2 − 1),

and `E‖e‖² = h² ‖c_2 − c_1‖² (1 − p_2)/p_2 Σ_m (1 − h)^{2m}` exactly. With independent
draws the devices' `e` are independent, so the error of the batch mean has
`E‖ē‖² = E‖e‖² / devices`; with shared draws it would stay `E‖e‖²`.
"""

from __future__ import annotations

import functools
import json
import os
import sys


def main() -> None:
    import diffrax
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import mlem_jax as mj
    from mlem_jax._brownian import split_key, step_uniforms

    assert jax.device_count() == 8, jax.devices()

    out: dict = {}
    N, B, DIM, P2 = 16, 16, 4, 0.3
    T0, T1 = 0.0, 1.0
    h = (T1 - T0) / N
    c = jnp.asarray([[0.5, -0.25, 0.0, 1.0], [1.0, 0.25, -0.5, 0.0]], jnp.float32)
    levels = mj.Levels((lambda t, y, a: -y + a[0], lambda t, y, a: -y + a[1]), (1, 2))
    g = lambda t, y, a: 0.5  # noqa: E731
    y0 = jax.random.normal(jax.random.key(0), (B, DIM))
    kw = dict(t0=T0, t1=T1, num_steps=N, args=c, checkpoint=False)
    ones = mj.FixedProbabilities(jnp.ones(2))
    mixed = mj.FixedProbabilities(jnp.asarray([1.0, P2]))

    def mesh(n, name="batch"):
        return jax.make_mesh((n,), (name,), devices=jax.devices()[:n])

    # One compiled sharded solve per device count; the schedule is traced, so the
    # same executable serves p = 1 and p < 1.
    runs = {
        n: jax.jit(
            lambda schedule, key, n=n: mj.mlem_solve_sharded(
                levels, schedule, g, y0, mesh=mesh(n), key=key, **kw
            )
        )
        for n in (1, 2, 4, 8)
    }
    em = jax.jit(lambda key: mj.em_solve(levels.top, g, y0, key=key, **kw)[0])

    # 1. All p = 1: Euler–Maruyama, whatever the device count.
    key = jax.random.key(42)
    ref = em(key)
    out["p1_max_diff"] = {
        str(n): float(jnp.max(jnp.abs(run(ones, key)[0] - ref)))
        for n, run in runs.items()
    }
    out["em_scale"] = float(jnp.max(jnp.abs(ref)))

    # 2. Independent draws on 8 devices: device d's rows and counts are those of a
    # single-device solve with key fold_in(key, d) on its rows of the Brownian path.
    y8, info8 = runs[8](mixed, key)
    y8 = np.asarray(y8)  # gathered: an explicitly sharded array refuses row slicing
    increments = mj.brownian_increments(key, (B, DIM), t0=T0, t1=T1, num_steps=N)
    single = jax.jit(
        lambda key, y0, dw: mj.mlem_solve(
            levels, mixed, g, y0, key=key, brownian=dw, **kw
        )
    )
    b = B // 8
    rows_diff, counts_equal, draws_equal = [], [], []
    for d in range(8):
        rows = slice(d * b, (d + 1) * b)
        dkey = jax.random.fold_in(key, d)
        y_d, info_d = single(dkey, y0[rows], increments[:, rows])
        rows_diff.append(float(jnp.max(jnp.abs(y8[rows] - y_d))))
        counts_equal.append(bool(jnp.all(info8.evaluations[d] == info_d.evaluations)))
        # The documented draws, recomputed from the uniforms themselves.
        _, level_key = split_key(dkey)
        u = np.stack(
            [np.asarray(step_uniforms(level_key, n, 2, jnp.float32)) for n in range(N)]
        )
        fires = u < np.asarray([1.0, P2], np.float32)
        needed = fires | np.concatenate([fires[:, 1:], np.zeros((N, 1), bool)], 1)
        draws_equal.append(
            needed.sum(0).tolist() == np.asarray(info8.evaluations[d]).tolist()
        )
    out["indep_rows_max_diff"] = max(rows_diff)
    out["indep_counts_equal_single"] = all(counts_equal)
    out["indep_counts_equal_draws"] = all(draws_equal)
    out["indep_total_ok"] = bool(
        jnp.all(info8.total_evaluations == info8.evaluations.sum(0))
        and jnp.allclose(info8.cost, info8.evaluations @ jnp.asarray([1, 2]))
        and jnp.allclose(info8.total_cost, info8.cost.sum())
    )
    out["devices_differ"] = (
        len({tuple(np.asarray(e).tolist()) for e in info8.evaluations}) > 1
    )

    # 2b. The same through diffrax.diffeqsolve with MLEMSolver inside a shard_map of
    # one's own: device_key for the levels, ShardedPath for the global Brownian path.
    import lineax
    from jax.sharding import NamedSharding, PartitionSpec as P

    m8 = mesh(8)

    @jax.jit
    def via_diffrax(y0):
        @functools.partial(
            jax.shard_map,
            mesh=m8,
            in_specs=P("batch"),
            out_specs=(P("batch"), P("batch")),
            check_vma=False,
        )
        def run(y0):
            path = mj.StepBrownianPath((B, DIM), key, t0=T0, t1=T1, num_steps=N)
            diffusion = lambda t, y, a: lineax.DiagonalLinearOperator(  # noqa: E731
                jnp.full_like(y, 0.5)
            )
            terms = diffrax.MultiTerm(
                mj.MultilevelTerm(levels),
                diffrax.ControlTerm(diffusion, mj.ShardedPath(path, "batch")),
            )
            sol = diffrax.diffeqsolve(
                terms,
                mj.MLEMSolver(mixed, key=mj.device_key(key, "batch")),
                t0=T0,
                t1=T1,
                dt0=h,
                y0=y0,
                args=c,
                saveat=diffrax.SaveAt(t1=True, solver_state=True),
            )
            return sol.ys[0], sol.solver_state.evaluations[None]

        return run(y0)

    yd, evd = via_diffrax(jax.reshard(y0, NamedSharding(m8, P("batch"))))
    out["diffrax_max_diff"] = float(np.max(np.abs(np.asarray(yd) - y8)))
    out["diffrax_counts_equal"] = (
        np.asarray(evd).tolist() == np.asarray(info8.evaluations).tolist()
    )

    # 3. The added MSE of the batch mean falls like 1/devices.
    R = int(os.environ.get("SHARD_CHECK_KEYS", "96"))
    delta2 = float(jnp.sum((c[1] - c[0]) ** 2))
    geometric = sum((1 - h) ** (2 * m) for m in range(N))
    out["mse_theory_1"] = h**2 * delta2 * (1 - P2) / P2 * geometric
    out["mse"] = {}
    for n, run in runs.items():
        values = []
        for r in range(R):
            k = jax.random.key(1000 + r)
            err = np.mean(np.asarray(run(mixed, k)[0]) - np.asarray(run(ones, k)[0]), 0)
            values.append(float(np.sum(err.astype(np.float64) ** 2)))
        values = np.asarray(values)
        out["mse"][str(n)] = [
            float(values.mean()),
            float(values.std(ddof=1) / np.sqrt(R)),
        ]

    # 4. Gradients: shared draws on 8 devices = the single-device gradient.
    def loss_sharded(c, y0):
        y, _ = mj.mlem_solve_sharded(
            levels,
            mixed,
            g,
            y0,
            mesh=mesh(8),
            key=key,
            draws="shared",
            **{**kw, "args": c},
        )
        return jnp.mean(jnp.sin(y))

    def loss_single(c, y0):
        y, _ = mj.mlem_solve(levels, mixed, g, y0, key=key, **{**kw, "args": c})
        return jnp.mean(jnp.sin(y))

    gs = jax.jit(jax.grad(loss_sharded, argnums=(0, 1)))(c, y0)
    g1 = jax.jit(jax.grad(loss_single, argnums=(0, 1)))(c, y0)
    out["grad_max_diff"] = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(gs, g1))
    out["grad_scale"] = max(float(jnp.max(jnp.abs(a))) for a in g1)
    y_shared, info_shared = mj.mlem_solve_sharded(
        levels, mixed, g, y0, mesh=mesh(8), key=key, draws="shared", **kw
    )
    y_one, info_one = mj.mlem_solve(levels, mixed, g, y0, key=key, **kw)
    out["shared_max_diff"] = float(np.max(np.abs(np.asarray(y_shared) - y_one)))
    out["shared_counts_equal"] = bool(
        jnp.all(info_shared.evaluations == info_one.evaluations[None])
    )

    # 5b. Per-sample noise on 1, 2 and 4 devices: zero drift, unit noise, y0 = 0 and
    # every state saved, so the saved path is the running sum of the solver's own
    # increments; row i must be bit for bit that of a single-device batch of 64.
    zero1 = mj.Levels((lambda t, y, a: jnp.zeros_like(y),), (1,))
    zero2 = mj.Levels((lambda t, y, a: jnp.zeros_like(y),) * 2, (1, 2))
    pw = dict(
        t0=0.0,
        t1=1.0,
        num_steps=4,
        key=key,
        saveat=diffrax.SaveAt(steps=True),
        checkpoint=False,
    )
    unit = lambda t, y, a: 1.0  # noqa: E731
    p64 = np.asarray(mj.em_solve(zero1.top, unit, jnp.zeros((64, 3)), **pw)[0])
    paths = {}
    # The draws mode does not touch the Brownian stream: independent draws on 1, 2
    # and 4 devices, shared draws once (a batch of 12 on 4 devices).
    for n, draws, batch in (
        (1, "independent", 64),
        (2, "independent", 64),
        (4, "independent", 64),
        (4, "shared", 12),
    ):
        y, _ = mj.mlem_solve_sharded(
            zero2, mixed, unit, jnp.zeros((batch, 3)), mesh=mesh(n), draws=draws, **pw
        )
        paths[f"{n}/{draws}/{batch}"] = bool(
            np.array_equal(np.asarray(y), p64[:, :batch])
        )
    out["per_sample_paths"] = paths
    out["per_sample_rows_differ"] = bool(np.all(p64[:, 0] != p64[:, 1]))

    # process_rows on 4 devices, rows split over "a" and copied over "b": each row once.
    m22 = jax.make_mesh((2, 2), ("a", "b"), devices=jax.devices()[:4])
    x = jnp.arange(24.0).reshape(6, 4)
    rows, values = mj.process_rows(jax.device_put(x, NamedSharding(m22, P("a", None))))
    out["process_rows_copies"] = rows.tolist() == list(range(6)) and bool(
        np.array_equal(values, x)
    )
    split_both = jax.device_put(x, NamedSharding(m22, P("a", "b")))

    # 5. Bad input: the messages.
    def message(fn):
        try:
            fn()
        except (TypeError, ValueError) as e:
            return f"{type(e).__name__}: {e}"
        return None

    solve = lambda **over: mj.mlem_solve_sharded(  # noqa: E731
        levels, mixed, g, **{"y0": y0, "mesh": mesh(8), "key": key, **kw, **over}
    )
    out["errors"] = {
        "indivisible": message(lambda: solve(y0=y0[:12])),
        "no_axis": message(lambda: solve(mesh=mesh(8, "data"))),
        "batched_key": message(lambda: solve(key=jax.random.split(key, 8))),
        "draws": message(lambda: solve(draws="per-sample")),
        "mesh": message(lambda: solve(mesh=jax.devices())),
        "scalar": message(lambda: solve(y0=jnp.float32(1.0))),
        "pytree": message(lambda: solve(y0={"a": jnp.ones((8, 2))})),
        "rows_2d": message(lambda: mj.process_rows(split_both)),
    }
    del eqx
    print(json.dumps(out))


if __name__ == "__main__":
    if "jax" in sys.modules:
        raise RuntimeError("shard_checks must set XLA_FLAGS before JAX initialises")
    main()
