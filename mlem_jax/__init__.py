"""mlem_jax: the Multilevel Euler–Maruyama method in JAX.

ML-EM solves SDEs and ODEs with a hierarchy of drift approximations `f^1, …, f^k` of
increasing accuracy and cost, evaluating the expensive levels only rarely through the
randomized telescope `Σ_l (B_l/p_l)(f^l − f^{l−1})`, `B_l ~ Bernoulli(p_l)`.

Reference: A. Jacot, "Polynomial Speedup in Diffusion Models with the Multilevel
Euler-Maruyama Method", arXiv:2603.24594 (2026).
"""

import importlib
import typing

from ._brownian import (
    brownian_increments as brownian_increments,
    coarsen_increments as coarsen_increments,
    sample_increments as sample_increments,
)
from ._calibrate import calibrate as calibrate
from ._calibration import Calibration as Calibration
from ._cost import (
    count_flops as count_flops,
    time_call as time_call,
    time_in_scan as time_in_scan,
)
from ._learn import (
    LearnedSchedule as LearnedSchedule,
    draw_log_prob as draw_log_prob,
    expected_cost as expected_cost,
    learn_schedule as learn_schedule,
    schedule_gradient as schedule_gradient,
)
from ._levels import Levels as Levels, Refinement as Refinement
from ._path import StepBrownianPath as StepBrownianPath
from ._pricing import Prediction as Prediction
from ._schedules import (
    AbstractSchedule as AbstractSchedule,
    FixedProbabilities as FixedProbabilities,
    LogitProbabilities as LogitProbabilities,
    Periodic as Periodic,
    Rates as Rates,
    Stitch as Stitch,
)
from ._shard import (
    ShardedPath as ShardedPath,
    ShardedSolveInfo as ShardedSolveInfo,
    device_key as device_key,
    mlem_solve_sharded as mlem_solve_sharded,
    process_rows as process_rows,
)
from ._solve import (
    SolveInfo as SolveInfo,
    em_solve as em_solve,
    mlem_solve as mlem_solve,
)
from ._solver import MLEMSolver as MLEMSolver
from ._term import MultilevelTerm as MultilevelTerm
from ._verdict import Verdict as Verdict

__version__ = "0.1.0"

# The application layers (`diffusion`, `nn`, `data`, `training`) sit on the method and
# pull in the UNet, optax and PIL; they load on first access, so `import mlem_jax`
# imports the method only.
_SUBMODULES = ("data", "diffusion", "nn", "training")

if typing.TYPE_CHECKING:
    from . import (
        data as data,
        diffusion as diffusion,
        nn as nn,
        training as training,
    )


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
