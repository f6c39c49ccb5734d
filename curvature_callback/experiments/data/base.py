"""The datamodule every experiment's data shares: seeded label noise in the training labels, a person's corrections
to them (``corrections``: :mod:`curvature_callback.core.corrections`), the scored samples' bookkeeping
(``given_labels``, ``original_labels``, ``flipped``, ``noisy_labels``, ``kept``, ``source_indices``, ``filenames``,
``classes``) and the loaders. Subclasses read their data in ``_build``.
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

from curvature_callback.core.corrections import CorrectionsError, apply_corrections
from curvature_callback.core.feeding import WithIndex
from curvature_callback.experiments.arguments import Integer, OneOf, Real, Rule, check_arguments
from curvature_callback.experiments.data.noise import NOISE_DATASETS, NOISE_KINDS, NoiseKind, inject_label_noise

__all__ = ["NoisyDataModule"]


class NoisyDataModule(pl.LightningDataModule):
    """Label noise, the scored samples' bookkeeping and the loaders; subclasses read the data in ``_build``.

    ``ARGUMENTS`` says what each numeric or enumerated argument must be: checked here on construction, and by
    ``curvature-train`` on the composed ``data`` config before anything is built. A subclass adds its own.

    ``corrections`` (a CSV a person edited from a run's ``corrections.csv``) is applied to the noisy labels: a
    ``relabel`` row changes the sample's training label, a ``drop`` row leaves it out of the training loader. The
    scored dataset keeps every sample at its index, so the next run's scores name the same samples; ``given_labels``
    are the labels trained on (corrected), ``noisy_labels`` those before the corrections, ``flipped`` where the
    given label still differs from the original, ``kept`` False for the dropped samples.
    """

    ARGUMENTS: dict[str, Rule] = {
        "noise": Rule(Real(0.0, 1.0), "the fraction of training labels flipped", 0.1),
        "noise_kind": Rule(OneOf(NOISE_KINDS), "what a flipped label becomes: any other class, c + 1, a class "
                           "that looks alike, or a quick model's confusion (the last two: cifar10, fashion_mnist, "
                           "digits)", "confusion"),
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
        corrections: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        check_arguments(NoisyDataModule.ARGUMENTS, {
            "noise": noise, "noise_kind": noise_kind, "seed": seed, "batch_size": batch_size,
            "eval_batch_size": eval_batch_size, "num_workers": num_workers, "limit": limit, "validate": validate,
            "num_classes": num_classes, "in_channels": in_channels})
        limit = None if limit is None else int(limit)
        self.noise, self.noise_kind, self.seed = noise, noise_kind, seed
        self.noise_dataset: str | None = None  # whose classes 'confusion' and 'model' noise follow (_check_noise_kind)
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.limit, self.validate = limit, validate
        self.expected = {"num_classes": num_classes, "in_channels": in_channels}
        if corrections is not None and not os.path.isfile(corrections):
            raise ValueError(f"Expected data.corrections to be a CSV file (a run's corrections.csv, edited), got "
                             f"{os.fspath(corrections)!r}, which is no file: pass its path, or null for none.")
        self.corrections = corrections
        self.noisy_labels: np.ndarray | None = None
        self.kept: np.ndarray | None = None
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

    def _check_noise_kind(self, dataset: str | None) -> None:
        """Name the dataset whose classes 'confusion' and 'model' noise follow (None: none they know); a subclass
        calls it on construction, so such noise on other data fails before anything is read."""
        self.noise_dataset = dataset
        if self.noise_kind in ("confusion", "model") and dataset is None:
            raise ValueError(
                f"data.noise_kind={self.noise_kind!r} follows the classes of {', '.join(NOISE_DATASETS)}; "
                f"{type(self).__name__} here holds other classes: use noise_kind=symmetric or pair."
            )

    def _noisy(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Record original labels, flip a seeded fraction, apply the corrections, return the given labels."""
        self._check("num_classes", num_classes)
        labels = np.asarray(labels, dtype=np.int64)
        noisy, flipped = inject_label_noise(labels, num_classes, self.noise, kind=self.noise_kind, seed=self.seed,
                                            dataset=self.noise_dataset)
        self.original_labels, self.given_labels, self.flipped = labels, noisy, flipped
        self.source_indices = np.arange(len(labels))  # the standard order (or its first `limit` samples)
        self.noisy_labels, self.kept = noisy, np.ones(len(labels), dtype=bool)
        if self.corrections is not None:  # the file was made for the noisy labels: it is checked against them
            given, self.kept = apply_corrections(noisy, self.corrections, num_classes=num_classes)
            if len(given) and not self.kept.any():  # a sampler of no samples fails deep in the trainer
                raise CorrectionsError(
                    f"Expected data.corrections={os.fspath(self.corrections)} to keep at least one sample to train "
                    f"on, got every one of the {len(given)} samples dropped: set some rows' action to keep or "
                    "relabel, or pass data.corrections=null."
                )
            self.given_labels, self.flipped = given, given != labels
            return given
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
        train = WithIndex(self._train)
        if self.kept is not None and not self.kept.all():  # dropped by the corrections; indices kept as scored
            train = Subset(train, np.flatnonzero(self.kept).tolist())
        return self._loader(train, self.batch_size, shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        return [] if self._val is None else self._loader(self._val, self.eval_batch_size, shuffle=False)
