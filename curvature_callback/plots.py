"""Figures of a run: the curvature histogram and a grid of the most-curved samples.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot): no display is needed, and the process's
pyplot backend (a notebook's, say) is left alone.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_histogram", "plot_top_k"]


def _log10(values: np.ndarray) -> np.ndarray:
    """log10, with zeros (an exactly flat loss) put at the smallest positive float32."""
    return np.log10(np.maximum(values, np.finfo(np.float32).tiny))


def plot_histogram(
    curvature: np.ndarray, flipped: np.ndarray, path: str | os.PathLike, bins: int = 50
) -> None:
    """Histogram of ``log10`` curvature, clean and flipped samples overlaid on shared bins.

    Args:
        curvature: ``[N]`` scores (the running mean of the store).
        flipped: ``[N]`` bool mask of the mislabeled samples.
        path: where to write the PNG.
        bins: number of bins.
    """
    curvature, flipped = np.asarray(curvature, dtype=np.float64), np.asarray(flipped, dtype=bool)
    if curvature.shape != flipped.shape or curvature.ndim != 1:
        raise ValueError(
            f"Expected `curvature` and `flipped` of one shape [N], got {curvature.shape} and {flipped.shape}."
        )
    logc = _log10(curvature)
    edges = np.histogram_bin_edges(logc, bins=bins)
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for mask, name, color in ((~flipped, "clean", "tab:blue"), (flipped, "flipped", "tab:red")):
        ax.hist(logc[mask], bins=edges, alpha=0.6, label=f"{name} (n={int(mask.sum())})", color=color)
    ax.set_xlabel("log10 curvature (mean over scored epochs)")
    ax.set_ylabel("samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _as_image(x: Any) -> tuple[np.ndarray, str | None]:
    """``[C, H, W]``, ``[H, W, C]`` or ``[H, W]`` to what ``imshow`` takes, scaled to [0, 1] per image."""
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise ValueError(f"Expected an image [C, H, W], [H, W, C] or [H, W], got shape {a.shape}.")
    span = a.max() - a.min()
    a = (a - a.min()) / span if span > 0 else np.zeros_like(a)  # inputs are normalized: undo it for display
    return a, ("gray_r" if a.ndim == 2 else None)


def plot_top_k(
    images: Any,
    given: np.ndarray,
    original: np.ndarray,
    scores: np.ndarray,
    path: str | os.PathLike,
    k: int = 25,
) -> np.ndarray:
    """Grid of the ``k`` highest-scoring samples, each titled ``given / original`` (red where they differ).

    Args:
        images: indexable by sample: ``images[i]`` is sample ``i`` as ``[C, H, W]``, ``[H, W, C]`` or
            ``[H, W]`` (a tensor, an array, or a dataset view; only the ``k`` shown are read).
        given: ``[N]`` labels the network trained on.
        original: ``[N]`` the dataset's labels.
        scores: ``[N]`` the ranking score (curvature).
        path: where to write the PNG.
        k: how many to show.

    Returns:
        The indices shown, highest score first.
    """
    scores = np.asarray(scores, dtype=np.float64)
    given, original = np.asarray(given), np.asarray(original)
    if not (scores.shape == given.shape == original.shape) or scores.ndim != 1:
        raise ValueError(
            f"Expected `given`, `original` and `scores` of one shape [N], got {given.shape}, "
            f"{original.shape} and {scores.shape}."
        )
    top = np.argsort(-scores, kind="stable")[: max(0, min(k, len(scores)))]
    cols = max(1, math.ceil(math.sqrt(len(top))))
    rows = max(1, math.ceil(len(top) / cols))
    fig = Figure(figsize=(1.6 * cols, 1.8 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat[: len(top)], top, strict=True):
        img, cmap = _as_image(images[int(i)])
        ax.imshow(img, cmap=cmap, interpolation="nearest")
        differs = given[i] != original[i]
        ax.set_title(f"#{i}: {given[i]} / {original[i]}", fontsize=8, color="tab:red" if differs else "black")
    fig.suptitle("highest curvature; title: index: given / original label", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return top
