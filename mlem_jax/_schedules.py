"""Level schedules: the probability `p_l` that level `l`'s correction fires in a step."""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from . import _checks as checks
from ._misc import NumbersLike, check_grid, concrete_or_none


class AbstractSchedule(eqx.Module):
    """Base class of ML-EM schedules.

    A schedule gives, for a step of signed size `h` starting at time `t`, the
    probabilities `p_l ∈ [0, 1]` with which each level's correction
    `(B_l / p_l)·Δ_l` is drawn. A level with `p_l = 0` never fires (its
    correction is dropped, which biases the solve); `p_l = 1` fires every step.

    Every schedule is abstract or final (equinox's pattern): a new one subclasses
    this class and implements all three of `num_levels`, `probabilities` and
    `always_fires`; the concrete schedules here are not subclassed.
    """

    @property
    @abc.abstractmethod
    def num_levels(self) -> int:
        """The number of levels this schedule is for."""

    @abc.abstractmethod
    def probabilities(self, t: ArrayLike, h: ArrayLike) -> Float[Array, " k"]:
        """Probabilities `p_l` for the step from `t` to `t + h` (`h` may be < 0)."""

    @abc.abstractmethod
    def always_fires(self, h: float) -> tuple[bool, ...]:
        """Which levels are known, before tracing, to fire at every step of size `h`.

        Those levels skip the `lax.cond` and its small per-step overhead. A schedule
        that cannot tell (its arrays traced, say) answers `False` for every level;
        it must never claim a level that can be skipped.
        """


def _as_float_array(x, name: str, owner: str) -> Array:
    try:
        arr = jnp.asarray(x)
    except TypeError as e:
        what = "an array of numbers"
        raise checks.fail(owner, name, what, type(x).__name__, TypeError) from e
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(float)
    return arr


def binned_table(values, times, name: str, noun: str, owner: str):
    """Validate a per-level table that is constant (`values` of shape `(k,)`, no
    `times`) or piecewise constant on the bins of `times` (`(m, k)` with `m + 1`
    strictly increasing edges). Returns `(table of shape (m, k), times)`."""
    values = _as_float_array(values, name, owner)
    if times is None:
        if values.ndim != 1 or values.shape[0] == 0:
            what = f"a non-empty 1-D sequence (shape (k,), one {noun} per level)"
            raise checks.fail(owner, name, what, values.shape)
        values = values[None, :]
    else:
        times = _as_float_array(times, "times", owner)
        if times.ndim != 1 or times.shape[0] < 2:
            what = "1-D bin edges with at least 2 entries"
            raise checks.fail(owner, "times", what, times.shape)
        m = times.shape[0] - 1
        if values.ndim != 2 or values.shape[0] != m:
            what, shape = f"shape (m, k) = ({m}, k), `times` m + 1 edges", values.shape
            raise ValueError(f"{owner}: `{name}` must have {what}; got {shape}.")
        edges = concrete_or_none(times)
        edges = np.zeros(0) if edges is None else edges  # traced: not checked
        if not (np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0)):
            what = "finite and strictly increasing"
            raise checks.fail(owner, "times", what, edges.tolist())
    if values.shape[-1] == 0:
        raise checks.fail(owner, name, "at least one level", values.shape)
    return values, times


def bin_lookup(table, times, t) -> Array:
    """Row of `table` for time `t`: the bin of `times` holding `t` (the first or
    last bin outside the grid), or the only row without `times`."""
    if times is None:
        return table[0]
    t = jnp.asarray(t, dtype=times.dtype)
    i = jnp.searchsorted(times, t, side="right") - 1
    return table[jnp.clip(i, 0, table.shape[0] - 1)]


