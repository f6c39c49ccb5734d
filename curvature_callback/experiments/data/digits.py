"""The embedded default data: scikit-learn's 8x8 digits (1797 images, shipped with scikit-learn, no download)
with a seeded fraction of flipped labels, and :func:`standardize`.

The dataset that the curvature callback scores is the training set in its standard order, without
augmentation, with the *given* (noisy) labels: the labels the network is asked to fit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset
from typing_extensions import override

from curvature_callback.experiments.arguments import Real, Rule, check_arguments
from curvature_callback.experiments.data.base import NoisyDataModule
from curvature_callback.experiments.data.noise import NoiseKind

__all__ = ["DigitsDataModule", "standardize"]

def standardize(x: Tensor, mean: Tensor | float | None = None, std: Tensor | float | None = None) -> Tensor:
    """``(x - mean) / std``; mean and std default to the scalars of ``x`` itself (the training set's)."""
    mean = x.mean() if mean is None else mean
    std = x.std() if std is None else std
    return (x - mean) / std


class DigitsDataModule(NoisyDataModule):
    """scikit-learn's 8x8 handwritten digits with injected label noise: the embedded default experiment.

    Inputs are ``x / 16`` (pixel values are 0..16), standardized with the training set's mean and standard
    deviation, as float32 ``[N, 1, 8, 8]``. With ``val_fraction > 0`` a seeded random split is
    held out with its original labels; label noise goes into the training part only.

    After :meth:`setup`, the training samples (the scored ones, in order) are described by:

    - ``given_labels``: ``int64 [N]`` the labels the network trains on (noisy),
    - ``original_labels``: ``int64 [N]`` the dataset's labels,
    - ``flipped``: ``bool [N]`` where the two differ,
    - ``source_indices``: ``int64 [N]`` positions in ``sklearn.datasets.load_digits()``.

    Args:
        noise: fraction of training labels flipped.
        noise_kind: ``"symmetric"`` (to any other class), ``"pair"`` (``c -> c + 1``), ``"confusion"`` (1-7, 3-8, 4-9,
            5-6, 2-7, 0-6) or ``"model"`` (a quick model's confusions; see
            :func:`~curvature_callback.experiments.data.noise.inject_label_noise`).
        seed: seed of the noise and of the validation split.
        batch_size: training batch size.
        val_fraction: fraction held out for validation (0: train on everything, no validation loop).
        num_workers: loader workers (the data is in memory: 0 is fastest).
        num_classes, in_channels: checked when given (10 and 1; the model configs read them from ``data``).
        corrections: a corrections CSV applied to the noisy training labels (relabel, drop); see
            :class:`~curvature_callback.experiments.data.base.NoisyDataModule`.
    """

    num_classes = 10
    in_channels = 1
    ARGUMENTS = {**NoisyDataModule.ARGUMENTS,
                 "val_fraction": Rule(Real(0.0, 1.0, high_open=True), "the fraction held out for validation", 0.0)}

    def __init__(
        self,
        noise: float = 0.1,
        noise_kind: NoiseKind = "symmetric",
        seed: int = 0,
        batch_size: int = 64,
        val_fraction: float = 0.0,
        num_workers: int = 0,
        num_classes: int | None = None,
        in_channels: int | None = None,
        corrections: str | None = None,
    ) -> None:
        check_arguments(self.ARGUMENTS, {"val_fraction": val_fraction})
        super().__init__(noise=noise, noise_kind=noise_kind, seed=seed, batch_size=batch_size,
                         num_workers=num_workers, limit=None, validate=val_fraction > 0, num_classes=num_classes,
                         in_channels=in_channels, corrections=corrections)
        self._check_noise_kind("digits")
        self.save_hyperparameters()  # logged with the run (hparams.yaml of the CSV logger)
        self.val_fraction = val_fraction
        for name in ("num_classes", "in_channels"):  # fixed by the data: a wrong config fails at once
            self._check(name, getattr(type(self), name))

    @override
    def _build(self) -> None:
        from sklearn.datasets import load_digits  # scikit-learn only where it is used

        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
        y = np.asarray(digits.target, dtype=np.int64)
        order = np.random.default_rng((self.seed, 1)).permutation(len(y))  # a stream apart from the noise's
        n_val = round(self.val_fraction * len(y))
        train_idx, val_idx = np.sort(order[n_val:]), np.sort(order[:n_val])
        noisy = self._noisy(y[train_idx], self.num_classes)
        self.source_indices = train_idx  # positions in load_digits(), not 0..N-1
        x = standardize(x, x[train_idx].mean(), x[train_idx].std())
        self._scored = self._train = TensorDataset(x[train_idx], torch.as_tensor(noisy))
        self._val = TensorDataset(x[val_idx], torch.as_tensor(y[val_idx])) if n_val else None
