"""ML-EM against Euler–Maruyama on an SDE whose drift is "harder than Monte Carlo".

The drift hierarchy is a random-feature series (`mlem_jax.synthetic`) whose cost
grows like ε^(−γ) with γ = 3 set by construction: level l keeps 16·4^(l−1) terms.
Every run shares one Brownian path per sample with a fine reference solve (the most
accurate drift, many steps), so errors are pathwise (strong) errors.

Run:  python examples/quickstart.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

import mlem_jax as mj
from mlem_jax.synthetic import feature_error, random_feature_hierarchy

GAMMA, DIM, LEVELS, BATCH, T = 3.0, 8, 5, 128, 1.0
FINE = 1024  # reference steps; every solve's steps divide it


def main():
    levels, reference = random_feature_hierarchy(
        jax.random.key(0),
        dim=DIM,
        gamma=GAMMA,
        num_levels=LEVELS,
        base_features=16,
        growth=4,
        scale=3.0,
    )
    diffusion = lambda t, y, args: 0.5
    y0 = jax.random.normal(jax.random.key(1), (BATCH, DIM))
    # One Brownian path per sample, shared by every solve below.
    fine_dw = mj.brownian_increments(
        jax.random.key(2), y0.shape, t0=0.0, t1=T, num_steps=FINE
    )
    y_ref, _ = mj.em_solve(
        reference,
        diffusion,
        y0,
        t0=0.0,
        t1=T,
        num_steps=FINE,
        key=jax.random.key(3),
        brownian=fine_dw,
    )
    top_cost = levels.costs[-1]

    def error(y):
        return float(jnp.sqrt(jnp.mean(jnp.sum((y - y_ref) ** 2, axis=-1))))

    rows = []
    for steps in (16, 32, 64, 128):
        brownian = mj.coarsen_increments(fine_dw, FINE // steps)
        start = time.perf_counter()
        y, info = mj.em_solve(
            levels.top,
            diffusion,
            y0,
            t0=0.0,
            t1=T,
            num_steps=steps,
            key=jax.random.key(4),
            brownian=brownian,
            cost=top_cost,
        )
        y.block_until_ready()
        rows.append(
            ("Euler-Maruyama", steps, info, error(y), time.perf_counter() - start)
        )

    # Rates λ_l ∝ sqrt(V_l / C_l) (Giles's rule), with V_l the known squared size of
    # the increment f^l − f^(l−1) and C_l its cost; level 1 runs every step.
    n = [16 * 4**l for l in range(LEVELS)]
    v = [feature_error(n[l - 1], n[l], GAMMA, 3.0) ** 2 for l in range(1, LEVELS)]
    c = [n[l] + n[l - 1] for l in range(1, LEVELS)]
    shape = np.sqrt(np.array(v) / np.array(c))
    for budget in (4.0, 16.0, 64.0):  # expected top-level-equivalent evaluations
        scale = budget * top_cost / float(np.sum(shape * np.array(c)))
        rates = mj.Rates(jnp.array([jnp.inf, *(scale * shape)], dtype=jnp.float32))
        steps = 256
        start = time.perf_counter()
        y, info = mj.mlem_solve(
            levels,
            rates,
            diffusion,
            y0,
            t0=0.0,
            t1=T,
            num_steps=steps,
            key=jax.random.key(5),
            brownian=mj.coarsen_increments(fine_dw, FINE // steps),
        )
        y.block_until_ready()
        rows.append(("ML-EM", steps, info, error(y), time.perf_counter() - start))

    print(f"SDE in {DIM} dims, {LEVELS} levels with gamma = {GAMMA}, batch {BATCH}")
    print(
        f"{'method':<16}{'steps':>6}  {'evaluations per level':<28}"
        f"{'cost (top evals)':>17}{'strong error':>14}"
    )
    for method, steps, info, err, _ in rows:
        evals = " ".join(str(int(e)) for e in info.evaluations)
        print(
            f"{method:<16}{steps:>6}  {evals:<28}"
            f"{float(info.cost) / top_cost:>17.1f}{err:>14.4f}"
        )
    print("(wall-clock includes compilation; see benchmarks/ for timings)")


if __name__ == "__main__":
    main()
