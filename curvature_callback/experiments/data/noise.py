"""Label noise: a seeded fraction of the training labels flipped to another class (numpy only)."""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["NoiseKind", "inject_label_noise"]

NoiseKind = Literal["symmetric", "pair"]


def inject_label_noise(
    labels: np.ndarray, num_classes: int, fraction: float, kind: NoiseKind = "symmetric", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(fraction * N)`` labels, chosen uniformly at random with ``seed``.

    - ``"symmetric"``: a flipped label becomes one of the other ``C - 1`` classes, uniformly.
    - ``"pair"``: a flipped label ``c`` becomes ``(c + 1) % C`` (structured noise between neighbour classes).

    A flipped sample never keeps its label, so the returned mask is exactly the set of mislabeled samples.

    Args:
        labels: ``[N]`` integer labels in ``[0, num_classes)``.
        num_classes: number of classes ``C >= 2``.
        fraction: fraction of samples to flip, in ``[0, 1]``.
        kind: ``"symmetric"`` or ``"pair"``.
        seed: seed of the choice of samples and of their new labels.

    Returns:
        ``(noisy, flipped)``: ``int64 [N]`` given labels and a ``bool [N]`` mask of the flipped samples.

    Example:
        >>> noisy, flipped = inject_label_noise(np.array([0, 1, 2, 3]), 4, 0.5, kind="pair", seed=0)
        >>> int(flipped.sum()), bool((noisy[flipped] == (np.array([0, 1, 2, 3])[flipped] + 1) % 4).all())
        (2, True)
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
    if kind not in ("symmetric", "pair"):
        raise ValueError(f"Expected argument `kind` to be 'symmetric' or 'pair', got {kind!r}.")
    rng = np.random.default_rng(seed)
    n = len(labels)
    chosen = rng.choice(n, size=round(fraction * n), replace=False)
    noisy = labels.astype(np.int64)  # a copy
    if kind == "symmetric":
        # an offset in 1..C-1 picks one of the other classes uniformly
        noisy[chosen] = (noisy[chosen] + rng.integers(1, num_classes, size=len(chosen))) % num_classes
    else:
        noisy[chosen] = (noisy[chosen] + 1) % num_classes
    flipped = np.zeros(n, dtype=bool)
    flipped[chosen] = True
    return noisy, flipped
