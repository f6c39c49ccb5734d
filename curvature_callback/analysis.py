"""What the scores say: mislabel-detection metrics and the per-sample table of a run."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

__all__ = ["mislabel_metrics", "ranks", "write_scores_csv"]


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks scaled to ``(0, 1]``: the same order as ``values``, ties kept as ties.

    torchmetrics reads scores outside ``[0, 1]`` as logits and applies a sigmoid, which in float32 rounds
    every score above ~17 to 1.0 and so merges them into one tie. Ranks carry the whole ordering, and
    AUROC and average precision depend on nothing else.

    Example:
        >>> ranks(np.array([30.0, 10.0, 20.0, 20.0])).tolist()
        [1.0, 0.25, 0.625, 0.625]
    """
    values = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # 1-based rank of the last member of each group of equal values
    return ((last - (counts - 1) / 2) / len(values))[inverse]


def mislabel_metrics(scores: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    """How well ``scores`` (higher = more suspicious) find the flipped labels.

    Args:
        scores: ``[N]`` finite scores; for a score where lower is suspicious (margin), pass its negative.
        flipped: ``[N]`` bool, True for the mislabeled samples.

    Returns:
        ``{"auroc": ..., "ap": ...}``: area under the ROC curve (0.5 = chance, 1 = every flipped sample ranks
        above every clean one) and average precision (chance = the flipped fraction), via torchmetrics.

    Example:
        Flipped samples score 0.35 and 0.8, clean ones 0.1 and 0.4: 3 of the 4 (flipped, clean) pairs are
        ordered right, and the precision is 1/1 at the first flipped sample, 2/3 at the second:

        >>> m = mislabel_metrics(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
        >>> round(m["auroc"], 6), round(m["ap"], 6)
        (0.75, 0.833333)
    """
    scores, flipped = np.asarray(scores, dtype=np.float64), np.asarray(flipped)
    if scores.ndim != 1 or scores.shape != flipped.shape:
        raise ValueError(
            f"Expected `scores` and `flipped` of one shape [N], got {scores.shape} and {flipped.shape}."
        )
    if flipped.dtype != bool:
        raise TypeError(
            f"Expected `flipped` as a bool mask, got dtype {flipped.dtype}: pass e.g. `given != original`."
        )
    if not np.isfinite(scores).all():
        raise ValueError(
            f"Expected finite scores, got {int((~np.isfinite(scores)).sum())} NaN or infinite ones (a sample "
            "never scored has a NaN mean): score every sample at least once."
        )
    if flipped.all() or not flipped.any():
        raise ValueError(
            f"AUROC needs both flipped and clean samples, got {int(flipped.sum())} flipped of {len(flipped)}."
        )
    preds = torch.as_tensor(ranks(scores))
    target = torch.as_tensor(flipped.astype(np.int64))
    return {
        "auroc": float(binary_auroc(preds, target)),
        "ap": float(binary_average_precision(preds, target)),
    }


def write_scores_csv(path: str | os.PathLike, columns: Mapping[str, np.ndarray]) -> None:
    """One row per sample: ``index`` first (0..N-1, the store's order), then ``columns`` in their order.

    Floats are written with 9 significant digits (float32 round-trips; the store keeps float64), booleans as
    0/1.

    Args:
        path: the CSV file to write.
        columns: name to ``[N]`` array; every array of the same length.
    """
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    lengths = {name: a.shape for name, a in arrays.items()}
    n = len(next(iter(arrays.values()))) if arrays else 0
    if any(shape != (n,) for shape in lengths.values()):
        raise ValueError(f"Expected every column of shape [N], got {lengths}.")
    if "index" in arrays:
        raise ValueError("`index` is written first by write_scores_csv: do not pass it as a column.")
    formats = []
    for a in arrays.values():
        if a.dtype == bool:
            formats.append(lambda v: str(int(v)))
        elif np.issubdtype(a.dtype, np.floating):
            formats.append(lambda v: f"{v:.9g}")
        else:
            formats.append(str)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", *arrays])
        for i in range(n):
            writer.writerow([i, *(fmt(a[i]) for fmt, a in zip(formats, arrays.values(), strict=True))])
