"""Logging: what the callback sends to Lightning's loggers, and the Weights & Biases glue.

At each scoring epoch (:func:`log_pass`) every logger gets summary statistics of the pass's signal; with
``log_histogram``, a :class:`~lightning.pytorch.loggers.TensorBoardLogger` or a
:class:`~lightning.pytorch.loggers.WandbLogger` also gets a histogram of its ``log10`` values, and a W&B logger, for
a curvature pass, a grid of the ``k`` most-curved samples (:func:`log_top_k_grid`) on the same step. Once at the end
of ``fit`` (:func:`log_fit_end`) a W&B logger gets a table of them (:func:`log_top_k_table`): index, given label,
original label, curvature, loss, file name, image. Loggers are told apart by their type.
``curvature-train`` also logs the samples to review (:func:`log_review_table`): the rows of the report's "Samples to
review" and of ``label_issues.csv``, most probable first, each with its image.

The grid and the table go through the logger's ``log_image`` and ``log_table``. Like ``log_metrics`` they log the
trainer's step as the ``trainer/global_step`` value, not as W&B's own step, which W&B counts up itself: a row is
never dropped for a step smaller than an earlier one's. ``wandb`` itself is imported only where a W&B logger is
given (Lightning's logger classes import it lazily too).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from torch import Tensor

from curvature_callback.core.numeric import log10_floor, to_unit_range, top_k

__all__ = ["REVIEW_ROWS", "TOP_K", "log_fit_end", "log_pass", "log_review_table", "log_top_k_grid", "log_top_k_table",
           "wandb_logger", "wandb_offline"]

#: samples in the grid and the table
TOP_K = 25
#: most rows of the review table (the report lists as many; label_issues.csv has them all)
REVIEW_ROWS = 1000


def log_pass(loggers: Sequence[Logger], name: str, scores: np.ndarray, step: int, *, histogram: bool, dataset: Any,
             store: Any, to_inputs: Callable[[Any], tuple[Tensor, Tensor]]) -> None:
    """A scoring epoch's logs: summary statistics of the pass's signal to every logger; with ``histogram``, a
    histogram of its log10 values to the TensorBoard and W&B loggers, and the top-k grid of curvature to W&B's.

    Args:
        loggers: the trainer's loggers.
        name: the pass's signal (``curvature``, ``input_grad`` or ``loss``): the metrics' prefix.
        scores: the signal's values of this pass, one per scored sample.
        step: the trainer's global step.
        histogram: log the histograms and the top-k grid (``CurvatureCallback(log_histogram=...)``).
        dataset: the scored dataset (the grid's images).
        store: the store, whose running mean ranks the grid.
        to_inputs: turns a sample into ``(input, label)``.
    """
    p50, p90, p99 = np.percentile(scores, [50, 90, 99])
    stats = {f"{name}/mean": float(scores.mean()), f"{name}/median": float(p50),
             f"{name}/p90": float(p90), f"{name}/p99": float(p99)}
    log10 = log10_floor(scores)
    for logger in loggers:
        logger.log_metrics(stats, step=step)
        if not histogram:
            continue
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_histogram(f"{name}/log10_histogram", log10, global_step=step)
        elif isinstance(logger, WandbLogger):
            import wandb

            logger.log_metrics({f"{name}/log10_histogram": wandb.Histogram(log10, num_bins=64)}, step=step)
            if name == "curvature":  # the top-k views are of curvature, ranked by the running mean
                log_top_k_grid(logger, dataset, np.asarray(store.mean), step, to_inputs)


def log_fit_end(loggers: Sequence[Logger], dataset: Any, store: Any, to_inputs: Callable[[Any], tuple[Tensor, Tensor]],
                *, datamodule: Any, with_loss: bool, step: int) -> None:
    """At the end of fit: a table of the most-curved samples (by the running mean) to the W&B loggers.

    Args:
        loggers: the trainer's loggers (those of other types get nothing).
        dataset: the scored dataset (the table's images).
        store: the store: its running mean, and its mean loss with ``with_loss``.
        to_inputs: turns a sample into ``(input, label)``.
        datamodule: the trainer's; its ``original_labels`` (before noise) and ``filenames`` are shown when it has them.
        with_loss: the store holds the ``loss`` channel.
        step: the trainer's global step.
    """
    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers:
        return
    original, filenames = getattr(datamodule, "original_labels", None), getattr(datamodule, "filenames", None)
    loss = np.asarray(store.channel_mean("loss")) if with_loss else None
    for logger in wandb_loggers:
        log_top_k_table(logger, dataset, np.asarray(store.mean), to_inputs, original_labels=original, loss=loss,
                        filenames=filenames, step=step)


def wandb_offline() -> bool:
    """Offline unless W&B is configured for this process: ``WANDB_API_KEY`` set, or ``WANDB_MODE=online``.

    ``WANDB_MODE=offline`` (or ``disabled``) wins over a key. After ``wandb login`` (a key in ``~/.netrc``) pass
    ``logger.wandb.offline=false`` or set ``WANDB_MODE=online``: the key file is not read here.
    """
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode:
        return mode != "online"
    return not os.environ.get("WANDB_API_KEY")


def wandb_logger(offline: bool | None = None, **kwargs: Any) -> Any:
    """A :class:`~lightning.pytorch.loggers.WandbLogger`.

    Args:
        offline: log offline; None: as :func:`wandb_offline` says.
        **kwargs: passed to the logger (``project``, ``save_dir``, ``name``, ...).

    Returns:
        The logger.
    """
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(offline=wandb_offline() if offline is None else bool(offline), **kwargs)


def _as_image(x: Tensor) -> Tensor:
    """``[C, H, W]`` input scaled to ``[0, 1]`` per image (inputs are normalized, so not in pixel units)."""
    x = x.detach().float().cpu()
    return torch.as_tensor(to_unit_range(x[None] if x.dim() == 2 else x), dtype=torch.float32)


def _pixels(image: Tensor) -> np.ndarray:
    """``[C, H, W]`` values in ``[0, 1]`` as ``[H, W, C]`` uint8 pixels.

    wandb.Image casts an array to uint8 as it is (it expects values in ``[0, 255]``): floats in ``[0, 1]`` would all
    become 0 or 1, a black image.
    """
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _inputs(dataset: Any, indices: Sequence[int], to_inputs: Callable[[Any], tuple[Tensor, Tensor]]) -> list[Any]:
    samples = []
    for i in indices:
        x, y = to_inputs(dataset[int(i)])
        samples.append((torch.as_tensor(x), int(torch.as_tensor(y))))
    return samples


def log_top_k_grid(
    logger: Any,
    dataset: Any,
    scores: np.ndarray,
    step: int,
    to_inputs: Callable[[Any], tuple[Tensor, Tensor]],
    k: int = TOP_K,
    key: str = "curvature/top_k",
) -> np.ndarray:
    """Log one image through ``logger.log_image``: the ``k`` most-curved inputs in a grid, highest first.

    The grid has rows of ``ceil(sqrt(k))`` images; its caption names each one's index, given label and score.

    Args:
        logger: a :class:`~lightning.pytorch.loggers.WandbLogger`.
        dataset: the scored dataset; ``dataset[i]`` is sample ``i`` of ``scores``.
        scores: one score per sample; NaN (unscored) samples are never shown.
        step: the trainer's global step, logged as ``trainer/global_step`` next to the image.
        to_inputs: turns a sample into ``(input, label)``.
        k: how many samples to show.
        key: the history key of the image.

    Returns:
        The indices shown. Image inputs only (``[C, H, W]`` or ``[H, W]``): for other inputs nothing is logged.
    """
    from torchvision.utils import make_grid

    shown = top_k(scores, k)
    samples = _inputs(dataset, shown, to_inputs)
    if not samples or samples[0][0].dim() not in (2, 3):
        return shown
    grid = make_grid([_as_image(x) for x, _ in samples], nrow=math.ceil(math.sqrt(len(samples))), padding=2)
    caption = "highest curvature first (index:given label:curvature): " + " ".join(
        f"{i}:{y}:{float(scores[i]):.3g}" for i, (_, y) in zip(shown.tolist(), samples))
    # One image, not k: a grid reads at a glance and keeps one media file per scoring epoch. log_image makes the
    # wandb.Image and takes a list of captions, one per image.
    logger.log_image(key, [_pixels(grid)], step=step, caption=[caption])
    return shown


def log_top_k_table(
    logger: Any,
    dataset: Any,
    scores: np.ndarray,
    to_inputs: Callable[[Any], tuple[Tensor, Tensor]],
    *,
    original_labels: np.ndarray | None = None,
    loss: np.ndarray | None = None,
    filenames: Sequence[str] | None = None,
    step: int | None = None,
    k: int = TOP_K,
    key: str = "curvature/top_k_table",
) -> list[list[Any]]:
    """Log a table of the ``k`` most-curved samples through ``logger.log_table``.

    Columns: rank, index, given label, original label, curvature, loss, file and image; those whose data is not
    known (or not one value per sample) are left out, the image when an input is not an image.

    Args:
        logger: a :class:`~lightning.pytorch.loggers.WandbLogger`.
        dataset: the scored dataset; ``dataset[i]`` is sample ``i`` of ``scores``.
        scores: one score per sample; NaN (unscored) samples are never shown.
        to_inputs: turns a sample into ``(input, label)``.
        original_labels: the labels before noise was added, one per sample.
        loss: the mean loss of each sample.
        filenames: the file of each sample.
        step: the trainer's global step, logged as ``trainer/global_step`` next to the table.
        k: how many samples to show.
        key: the history key of the table.

    Returns:
        The rows without the images.
    """
    import wandb

    n = len(scores)
    original_labels = original_labels if original_labels is not None and len(original_labels) == n else None
    filenames = filenames if filenames is not None and len(filenames) == n else None  # only the scored set's
    loss = loss if loss is not None and len(loss) == n else None
    shown = top_k(scores, k)
    samples = _inputs(dataset, shown, to_inputs)
    columns = ["rank", "index", "given_label"]
    columns += ["label"] if original_labels is not None else []
    columns += ["curvature"] + (["loss"] if loss is not None else []) + (["file"] if filenames is not None else [])
    rows, images = [], []
    for rank, (i, (x, y)) in enumerate(zip(shown.tolist(), samples)):
        row: list[Any] = [rank, i, y]
        row += [int(original_labels[i])] if original_labels is not None else []
        row += [float(scores[i])] + ([float(loss[i])] if loss is not None else [])
        row += [filenames[i]] if filenames is not None else []
        rows.append(row)
        # log_table builds the wandb.Table but has no image column of its own: a cell holds whatever is given, so
        # the images are wandb.Image objects made here (log_image only logs images on their own, not in a table).
        images.append(wandb.Image(_pixels(_as_image(x))) if x.dim() in (2, 3) else None)
    with_images = bool(images) and all(im is not None for im in images)
    logger.log_table(key, columns=columns + (["image"] if with_images else []),
                     data=[r + ([im] if with_images else []) for r, im in zip(rows, images)], step=step)
    return rows


def log_review_table(
    logger: Any,
    dataset: Any,
    flagged: Sequence[int] | np.ndarray,
    given: np.ndarray,
    suggested: np.ndarray,
    probability: np.ndarray,
    confidence: np.ndarray,
    reasons: Sequence[str],
    to_inputs: Callable[[Any], tuple[Tensor, Tensor]],
    *,
    class_names: Sequence[str] | None = None,
    step: int | None = None,
    k: int = REVIEW_ROWS,
    key: str = "label_issues/review",
) -> list[list[Any]]:
    """Log the samples to review through ``logger.log_table``: the flagged samples, most probable first.

    Columns: rank, index, given label, suggested label (-1: none), probability that the label is wrong, the
    suggestion's confidence, the reason, the class names of both labels when ``class_names`` are given, and the image
    (left out when an input is not an image). The same rows, in the same order, as the report's "Samples to review"
    and ``label_issues.csv`` (the first ``k``).

    Args:
        logger: a :class:`~lightning.pytorch.loggers.WandbLogger`.
        dataset: the scored dataset; ``dataset[i]`` is sample ``i``.
        flagged: the flagged indices, most probable first.
        given: ``[N]`` the labels trained on.
        suggested, probability, confidence: ``[N]`` per sample, as the label-issue finder returns them.
        reasons: one per flagged sample, in its order.
        to_inputs: turns a sample into ``(input, label)``.
        class_names: names indexed by label.
        step: the trainer's global step, logged as ``trainer/global_step`` next to the table.
        k: most rows.
        key: the history key of the table.

    Returns:
        The rows without the images.
    """
    import wandb

    shown = [int(i) for i in np.asarray(flagged)[:k]]
    columns = ["rank", "index", "given_label", "suggested_label", "probability", "suggestion_confidence", "reason"]
    columns += ["given_class", "suggested_class"] if class_names is not None else []
    rows, images = [], []
    for rank, i in enumerate(shown):
        s = int(suggested[i])
        row: list[Any] = [rank, i, int(given[i]), s, float(probability[i]), float(confidence[i]),
                          str(reasons[rank]) if rank < len(reasons) else ""]
        if class_names is not None:
            row += [str(class_names[int(given[i])]), str(class_names[s]) if s >= 0 else ""]
        rows.append(row)
        x = torch.as_tensor(to_inputs(dataset[i])[0])
        images.append(wandb.Image(_pixels(_as_image(x))) if x.dim() in (2, 3) else None)
    with_images = bool(images) and all(im is not None for im in images)
    logger.log_table(key, columns=columns + (["image"] if with_images else []),
                     data=[r + ([im] if with_images else []) for r, im in zip(rows, images)], step=step)
    return rows