class FixedProbabilities(AbstractSchedule):
    """The same probabilities `p_l` at every step.

    **Arguments:**

    - `probs`: one probability per level, each in `[0, 1]`, cheapest first. Usually
        `probs[0] = 1`: the cheapest level then runs every step and carries the
        bulk of the drift. All ones gives exactly Euler–Maruyama with the top
        level. Zeros are allowed only below the first non-zero entry (the base
        level: the ladder then starts there, see the step's base level): the
        schedule stays unbiased for the top level. To drop a correction on
        purpose (a bias), give `Rates` a zero rate, or use `Stitch`.

    Note that with fixed probabilities the expected number of expensive-level
    evaluations grows with the number of steps; `Rates` keeps it fixed.
    """

    probs: Float[Array, " k"]

    def __init__(self, probs: NumbersLike):
        table = _as_float_array(probs, "probs", "FixedProbabilities")
        if table.ndim != 1 or table.shape[0] == 0:
            what = "a non-empty 1-D sequence (shape (k,), one probability per level)"
            raise checks.fail("FixedProbabilities", "probs", what, table.shape)
        # A zero above the first positive entry drops a correction.
        above_base = jnp.cumsum((table > 0).astype(jnp.int32)) > 0
        dropped = above_base & (table == 0)
        value = concrete_or_none(table)
        where = "FixedProbabilities"
        in_range = "probabilities in [0, 1], one at least > 0"
        # A dropped correction biases the solve: Rates (a zero rate) and Stitch drop
        # one on purpose, FixedProbabilities is unbiased.
        drop = "non-zero above the base level{} (to drop a correction: Rates, Stitch)"
        if value is None:
            # Traced (under jit, vmap or grad): checked when the program runs.
            bad = ~jnp.all((table >= 0) & (table <= 1)) | ~jnp.any(table > 0)
            table = eqx.error_if(table, bad, f"{where}: `probs` must be {in_range}.")
            table = eqx.error_if(
                table, jnp.any(dropped), f"{where}: `probs` must be {drop.format('')}."
            )
        elif not (np.all((value >= 0) & (value <= 1)) and np.any(value > 0)):
            raise checks.fail(where, "probs", in_range, value.tolist())
        elif np.any(np.asarray(dropped)):
            base = f" {int(np.flatnonzero(value > 0)[0]) + 1}"
            raise checks.fail(where, "probs", drop.format(base), value.tolist())
        self.probs = table

    @property
    def num_levels(self) -> int:
        return self.probs.shape[0]

    def probabilities(self, t, h):
        del t, h
        return self.probs

    def always_fires(self, h):
        del h
        value = concrete_or_none(self.probs)
        if value is None:  # traced: nothing is known before tracing
            return (False,) * self.num_levels
        return tuple(bool(p >= 1) for p in value)


class Rates(AbstractSchedule):
    """Probabilities from rates: `p_l = min(1, λ_l(t)·|h|)`.

    `λ_l` counts expected level-`l` corrections per unit time, so the expected number
    of level-`l` evaluations over a solve is about `∫ λ_l dt` whatever the step size:
    refining the steps costs only cheap-level evaluations. `jnp.inf` means "every
    step". As `h → 0` the corrections become a Poisson process with rates `λ_l`.

    **Arguments:**

    - `rates`: shape `(k,)` for constant rates, or `(m, k)` for rates that are
        piecewise constant in time on the `m` bins given by `times`. Non-negative
        (`inf` allowed); a zero rate drops that level's correction.
    - `times`: optional bin edges, shape `(m + 1,)`, strictly increasing. Rates of bin
        `i` hold on `[times[i], times[i+1])`; times outside the grid use the first
        or last bin. A step's rate is read at its midpoint `t + h/2`.

    **Example:**

    ```python
    sched = mj.Rates((jnp.inf, 20.0, 3.0))        # level 1 every step
    sched = mj.Rates(rates=table, times=edges)   # λ_l(t), table.shape == (m, k)
    ```
    """

    rates: Float[Array, "m k"]
    times: Float[Array, " m+1"] | None

    def __init__(self, rates: NumbersLike, times: NumbersLike | None = None):
        table, times = binned_table(rates, times, "rates", "rate", "Rates")
        value = concrete_or_none(table)
        if value is None:
            # Traced (under jit, vmap or grad): checked when the program runs.
            table = eqx.error_if(
                table,
                ~jnp.all(table >= 0),  # also catches NaN
                "Rates: `rates` must be non-negative and not NaN (inf for every step).",
            )
        elif not np.all(value >= 0):  # also catches NaN
            what = "non-negative and not NaN (events per unit time, inf for every step)"
            raise checks.fail("Rates", "rates", what, value.tolist())
        self.rates = table
        self.times = times

    @property
    def num_levels(self) -> int:
        return self.rates.shape[-1]

    def rate(self, t: ArrayLike) -> Float[Array, " k"]:
        """The rates `λ_l(t)` at time `t`."""
        return bin_lookup(self.rates, self.times, t)

    def probabilities(self, t, h):
        h = jnp.asarray(h)
        lam = self.rate(t + h / 2)
        # inf · |h| = inf, so infinite rates give p = 1 for any non-zero step.
        return jnp.minimum(1, lam * jnp.abs(h).astype(lam.dtype))

    def always_fires(self, h):
        value = concrete_or_none(self.rates)
        if value is None:  # traced: nothing is known before tracing
            return (False,) * self.num_levels
        return tuple(
            bool(np.all(value[:, l] * abs(h) >= 1)) for l in range(value.shape[1])
        )

    def scale(self, factor: float) -> Rates:
        """The same schedule with every rate multiplied by `factor`.

        Scaling all rates up by `s` divides the variance ML-EM adds by about `s`.
        """
        return (
            Rates(self.rates * factor, self.times)
            if self.times is not None
            else (Rates(self.rates[0] * factor))
        )


