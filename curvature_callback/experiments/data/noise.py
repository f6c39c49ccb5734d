"""Label noise: a seeded fraction of the training labels flipped to another class (numpy only).

Four kinds, each a class-transition matrix ``T`` (``T[c, d]``: the chance that a flipped label ``c`` becomes ``d``;
zero diagonal, rows summing to 1, :func:`noise_transitions`):

- ``"symmetric"``: any other class, uniformly;
- ``"pair"``: ``c -> (c + 1) % C`` (structured, but between arbitrary neighbours);
- ``"confusion"``: one of the classes that annotators confuse with ``c`` (:data:`CONFUSABLE`, per dataset),
  uniformly;
- ``"model"``: a quick model's confusions on held-out data, per dataset (``model_confusions.json``, written by
  ``benchmarks/model_confusions.py``): row ``c`` of its off-diagonal counts plus a pseudo-count, normalised.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["CONFUSABLE", "NOISE_DATASETS", "NOISE_KINDS", "NoiseKind", "inject_label_noise", "model_confusion",
           "noise_transitions"]

NoiseKind = Literal["symmetric", "pair", "confusion", "model"]
NOISE_KINDS: tuple[str, ...] = ("symmetric", "pair", "confusion", "model")
#: the datasets whose classes ``"confusion"`` and ``"model"`` noise know
NOISE_DATASETS: tuple[str, ...] = ("cifar10", "fashion_mnist", "digits")
#: pairs of classes that look alike, per dataset (both ways): a flipped label goes to one of its class's partners,
#: uniformly. Every class has at least one partner, so any sample can be flipped.
CONFUSABLE: dict[str, tuple[tuple[int, int], ...]] = {
    # airplane-ship, airplane-bird, automobile-truck, cat-dog, deer-horse, bird-frog
    "cifar10": ((0, 8), (0, 2), (1, 9), (3, 5), (4, 7), (2, 6)),
    # T-shirt-shirt, pullover-coat, sneaker-ankle boot, sandal-sneaker, trouser-dress, dress-coat, bag-shirt
    "fashion_mnist": ((0, 6), (2, 4), (7, 9), (5, 7), (1, 3), (3, 4), (8, 6)),
    # 1-7, 3-8, 4-9, 5-6, 2-7, 0-6
    "digits": ((1, 7), (3, 8), (4, 9), (5, 6), (2, 7), (0, 6)),
}
_MODEL_CONFUSIONS = Path(__file__).with_name("model_confusions.json")


@functools.cache
def _model_counts() -> tuple[dict[str, np.ndarray], float]:
    doc = json.loads(_MODEL_CONFUSIONS.read_text())
    counts = {name: np.asarray(d["counts"], dtype=np.float64) for name, d in doc["datasets"].items()}
    return counts, float(doc["pseudo_count"])


def model_confusion(dataset: str) -> np.ndarray:
    """A quick model's confusions on held-out data as a ``[10, 10]`` transition matrix (zero diagonal, rows sum to 1).

    ``T[c, d] = (counts[c, d] + a) / sum_{e != c} (counts[c, e] + a)`` for ``d != c``, with the held-out counts
    ``counts[true][predicted]`` and the pseudo-count ``a`` of ``model_confusions.json``.

    Example:
        >>> t = model_confusion("cifar10")
        >>> t.shape, bool(np.allclose(t.sum(1), 1) and (np.diag(t) == 0).all() and (t > 0).sum() == 90)
        ((10, 10), True)
    """
    counts, pseudo = _model_counts()
    if dataset not in counts:
        raise ValueError(f"Expected a dataset of {sorted(counts)} for 'model' noise, got {dataset!r}.")
    t = counts[dataset] + pseudo
    np.fill_diagonal(t, 0.0)
    return t / t.sum(1, keepdims=True)


def noise_transitions(kind: NoiseKind, num_classes: int, dataset: str | None = None) -> np.ndarray:
    """The ``[C, C]`` matrix a flipped label is drawn from: row ``c`` for a sample of class ``c``.

    Args:
        kind: ``"symmetric"``, ``"pair"``, ``"confusion"`` or ``"model"``.
        num_classes: ``C``.
        dataset: one of :data:`NOISE_DATASETS`, for ``"confusion"`` and ``"model"`` (their classes are named).

    Example:
        >>> noise_transitions("confusion", 10, "cifar10")[3]  # cat: always to dog
        array([0., 0., 0., 0., 0., 1., 0., 0., 0., 0.])
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"Expected argument `kind` to be one of {', '.join(map(repr, NOISE_KINDS))}, got {kind!r}.")
    c = int(num_classes)
    if kind == "symmetric":
        return (1.0 - np.eye(c)) / (c - 1)
    if kind == "pair":
        return np.roll(np.eye(c), 1, axis=1)
    if dataset not in NOISE_DATASETS:
        raise ValueError(
            f"{kind!r} noise follows the classes of a known dataset: expected argument `dataset` to be one of "
            f"{', '.join(map(repr, NOISE_DATASETS))}, got {dataset!r}. Use kind='symmetric' or 'pair' for others."
        )
    if c != 10:
        raise ValueError(f"{kind!r} noise for {dataset!r} knows its 10 classes, got num_classes={c}.")
    if kind == "model":
        return model_confusion(dataset)
    t = np.zeros((c, c))
    for a, b in CONFUSABLE[dataset]:
        t[a, b] = t[b, a] = 1.0
    return t / t.sum(1, keepdims=True)


