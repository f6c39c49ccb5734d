"""Small numerics that several layers show or rank by, defined once (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["log10_floor", "to_unit_range", "top_k"]


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
