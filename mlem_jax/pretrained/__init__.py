"""Pretrained UNet ladders shipped with mlem_jax, and the one loader of ladder
directories (the format's reading half; `mlem_jax.training` writes it).

Four ladders ship: `digits`, `digits_mixture` and `digits_cond` (below), and
`digits_wide`, five UNets of widths 4, 8, 16, 24, 48 (123× from the cheapest to the
top in FLOPs) on the same digits, trained and distilled with

    mlem-jax train --dataset digits --widths 4,8,16,24,48 --channel-mults 1,2 \
        --steps 1500 --batch-size 128 --lr 2e-3 --warmup-steps 100 \
        --ema-decay 0.995 --seed 0 --out ladders/wide
    mlem-jax distill --ladder ladders/wide --out ladders/wide-distilled \
        --steps 1000 --lr 1e-3 --seed 0
    python -m mlem_jax.pretrained.pack ladders/wide-distilled \
        mlem_jax/pretrained/digits_wide

(about 50 minutes of this project's 2-core CPU for both commands, shared with other
work; see docs/results.md).

`digits_cond` is class-conditional (issue 27): the widths and training of
`digits_wide` with a class embedding (10 classes, null label 10, label dropout
0.1), for classifier-free guidance (`mlem-jax sample --ladder digits_cond --class 3
--guidance 2`, `mlem_jax.diffusion.cfg_levels`), trained and distilled with

    mlem-jax train --dataset digits --conditional --label-dropout 0.1 \
        --widths 4,8,16,24,48 --channel-mults 1,2 --num-res-blocks 1 --steps 1500 \
        --batch-size 128 --lr 2e-3 --warmup-steps 100 --ema-decay 0.995 \
        --checkpoint-every 250 --seed 0 --out ladders/cond
    mlem-jax distill --ladder ladders/cond --out ladders/cond-distilled \
        --steps 1000 --lr 1e-3 --seed 0
    python -m mlem_jax.pretrained.pack ladders/cond-distilled \
        mlem_jax/pretrained/digits_cond

(21 + 16 minutes on one of this project's 2 CPU cores, shared; docs/conditional.md).

`digits_mixture` is a ladder on a KNOWN distribution: five UNets of widths 2, 4, 8,
16, 32 (189× in FLOPs) trained on fresh exact draws of a 256-component Gaussian
mixture fitted to the digits (`mlem_jax.data.digits_mixture()`; its arrays and
entropy ship in `mixture.npz`: `mixture()`, `quality("digits_mixture")`), with

    mlem-jax train --dataset digits_mixture --components 256 --widths 2,4,8,16,32 \
        --channel-mults 1,2 --num-res-blocks 1 --steps 2000 --batch-size 128 \
        --lr 2e-3 --warmup-steps 100 --ema-decay 0.995 --checkpoint-every 250 \
        --seed 0 --out ladders/mixture
    python -m mlem_jax.pretrained.pack ladders/mixture mlem_jax/pretrained/digits_mixture

(not distilled). The exact score (`mlem_jax.diffusion.MixtureEps`) is its
"infinitely large" level.

The `digits` ladder (5 levels, UNet widths 8, 12, 16, 24, 32, on the 8×8 digits of
`sklearn.datasets.load_digits`, VP-SDE) was trained with

    mlem-jax train --dataset digits --widths 8,12,16,24,32 --channel-mults 1,2 \
        --num-res-blocks 1 --steps 1500 --batch-size 128 --lr 2e-3 \
        --warmup-steps 100 --ema-decay 0.995 --checkpoint-every 250 --seed 0 \
        --out /tmp/mlem_ladders/digits

(the `digits` entry of `benchmarks/train_ladders.py`) and packed (below); then its
four cheaper levels were distilled from the top one, starting from their trained
weights, with the packed ladder as the source,

    mlem-jax distill --ladder shipped --out /tmp/digits_distilled --steps 1500 \
        --lr 1e-3 --seed 0

and the result packed with
`python -m mlem_jax.pretrained.pack /tmp/digits_distilled mlem_jax/pretrained/digits`,
which stores every weight in float16 (half the size; `load_ladder` casts back to
float32). Independently trained levels each carry their own training error, so
neighbouring levels differed almost as much as the cheapest did from the top, and
ML-EM only matched Euler–Maruyama; distillation shrinks those differences (the
manifest records each level's held-out distillation loss before and after).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .. import _checks as checks
from ..nn import UNet

if TYPE_CHECKING:
    from ..diffusion import VPSDE

PRETRAINED_DIR = os.path.dirname(os.path.abspath(__file__))
NAMES = ("digits", "digits_wide", "digits_mixture", "digits_cond")
MIXTURE = "mixture.npz"
"""A ladder trained on a known distribution ships it next to its weights: the
arrays of a `mlem_jax.diffusion.GaussianMixture`, its fit arguments and its
negative-entropy estimate (`write_mixture`)."""
MIXTURE_NAMES = ("digits_mixture",)
"""Shipped ladders whose data distribution is known exactly (their `MIXTURE`)."""


def pretrained_path(name: str = "digits") -> str:
    """The directory of the shipped ladder `name` (one of `NAMES`)."""
    checks.choice("pretrained_path", "name", name, NAMES)
    return os.path.join(PRETRAINED_DIR, name)


# ------------------------------------------------------------ ladder directories

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _build_unet(image_shape, width, unet_kwargs, key) -> UNet:
    kw: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in unet_kwargs.items()
    }
    return UNet(tuple(image_shape), width, key=key, **kw)


def num_classes_from_manifest(manifest: dict[str, Any]) -> int | None:
    """The number of classes of a class-conditional ladder (its null label), or
    `None` for an unconditional one."""
    k = manifest["spec"].get("unet", {}).get("num_classes")
    return None if k is None else int(k)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _positive_ints(x, length=None) -> bool:
    return (
        isinstance(x, list)
        and len(x) > 0
        and (length is None or len(x) == length)
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in x)
    )


_REDO = (
    "the ladder directory is damaged: restore it from a copy, or retrain it "
    "(`mlem-jax train` with the same arguments resumes what is left)"
)


def _damaged(path: str, what: str) -> ValueError:
    """The error (to `raise`) for the ladder directory `path` whose manifest `what`."""
    return ValueError(f"{os.path.join(path, MANIFEST)!r} {what}; {_REDO}.")


_SPEC_FIELDS = (
    ("image_shape", lambda v: _positive_ints(v, 3), "3 positive ints"),
    ("widths", _positive_ints, "a list of positive ints"),
    ("unet", lambda v: isinstance(v, dict), "an object"),
    ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool), "an int"),
    (
        "sde",
        lambda v: (
            isinstance(v, dict)
            and _number(v.get("beta_min"))
            and _number(v.get("beta_max"))
            and 0 < v["beta_min"] < v["beta_max"]
        ),
        "an object with 0 < beta_min < beta_max",
    ),
)
"""What `read_manifest` asks of each field of `spec`: (name, test, expected)."""


def _level_fields(i: int):
    """What `read_manifest` asks of each field of `levels[i]`."""
    return (
        ("level", lambda v: v == i and not isinstance(v, bool), str(i)),
        ("width", lambda v: _positive_ints([v]), "an int"),
        ("flops_per_image", lambda v: _number(v) and v > 0, "a positive number"),
        (
            "file",
            lambda v: isinstance(v, str) and v and os.path.basename(v) == v,
            "a file name",
        ),
    )


def _check_fields(path: str, where: str, record: dict, fields) -> None:
    for name, ok, expected in fields:
        if not ok(value := record.get(name)):
            raise _damaged(path, f"has {where}{name} = {value!r}; expected {expected}")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ladder directory's manifest, without loading any weights.

    `path` is what [`load_ladder`][] takes: a ladder directory or the name of a
    shipped ladder (`resolve_ladder`). Raises `FileNotFoundError` if `path` is not a
    ladder directory, and a `ValueError` naming the bad file, what is wrong with it
    and what to do for a manifest that is not valid JSON, misses a field, has a
    field of the wrong type, or lists a weights file that is missing or empty.
    """
    path = resolve_ladder(path)[0]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"`path`: {path!r} is not a directory.")
    if not os.path.isfile(os.path.join(path, MANIFEST)):
        what = f"is not a ladder directory (no {MANIFEST})"
        write = "write one with `mlem-jax train --out DIR`"
        raise FileNotFoundError(f"`path`: {path!r} {what}; {write}.")
    manifest = _read_manifest_json(path)
    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        raise _damaged(path, "has no `spec` object")
    _check_fields(path, "spec.", spec, _SPEC_FIELDS)
    levels = manifest.get("levels")
    if not isinstance(levels, list):
        raise _damaged(path, "has no `levels` list")
    if not levels:
        what = f"has no finished level yet ({MANIFEST} lists none)"
        fix = (
            "finish training it (rerun the same `mlem-jax train` command) or delete it"
        )
        raise ValueError(f"ladder {path!r} {what}; {fix}.")
    for i, entry in enumerate(levels):
        _check_level(path, i, entry, spec["widths"])
    return manifest