def inject_label_noise(
    labels: np.ndarray, num_classes: int, fraction: float, kind: NoiseKind = "symmetric", seed: int = 0,
    dataset: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(fraction * N)`` labels, chosen uniformly at random with ``seed``.

    A flipped label ``c`` becomes ``d`` with probability ``T[c, d]`` (:func:`noise_transitions`; zero diagonal), so a
    flipped sample never keeps its label and the returned mask is exactly the set of mislabeled samples. With
    ``"confusion"`` and ``"model"`` the noise depends on the class: which labels are wrong and what they become follow
    what looks alike, as an annotator's mistakes do.

    Args:
        labels: ``[N]`` integer labels in ``[0, num_classes)``.
        num_classes: number of classes ``C >= 2``.
        fraction: fraction of samples to flip, in ``[0, 1]``.
        kind: ``"symmetric"``, ``"pair"``, ``"confusion"`` or ``"model"``.
        seed: seed of the choice of samples and of their new labels.
        dataset: ``"cifar10"``, ``"fashion_mnist"`` or ``"digits"``: whose classes ``"confusion"`` and ``"model"``
            follow (ignored by the others).

    Returns:
        ``(noisy, flipped)``: ``int64 [N]`` given labels and a ``bool [N]`` mask of the flipped samples.

    Example:
        >>> noisy, flipped = inject_label_noise(np.array([0, 1, 2, 3]), 4, 0.5, kind="pair", seed=0)
        >>> int(flipped.sum()), bool((noisy[flipped] == (np.array([0, 1, 2, 3])[flipped] + 1) % 4).all())
        (2, True)
        >>> noisy, flipped = inject_label_noise(np.full(6, 3), 10, 0.5, kind="confusion", dataset="cifar10")
        >>> noisy.tolist()  # cat -> dog
        [3, 3, 3, 5, 5, 5]
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Expected `labels` as a 1-d integer array, got {labels.dtype} of shape {labels.shape}."
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"Expected argument `num_classes` to be an integer >= 2, got {num_classes!r}.")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Expected labels in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]: "
            "pass the dataset's number of classes as `num_classes`."
        )
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(
            f"Expected argument `fraction` in [0, 1] (0.1 flips 10 % of the labels), got {fraction!r}."
        )
    transitions = noise_transitions(kind, num_classes, dataset)  # checks the kind and the dataset
    rng = np.random.default_rng(seed)
    n = len(labels)
    chosen = rng.choice(n, size=round(fraction * n), replace=False)
    noisy = labels.astype(np.int64)  # a copy
    if kind == "symmetric":
        # an offset in 1..C-1 picks one of the other classes uniformly (the stream of the first version, kept)
        noisy[chosen] = (noisy[chosen] + rng.integers(1, num_classes, size=len(chosen))) % num_classes
    elif kind == "pair":
        noisy[chosen] = (noisy[chosen] + 1) % num_classes
    else:  # inverse CDF of each sample's row; u kept below the row's total, so a zero cell is never drawn
        cdf = np.cumsum(transitions[noisy[chosen]], axis=1)
        u = np.minimum(rng.random(len(chosen)) * cdf[:, -1], np.nextafter(cdf[:, -1], 0.0))
        noisy[chosen] = (cdf <= u[:, None]).sum(1)
    flipped = np.zeros(n, dtype=bool)
    flipped[chosen] = True
    if (noisy[chosen] == labels[chosen]).any():  # the zero diagonal makes this impossible; the mask must be exact
        raise RuntimeError("A flipped label kept its class: the transition matrix has a non-zero diagonal.")
    return noisy, flipped