class LogitProbabilities(AbstractSchedule):
    """Learnable time-dependent probabilities `p_l(t) = sigmoid(logits[i, l])` on time
    bins `i`: the parameterisation `learn_schedule` optimises.

    **Arguments:**

    - `logits`: shape `(k,)` (constant in time) or `(m, k)` with `times`. `+inf`
        means "every step" (`p = 1`, never learned), `-inf` "never".
    - `times`: optional bin edges, shape `(m + 1,)`, strictly increasing; bin `i`
        holds on `[times[i], times[i+1])`, times outside use the first or last bin,
        and a step reads its bin at its midpoint `t + h/2` (as `Rates`).

    Unlike `Rates`, the probabilities do not depend on the step size: a learned
    schedule is tuned for the number of steps it was learned at.
    """

    logits: Float[Array, "m k"]
    times: Float[Array, " m+1"] | None

    def __init__(self, logits: NumbersLike, times: NumbersLike | None = None):
        logits, times = binned_table(
            logits, times, "logits", "logit", "LogitProbabilities"
        )
        value = concrete_or_none(logits)
        if value is not None and np.any(np.isnan(value)):
            what = "free of NaN"
            raise checks.fail("LogitProbabilities", "logits", what, value.tolist())
        self.logits = logits
        self.times = times

    @property
    def num_levels(self) -> int:
        return self.logits.shape[-1]

    def logit(self, t: ArrayLike) -> Float[Array, " k"]:
        """The logits at time `t`."""
        return bin_lookup(self.logits, self.times, t)

    def probabilities(self, t, h):
        return jax.nn.sigmoid(self.logit(jnp.asarray(t) + jnp.asarray(h) / 2))

    def always_fires(self, h):
        del h
        value = concrete_or_none(self.logits)
        if value is None:  # traced: nothing is known before tracing
            return (False,) * self.num_levels
        return tuple(bool(np.all(value[:, l] == np.inf)) for l in range(value.shape[1]))

    @classmethod
    def from_schedule(
        cls,
        schedule: AbstractSchedule,
        *,
        t0: float,
        t1: float,
        num_steps: int,
        times: NumbersLike | None = None,
        num_bins: int = 8,
        min_probability: float = 1e-4,
    ) -> LogitProbabilities:
        """The logits of `schedule`'s probabilities on the step grid, averaged per bin.

        **Arguments:**

        - `schedule`: any schedule, e.g. `Calibration.schedule(budget=...)`.
        - `t0`, `t1`, `num_steps`: the grid it will be used on.
        - `times`: bin edges (default: the schedule's own `times` if it has them,
            else `num_bins` equal bins on the interval).
        - `min_probability`: probabilities are clipped from below to this, so every
            level can still be learned (a zero probability has zero gradient).

        Levels firing at every step in a bin keep `p = 1` (logit `+inf`).
        """
        check_grid("LogitProbabilities.from_schedule", t0, t1, num_steps)
        if times is None:
            times = getattr(schedule, "times", None)
        if times is None:
            times = np.linspace(min(t0, t1), max(t0, t1), num_bins + 1)
        times = np.asarray(times, np.float64)
        h = (t1 - t0) / num_steps
        ts = t0 + h * np.arange(num_steps)
        probs = np.asarray(
            jax.vmap(lambda t: schedule.probabilities(t, h))(jnp.asarray(ts)),
            np.float64,
        )
        bins = np.clip(
            np.searchsorted(times, ts + h / 2, side="right") - 1, 0, len(times) - 2
        )
        logits = np.zeros((len(times) - 1, probs.shape[1]))
        for b in range(len(times) - 1):
            rows = probs[bins == b]
            if rows.shape[0] == 0:  # a bin no step falls in: use the nearest step
                rows = probs[
                    [int(np.argmin(np.abs(ts + h / 2 - times[b : b + 2].mean())))]
                ]
            if not np.all(rows >= 0):
                raise ValueError("LogitProbabilities.from_schedule: negative p.")
            p = rows.mean(axis=0)
            always = np.all(rows >= 1, axis=0)
            p = np.clip(p, min_probability, 1 - 1e-7)
            logits[b] = np.where(always, np.inf, np.log(p) - np.log1p(-p))
        dtype = jnp.float32
        return cls(jnp.asarray(logits, dtype), jnp.asarray(times, dtype))


