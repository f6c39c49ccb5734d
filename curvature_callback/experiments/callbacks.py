"""The Lightning callbacks ``curvature-train`` adds around the curvature callback: :class:`Clock` (when training
starts, how long the scoring passes take) and :class:`RecordLabels` (``labels.npz`` and ``filenames.txt`` before
training)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback

from curvature_callback.core import safe_paths
from curvature_callback.core.numeric import labels_digest
from curvature_callback.integration.callback import CurvatureCallback

__all__ = ["Clock", "RecordLabels"]


class Clock(Callback):
    """Wall-clock marks of a run: when training starts and how long the scoring passes take.

    Two instances bracket the curvature callback (``"before"`` runs its ``on_train_epoch_end`` just before the
    callback's, ``"after"`` just after), so their difference is the scoring pass, gather and commit included.
    """

    def __init__(self, times: dict[str, float], where: Literal["before", "after"]) -> None:
        self.times, self.where = times, where

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.times.setdefault("train_start", time.perf_counter())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        if self.where == "before":
            self.times["mark"] = now
        else:
            self.times["scoring"] = self.times.get("scoring", 0.0) + now - self.times.pop("mark", now)


class RecordLabels(Callback):
    """Before training, on rank 0: ``labels.npz`` in the run directory (original and given labels, the flipped
    mask, the source indices; with ``data.corrections``, the labels before them and the kept mask) and, for folder
    datasets, ``filenames.txt`` in the store folder.

    ``filenames.txt`` is plain UTF-8, line ``i`` the path of sample ``i`` relative to the training folder: it
    names each score's image (published ImageNet memorization scores are keyed by file name) with no pickle.
    It runs after the curvature callback's ``on_train_start``, which opens the store.
    """

    def __init__(self, out: Path, datamodule: pl.LightningDataModule, curvature: CurvatureCallback) -> None:
        self.out, self.datamodule, self.curvature = out, datamodule, curvature

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        given = getattr(self.datamodule, "given_labels", None)
        if hasattr(given, "cpu"):  # a tensor: labels_digest is numpy-only
            given = given.detach().cpu().numpy()
        digest = "" if given is None else labels_digest(given)
        if trainer.world_size > 1 and trainer.strategy.broadcast(digest, src=0) != digest:  # same call on all ranks
            raise RuntimeError(
                f"Rank {trainer.global_rank} trains on other labels than rank 0: it composed another config. A "
                "process started by hand (torchrun, SLURM) must get the same overrides as rank 0."
            )
        if not trainer.is_global_zero:
            return
        arrays = {name: np.asarray(getattr(self.datamodule, name)) for name in
                  ("original_labels", "given_labels", "flipped", "source_indices", "noisy_labels", "kept")
                  if getattr(self.datamodule, name, None) is not None}
        self.out.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # np.load(..., allow_pickle=False) reads it
        safe_paths.write_bytes(self.out / "labels.npz", buffer.getvalue())
        names = getattr(self.datamodule, "filenames", None)
        if names is not None:
            store = self.curvature.store
            if len(names) != store.n:
                raise RuntimeError(f"{len(names)} file names for a store of {store.n} samples.")
            if any("\n" in name for name in names):
                raise ValueError("A file name holds a line break: filenames.txt has one name per line.")
            safe_paths.write_text(store.directory / "filenames.txt", "".join(f"{name}\n" for name in names))
