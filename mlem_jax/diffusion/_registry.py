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
    if not isinstance(name, str):
        raise TypeError(f"sampler: `name` must be a string; got {type(name).__name__}.")
    key = name.strip().lower()
    by_class = {cls.__name__.lower(): cls for cls in SAMPLERS.values()}
    cls = SAMPLERS.get(key) or by_class.get(key)
    if cls is None:
        raise ValueError(
            f"sampler: no sampler called {name!r}; known: {', '.join(SAMPLERS)} "
            "(or their class names)."
        )
    try:
        return cls(**kwargs)
    except TypeError:
        raise TypeError(
            f"sampler: {cls.__name__} does not take the arguments {sorted(kwargs)}."
        ) from None
