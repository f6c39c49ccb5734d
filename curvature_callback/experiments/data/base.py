"""The datamodule every experiment's data shares: seeded label noise in the training labels, the scored samples'
bookkeeping (``given_labels``, ``original_labels``, ``flipped``, ``source_indices``, ``filenames``, ``classes``)
and the loaders. Subclasses read their data in ``_build``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from curvature_callback.core.feeding import WithIndex
from curvature_callback.experiments.arguments import Integer, OneOf, Real, Rule, check_arguments
from curvature_callback.experiments.data.noise import NoiseKind, inject_label_noise

__all__ = ["NoisyDataModule"]


class NoisyDataModule(pl.LightningDataModule):
    """Label noise, the scored samples' bookkeeping and the loaders; subclasses read the data in ``_build``.

    ``ARGUMENTS`` says what each numeric or enumerated argument must be: checked here on construction, and by
    ``curvature-train`` on the composed ``data`` config before anything is built. A subclass adds its own.
    """

    ARGUMENTS: dict[str, Rule] = {
        "noise": Rule(Real(0.0, 1.0), "the fraction of training labels flipped", 0.1),
        "noise_kind": Rule(OneOf(("symmetric", "pair"))),
        "seed": Rule(Integer(0), "the label noise's seed", 0),
        "batch_size": Rule(Integer(1), "training samples per batch", 64),
        "eval_batch_size": Rule(Integer(1), "validation samples per batch", 512),
        "num_workers": Rule(Integer(0), "loader worker processes", 0),
        "limit": Rule(Integer(1, null=True), "the first samples of each split only; null for all", "null"),
        "validate": Rule(OneOf((True, False))),
        "num_classes": Rule(Integer(2, null=True), "checked against the data; the model reads it", 10),
        "in_channels": Rule(Integer(1, null=True), "checked against the data; the model reads it", 3),
    }

    def __init__(
        self,
        *,
        noise: float,
        noise_kind: NoiseKind,
        seed: int,
        batch_size: int,
        num_workers: int,
        limit: int | None,
        validate: bool,
        num_classes: int | None,
        in_channels: int | None,
        eval_batch_size: int = 512,
    ) -> None:
        super().__init__()
        check_arguments(NoisyDataModule.ARGUMENTS, {
            "noise": noise, "noise_kind": noise_kind, "seed": seed, "batch_size": batch_size,
            "eval_batch_size": eval_batch_size, "num_workers": num_workers, "limit": limit, "validate": validate,
            "num_classes": num_classes, "in_channels": in_channels})
        limit = None if limit is None else int(limit)
        self.noise, self.noise_kind, self.seed = noise, noise_kind, seed
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.limit, self.validate = limit, validate
        self.expected = {"num_classes": num_classes, "in_channels": in_channels}
        self.given_labels: np.ndarray | None = None
        self.original_labels: np.ndarray | None = None
        self.flipped: np.ndarray | None = None
        self.source_indices: np.ndarray | None = None
        self.filenames: list[str] | None = None
        self.classes: list[str] | None = None
        self._scored: Dataset | None = None
        self._train: Dataset | None = None
        self._val: Dataset | None = None

    # what the subclass provides
    def _build(self) -> None:
        """Read the data and set ``_scored``, ``_train``, ``_val`` (via :meth:`_noisy`)."""
        raise NotImplementedError

    def _check(self, name: str, found: int) -> None:
        want = self.expected[name]
        if want is not None and want != found:
            raise ValueError(
                f"{type(self).__name__}: the data has {name}={found}, the config says {name}={want}. Set "
                f"data.{name}={found} (the model reads it), or point the data at the intended dataset."
            )

    def _noisy(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Record original labels, flip a seeded fraction, return the given labels."""
        self._check("num_classes", num_classes)
        labels = np.asarray(labels, dtype=np.int64)
        noisy, flipped = inject_label_noise(labels, num_classes, self.noise, kind=self.noise_kind, seed=self.seed)
        self.original_labels, self.given_labels, self.flipped = labels, noisy, flipped
        self.source_indices = np.arange(len(labels))  # the standard order (or its first `limit` samples)
        return noisy

    @override
    def setup(self, stage: str | None = None) -> None:
        if self._scored is None:
            self._build()

    def curvature_dataset(self) -> Dataset:
        """The training set in standard order, unaugmented, with the given (noisy) labels: what is scored."""
        self.setup()
        return self._scored

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0, drop_last=False)

    @override
    def train_dataloader(self) -> DataLoader:
        self.setup()
        # (x, y, index): the training step tells the callback which samples it saw (training-time signals)
        return self._loader(WithIndex(self._train), self.batch_size, shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        return [] if self._val is None else self._loader(self._val, self.eval_batch_size, shuffle=False)