class Stitch(AbstractSchedule):
    """Trajectory stitching (T-Stitch): one level alone on each segment of the solve.

    Level `levels[i]` (0-based) runs alone — no correction, no draw — from the
    `i`-th switch time to the next, in the order the solve from `t0` to `t1` passes
    them. With `levels=(0, 4)`, `switch_times=(0.5,)`, `t0=1.0`, `t1=0.0`, a
    reverse-time solve runs level 1 while `t > 0.5` and level 5 after: T-Stitch's
    small network for the early, noisy steps and the large one for the rest. Any
    order is allowed (`(4, 0)` runs the large network first) and so are several
    switches. A step belongs to the segment holding its midpoint `t + h/2`.

    It is the `p ∈ {0, 1}` corner of the step's base level (the lowest level with
    `p > 0`, see `mlem_jax._step.level_draws`): on segment `i` the probabilities are
    `one_hot(levels[i])`, so the levels below it are not evaluated and every
    correction above it is dropped. It works with every solver and sampler that
    takes a schedule (`mlem_solve`, `MLEMSolver`, `mlem_jax.diffusion.mlem_sample`);
    no `key` is needed by the draws (a solve still wants one for its noise).

    Reference: Pan et al., "T-Stitch: Accelerating Sampling in Pre-trained Diffusion
    Models with Trajectory Stitching" (2024).

    **Arguments:**

    - `num_levels`: the number of levels of the ladder.
    - `levels`: the level (0-based index) of each segment, in solve order.
    - `switch_times`: `len(levels) − 1` times where the solve moves to the next
        segment, in the order the solve passes them, within `[t0, t1]`.
    - `t0`, `t1`: the solve's interval (`t1 < t0` for reverse time).

    Use `Stitch.from_fractions` to switch after a fraction of a grid's steps.
    """

    size: int = eqx.field(static=True)
    levels: tuple[int, ...] = eqx.field(static=True)
    switch_times: Float[Array, " s"]
    direction: float = eqx.field(static=True)

    def __init__(
        self,
        num_levels: int,
        levels,
        switch_times: NumbersLike = (),
        *,
        t0: float,
        t1: float,
    ):
        self.size = checks.integer("Stitch", "num_levels", num_levels)
        self.levels = _stitch_levels(levels, self.size)
        t0c, t1c = _interval(t0, t1)
        switch = _as_float_array(switch_times, "switch_times", "Stitch").reshape(-1)
        n = len(self.levels) - 1
        if switch.shape[0] != n:
            what = f"len(levels) - 1 = {n} times (one per switch)"
            raise checks.fail("Stitch", "switch_times", what, switch.tolist())
        value = concrete_or_none(switch)
        if value is not None:
            lo, hi = min(t0c, t1c), max(t0c, t1c)
            interval = f"from t0 = {t0c:g} to t1 = {t1c:g}"
            inside = np.all((value >= lo) & (value <= hi))
            if not (np.all(np.isfinite(value)) and inside):
                what = f"in the interval [{lo:g}, {hi:g}] {interval}"
                raise checks.fail("Stitch", "switch_times", what, value.tolist())
            if not np.all(np.diff(value) * np.sign(t1c - t0c) >= 0):
                what = f"in the order the solve {interval} passes them"
                raise checks.fail("Stitch", "switch_times", what, value.tolist())
        self.switch_times = switch
        self.direction = float(np.sign(t1c - t0c))

    @classmethod
    def from_fractions(
        cls, num_levels: int, levels, fractions: NumbersLike, *, grid: NumbersLike
    ) -> Stitch:
        """The stitch that moves to `levels[i + 1]` after `round(fractions[i]·N)` of
        the `N` steps of `grid` (the `N + 1` step times from `t0` to `t1`: e.g.
        `mlem_jax.diffusion.time_grid(...)`, or `jnp.linspace(t0, t1, N + 1)` for
        `mlem_solve`'s uniform grid). T-Stitch's "first 40% of the steps with the
        small network" is `Stitch.from_fractions(k, (0, k - 1), (0.4,), grid=ts)`.

        **Arguments:** `num_levels` and `levels` as `Stitch`; `fractions`:
        `len(levels) − 1` fractions in `[0, 1]`, non-decreasing; `grid`: the step
        times, strictly monotone.
        """
        where = "Stitch.from_fractions"
        ts = np.asarray(_as_float_array(grid, "grid", where))
        ok = ts.ndim == 1 and ts.shape[0] >= 2 and np.all(np.isfinite(ts))
        steps = np.diff(ts) if ok else ts
        if not (ok and (np.all(steps > 0) or np.all(steps < 0))):
            what = "finite and strictly monotone step times t_0, ..., t_N (1-D, N ≥ 1)"
            raise checks.fail(where, "grid", what, ts.tolist())
        f = np.asarray(_as_float_array(fractions, "fractions", where)).reshape(-1)
        in_range = np.all(np.isfinite(f)) and np.all((f >= 0) & (f <= 1))
        if not in_range or np.any(np.diff(f) < 0):
            what = "non-decreasing fractions of the steps, in [0, 1]"
            raise checks.fail(where, "fractions", what, f.tolist())
        n = ts.shape[0] - 1
        switch = ts[np.rint(f * n).astype(int)]
        return cls(num_levels, levels, switch, t0=float(ts[0]), t1=float(ts[-1]))

    @property
    def num_levels(self) -> int:
        return self.size

    def segment(self, t: ArrayLike) -> Array:
        """The index of the segment holding time `t`."""
        t = jnp.asarray(t, self.switch_times.dtype)
        passed = (t - self.switch_times) * self.direction > 0
        return jnp.sum(passed.astype(jnp.int32))

    def probabilities(self, t, h):
        h = jnp.asarray(h)
        level = jnp.asarray(self.levels)[self.segment(jnp.asarray(t) + h / 2)]
        return jax.nn.one_hot(level, self.size, dtype=self.switch_times.dtype)

    def always_fires(self, h):
        del h
        return tuple(all(s == l for s in self.levels) for l in range(self.size))


