"""Image datamodules of the paper's experiments, each with seeded label noise in the training labels.

- :class:`CIFARDataModule`: CIFAR-10/100 from torchvision's files (downloaded when online) or the offline
  CIFAR-10 JPEG copy (:func:`~curvature_callback.experiments.data.cifar10_offline_arrays`);
- :class:`FashionMNISTDataModule`: Fashion-MNIST from its standard idx files;
- :class:`ImageFolderDataModule`: ImageNet, or any ``root/train/<class>/<file>`` folder, with each sample's
  relative file name kept (published ImageNet memorization scores are keyed by file name).

All of them describe the scored samples (the training set in its standard order, unaugmented, with the given
labels) by ``given_labels``, ``original_labels``, ``flipped``, ``source_indices`` and, for folders,
``filenames``, after :meth:`setup`. The in-memory ones keep uint8 images and augment whole batches on the
device (:func:`random_crop_flip`), so the training loader does almost no work per sample.
"""

from __future__ import annotations

import copy
import os
import urllib.error
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from curvature_callback.experiments.arguments import Integer, Rule, check_arguments
from curvature_callback.experiments.data.base import NoisyDataModule
from curvature_callback.experiments.data.cifar10_offline import CIFAR10_CLASSES, cifar10_offline_arrays
from curvature_callback.experiments.data.noise import NoiseKind

