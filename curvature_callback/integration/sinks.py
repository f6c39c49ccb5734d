"""Weights & Biases glue: an offline-by-default logger and the top-k views of the curvature scores.

The callback logs, to a :class:`~lightning.pytorch.loggers.WandbLogger`, a histogram of ``log10`` curvature and
summary statistics at each scoring epoch (``callback._log``), a grid of the ``k`` most-curved samples
(:func:`log_top_k_grid`) on the same step, and once at the end of ``fit`` a table of them
(:func:`log_top_k_table`): index, given label, original label, curvature, loss, file name, image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from curvature_callback.core.numeric import to_unit_range, top_k

__all__ = ["TOP_K", "log_top_k_grid", "log_top_k_table", "wandb_logger", "wandb_offline"]

#: samples in the grid and the table
TOP_K = 25


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
    """A :class:`~lightning.pytorch.loggers.WandbLogger`, offline when ``offline`` is None and
    :func:`wandb_offline` says so; ``kwargs`` go to the logger (``project``, ``save_dir``, ``name``, ...)."""
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(offline=wandb_offline() if offline is None else bool(offline), **kwargs)


def _as_image(x: Tensor) -> Tensor:
    """``[C, H, W]`` input scaled to ``[0, 1]`` per image (inputs are normalized, so not in pixel units)."""
    x = x.detach().float().cpu()
    return torch.as_tensor(to_unit_range(x[None] if x.dim() == 2 else x), dtype=torch.float32)


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
    """Log one image: the ``k`` most-curved inputs in a grid (rows of ``ceil(sqrt(k))``), highest first.

    Returns the indices shown. Image inputs only (``[C, H, W]`` or ``[H, W]``); other inputs log nothing.
    """
    import wandb
    from torchvision.utils import make_grid

    shown = top_k(scores, k)
    samples = _inputs(dataset, shown, to_inputs)
    if not samples or samples[0][0].dim() not in (2, 3):
        return shown
    grid = make_grid([_as_image(x) for x, _ in samples], nrow=math.ceil(math.sqrt(len(samples))), padding=2)
    caption = "highest curvature first (index:given label): " + " ".join(
        f"{i}:{y}" for i, (_, y) in zip(shown.tolist(), samples))
    logger.log_metrics({key: wandb.Image(grid.permute(1, 2, 0).numpy(), caption=caption)}, step=step)
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
    """Log a table of the ``k`` most-curved samples: rank, index, given label, original label, curvature, loss,
    file and image (the columns whose data is known). Returns the rows without the images."""
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
        images.append(wandb.Image(_as_image(x).permute(1, 2, 0).numpy()) if x.dim() in (2, 3) else None)
    with_images = images and all(im is not None for im in images)
    table = wandb.Table(columns=columns + (["image"] if with_images else []),
                        data=[r + ([im] if with_images else []) for r, im in zip(rows, images)])
    logger.log_metrics({key: table}, step=step)
    return rows
