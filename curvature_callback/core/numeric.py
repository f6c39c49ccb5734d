"""Small numerics that several layers show or rank by, defined once (numpy only)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

__all__ = ["dataset_labels", "labels_digest", "log10_floor", "to_unit_range", "top_k"]


def log10_floor(values: Any) -> np.ndarray:
    """``log10`` with zeros (an exactly flat loss) put at the smallest positive float32, so they stay on the axis.

    Example:
        >>> log10_floor(np.array([100.0, 0.0])).round(2).tolist()
        [2.0, -37.93]
    """
    return np.log10(np.maximum(np.asarray(values, dtype=np.float64), np.finfo(np.float32).tiny))


def top_k(scores: Any, k: int) -> np.ndarray:
    """Indices of the ``k`` highest finite scores, highest first, ties by index; NaN never ranks.

    Example:
        >>> top_k(np.array([0.5, np.nan, 3.0, 0.5, 2.0]), 3).tolist()
        [2, 4, 0]
    """
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(scores))
    order = finite[np.argsort(-scores[finite], kind="stable")]  # stable: ties keep index order
    return order[: max(0, int(k))]


def to_unit_range(image: Any) -> np.ndarray:
    """An image scaled to ``[0, 1]`` by its own minimum and maximum (inputs are normalized, so not in pixel units:
    undo it for display); a constant image is all zeros.

    Example:
        >>> to_unit_range(np.array([[-1.0, 1.0], [0.0, 3.0]])).tolist()
        [[0.0, 0.5], [0.25, 1.0]]
    """
    a = np.asarray(image, dtype=np.float64)
    span = a.max() - a.min() if a.size else 0.0
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def labels_digest(labels: Any) -> str:
    """sha1 of labels as contiguous int64: what a store's ``labels_sha1`` and a run's rank check compare.

    Tensors are converted by the caller (this module stays numpy-only); the bytes are those of
    ``np.asarray(labels).astype(np.int64)`` in C order, so a list, an array and a tensor's ``.numpy()`` of the
    same labels share one digest.

    Raises:
        TypeError, ValueError: the labels are not convertible to int64 (strings, ragged lists).

    Example:
        >>> labels_digest([0, 1, 2]) == labels_digest(np.array([0, 1, 2], dtype=np.int32))
        True
    """
    array = np.asarray(labels).astype(np.int64, copy=False)
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def dataset_labels(dataset: Any) -> np.ndarray | None:
    """A dataset's labels as numpy, when it exposes them: a TensorDataset-like second tensor (``.tensors[1]``),
    else ``.targets`` (torchvision's name); ``None`` when it has neither.

    One precedence for every reader (the callback's fingerprint, the report's rebuilt data), so two readers of one
    dataset never take different labels. Tensors are read duck-typed (``.detach().cpu()``): no torch import here.

    Example:
        >>> class WithTargets:
        ...     targets = [2, 0, 1]
        >>> dataset_labels(WithTargets()).tolist(), dataset_labels(object())
        ([2, 0, 1], None)
    """
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, (tuple, list)) and len(tensors) > 1:
        labels = tensors[1]
    else:
        labels = getattr(dataset, "targets", None)
    if labels is None:
        return None
    if hasattr(labels, "detach"):  # a tensor: one that requires grad refuses np.asarray
        labels = labels.detach()
    return np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
