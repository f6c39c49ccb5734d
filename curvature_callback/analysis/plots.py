"""Figures of a run: curvature histograms (overall and per class), a grid of the most-curved samples, detection
curves of every score, the memorization scatter and image thumbnails for the report.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot): no display is needed, and the process's
pyplot backend (a notebook's, say) is left alone.

Class names, score names and file names come from the data (a folder's class folders, a store's channels): every
figure is drawn with math text off, so a ``$`` in them is a dollar sign, not the start of a formula that
matplotlib fails to parse. PNGs are written with :func:`curvature_callback.core.safe_paths.write_bytes`: never through
a link left in the output folder.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from curvature_callback.core.numeric import log10_floor, to_unit_range
from curvature_callback.core.safe_paths import write_bytes

__all__ = [
    "plot_class_histograms",
    "plot_detection_curves",
    "plot_histogram",
    "plot_memorization",
    "plot_top_k",
    "save_thumbnail",
]


_F = TypeVar("_F", bound=Callable[..., Any])

#: what every figure is drawn under: strings from the data are plain text (a ``$`` starts no formula, LaTeX is
#: not run on them)
_PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}


def _plain_text(function: _F) -> _F:
    """Run ``function`` (which draws and saves a figure) with math text off; tick labels are made at save time,
    so the whole call, saving included, is inside."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(_PLAIN_TEXT):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _save(fig: Figure, path: str | os.PathLike | Any, dpi: int) -> None:
    """Save ``fig`` as a PNG at ``path`` (never through a link there), or into ``path`` when it is a file object."""
    if hasattr(path, "write"):
        fig.savefig(path, dpi=dpi, format="png")
        return
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format=Path(path).suffix.lstrip(".").lower() or "png")
    write_bytes(path, buffer.getvalue())


@_plain_text
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
    logc = log10_floor(curvature)
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
    _save(fig, path, dpi=120)


def _as_image(x: Any) -> tuple[np.ndarray, str | None]:
    """``[C, H, W]``, ``[H, W, C]`` or ``[H, W]`` to what ``imshow`` takes, scaled to [0, 1] per image."""
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise ValueError(f"Expected an image [C, H, W], [H, W, C] or [H, W], got shape {a.shape}.")
    a = to_unit_range(a)
    return a, ("gray_r" if a.ndim == 2 else None)


def _as_rgb(x: Any) -> np.ndarray:
    """An image as ``[H, W, 3]`` in [0, 1]; grayscale drawn dark on light, as ``imshow`` with ``gray_r``."""
    a, cmap = _as_image(x)
    if a.ndim == 2:
        a = np.repeat((1.0 - a)[..., None], 3, axis=2)
    return a