__all__ = [
    "ArrayDataModule", "CIFARDataModule", "FashionMNISTDataModule", "ImageArrayDataset", "ImageFolderDataModule",
    "channel_stats", "random_crop_flip",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_crop_flip(x: Tensor, padding: int = 4, fill: Tensor | None = None) -> Tensor:
    """CIFAR's standard augmentation on a whole batch: pad, crop back at a random offset, flip half the images.

    Each image gets its own offset in ``[0, 2 * padding]`` per axis and a fair coin for the horizontal flip,
    drawn from torch's generator on ``x``'s device (seeded by ``L.seed_everything``).

    Args:
        x: ``[B, C, H, W]`` images.
        padding: pixels added on each side before the crop.
        fill: ``[C]`` value of the padding (the normalized value of a black pixel); 0 if None.

    Example:
        >>> x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
        >>> y = random_crop_flip(x, padding=1)
        >>> y.shape, bool(((y == 0) | torch.isin(y, x)).all())
        (torch.Size([2, 1, 3, 3]), True)
    """
    b, c, h, w = x.shape
    p = int(padding)
    padded = x.new_zeros(b, c, h + 2 * p, w + 2 * p)
    if fill is not None:
        padded += fill.to(x).view(1, c, 1, 1)
    padded[..., p : p + h, p : p + w] = x
    rows = torch.randint(0, 2 * p + 1, (b, 1), device=x.device) + torch.arange(h, device=x.device)  # [B, H]
    cols = torch.randint(0, 2 * p + 1, (b, 1), device=x.device) + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(b, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class ImageArrayDataset(Dataset):
    """uint8 images in memory, normalized per channel on read: ``dataset[i] -> (float32 [C, H, W], int64 label)``.

    Args:
        images: ``uint8 [N, H, W, C]`` or ``[N, H, W]`` (grayscale).
        labels: ``[N]`` integer labels (``targets``: the given labels, what the store fingerprints).
        mean: per-channel mean of ``images / 255``.
        std: per-channel standard deviation of ``images / 255``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: Tensor, std: Tensor) -> None:
        images = torch.as_tensor(np.asarray(images))
        if images.dtype != torch.uint8 or images.dim() not in (3, 4):
            raise ValueError(f"Expected uint8 images [N, H, W, C] or [N, H, W], got {images.dtype} "
                             f"{list(images.shape)}.")
        if len(images) != len(labels):
            raise ValueError(f"Expected one label per image, got {len(images)} images and {len(labels)} labels.")
        self.images = (images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)).contiguous()
        self.targets = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.mean = mean.float().view(-1, 1, 1)
        self.std = std.float().view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return (self.images[i].float().div_(255.0) - self.mean) / self.std, self.targets[i]


def channel_stats(images: np.ndarray) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation of ``images / 255`` (``[N, H, W, C]`` or ``[N, H, W]``)."""
    x = torch.as_tensor(np.asarray(images)).double() / 255.0
    dims = (0, 1, 2) if x.dim() == 4 else (0, 1, 2, 3)
    x = x if x.dim() == 4 else x[..., None]
    return x.mean(dims).float(), x.std(dims).float()


class ArrayDataModule(NoisyDataModule):
    """uint8 arrays in memory; batches augmented on the device after transfer (training batches only)."""

    augment: Literal["crop_flip"] | None = None

    def _arrays(self, train: bool) -> tuple[np.ndarray, np.ndarray, int]:
        """``(uint8 images, int labels, number of classes)`` of a split, at most ``limit`` samples."""
        raise NotImplementedError

    @override
    def _build(self) -> None:
        images, labels, num_classes = self._arrays(train=True)
        self._check("in_channels", 1 if images.ndim == 3 else images.shape[-1])
        noisy = self._noisy(labels, num_classes)
        mean, std = channel_stats(images)
        self._fill = -mean / std  # a black pixel, normalized: the padding of the random crop
        self._scored = self._train = ImageArrayDataset(images, noisy, mean, std)
        if self.validate:
            images, labels, _ = self._arrays(train=False)
            self._val = ImageArrayDataset(images, labels, mean, std)  # the test split, original labels

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if self.augment == "crop_flip" and trainer is not None and trainer.training:
            return (random_crop_flip(batch[0], 4, self._fill), *batch[1:])  # (x, y, index): the index kept
        return batch


class CIFARDataModule(ArrayDataModule):
    """CIFAR-10 or CIFAR-100 with label noise; standard random crop (pad 4) and flip for training.

    Args:
        dataset: ``"cifar10"`` or ``"cifar100"``.
        source: ``"torchvision"`` (the pickled batches under ``root``, downloaded there when ``download``) or
            ``"offline"`` (CIFAR-10 only: the JPEG copy, see
            :func:`~curvature_callback.experiments.data.cifar10_offline_arrays`;
            ``root`` is then the copy's folder, None for the default).
        root: where the files are (None: ``data`` for torchvision's, the default copy for ``"offline"``).
        download: fetch the files when they are missing (needs internet).
        cache_dir: the offline source's unpack and decode cache.
        noise: fraction of training labels flipped; ``noise_kind``: ``"symmetric"``, ``"pair"``, ``"confusion"``
            (classes that look alike) or ``"model"`` (a quick model's confusions), the last two CIFAR-10 only (see
            :func:`~curvature_callback.experiments.data.noise.inject_label_noise`).
        seed: seed of the noise (not of training).
        batch_size: training batch size (per process under DDP).
        num_workers: training loader workers (0 is fine: the images are in memory, augmented on the device).
        augment: ``"crop_flip"`` or None.
        limit: use only the first ``limit`` samples of each split (standard order): small runs and tests.
        validate: evaluate on the test split (original labels) after each epoch.
        num_classes, in_channels: checked against the data when given (the model configs read them).
        corrections: a corrections CSV applied to the noisy training labels (relabel, drop); see
            :class:`~curvature_callback.experiments.data.base.NoisyDataModule`.
    """

    def __init__(
        self,
        dataset: Literal["cifar10", "cifar100"] = "cifar10",
        source: Literal["torchvision", "offline"] = "torchvision",
        root: str | None = None,
        download: bool = True,
        cache_dir: str | None = None,
        noise: float = 0.0,
        noise_kind: NoiseKind = "symmetric",
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        augment: Literal["crop_flip"] | None = "crop_flip",
        limit: int | None = None,
        validate: bool = True,
        num_classes: int | None = None,
        in_channels: int | None = None,
        corrections: str | None = None,
    ) -> None:
        super().__init__(noise=noise, noise_kind=noise_kind, seed=seed, batch_size=batch_size, num_workers=num_workers,
                         limit=limit, validate=validate, num_classes=num_classes, in_channels=in_channels,
                         corrections=corrections)
        if dataset not in ("cifar10", "cifar100"):
            raise ValueError(f"Expected argument `dataset` to be 'cifar10' or 'cifar100', got {dataset!r}.")
        if source not in ("torchvision", "offline"):
            raise ValueError(f"Expected argument `source` to be 'torchvision' or 'offline', got {source!r}.")
        if source == "offline" and dataset != "cifar10":
            raise ValueError("The offline copy holds CIFAR-10 only: use source='torchvision' for CIFAR-100.")
        if augment not in ("crop_flip", None):
            raise ValueError(f"Expected argument `augment` to be 'crop_flip' or None, got {augment!r}.")
        self._check_noise_kind("cifar10" if dataset == "cifar10" else None)
        self.save_hyperparameters()
        self.dataset, self.source, self.download = dataset, source, download
        self.root = "data" if root is None and source == "torchvision" else root
        self.cache_dir, self.augment = cache_dir, augment

    def _torchvision(self, train: bool, download: bool) -> Any:
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if self.dataset == "cifar10" else CIFAR100
        try:
            return cls(self.root, train=train, download=download)
        except (urllib.error.URLError, OSError) as e:  # no internet: say where the files go instead
            raise RuntimeError(
                f"Could not download {self.dataset} to {self.root} ({e}). Put torchvision's "
                f"{cls.base_folder}/ folder under data.root, or use data=cifar10_offline (CIFAR-10, no internet)."
            ) from e
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            raise RuntimeError(
                f"{e}: expected torchvision's {cls.base_folder}/ under data.root={self.root!r}; set data.root, or "
                "data.download=true when online, or use data=cifar10_offline."
            ) from e

    @override
    def prepare_data(self) -> None:  # once per node, before setup: the download, or the offline decode cache
        if self.source == "offline":
            for split in ("train", "test") if self.validate else ("train",):
                cifar10_offline_arrays(self.root, split, self.cache_dir, limit=self.limit)
        elif self.download:
            for train in (True, False):
                self._torchvision(train, download=True)

    @override
    def _arrays(self, train: bool) -> tuple[np.ndarray, np.ndarray, int]:
        if self.source == "offline":
            images, labels = cifar10_offline_arrays(self.root, "train" if train else "test", self.cache_dir,
                                                    limit=self.limit)
            self.classes = list(CIFAR10_CLASSES)
            return images, labels, 10
        ds = self._torchvision(train, download=False)
        self.classes = list(ds.classes)
        n = len(ds.targets) if self.limit is None else self.limit
        return ds.data[:n], np.asarray(ds.targets[:n], dtype=np.int64), len(ds.classes)


class FashionMNISTDataModule(ArrayDataModule):
    """Fashion-MNIST (28x28 grayscale, 10 classes) from its idx files under ``root/FashionMNIST/raw``.

    Arguments as :class:`CIFARDataModule`; no augmentation by default.
    """

    def __init__(
        self,
        root: str = "data",
        download: bool = True,
        noise: float = 0.0,
        noise_kind: NoiseKind = "symmetric",
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        augment: Literal["crop_flip"] | None = None,
        limit: int | None = None,
        validate: bool = True,
        num_classes: int | None = None,
        in_channels: int | None = None,
        corrections: str | None = None,
    ) -> None:
        super().__init__(noise=noise, noise_kind=noise_kind, seed=seed, batch_size=batch_size, num_workers=num_workers,
                         limit=limit, validate=validate, num_classes=num_classes, in_channels=in_channels,
                         corrections=corrections)
        self._check_noise_kind("fashion_mnist")
        self.save_hyperparameters()
        self.root, self.download, self.augment = root, download, augment

    def _torchvision(self, train: bool, download: bool) -> Any:
        from torchvision.datasets import FashionMNIST

        try:
            return FashionMNIST(self.root, train=train, download=download)
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            raise RuntimeError(
                f"Fashion-MNIST not found under {self.root}/FashionMNIST/raw and not downloadable ({e}): put the "
                "idx files (train-images-idx3-ubyte, ...) there, or set data.root."
            ) from e

    @override
    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                self._torchvision(train, download=True)

    @override
    def _arrays(self, train: bool) -> tuple[np.ndarray, np.ndarray, int]:
        ds = self._torchvision(train, download=False)
        self.classes = list(ds.classes)
        n = len(ds.targets) if self.limit is None else self.limit
        return ds.data[:n].numpy(), ds.targets[:n].numpy().astype(np.int64), len(ds.classes)


class ImageFolderDataModule(NoisyDataModule):
    """ImageNet-style folders: ``root/<train_dir>/<class>/<image>`` (and ``root/<val_dir>/...``), ImageFolder order.

    Training: random resized crop and flip. Scored and validation: resize to ``resize``, center crop
    ``image_size``. Normalized with ImageNet's mean and std. ``filenames[i]`` is sample ``i``'s path relative to
    ``root/<train_dir>`` (``n01440764/n01440764_10026.JPEG``); curvature-train writes them beside the store.

    Args:
        root: the dataset folder.
        train_dir: its training subfolder; ``val_dir``: its validation subfolder (None: no validation).
        image_size: side of the crop fed to the network; ``resize``: shorter side before the center crop.
        noise, noise_kind, seed, batch_size, num_workers, limit, num_classes: as :class:`CIFARDataModule`
            (``limit`` keeps the first samples of ImageFolder's order, which is sorted by class).
    """

    ARGUMENTS = {**NoisyDataModule.ARGUMENTS,
                 "image_size": Rule(Integer(1), "side of the crop fed to the network, in pixels", 224),
                 "resize": Rule(Integer(1), "shorter side before the center crop, in pixels", 256)}

    def __init__(
        self,
        root: str,
        train_dir: str = "train",
        val_dir: str | None = "val",
        image_size: int = 224,
        resize: int = 256,
        noise: float = 0.0,
        noise_kind: NoiseKind = "symmetric",
        seed: int = 0,
        batch_size: int = 256,
        num_workers: int = 8,
        limit: int | None = None,
        num_classes: int | None = None,
        in_channels: int | None = 3,
        corrections: str | None = None,
    ) -> None:
        super().__init__(noise=noise, noise_kind=noise_kind, seed=seed, batch_size=batch_size, num_workers=num_workers,
                         limit=limit, validate=val_dir is not None, num_classes=num_classes, in_channels=in_channels,
                         corrections=corrections)
        check_arguments(self.ARGUMENTS, {"image_size": image_size, "resize": resize})
        self._check_noise_kind(None)  # classes of any folder: no confusion table
        self.save_hyperparameters()
        self.root, self.train_dir, self.val_dir = Path(root), train_dir, val_dir
        self.image_size, self.resize = image_size, resize

    def _folder(self, subdir: str, transform: Any) -> Any:
        from torchvision.datasets import ImageFolder

        path = self.root / subdir
        if not path.is_dir():
            raise FileNotFoundError(
                f"No folder {path}: expected {self.root}/{subdir}/<class>/<image> (ImageNet's train/ and val/ "
                "sorted into class folders). Set data.root, data.train_dir or data.val_dir."
            )
        return ImageFolder(os.fspath(path), transform=transform)

    @override
    def _build(self) -> None:
        from torchvision import transforms as T

        normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        evaluation = T.Compose([T.Resize(self.resize), T.CenterCrop(self.image_size), *normalize])
        training = T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(), *normalize])
        scored = self._folder(self.train_dir, evaluation)
        samples = scored.samples[: self.limit] if self.limit else scored.samples
        noisy = self._noisy(np.array([y for _, y in samples], dtype=np.int64), len(scored.classes))
        base = scored.root
        self.filenames = [Path(os.path.relpath(p, base)).as_posix() for p, _ in samples]
        self.classes = list(scored.classes)
        scored.samples = scored.imgs = [(p, int(y)) for (p, _), y in zip(samples, noisy)]
        scored.targets = noisy.tolist()
        train = copy.copy(scored)  # the same samples and labels, the training transform; one scan of the folder
        train.transform, train.transforms = training, T.Compose([training])
        self._scored, self._train = scored, train
        if self.val_dir is not None:
            val = self._folder(self.val_dir, evaluation)
            if val.classes != scored.classes:
                raise ValueError(
                    f"{self.root / self.val_dir} has other class folders than {self.root / self.train_dir} "
                    f"({len(val.classes)} against {len(scored.classes)}): sort the validation images into the "
                    "training set's class folders, or set data.val_dir=null."
                )
            self._val = val
