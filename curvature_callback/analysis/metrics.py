"""How well a score finds what it should: detection metrics (AUROC, AP, precision and recall at k %) and rank
correlations, through torchmetrics with one tie rule (average ranks) everywhere.

Every detection score follows one convention: **higher = more suspicious** (see
:mod:`curvature_callback.core.channels` for how each channel of a store becomes one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef
from torchmetrics.functional.classification import binary_auroc, binary_average_precision
from torchmetrics.functional.retrieval import retrieval_precision, retrieval_recall

from curvature_callback.core.numeric import top_k

__all__ = ["correlations", "detection_table", "mislabel_metrics", "ranks", "top_k"]


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


def _inspected(percent: float, n: int) -> int:
    """Samples inspected at ``percent`` % of ``n``: rounded, at least one."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 < percent <= 100:
        raise ValueError(f"Expected a percentage of samples inspected in (0, 100], got {percent!r}.")
    return max(1, min(n, round(percent * n / 100)))


def mislabel_metrics(
    scores: np.ndarray, flipped: np.ndarray, *, at_percent: Sequence[float] = ()
) -> dict[str, float]:
    """How well ``scores`` (higher = more suspicious) find the flipped labels.

    Args:
        scores: ``[N]`` finite scores; for a score where lower is suspicious (margin), pass its negative.
        flipped: ``[N]`` bool, True for the mislabeled samples.
        at_percent: percentages of the samples inspected, highest scores first: for each ``p`` the result has
            ``precision@p%`` (flipped among the ``k = round(p N / 100)`` inspected, at least one) and
            ``recall@p%`` (fraction of all flipped samples among them). Ties at the cut are broken arbitrarily.

    Returns:
        ``{"auroc": ..., "ap": ..., ...}``: area under the ROC curve (0.5 = chance, 1 = every flipped sample ranks
        above every clean one) and average precision (chance = the flipped fraction), via torchmetrics.

    Example:
        Flipped samples score 0.35 and 0.8, clean ones 0.1 and 0.4: 3 of the 4 (flipped, clean) pairs are
        ordered right, and the precision is 1/1 at the first flipped sample, 2/3 at the second. Inspecting
        half of the samples (0.8 and 0.4) finds one of the two flipped ones:

        >>> m = mislabel_metrics(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]),
        ...                      at_percent=[50])
        >>> {k: round(v, 6) for k, v in m.items()}
        {'auroc': 0.75, 'ap': 0.833333, 'precision@50%': 0.5, 'recall@50%': 0.5}
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
    preds = torch.as_tensor(ranks(scores))  # in (0, 1]: no sigmoid, and retrieval_* drop scores <= 0
    target = torch.as_tensor(flipped.astype(np.int64))
    out = {
        "auroc": float(binary_auroc(preds, target)),
        "ap": float(binary_average_precision(preds, target)),
    }
    for p in at_percent:
        k = _inspected(p, len(scores))
        found = retrieval_recall(preds, target.bool(), top_k=k)
        out[f"precision@{p:g}%"] = float(retrieval_precision(preds, target.bool(), top_k=k))
        out[f"recall@{p:g}%"] = float(found)
    return out


def detection_table(
    scores: Mapping[str, np.ndarray], flipped: np.ndarray, *, at_percent: Sequence[float] = (1, 5, 10)
) -> dict[str, dict[str, float]]:
    """:func:`mislabel_metrics` of each score, in the mapping's order: ``{name: {"auroc": ..., ...}}``."""
    return {name: mislabel_metrics(s, flipped, at_percent=at_percent) for name, s in scores.items()}


def correlations(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation of two ``[N]`` scores (torchmetrics, float64; Spearman with average ranks
    for ties), NaN where one of them is constant.

    Example:
        >>> c = correlations(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.1, 0.3, 0.2]))
        >>> round(c["pearson"], 4), round(c["spearman"], 4)
        (0.8, 0.8)
    """
    x, y = torch.as_tensor(np.asarray(a, dtype=np.float64)), torch.as_tensor(np.asarray(b, dtype=np.float64))
    if x.dim() != 1 or x.shape != y.shape or len(x) < 2:
        raise ValueError(f"Expected two scores of one shape [N], N >= 2, got {tuple(x.shape)} and {tuple(y.shape)}.")
    if bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": float(pearson_corrcoef(x, y)), "spearman": float(spearman_corrcoef(x, y))}