@_plain_text
def plot_top_k(
    images: Any,
    given: np.ndarray,
    original: np.ndarray,
    scores: np.ndarray,
    path: str | os.PathLike,
    k: int = 25,
    class_names: Sequence[str] | None = None,
    ranked_by: str = "curvature",
) -> np.ndarray:
    """Grid of the ``k`` highest-scoring samples, each titled ``given / original`` (red where they differ).

    Args:
        images: indexable by sample: ``images[i]`` is sample ``i`` as ``[C, H, W]``, ``[H, W, C]`` or
            ``[H, W]`` (a tensor, an array, or a dataset view; only the ``k`` shown are read).
        given: ``[N]`` labels the network trained on.
        original: ``[N]`` the dataset's labels.
        scores: ``[N]`` the ranking score.
        path: where to write the PNG.
        k: how many to show.
        class_names: names of the classes, shown instead of the label numbers.
        ranked_by: the score's name, in the figure's title.

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
    # one mosaic in one axes: a grid of axes costs seconds of layout for 25 thumbnails on a busy CPU
    tiles = [_as_rgb(images[int(i)]) for i in top]
    h = max((t.shape[0] for t in tiles), default=1)
    w = max((t.shape[1] for t in tiles), default=1)
    band, gap = max(2, round(0.22 * h)), max(1, round(0.08 * w))  # room for the label above, space between
    cell_h, cell_w = h + band, w + gap
    mosaic = np.ones((rows * cell_h, cols * cell_w - gap, 3))
    for n, tile in enumerate(tiles):
        r, c = divmod(n, cols)
        y, x = r * cell_h + band, c * cell_w
        mosaic[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    width = 1.6 * cols
    fig = Figure(figsize=(width, width * mosaic.shape[0] / mosaic.shape[1] + 0.35))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.35 / fig.get_figheight()))
    ax.imshow(mosaic, interpolation="nearest", aspect="auto")
    ax.axis("off")
    for n, i in enumerate(top):
        r, c = divmod(n, cols)
        differs = given[i] != original[i]
        g, o = (given[i], original[i]) if class_names is None else (class_names[given[i]], class_names[original[i]])
        ax.text(c * cell_w + w / 2, r * cell_h + band / 2, f"#{i}: {g} / {o}", ha="center", va="center",
                fontsize=7 if class_names else 8, color="tab:red" if differs else "black")
    fig.suptitle(f"highest {ranked_by}; title: index: given / original label", fontsize=9,
                 y=1 - 0.12 / fig.get_figheight())
    _save(fig, path, dpi=120)
    return top


def _class_names(labels: np.ndarray, class_names: Sequence[str] | None) -> list[str]:
    classes = np.unique(labels)
    return [str(class_names[c]) if class_names is not None else str(c) for c in classes]


@_plain_text
def plot_class_histograms(
    curvature: np.ndarray,
    labels: np.ndarray,
    flipped: np.ndarray | None,
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    bins: int = 30,
    max_panels: int = 20,
) -> None:
    """``log10`` curvature per class: one histogram row per class (clean and flipped overlaid, shared bins,
    each scaled to its own peak), or, past ``max_panels`` classes, each class's median and 10-90 % range,
    classes sorted by median.

    Args:
        curvature: ``[N]`` scores.
        labels: ``[N]`` the class of each sample (the given label: the one the network fit).
        flipped: ``[N]`` bool mask of the mislabeled samples, or None when unknown.
        path: where to write the PNG.
        class_names: names indexed by label.
        bins: bins per panel.
        max_panels: most classes drawn as histogram rows.
    """
    curvature, labels = np.asarray(curvature, dtype=np.float64), np.asarray(labels)
    flipped = np.zeros(len(labels), dtype=bool) if flipped is None else np.asarray(flipped, dtype=bool)
    if not (curvature.shape == labels.shape == flipped.shape) or curvature.ndim != 1:
        raise ValueError(
            f"Expected `curvature`, `labels` and `flipped` of one shape [N], got {curvature.shape}, "
            f"{labels.shape} and {flipped.shape}."
        )
    logc = log10_floor(curvature)
    classes = np.unique(labels)
    names = _class_names(labels, class_names)
    if len(classes) <= max_panels:
        # one row per class in one axes (a ridgeline): a grid of axes costs seconds of layout on a busy CPU
        edges = np.histogram_bin_edges(logc, bins=bins)
        fig = Figure(figsize=(7.0, 0.9 + 0.42 * len(classes)))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for row, c in enumerate(classes[::-1]):
            mine = labels == c
            for mask, color, label in ((mine & ~flipped, "tab:blue", "clean"), (mine & flipped, "tab:red", "flipped")):
                if not mask.any():
                    continue
                counts = np.histogram(logc[mask], bins=edges)[0].astype(float)
                top = row + 0.9 * np.append(counts, counts[-1]) / counts.max()  # step="post" needs one more
                ax.fill_between(edges, row, top, step="post", color=color, alpha=0.45 if label == "clean" else 0.6,
                                lw=0, label=label if row == 0 else None)
        ax.set_yticks(np.arange(len(classes)) + 0.3,
                      [f"{n} ({int((labels == c).sum())}, {int(((labels == c) & flipped).sum())} flipped)"
                       for c, n in zip(classes[::-1], names[::-1])], fontsize=8)
        ax.set_ylim(0, len(classes) + 0.1)
        ax.set_xlabel("log10 curvature (mean over scored epochs); class = given label; each curve scaled to its peak",
                      fontsize=8)
        ax.legend(fontsize=8, loc="upper right")
    else:
        stats = np.array([np.percentile(logc[labels == c], [10, 50, 90]) for c in classes])
        order = np.argsort(stats[:, 1], kind="stable")
        fig = Figure(figsize=(max(6.0, 0.09 * len(classes)), 4))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        x = np.arange(len(classes))
        ax.vlines(x, stats[order, 0], stats[order, 2], color="tab:blue", alpha=0.5, label="10-90 %")
        ax.plot(x, stats[order, 1], ".", color="tab:blue", label="median")
        ax.set_xlabel("class, sorted by median curvature")
        ax.set_ylabel("log10 curvature")
        if len(classes) <= 120:
            ax.set_xticks(x, [names[i] for i in order], rotation=90, fontsize=5)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=110)


#: how each score is drawn in detection curves: curvature stands out, baselines stay muted
_STYLES = {"curvature": ("tab:red", "-", 2.2)}


@_plain_text
def plot_detection_curves(
    scores: Mapping[str, np.ndarray], flipped: np.ndarray, path: str | os.PathLike
) -> None:
    """Fraction of the flipped samples found against the fraction of samples inspected (highest scores first),
    one curve per score, with the perfect detector and chance for reference. The x axis is logarithmic: what a
    reviewer inspects first matters most.

    Args:
        scores: name to ``[N]`` score, higher = more suspicious (see ``analysis.suspicion_scores``).
        flipped: ``[N]`` bool mask of the mislabeled samples (some, not all).
        path: where to write the PNG.
    """
    flipped = np.asarray(flipped, dtype=bool)
    n, m = len(flipped), int(flipped.sum())
    if not 0 < m < n:
        raise ValueError(f"Expected some but not all samples flipped, got {m} of {n}.")
    inspected = np.arange(1, n + 1) / n
    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(inspected, np.minimum(np.arange(1, n + 1), m) / m, color="0.6", ls=":", lw=1, label="perfect")
    ax.plot(inspected, inspected, color="0.6", ls="--", lw=1, label="chance")
    baseline_colors = iter(["tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:olive",
                            "tab:cyan", "tab:pink", "tab:gray"])
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        if s.shape != flipped.shape:
            raise ValueError(f"Expected score {name!r} of shape {flipped.shape}, got {s.shape}.")
        order = np.argsort(-s, kind="stable")
        color, style, width = _STYLES.get(name, (next(baseline_colors, "black"), "-", 1.2))
        ax.plot(inspected, np.cumsum(flipped[order]) / m, color=color, ls=style, lw=width, label=name)
    ax.set_xscale("log")
    # math text is off for every figure (a $ in a class name is text), and log axes label their ticks with it:
    # plain numbers instead
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(max(1.0 / n, 1e-3), 1.0)
    ax.axvline(m / n, color="0.8", lw=0.8)
    ax.set_xlabel(f"fraction of samples inspected (vertical line: the flipped fraction, {m / n:.1%})")
    ax.set_ylabel("fraction of flipped samples found")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _save(fig, path, dpi=110)


@_plain_text
def plot_memorization(
    scores: np.ndarray, reference: np.ndarray, path: str | os.PathLike, *, name: str = "reference memorization"
) -> None:
    """``log10`` curvature against a reference memorization score, one point per sample (hexagonal bins
    past 5,000 samples), with the reference's mean in curvature deciles.

    Args:
        scores: ``[N]`` curvature.
        reference: ``[N]`` the reference, aligned.
        path: where to write the PNG.
        name: the reference's name on the axis.
    """
    s, r = log10_floor(np.asarray(scores, dtype=np.float64)), np.asarray(reference, dtype=np.float64)
    if s.shape != r.shape or s.ndim != 1:
        raise ValueError(f"Expected `scores` and `reference` of one shape [N], got {s.shape} and {r.shape}.")
    fig = Figure(figsize=(6, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if len(s) > 5000:
        ax.hexbin(s, r, gridsize=60, bins="log", cmap="Blues")
    else:
        ax.scatter(s, r, s=4, alpha=0.4, color="tab:blue", linewidths=0)
    edges = np.quantile(s, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, 9)
    centers = [s[which == d].mean() for d in range(10) if (which == d).any()]
    means = [r[which == d].mean() for d in range(10) if (which == d).any()]
    ax.plot(centers, means, "o-", color="tab:red", label="mean per curvature decile")
    ax.set_xlabel("log10 curvature")
    ax.set_ylabel(name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=110)


@_plain_text
def save_thumbnail(image: Any, path: str | os.PathLike) -> None:
    """One image as a PNG at its own resolution (rescaled to [0, 1] per image, like :func:`plot_top_k`).

    Args:
        image: ``[C, H, W]``, ``[H, W, C]`` or ``[H, W]``.
        path: where to write the PNG.
    """
    from matplotlib.image import imsave

    img, cmap = _as_image(image)
    buffer = io.BytesIO()
    imsave(buffer, img, cmap=cmap or None, vmin=0.0, vmax=1.0, format="png")
    if hasattr(path, "write"):
        path.write(buffer.getvalue())
    else:
        write_bytes(path, buffer.getvalue())
