"""What the callback scores, and where its store lives: the dataset (given, the datamodule's, or the training
loader's), what identifies it (so that a store made for other labels is refused), and the store's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import Dataset

from curvature_callback.core.feeding import reads_differ
from curvature_callback.core.numeric import dataset_labels, labels_digest

__all__ = ["check_not_empty", "fingerprint", "labels_digest_of", "resolve_dataset", "resolve_path"]


def resolve_dataset(trainer: pl.Trainer, dataset: Dataset | None) -> tuple[Dataset, str]:
    """The dataset to score and where it came from (for messages): ``dataset`` if given, else the datamodule's
    ``curvature_dataset()``, else the training loader's dataset (with a warning if it reads as random)."""
    if dataset is not None:
        return dataset, "`CurvatureCallback(dataset=...)`"
    dm = trainer.datamodule
    if dm is not None and callable(getattr(dm, "curvature_dataset", None)):
        return dm.curvature_dataset(), f"`{type(dm).__name__}.curvature_dataset()`"
    loader = trainer.train_dataloader
    train = getattr(loader, "dataset", None)
    if train is None:
        raise ValueError(
            f"Cannot find the training dataset to score (train_dataloader is {type(loader).__name__}). Pass "
            "`CurvatureCallback(dataset=...)`, or define `curvature_dataset()` on the datamodule."
        )
    # read on rank 0 only, the one that warns; an empty dataset is refused with its own message after
    if trainer.is_global_zero and len(train) and reads_differ(train, 0):
        rank_zero_warn(
            "CurvatureCallback scores the training dataset, whose items look random (reading item 0 twice gave "
            "different values, e.g. a random crop or flip): scores then include augmentation noise. Pass "
            "`dataset=` with the evaluation transform, or define `curvature_dataset()` on the datamodule."
        )
    return train, "the training loader's dataset (`trainer.train_dataloader.dataset`)"


def check_not_empty(dataset: Dataset, source: str) -> None:
    """Refuse a dataset without samples (every rank sees the same one: all raise, before any collective)."""
    if len(dataset) == 0:
        raise ValueError(
            f"Expected a dataset with at least one sample to score, got an empty {type(dataset).__name__} "
            f"(from {source}). Check how it is built (paths, split, filters), or pass another `dataset=`."
        )


def labels_digest_of(dataset: Any) -> str | None:
    """sha1 of the dataset's labels when it exposes them (:func:`~curvature_callback.core.numeric.dataset_labels`:
    a TensorDataset's second tensor, else ``targets``) and they are integers; else None."""
    try:
        labels = dataset_labels(dataset)
        return None if labels is None else labels_digest(labels)
    except (TypeError, ValueError):  # labels that are not int64-like (strings, ragged): no digest, the keys check
        return None


def fingerprint(dataset: Dataset) -> dict[str, Any]:
    """What identifies the scored data: a store made for other labels is refused."""
    found: dict[str, Any] = {"n": len(dataset), "dataset": type(dataset).__name__}
    digest = labels_digest_of(dataset)
    if digest is not None:
        found["labels_sha1"] = digest
    return found


def resolve_path(trainer: pl.Trainer, directory: str | os.PathLike, restored: dict[str, Any] | None) -> Path:
    """The store's folder: the checkpoint's (``restored``) on resume, else ``directory``, a relative one under the
    trainer's log dir."""
    if restored and restored.get("directory"):
        return Path(restored["directory"])  # a resumed run may have a new log dir: keep its store
    path = Path(directory)
    if not path.is_absolute():
        root = trainer.log_dir or trainer.default_root_dir  # log_dir broadcasts: every rank calls it
        path = Path(root) / path
    return path.resolve()
