"""Duplicates with conflicting labels: near-identical images that the dataset labels differently.

Garg, Ravikumar & Roy found this failure mode among the highest-curvature samples of CIFAR-100 and ImageNet (one
image filed as both shark and whale, otter and seal): a network can fit both labels of identical inputs only by
memorizing, so both copies curve sharply. Here a pair counts as duplicates when the cosine similarity of their
features is at least a threshold. The default features are the pixels, average-pooled to ``size x size`` and
centred and scaled per image (so brightness and contrast changes and the dataset's normalization do not matter);
penultimate-layer features of a trained network can be passed instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DuplicatePair", "find_conflicting_duplicates", "pair_precision_recall", "pixel_features"]


class DuplicatePair(NamedTuple):
    """Two samples whose features are near-identical and whose labels differ (``i < j``)."""

    i: int
    j: int
    similarity: float
    label_i: int
    label_j: int


def _as_nchw(batch: Any) -> torch.Tensor:
    """A stack of images as float ``[B, C, H, W]``: from ``[B, C, H, W]``, ``[B, H, W, C]`` or ``[B, H, W]``."""
    if isinstance(batch, torch.Tensor):
        x = batch.detach().cpu().to(torch.float32)
    else:  # a copy: memory-mapped arrays are read-only, which torch warns about
        x = torch.from_numpy(np.array(batch, dtype=np.float32))
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4:
        raise ValueError(f"Expected images [N, C, H, W], [N, H, W, C] or [N, H, W], got shape {list(x.shape)}.")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    return x


def pixel_features(images: Any, size: int = 8, batch_size: int = 2048) -> np.ndarray:
    """Unit-norm features of downsampled pixels, so that a dot product is a cosine similarity.

    Each image is average-pooled to ``size x size`` per channel, then centred (its own mean removed) and scaled
    to unit norm: an affine change of brightness or contrast leaves the feature as it was. A constant image has
    no direction and gets the zero vector (similarity 0 with everything).

    Args:
        images: an ``[N, ...]`` array or tensor (``[N, C, H, W]``, ``[N, H, W, C]`` or ``[N, H, W]``), or
            anything with ``len`` whose ``images[i]`` is one image (a dataset view), read in batches.
        size: side of the pooled image (8: 192 numbers for RGB).
        batch_size: images pooled at a time.

    Returns:
        ``float32 [N, C * size * size]``.

    Example:
        >>> a = np.random.default_rng(0).random((3, 16, 16))
        >>> f = pixel_features(np.stack([a, 2 * a + 1, a[::-1]]), size=4)   # a, a brighter copy, a flip
        >>> np.round(f @ f.T, 3)[0].tolist()[:2]
        [1.0, 1.0]
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"Expected argument `size` to be a positive integer, got {size!r}.")
    n = len(images)
    stacked = isinstance(images, (np.ndarray, torch.Tensor))
    parts = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        if stacked:
            batch = images[start:stop]
        else:
            batch = np.stack([np.asarray(images[i]) for i in range(start, stop)])  # _as_nchw copies
        x = F.adaptive_avg_pool2d(_as_nchw(batch), size).flatten(1).double()
        x = x - x.mean(1, keepdim=True)
        norm = x.norm(dim=1, keepdim=True)
        x = torch.where(norm > 1e-12 * (1 + x.abs().amax(1, keepdim=True)), x / norm.clamp_min(1e-300), 0.0)
        parts.append(x.float())
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(parts).numpy()


def find_conflicting_duplicates(
    features: np.ndarray,
    labels: np.ndarray,
    candidates: Sequence[int] | np.ndarray,
    *,
    threshold: float = 0.95,
    against: Literal["candidates", "all"] = "candidates",
    chunk: int = 1024,
) -> list[DuplicatePair]:
    """Pairs of near-identical samples with different labels, at least one of them a candidate.

    Typically ``candidates`` are the top-k samples by curvature: with ``against="candidates"`` both members of a
    pair must be among them (the paper's inspection of the most-curved samples); with ``against="all"`` a
    candidate is compared with every sample, which also finds a conflicting twin that ranks low.

    Args:
        features: ``[N, D]`` unit-norm features (:func:`pixel_features`, or normalized penultimate activations).
        labels: ``[N]`` the labels the network trained on.
        candidates: indices of the samples to inspect.
        threshold: least cosine similarity of a duplicate pair (exact copies: 1.0).
        against: ``"candidates"`` or ``"all"``.
        chunk: candidates compared at a time (bounds memory at ``chunk x N`` floats).

    Returns:
        The pairs, most similar first; each unordered pair once, as ``(i, j)`` with ``i < j``.

    Example:
        >>> f = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> find_conflicting_duplicates(f, np.array([0, 1, 1, 0]), [0, 1, 2, 3], threshold=0.99)
        [DuplicatePair(i=0, j=1, similarity=1.0, label_i=0, label_j=1)]
    """
    feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
    labels = np.asarray(labels)
    cand = np.unique(np.asarray(candidates, dtype=np.int64))
    if feats.dim() != 2 or labels.shape != (feats.shape[0],):
        raise ValueError(
            f"Expected `features` [N, D] and `labels` [N], got shapes {tuple(feats.shape)} and {labels.shape}."
        )
    if len(cand) and (cand.min() < 0 or cand.max() >= len(labels)):
        raise ValueError(f"Expected candidate indices in [0, {len(labels)}), got {cand.min()}..{cand.max()}.")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"Expected a cosine-similarity `threshold` in [-1, 1], got {threshold!r}.")
    if against not in ("candidates", "all"):
        raise ValueError(f"Expected argument `against` to be 'candidates' or 'all', got {against!r}.")
    pool = cand if against == "candidates" else np.arange(len(labels))
    pool_feats, pool_labels = feats[pool], torch.as_tensor(labels[pool])
    found: dict[tuple[int, int], float] = {}
    for start in range(0, len(cand), chunk):
        rows = cand[start : start + chunk]
        sim = feats[rows] @ pool_feats.T
        hit = (sim >= threshold - 1e-6) & (torch.as_tensor(labels[rows])[:, None] != pool_labels[None, :])
        for r, c in hit.nonzero().tolist():
            i, j = int(rows[r]), int(pool[c])
            found[(min(i, j), max(i, j))] = min(1.0, float(sim[r, c]))
    pairs = [DuplicatePair(i, j, s, int(labels[i]), int(labels[j])) for (i, j), s in found.items()]
    return sorted(pairs, key=lambda p: (-p.similarity, p.i, p.j))


def pair_precision_recall(found: Sequence[tuple[int, int]], planted: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Precision (found pairs that were planted) and recall (planted pairs found); pairs are unordered.

    Example:
        >>> pair_precision_recall([(1, 0), (2, 5)], [(0, 1), (3, 4)])
        {'precision': 0.5, 'recall': 0.5, 'found': 2, 'planted': 2, 'true': 1}
    """
    f = {(min(a, b), max(a, b)) for a, b, *_ in found}
    p = {(min(a, b), max(a, b)) for a, b, *_ in planted}
    true = len(f & p)
    return {
        "precision": true / len(f) if f else float("nan"),
        "recall": true / len(p) if p else float("nan"),
        "found": len(f),
        "planted": len(p),
        "true": true,
    }
