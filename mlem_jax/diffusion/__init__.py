"""Diffusion models: the VP-SDE, score matching, sampling drifts, and metrics.

Sampling is an ordinary (multilevel) SDE solve from `t = 1` to `t ≈ 0`:

```python
sde = mlem_jax.diffusion.VPSDE()
levels = mlem_jax.diffusion.make_levels(sde, models, y_example)
y0 = sde.prior_sample(key, y_example.shape)
x, info = mlem_jax.mlem_solve(levels, schedule, sde.diffusion, y0,
                              t0=1.0, t1=1e-3, num_steps=200, key=key)
```

or with the samplers practitioners use (DDIM, DPM-Solver++(2M), SDE-DPM-Solver++,
Euler/Heun), single-network or multilevel, on a parametrisation (`VPLinear`,
`VPCosine`, `VE`, `EDM`) and a time grid:

```python
param = mlem_jax.diffusion.VPLinear()
x, info = mlem_jax.diffusion.sample(eps_net, param, DPMSolverPP2M(), y0,
                                    t0=1.0, t1=1e-3, num_steps=20, grid="logsnr")
x, info = mlem_jax.diffusion.mlem_sample(levels, schedule, param, SDEDPMSolverPP1(),
                                         y0, t0=1.0, t1=1e-3, num_steps=50, key=key)
```

Samplers by name: `mlem_jax.diffusion.sampler("dpm++2m")`, every name in `SAMPLERS`.
"""

from .._schedules import Periodic as Periodic
from ._calibrate_sampler import calibrate_sampler as calibrate_sampler
from ._guidance import (
    autoguidance_levels as autoguidance_levels,
    cfg_levels as cfg_levels,
    guidance_interval as guidance_interval,
)
from ._levels import (
    drift_flops as drift_flops,
    ladder_drifts as ladder_drifts,
    make_levels as make_levels,
)
from ._metrics import (
    drift_errors as drift_errors,
    kernel_distance as kernel_distance,
    kernel_distance_difference as kernel_distance_difference,
    mmd as mmd,
    sliced_wasserstein as sliced_wasserstein,
    strong_error as strong_error,
)
from ._mixture import (
    GaussianMixture as GaussianMixture,
    MixtureEps as MixtureEps,
    MixtureQuality as MixtureQuality,
    MixtureScore as MixtureScore,
    mixture_flops as mixture_flops,
)
from ._param import (
    EDM as EDM,
    VE as VE,
    AbstractParametrisation as AbstractParametrisation,
    VPCosine as VPCosine,
    VPLinear as VPLinear,
    convert_prediction as convert_prediction,
)
from ._quality import (
    ClassQuality as ClassQuality,
    FeatureNet as FeatureNet,
    SampleQuality as SampleQuality,
    digits_class_quality as digits_class_quality,
    digits_quality as digits_quality,
    train_feature_net as train_feature_net,
)
from ._registry import (
    SAMPLERS as SAMPLERS,
    sampler as sampler,
)
from ._samplers import (
    DDIM as DDIM,
    GRIDS as GRIDS,
    AbstractSampler as AbstractSampler,
    DPMSolverPP2M as DPMSolverPP2M,
    Euler as Euler,
    Heun as Heun,
    SDEDPMSolverPP1 as SDEDPMSolverPP1,
    SDEDPMSolverPP2M as SDEDPMSolverPP2M,
    mlem_sample as mlem_sample,
    sample as sample,
    time_grid as time_grid,
)
from ._score import (
    EpsilonScore as EpsilonScore,
    GaussianScore as GaussianScore,
    ProbabilityFlowDrift as ProbabilityFlowDrift,
    ReverseDrift as ReverseDrift,
    distillation_loss as distillation_loss,
    dsm_loss as dsm_loss,
    probability_flow_drift as probability_flow_drift,
    reverse_drift as reverse_drift,
)
from ._sde import VPSDE as VPSDE
