"""Sample quality in a learned feature space: a small classifier trained on the data
(its penultimate activations are the features) and the kernel distance (KID) between
generated samples and data in those features, with its standard error."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .. import _checks as checks
from ._metrics import kernel_distance, kernel_distance_difference


class FeatureNet(eqx.Module):
    """A multilayer perceptron classifier on flattened images; `features` are its
    last hidden layer's activations (what `SampleQuality` compares samples in),
    `__call__` its class logits.

    Build one with `train_feature_net`.
    """

    layers: tuple[eqx.nn.Linear, ...]
    image_shape: tuple[int, ...] = eqx.field(static=True)

    def features(self, x: Float[Array, " n *shape"]) -> Float[Array, " n d"]:
        """Penultimate activations of a batch of images (leading sample axis)."""
        x = jnp.asarray(x)
        if x.shape[1:] != self.image_shape:
            what = f"images of shape (n, {', '.join(map(str, self.image_shape))})"
            raise checks.fail("FeatureNet.features", "x", what, x.shape)
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            h = jax.nn.gelu(jax.vmap(layer)(h))
        return h

    def __call__(self, x: Float[Array, " n *shape"]) -> Float[Array, " n classes"]:
        return jax.vmap(self.layers[-1])(self.features(x))


def train_feature_net(
    images: Float[np.ndarray, " n *shape"],
    labels: Int[np.ndarray, " n"],
    *,
    key: PRNGKeyArray,
    hidden: tuple[int, ...] = (128, 64),
    steps: int = 2000,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    noise: float = 0.1,
) -> FeatureNet:
    """Train a `FeatureNet` classifier on labelled images (cross-entropy, Adam).

    **Arguments:**

    - `images`: `(n, *shape)`, e.g. `mlem_jax.data.digits(split="train")`.
    - `labels`: `(n,)` integer classes in `[0, num_classes)`.
    - `key`: a JAX PRNG key (initialisation, minibatches, noise).
    - `hidden`: widths of the hidden layers; the last one is the feature dimension.
    - `steps`, `batch_size`, `learning_rate`: the optimisation.
    - `noise`: standard deviation of Gaussian noise added to each training image, so
      that the features vary smoothly around the data, where imperfect samples lie.

    **Returns:** the trained `FeatureNet`.
    """
    import optax  # the optimiser is only needed here

    name = "train_feature_net"
    images = np.asarray(images, np.float32)
    if images.ndim < 2:
        raise checks.fail(name, "images", "images (n, *shape)", images.shape)
    labels = _check_class_labels(name, labels, images.shape[0], None)
    if not hidden or any(int(h) < 1 for h in hidden):
        raise checks.fail(name, "hidden", "positive widths", hidden)
    classes = int(labels.max()) + 1
    sizes = (math.prod(images.shape[1:]), *map(int, hidden), classes)
    init_key, train_key = jr.split(key)
    layers = tuple(
        eqx.nn.Linear(a, b, key=jr.fold_in(init_key, i))
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    )
    net = FeatureNet(layers, tuple(images.shape[1:]))
    opt = optax.adam(learning_rate)
    state = opt.init(eqx.filter(net, eqx.is_array))
    x_all, y_all = jnp.asarray(images), jnp.asarray(labels)

    @eqx.filter_jit
    def step(net, state, key):
        k_idx, k_noise = jr.split(key)
        idx = jr.randint(k_idx, (batch_size,), 0, x_all.shape[0])
        x = x_all[idx] + noise * jr.normal(k_noise, (batch_size, *x_all.shape[1:]))

        def loss(net):
            logits = net(x)
            return optax.softmax_cross_entropy_with_integer_labels(
                logits, y_all[idx]
            ).mean()

        grads = eqx.filter_grad(loss)(net)
        updates, state = opt.update(grads, state)
        return eqx.apply_updates(net, updates), state

    for i in range(int(steps)):
        net, state = step(net, state, jr.fold_in(train_key, i))
    return net


class SampleQuality(eqx.Module):
    """The kernel distance (KID) between samples and reference data in the features
    of a `FeatureNet`: `quality(samples)` returns `(kid, standard_error)`.

    Features are standardised with the reference's per-dimension mean and standard
    deviation. KID is the unbiased squared MMD with the cubic kernel `(a·b/d + 1)³` (Bińkowski
    et al., 2018), averaged over `num_blocks` disjoint blocks of the samples, each
    against its own disjoint block of the reference; the standard error is the
    blocks' standard deviation over `sqrt(num_blocks)`. Samples are clipped to the
    data's range first, as an image written to a file would be.
    """

    net: FeatureNet
    reference: Float[Array, " m d"]
    mean: Float[Array, " d"]
    scale: Float[Array, " d"]
    low: float
    high: float
    num_blocks: int = eqx.field(static=True, default=8)

    @classmethod
    def from_data(
        cls, net: FeatureNet, data: Float[np.ndarray, " m *shape"], num_blocks: int = 8
    ) -> SampleQuality:
        """Reference features of `data` (e.g. the training images)."""
        data = np.asarray(data, np.float32)
        features = net.features(jnp.asarray(data))
        mean = features.mean(axis=0)
        scale = jnp.maximum(features.std(axis=0), 1e-6)
        return cls(
            net,
            (features - mean) / scale,
            mean,
            scale,
            float(data.min()),
            float(data.max()),
            num_blocks,
        )

    def __call__(self, samples: Float[ArrayLike, " n *shape"]) -> tuple[float, float]:
        """`(kid, standard_error)` of `samples` against the reference. Non-finite
        pixels are set to the data's low end before clipping (a blown-up sample
        scores as badly as an image can)."""
        return kernel_distance(
            self.features(samples), self.reference, num_blocks=self.num_blocks
        )

    def features(self, samples: Float[ArrayLike, " n *shape"]) -> Float[Array, " n d"]:
        """The standardised features `__call__` compares (samples clipped to the
        data's range, non-finite pixels at its low end)."""
        x = jnp.asarray(samples, jnp.float32)
        x = jnp.clip(jnp.where(jnp.isfinite(x), x, self.low), self.low, self.high)
        return (self.net.features(x) - self.mean) / self.scale

    def difference(
        self, samples: Float[ArrayLike, " n *shape"], other: Float[Array, " n *shape"]
    ) -> tuple[float, float]:
        """`KID(samples) − KID(other)` with its paired standard error
        (`mlem_jax.diffusion.kernel_distance_difference`): pass samples of two
        samplers made from the same prior draws and Brownian paths, in the same
        order, to compare them with far less noise than two separate KIDs."""
        return kernel_distance_difference(
            self.features(samples),
            self.features(other),
            self.reference,
            num_blocks=self.num_blocks,
        )


def digits_quality(num_blocks: int = 8, seed: int = 0, **kwargs: Any) -> SampleQuality:
    """`SampleQuality` for the 8×8 digits (`mlem_jax.data.digits`): a `FeatureNet`
    trained on the training split with its labels, the training split as reference.
    Deterministic for a given `seed`; about ten seconds on a CPU core."""
    from .. import data

    images = data.digits(split="train")
    labels = data.digits_labels(split="train")
    net = train_feature_net(images, labels, key=jr.key(seed), **kwargs)
    return SampleQuality.from_data(net, images, num_blocks)


def _check_class_labels(where: str, labels, n: int, num_classes: int | None):
    """`labels` (an int, or one per sample) as the integers of shape `(n,)` of the
    classes the samples belong to, each in `[0, num_classes)` (`None`: any
    non-negative one)."""
    if n < 1:
        raise ValueError(f"{where}: there are no samples.")
    values = np.asarray(labels)
    values = np.full((n,), values) if values.shape == () else values
    if not np.issubdtype(values.dtype, np.integer):
        what = "integers, one class per sample"
        raise checks.fail(where, "labels", what, values.dtype)
    if values.shape != (n,):
        raise checks.fail(
            where, "labels", f"one integer per image, ({n},)", values.shape
        )
    top = math.inf if num_classes is None else num_classes
    if values.size and (values.min() < 0 or values.max() >= top):
        what = f"non-negative integers below {top}"
        raise checks.fail(where, "labels", what, (int(values.min()), int(values.max())))
    return values


class ClassQuality(eqx.Module):
    """Quality of class-conditional samples: class accuracy under the feature
    network's classifier, and KID overall and per class.

    - `accuracy(samples, labels)`: the fraction `a` of samples the classifier
      (`FeatureNet.__call__`, arg-max of its logits) assigns to the class they
      were conditioned on, with its binomial standard error `sqrt(a (1 − a) / n)`.
    - `class_kid(samples, labels)`: per-class KID (each class's samples against the
      reference images of that class, in the same standardised features as
      `quality`) and their mean over the classes present, with standard errors.
    - `__call__(samples, labels)`: a dict with both and the overall KID.

    Build one with `digits_class_quality` (or `from_data`).
    """

    quality: SampleQuality
    classes: tuple[Float[Array, " m d"], ...]
    num_blocks: int = eqx.field(static=True, default=4)

    @classmethod
    def from_data(
        cls,
        net: FeatureNet,
        data: Float[np.ndarray, " m *shape"],
        labels: Int[np.ndarray, " m"],
        num_blocks: int = 8,
        class_blocks: int = 4,
    ) -> ClassQuality:
        """Reference features of labelled `data` (e.g. the training images)."""
        quality = SampleQuality.from_data(net, data, num_blocks)
        labels = np.asarray(labels)
        num_classes = int(labels.max()) + 1
        reference = np.asarray(quality.reference)
        classes = tuple(jnp.asarray(reference[labels == k]) for k in range(num_classes))
        return cls(quality, classes, class_blocks)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def predict(self, samples: Float[ArrayLike, " n *shape"]) -> Int[Array, " n"]:
        """The classifier's class for each sample (clipped to the data's range, as
        `SampleQuality.features` does)."""
        x = jnp.asarray(samples, jnp.float32)
        q = self.quality
        x = jnp.clip(jnp.where(jnp.isfinite(x), x, q.low), q.low, q.high)
        return jnp.argmax(q.net(x), axis=-1)

    def accuracy(
        self, samples: Float[ArrayLike, " n *shape"], labels
    ) -> tuple[float, float]:
        """`(accuracy, standard_error)`: the fraction of `samples` classified as
        their conditioning class `labels` (an int, or one per sample), and its
        binomial standard error."""
        n = int(np.shape(samples)[0])
        labels = _check_class_labels(
            "ClassQuality.accuracy", labels, n, self.num_classes
        )
        return self._accuracy(samples, labels)

    def _accuracy(self, samples, labels) -> tuple[float, float]:
        n = labels.shape[0]
        hits = np.asarray(self.predict(samples)) == labels
        a = float(hits.mean())
        return a, math.sqrt(a * (1.0 - a) / n)

    def class_kid(
        self, samples: Float[ArrayLike, " n *shape"], labels
    ) -> dict[str, Any]:
        """Per-class KID of `samples` against the reference images of their class
        (classes with fewer than `2 num_blocks` samples are skipped): `{"kid":
        {class: (kid, se)}, "mean": (mean over those classes, its standard
        error)}`."""
        n = int(np.shape(samples)[0])
        labels = _check_class_labels(
            "ClassQuality.class_kid", labels, n, self.num_classes
        )
        return self._class_kid(samples, labels)

    def _class_kid(self, samples, labels) -> dict[str, Any]:
        features = np.asarray(self.quality.features(samples))
        per_class = {}
        for k in range(self.num_classes):
            mine = features[labels == k]
            if mine.shape[0] < 2 * self.num_blocks:
                continue
            per_class[k] = kernel_distance(
                jnp.asarray(mine), self.classes[k], num_blocks=self.num_blocks
            )
        if not per_class:
            what = f"{2 * self.num_blocks} of one class at least (a per-class KID)"
            raise checks.fail("ClassQuality.class_kid", "samples", what, len(labels))
        values = np.array([v[0] for v in per_class.values()])
        errors = np.array([v[1] for v in per_class.values()])
        mean = float(values.mean())
        se = float(np.sqrt(np.sum(errors**2)) / len(values))
        return {"kid": per_class, "mean": (mean, se)}

    def __call__(
        self, samples: Float[ArrayLike, " n *shape"], labels
    ) -> dict[str, Any]:
        """`{"accuracy": (a, se), "kid": (kid, se), "class_kid": (mean, se),
        "per_class_kid": {class: (kid, se)}}` (`class_kid` NaN, `per_class_kid`
        empty, if no class has the samples a per-class KID needs)."""
        labels = _check_class_labels(
            "ClassQuality", labels, int(np.shape(samples)[0]), self.num_classes
        )
        counts = np.bincount(labels, minlength=self.num_classes)
        if counts.max() >= 2 * self.num_blocks:
            per = self._class_kid(samples, labels)
        else:
            per = {"mean": (math.nan, math.nan), "kid": {}}
        return {
            "accuracy": self._accuracy(samples, labels),
            "kid": self.quality(samples),
            "class_kid": per["mean"],
            "per_class_kid": per["kid"],
        }


def digits_class_quality(
    num_blocks: int = 8, class_blocks: int = 4, seed: int = 0, **kwargs: Any
) -> ClassQuality:
    """`ClassQuality` for the 8×8 digits: the `FeatureNet` of `digits_quality`
    (same `seed` and `kwargs`: the same network) as the classifier, the training
    split and its labels as the reference."""
    from .. import data

    images = data.digits(split="train")
    labels = data.digits_labels(split="train")
    net = train_feature_net(images, labels, key=jr.key(seed), **kwargs)
    return ClassQuality.from_data(net, images, labels, num_blocks, class_blocks)
