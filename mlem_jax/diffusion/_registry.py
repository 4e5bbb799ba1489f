"""The samplers by name: what `mlem-jax sample --sampler NAME` and a config file
name, mapped to the sampler classes of `mlem_jax.diffusion`.

```python
sampler = mlem_jax.diffusion.sampler("dpm++2m")          # DPMSolverPP2M()
sampler = mlem_jax.diffusion.sampler("ddim", eta=0.5)    # DDIM(eta=0.5)
sorted(mlem_jax.diffusion.SAMPLERS)                      # every name
```
"""

from __future__ import annotations

import types
from collections.abc import Mapping

from .. import _checks as checks
from ._samplers import (
    DDIM,
    AbstractSampler,
    DPMSolverPP2M,
    Euler,
    Heun,
    SDEDPMSolverPP1,
    SDEDPMSolverPP2M,
)

SAMPLERS: Mapping[str, type[AbstractSampler]] = types.MappingProxyType(
    {
        "ddim": DDIM,
        "dpm++2m": DPMSolverPP2M,
        "sde-dpm++1": SDEDPMSolverPP1,
        "sde-dpm++2m": SDEDPMSolverPP2M,
        "euler": Euler,
        "heun": Heun,
    }
)
"""Every sampler of `mlem_jax.diffusion` by its short name (lower case, as
diffusers and k-diffusion spell them): `ddim` (`DDIM`, deterministic by default),
`dpm++2m` (`DPMSolverPP2M`), `sde-dpm++1` (`SDEDPMSolverPP1`), `sde-dpm++2m`
(`SDEDPMSolverPP2M`), `euler` and `heun` (on the probability-flow ODE). Read-only;
`sampler(name)` also takes the class names."""


def sampler(name: str, **kwargs) -> AbstractSampler:
    """The sampler called `name`, built with `kwargs` (e.g. `eta` for `ddim`).

    **Arguments:**

    - `name`: a key of `SAMPLERS` or a sampler's class name, in any case
        (`"dpm++2m"`, `"DPMSolverPP2M"`).
    - `kwargs`: the sampler's own arguments.

    **Raises:** `ValueError` naming the known samplers for an unknown `name`, and
    `TypeError` for arguments the sampler does not take.
    """
    checks.instance("sampler", "name", name, str, "a string")
    key = name.strip().lower()
    by_class = {cls.__name__.lower(): cls for cls in SAMPLERS.values()}
    cls = SAMPLERS.get(key) or by_class.get(key)
    if cls is None:
        what = f"one of {', '.join(SAMPLERS)} (or their class names)"
        raise checks.fail("sampler", "name", what, name)
    try:
        return cls(**kwargs)
    except TypeError:
        what = f"the arguments {cls.__name__} takes"
        raise checks.fail(
            "sampler", "kwargs", what, sorted(kwargs), TypeError
        ) from None