def _stitch_levels(levels, k: int) -> tuple[int, ...]:
    try:
        values = tuple(levels)
    except TypeError:
        values = None
    if not values or not all(_is_int(l) and 0 <= l < k for l in values):
        what = f"a non-empty sequence of level indices in [0, {k}) (one per segment)"
        raise checks.fail("Stitch", "levels", what, levels)
    return tuple(int(l) for l in values)


def _interval(t0, t1) -> tuple[float, float]:
    try:
        t0c, t1c = float(t0), float(t1)
    except (TypeError, ValueError):
        got = f"{t0!r}, {t1!r}"
        raise TypeError(f"Stitch: `t0` and `t1` must be numbers; got {got}.") from None
    if not (math.isfinite(t0c) and math.isfinite(t1c)) or t0c == t1c:
        got = f"{t0c}, {t1c}"
        raise ValueError(f"Stitch: `t0` and `t1` must be finite and differ; got {got}.")
    return t0c, t1c


def _is_int(x) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


class Periodic(eqx.Module):
    """The deterministic multilevel variant: level `l` runs every `periods[l]`-th
    step, and in between its last correction is reused.

    At step `n` the data prediction is `Σ_l Δ_l`, where `Δ_l = x̂_0^l − x̂_0^{l−1}` is
    computed afresh at the steps `n ≡ 0 (mod periods[l])` and otherwise is the value
    from the last such step. With two levels and `periods = (1, m)`: the top network
    every `m`-th step, and in between the cheap network plus the last top-level
    correction `x̂_0^2 − x̂_0^1`. The draws are `mlem_jax`'s (`ladder_draws`, compute
    skipping by `mlem_drift`), so `info.evaluations`
    counts what ran: level `l` at the steps where it or level `l + 1` is due.

    Unlike the randomized telescope it is biased: by the change of the stale
    corrections since they were computed (for `Δ_l` depending on `t` alone, exactly
    the single-network sampler with `x̂_0^top − Σ_l (Δ_l(t_n) − Δ_l(t_{a_l(n)}))`,
    `a_l(n)` the last step at which level `l` ran). Pass it as `mlem_jax.diffusion.mlem_sample`'s
    `schedule`; no `key` is needed with a deterministic sampler. `periods = (1, …, 1)`
    is the sampler with the top network.

    **Arguments:**

    - `periods`: one positive int per level, cheapest first.
    """

    periods: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, periods):
        what = "a non-empty sequence of positive ints, one per level"
        try:
            values = tuple(periods)
        except TypeError:
            raise checks.fail("Periodic", "periods", what, periods, TypeError) from None
        if not values or not all(_is_int(m) and m >= 1 for m in values):
            raise checks.fail("Periodic", "periods", what, periods)
        self.periods = tuple(int(m) for m in values)

    @property
    def num_levels(self) -> int:
        return len(self.periods)