def _read_manifest_json(path: str) -> dict[str, Any]:
    """The manifest of the ladder directory `path`, a JSON object of this format."""
    manifest_path = os.path.join(path, MANIFEST)
    try:
        with open(manifest_path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(path, f"is not valid JSON ({e})") from None
    except OSError as e:
        raise ValueError(f"{manifest_path!r} cannot be read: {e}.") from None
    if not isinstance(manifest, dict):
        what = f"holds a JSON {type(manifest).__name__}, not a ladder manifest"
        raise _damaged(path, what)
    if "format_version" not in manifest:
        raise _damaged(path, "has no `format_version`: it is not a ladder manifest")
    if (version := manifest["format_version"]) != FORMAT_VERSION:
        fix = "Use the mlem_jax version that wrote it, or retrain."
        what = f"has format_version {version!r}; this mlem_jax reads {FORMAT_VERSION}"
        raise ValueError(f"{manifest_path!r} {what}. {fix}")
    return manifest


def _check_level(path: str, i: int, entry, widths: list) -> None:
    """Refuse `levels[i]` of the manifest of `path` unless it lists a level of
    `widths[i]` (if the spec has it) whose weights file is there."""
    if not isinstance(entry, dict):
        raise _damaged(path, f"has levels[{i}] = {entry!r}; expected an object")
    _check_fields(path, f"levels[{i}].", entry, _level_fields(i))
    if i < len(widths) and entry["width"] != widths[i]:
        what = f"levels[{i}].width = {entry['width']!r} but spec.widths[{i}] = "
        raise _damaged(path, f"has {what}{widths[i]!r}; they must agree")
    weights = os.path.join(path, entry["file"])
    if not os.path.isfile(weights):
        listed = f"level {i}'s weights {weights!r} (listed in {MANIFEST})"
        raise ValueError(f"{listed} are missing; {_REDO}.")
    if os.path.getsize(weights) == 0:
        raise ValueError(f"level {i}'s weights {weights!r} are empty; {_REDO}.")


def load_ladder(
    path: str | os.PathLike | None = None,
) -> tuple[tuple[UNet, ...], dict[str, Any]]:
    """Read a ladder directory: a shipped one, or one written by
    [`mlem_jax.training.train_ladder`][] (`mlem-jax train`) or
    [`mlem_jax.training.distill_ladder`][]. The one ladder loader:
    `mlem_jax.training.load_ladder` is this function.

    **Arguments:**

    - `path`: a ladder directory (with `manifest.json`), or the name of a shipped
      ladder (`NAMES`: `"digits"`, `"digits_wide"`, ...; `"shipped"` is `"digits"`;
      a directory of that name in the working directory wins only if it holds a
      `manifest.json`); `None` loads the shipped `digits` ladder.

    **Returns:**

    `(models, manifest)`: the finished levels' EMA networks, narrowest first, and the
    manifest dict (`manifest["spec"]` holds architecture, SDE and dataset;
    `sde_from_manifest` and `param_from_manifest` build its SDE and
    parametrisation). Weights stored in a lower precision (the shipped ladders use
    float16) are cast back to the networks' dtype. Each network is an
    `f(t, y, args)` on one image or a batch, so it plugs into the samplers as it is,
    with the parametrisation it was trained with:

    ```python
    models, manifest = load_ladder("digits_wide")
    param = mlem_jax.training.param_from_manifest(manifest)  # VPLinear
    x, info = mlem_jax.diffusion.sample(models[-1], param, DPMSolverPP2M(), y0,
                                        t0=1.0, t1=1e-3, num_steps=20)
    ```

    A damaged ladder (a manifest that is not valid JSON or misses a field, a weights
    file that is missing, empty, truncated or of another architecture) raises a
    `ValueError` naming the file and what to do (see [`read_manifest`][]).
    """
    path = resolve_ladder(path)[0]
    manifest = read_manifest(path)
    spec = manifest["spec"]
    listed, planned = len(manifest["levels"]), len(spec["widths"])
    if listed != planned:
        # Fewer levels than widths: an unfinished training run, or a manifest that
        # lost an entry; either way the top network is not the ladder's top.
        what = f"lists {listed} level(s) but its spec.widths names {planned}"
        raise _damaged(path, f"{what} ({spec['widths']})")
    base = jr.key(spec["seed"])
    models = []
    for entry in manifest["levels"]:
        weights = os.path.join(path, entry["file"])
        level, key = entry["level"], jr.fold_in(base, 2 * entry["level"])
        try:
            skeleton = _build_unet(
                spec["image_shape"], entry["width"], spec["unet"], key
            )
        except Exception as e:  # bad UNet hyperparameters in spec.unet
            what = f"has spec.unet = {spec['unet']!r}, not a UNet for level {level}"
            raise _damaged(path, f"{what} ({type(e).__name__}: {e})") from None
        models.append(_read_weights(weights, skeleton, level))
    return tuple(models), manifest


_RESTORE = "restore the file from a copy or retrain the ladder"


def _read_weights(weights: str, skeleton, level: int):
    """Deserialise one level's weights into `skeleton`, all of the file and no more."""
    what = f"level {level}'s weights {weights!r} are"
    try:
        with open(weights, "rb") as f:
            model = eqx.tree_deserialise_leaves(
                f, skeleton, filter_spec=_cast_to_skeleton
            )
            trailing = f.read(1)
    except Exception as e:  # equinox/numpy raise assorted errors on bad files
        what += " truncated or corrupt, or were written for another architecture"
        raise ValueError(f"{what} ({type(e).__name__}: {e}); {_RESTORE}.") from None
    if trailing:
        why = "longer than the architecture in the manifest: the file or the manifest"
        why += " is damaged"
        raise ValueError(f"{what} {why}; {_RESTORE}.")
    return model


def _cast_to_skeleton(f, x):
    """Deserialise an array leaf with the dtype of the skeleton's leaf."""
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        return jnp.asarray(np.load(f), dtype=x.dtype)
    return eqx.default_deserialise_filter_spec(f, x)


def sde_from_manifest(manifest: dict[str, Any]) -> VPSDE:
    """The [`mlem_jax.diffusion.VPSDE`][] a ladder was trained with."""
    from ..diffusion import VPSDE

    sde = manifest["spec"]["sde"]
    return VPSDE(beta_min=sde["beta_min"], beta_max=sde["beta_max"])


def param_from_manifest(manifest: dict[str, Any]):
    """The [`mlem_jax.diffusion.VPLinear`][] parametrisation of the VP-SDE a ladder
    was trained with: what `mlem_jax.diffusion.sample` and `mlem_sample` take with
    its networks (which predict `ε`)."""
    from ..diffusion import VPLinear

    sde = manifest["spec"]["sde"]
    return VPLinear(beta_min=sde["beta_min"], beta_max=sde["beta_max"])


def resolve_ladder(path: str | os.PathLike | None) -> tuple[str, str | None]:
    """`(directory, name)`: the directory of the ladder `path` names and, if it is
    a shipped ladder, its name (`None` and `"shipped"` give the shipped `digits`;
    a name in `NAMES` gives that shipped ladder unless a ladder directory of that
    name, one holding a `manifest.json`, exists here: an unrelated folder called
    `digits` does not hide the shipped ladder; anything else is a directory, name
    `None`)."""
    if path is None or path == "shipped":
        return pretrained_path(), "digits"
    if (
        isinstance(path, str)
        and path in NAMES
        and not os.path.isfile(os.path.join(path, "manifest.json"))
    ):
        return pretrained_path(path), path
    return os.fspath(path), None


T0, T1 = 1.0, 1e-3
"""The reverse-time sampling interval of the shipped ladders' VP-SDE."""

MIN_PROBABILITY = 0.02
"""Floor on every level's firing probability in the CLI's calibrated schedules. On
the reverse SDE of a diffusion model the calibrated rates near t = 0 are so small
that a rare correction, weighted by 1/p, throws the sample off the data and the solve
blows up (shipped digits ladder, 64 steps, 16 top-level evaluations: RMS added error
99 with blow-ups to 561, against 2.9 with this floor at the same cost)."""


class Ladder(eqx.Module):
    """A loaded ladder as an SDE problem: drifts with FLOP costs, the VP-SDE, shape."""

    levels: Any
    sde: Any
    shape: tuple[int, ...] = eqx.field(static=True)
    dataset: dict = eqx.field(static=True)
    flops_per_image: tuple[float, ...] = eqx.field(static=True)
    distilled: bool = eqx.field(static=True, default=False)


def load_ladder_levels(path: str | None, batch: int, drift: Any = None) -> Ladder:
    """Load a ladder directory (default: the shipped `digits` ladder) as `Levels`.

    Level costs are the networks' FLOPs for one batched evaluation on `batch` images
    (from the manifest, measured by XLA's cost analysis at training time). `drift`:
    `mlem_jax.diffusion.ReverseDrift` (default) or `ProbabilityFlowDrift`.
    """
    from .._levels import Levels
    from ..diffusion import ReverseDrift, ladder_drifts

    models, manifest = load_ladder(path)
    sde = sde_from_manifest(manifest)
    flops = tuple(float(lv["flops_per_image"]) for lv in manifest["levels"])
    fns = ladder_drifts(sde, models, ReverseDrift if drift is None else drift)
    return Ladder(
        Levels(fns, tuple(f * batch for f in flops)),
        sde,
        tuple(manifest["spec"]["image_shape"]),
        manifest["spec"].get("dataset", {}),
        flops,
        "distillation" in manifest,
    )


def calibrate_ladder(
    ladder: Ladder, y0, *, key, pilot_steps: int, num_bins: int, pilot_keys: int
):
    """`mlem_jax.calibrate` on a loaded ladder's reverse SDE over the sampling
    interval (`T0` to `T1`), with the manifest's FLOP costs (nothing measured).

    **Arguments:**

    - `ladder`: from `load_ladder_levels`.
    - `y0`: the pilots' prior draws, shape `(batch, *ladder.shape)`.
    - `key`, `pilot_steps`, `num_bins`, `pilot_keys`: `calibrate`'s `key`,
      `num_steps`, `num_bins` and `pilot_keys`.
    """
    from .._calibrate import calibrate

    return calibrate(
        ladder.levels,
        ladder.sde.diffusion,
        y0,
        t0=T0,
        t1=T1,
        num_steps=pilot_steps,
        key=key,
        num_bins=num_bins,
        pilot_keys=pilot_keys,
        measure_costs=False,
    )


CALIBRATION = "calibration.json"


def save_calibration(cal, path: str | os.PathLike, per_image_costs) -> None:
    """Write a `mlem_jax.Calibration` as JSON (`Calibration.to_json`, atomically),
    with costs per image so it applies to any batch size (rates depend only on cost
    ratios) and no measured FLOPs or seconds (they belong to one batch and device).

    **Arguments:**

    - `cal`: the `Calibration` to store.
    - `path`: the JSON file to write.
    - `per_image_costs`: the ladder's cost of one evaluation on one image, per level.
    """
    import dataclasses

    from .._io import atomic_write

    stored = dataclasses.replace(
        cal, costs=tuple(float(c) for c in per_image_costs), flops=None, seconds=None
    )
    text = stored.to_json() + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")


def load_calibration(path: str | os.PathLike):
    """Read a `mlem_jax.Calibration` written by `save_calibration` (costs per image;
    `Calibration.from_json`).

    **Returns:** the `Calibration`, or `None` if `path` does not exist.
    """
    from .._calibration import Calibration

    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, ValueError) as e:  # unreadable, or not text
        problem = f"not a valid calibration ({type(e).__name__}: {e})"
    else:
        try:
            return Calibration.from_json(text)
        except ValueError as e:
            problem = str(e)
    fix = "(the pilots then run instead) or rewrite it with `calibrate_shipped()`"
    raise ValueError(f"{os.fspath(path)!r} is {problem}; delete it {fix}.")


def calibrate_shipped(
    name: str = "digits", batch: int = 32, pilot_steps: int = 32, seed: int = 0
):
    """Run `mlem_jax.calibrate` on the shipped ladder `name` and store the result as
    `calibration.json` next to it (what `mlem-jax demo` and `sample` use for it).

        python -c "from mlem_jax.pretrained import calibrate_shipped; calibrate_shipped()"
    """
    path = pretrained_path(name)
    ladder = load_ladder_levels(path, batch)
    k_y0, k_cal = jr.split(jr.key(seed))
    y0 = ladder.sde.prior_sample(k_y0, (batch, *ladder.shape))
    cal = calibrate_ladder(
        ladder, y0, key=k_cal, pilot_steps=pilot_steps, num_bins=8, pilot_keys=8
    )
    print(cal)
    save_calibration(cal, os.path.join(path, CALIBRATION), ladder.flops_per_image)
    return cal


def write_mixture(
    path: str | os.PathLike,
    mixture: Any,
    *,
    fit: dict[str, Any],
    key: Any,
    num: int = 1_000_000,
) -> None:
    """Write a `GaussianMixture` with its fit arguments and its negative entropy
    `E log p`, estimated from `num` exact draws of `key`, as one `.npz` (atomically).

    **Arguments:**

    - `path`: the file (e.g. `<ladder>/mixture.npz`).
    - `mixture`: the `mlem_jax.diffusion.GaussianMixture`.
    - `fit`: JSON-able arguments that rebuild it (`mlem_jax.data.digits_mixture`'s).
    - `key`, `num`: the entropy estimate's draws.
    """
    import io

    from .._io import atomic_write

    entropy, stderr = mixture.entropy(key, num)
    arrays: dict[str, Any] = {
        name: np.asarray(getattr(mixture, name))
        for name in ("log_weights", "means", "basis", "variances", "floor")
    }
    info = {
        "fit": fit,
        "event_shape": list(mixture.event_shape),
        "neg_entropy": -entropy,
        "neg_entropy_stderr": stderr,
        "entropy_samples": int(num),
    }
    buffer = io.BytesIO()
    arrays["info"] = np.asarray(json.dumps(info))
    np.savez_compressed(buffer, **arrays)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def read_mixture(path: str | os.PathLike):
    """`(mixture, info)` from a file written by `write_mixture`: the
    `GaussianMixture` and its record (`fit`, `neg_entropy`, `neg_entropy_stderr`,
    `entropy_samples`). A damaged file raises a `ValueError` naming it."""
    from ..diffusion import GaussianMixture

    try:
        with np.load(path) as f:
            info = json.loads(str(f["info"]))
            arrays: dict[str, Any] = {
                k: jnp.asarray(f[k])
                for k in ("log_weights", "means", "basis", "variances", "floor")
            }
        mixture = GaussianMixture(**arrays, event_shape=tuple(info["event_shape"]))
        return mixture, info
    except Exception as e:  # numpy/zip/json raise assorted errors on bad files
        why = f"({type(e).__name__}: {e}); restore it from a copy"
        what = f"{os.fspath(path)!r} is not a mixture written by `write_mixture`"
        raise ValueError(f"{what} {why}.") from None


def mixture(name: str = "digits_mixture"):
    """The exact data distribution of the shipped ladder `name` (one of
    `MIXTURE_NAMES`): a `mlem_jax.diffusion.GaussianMixture` with exact sampling,
    log-density and VP-SDE score (`MixtureEps` makes it an exact top level)."""
    checks.choice("mixture", "name", name, MIXTURE_NAMES)
    return read_mixture(os.path.join(PRETRAINED_DIR, name, MIXTURE))[0]


def quality(name: str = "digits", **kwargs: Any):
    """The sample-quality metric of a shipped ladder, the one its benchmarks use:
    called on samples `(n, *shape)` it returns `(value, standard_error)` (lower is
    better, about 0 for data), and `.difference(samples, other)` the paired
    difference of two sample sets made from the same prior draws.

    - `"digits"`, `"digits_wide"`: `mlem_jax.diffusion.digits_quality(**kwargs)`,
      the KID in the features of a classifier trained on the digits (about ten
      seconds to train it).
    - `"digits_mixture"`: `mlem_jax.diffusion.MixtureQuality` of the exact mixture,
      whose value is the log-density gap `E_p log p − mean log p(samples)` (nats),
      with `mode_kl` and `report` besides; the negative entropy is the shipped
      estimate (10⁶ exact draws). No keyword arguments.
    """
    names = NAMES + tuple(n for n in MIXTURE_NAMES if n not in NAMES)
    checks.choice("quality", "name", name, names)
    if name in MIXTURE_NAMES:
        if kwargs:
            what = f"none: quality({name!r}) takes no keyword arguments"
            raise checks.fail("quality", "**kwargs", what, sorted(kwargs))
        from ..diffusion import MixtureQuality

        mix, info = read_mixture(os.path.join(PRETRAINED_DIR, name, MIXTURE))
        return MixtureQuality(mix, info["neg_entropy"], info["neg_entropy_stderr"])
    from ..diffusion import digits_quality

    return digits_quality(**kwargs)
