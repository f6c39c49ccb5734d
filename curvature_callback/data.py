"""Datasets of the experiments and the label noise injected into them.

:func:`inject_label_noise` and :func:`standardize` are plain numpy/torch functions that any labelled
dataset can use; :class:`DigitsDataModule` is the embedded default: scikit-learn's 8x8 digits (1797 images,
shipped with scikit-learn, no download) with a seeded fraction of flipped labels.

The dataset that the curvature callback scores is the training set in its standard order, without
augmentation, with the *given* (noisy) labels: the labels the network is asked to fit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "CIFAR10_CLASSES", "DigitsDataModule", "cifar10_offline_arrays", "cifar10_offline_files", "cifar10_offline_root",
    "inject_label_noise", "standardize",
]

NoiseKind = Literal["symmetric", "pair"]


def inject_label_noise(
    labels: np.ndarray, num_classes: int, fraction: float, kind: NoiseKind = "symmetric", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(fraction * N)`` labels, chosen uniformly at random with ``seed``.

    - ``"symmetric"``: a flipped label becomes one of the other ``C - 1`` classes, uniformly.
    - ``"pair"``: a flipped label ``c`` becomes ``(c + 1) % C`` (structured noise between neighbour classes).

    A flipped sample never keeps its label, so the returned mask is exactly the set of mislabeled samples.

    Args:
        labels: ``[N]`` integer labels in ``[0, num_classes)``.
        num_classes: number of classes ``C >= 2``.
        fraction: fraction of samples to flip, in ``[0, 1]``.
        kind: ``"symmetric"`` or ``"pair"``.
        seed: seed of the choice of samples and of their new labels.

    Returns:
        ``(noisy, flipped)``: ``int64 [N]`` given labels and a ``bool [N]`` mask of the flipped samples.

    Example:
        >>> noisy, flipped = inject_label_noise(np.array([0, 1, 2, 3]), 4, 0.5, kind="pair", seed=0)
        >>> int(flipped.sum()), bool((noisy[flipped] == (np.array([0, 1, 2, 3])[flipped] + 1) % 4).all())
        (2, True)
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Expected `labels` as a 1-d integer array, got {labels.dtype} of shape {labels.shape}."
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"Expected argument `num_classes` to be an integer >= 2, got {num_classes!r}.")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Expected labels in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]: "
            "pass the dataset's number of classes as `num_classes`."
        )
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(
            f"Expected argument `fraction` in [0, 1] (0.1 flips 10 % of the labels), got {fraction!r}."
        )
    if kind not in ("symmetric", "pair"):
        raise ValueError(f"Expected argument `kind` to be 'symmetric' or 'pair', got {kind!r}.")
    rng = np.random.default_rng(seed)
    n = len(labels)
    chosen = rng.choice(n, size=round(fraction * n), replace=False)
    noisy = labels.astype(np.int64)  # a copy
    if kind == "symmetric":
        # an offset in 1..C-1 picks one of the other classes uniformly
        noisy[chosen] = (noisy[chosen] + rng.integers(1, num_classes, size=len(chosen))) % num_classes
    else:
        noisy[chosen] = (noisy[chosen] + 1) % num_classes
    flipped = np.zeros(n, dtype=bool)
    flipped[chosen] = True
    return noisy, flipped


def standardize(x: Tensor, mean: Tensor | float | None = None, std: Tensor | float | None = None) -> Tensor:
    """``(x - mean) / std``; mean and std default to the scalars of ``x`` itself (the training set's)."""
    mean = x.mean() if mean is None else mean
    std = x.std() if std is None else std
    return (x - mean) / std


class DigitsDataModule(pl.LightningDataModule):
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
        noise_kind: ``"symmetric"`` (to any other class) or ``"pair"`` (``c -> c + 1``).
        seed: seed of the noise and of the validation split.
        batch_size: training batch size.
        val_fraction: fraction held out for validation (0: train on everything, no validation loop).
        num_workers: loader workers (the data is in memory: 0 is fastest).
        num_classes, in_channels: checked when given (10 and 1; the model configs read them from ``data``).
    """

    num_classes = 10
    in_channels = 1

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
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if value is not None and value != getattr(self, name):
                raise ValueError(f"The digits have {name}={getattr(self, name)}, got {name}={value!r}.")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"Expected argument `val_fraction` in [0, 1), got {val_fraction!r}.")
        self.save_hyperparameters()  # logged with the run (hparams.yaml of the CSV logger)
        self.noise = noise
        self.noise_kind = noise_kind
        self.seed = seed
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.given_labels: np.ndarray | None = None
        self.original_labels: np.ndarray | None = None
        self.flipped: np.ndarray | None = None
        self.source_indices: np.ndarray | None = None
        self._train: TensorDataset | None = None
        self._val: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        from sklearn.datasets import load_digits  # scikit-learn only where it is used

        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
        y = np.asarray(digits.target, dtype=np.int64)
        order = np.random.default_rng((self.seed, 1)).permutation(len(y))  # a stream apart from the noise's
        n_val = round(self.val_fraction * len(y))
        train_idx, val_idx = np.sort(order[n_val:]), np.sort(order[:n_val])
        noisy, flipped = inject_label_noise(
            y[train_idx], self.num_classes, self.noise, kind=self.noise_kind, seed=self.seed
        )
        mean, std = x[train_idx].mean(), x[train_idx].std()
        x = standardize(x, mean, std)
        self.source_indices = train_idx
        self.original_labels, self.given_labels, self.flipped = y[train_idx], noisy, flipped
        self._train = TensorDataset(x[train_idx], torch.as_tensor(noisy))
        self._val = TensorDataset(x[val_idx], torch.as_tensor(y[val_idx])) if n_val else None

    def curvature_dataset(self) -> TensorDataset:
        """The training set in standard order, unaugmented, with the given (noisy) labels: what is scored."""
        self.setup()
        return self._train

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self._train, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self._val is None:
            return []  # no validation loop
        return DataLoader(self._val, batch_size=512, shuffle=False, num_workers=self.num_workers)


# ------------------------------------------------------------------------------------------ CIFAR-10 offline
#: CIFAR-10's class names; the index is the label
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR10_TARBALL = "cifar10-jpeg.tar.gz"


def cifar10_offline_root(root: str | os.PathLike | None = None) -> Path:
    """The folder of the offline CIFAR-10 copy (``cifar10-jpeg.tar.gz``, ``train_labels.npy``, ...).

    ``root`` if given, else ``$CURVATURE_CIFAR10_OFFLINE``. Nothing else is searched: the package never looks
    outside itself and the paths its user names.

    Raises:
        FileNotFoundError: when no folder is given, or the folder holds no tarball.
    """
    if root is None:
        root = os.environ.get("CURVATURE_CIFAR10_OFFLINE")
    if root is None:
        raise FileNotFoundError(
            "No folder given for the offline CIFAR-10 copy: pass `root=` (data.root=...) or set "
            "$CURVATURE_CIFAR10_OFFLINE to the folder that holds cifar10-jpeg.tar.gz."
        )
    folder = Path(root)
    if not (folder / _CIFAR10_TARBALL).is_file():
        raise FileNotFoundError(
            f"Found no {_CIFAR10_TARBALL} in {folder}: pass `root=` (data.root=...) or set $CURVATURE_CIFAR10_OFFLINE "
            "to the folder of the offline CIFAR-10 copy."
        )
    return folder


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir``, else ``$CURVATURE_DATA_CACHE/cifar10``, else ``~/.cache/curvature_callback/cifar10``."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("CURVATURE_DATA_CACHE")
    return Path(base) / "cifar10" if base else Path.home() / ".cache" / "curvature_callback" / "cifar10"


def cifar10_offline_files(labels: np.ndarray, split: Literal["train", "test"] = "train") -> list[str]:
    """Relative file names of the images in the standard CIFAR-10 order.

    The copy files images by class, numbered by their running count within the class in the standard order:
    sample ``i`` is ``<split>/<classes[y[i]]>/<k:04d>.jpg`` with ``k = #{j < i : y[j] == y[i]}``.

    Example:
        >>> cifar10_offline_files(np.array([6, 9, 9, 4, 6]))
        ['train/frog/0000.jpg', 'train/truck/0000.jpg', 'train/truck/0001.jpg', 'train/deer/0000.jpg', \
'train/frog/0001.jpg']
    """
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")  # by class, standard order kept within a class
    first = np.searchsorted(labels[order], labels[order])  # position of each class's first member
    k = np.empty(len(labels), dtype=np.int64)
    k[order] = np.arange(len(labels)) - first
    return [f"{split}/{CIFAR10_CLASSES[c]}/{n:04d}.jpg" for c, n in zip(labels.tolist(), k.tolist())]


def _unpack(tarball: Path, cache: Path) -> Path:
    """Unpack ``tarball`` once into ``cache/cifar10-jpeg`` (atomically: a rename, safe for parallel ranks)."""
    target = cache / "cifar10-jpeg"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
    try:
        if shutil.which("tar"):  # 2 s against 10 s for Python's tarfile on 60,000 small files
            subprocess.run(["tar", "xzf", str(tarball), "-C", str(tmp)], check=True)
        else:
            with tarfile.open(tarball) as archive:
                archive.extractall(tmp, filter="data")
        try:
            os.rename(tmp, target)
        except OSError:  # another process got there first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _decode(folder: Path, files: list[str]) -> np.ndarray:
    from PIL import Image  # Pillow comes with torchvision

    out = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    for i, name in enumerate(files):
        with Image.open(folder / name) as image:
            out[i] = np.asarray(image.convert("RGB"))
    return out


def cifar10_offline_arrays(
    root: str | os.PathLike | None = None,
    split: Literal["train", "test"] = "train",
    cache_dir: str | os.PathLike | None = None,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of the offline CIFAR-10 copy, in the standard order (as torchvision's ``CIFAR10``).

    The first call unpacks the tarball into ``cache_dir`` (2 s) and decodes every JPEG of the split (about 10 s
    for 50,000 on one core), caching the array as ``<cache_dir>/<split>_images.npy`` (150 MB for train); later
    calls load that file. With ``limit`` only the first ``limit`` images are decoded (nothing is cached beyond
    the unpacked files), or sliced from the cached array when there is one.

    The images were re-encoded as JPEG: pixels differ slightly from the pickled CIFAR-10 (see the copy's
    README); labels and order are the original ones.

    Args:
        root: the copy's folder; see :func:`cifar10_offline_root`.
        split: ``"train"`` (50,000) or ``"test"`` (10,000).
        cache_dir: where to unpack and cache; default ``$CURVATURE_DATA_CACHE/cifar10`` or
            ``~/.cache/curvature_callback/cifar10``.
        limit: decode only the first ``limit`` samples of the standard order.

    Returns:
        ``(images, labels)``: ``uint8 [N, 32, 32, 3]`` (HWC, RGB) and ``int64 [N]``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"Expected argument `split` to be 'train' or 'test', got {split!r}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
        raise ValueError(f"Expected argument `limit` to be an integer >= 0 or None, got {limit!r}.")
    folder = cifar10_offline_root(root)
    labels = np.load(folder / f"{split}_labels.npy").astype(np.int64)
    n = len(labels) if limit is None else min(int(limit), len(labels))
    cache = _cache_dir(cache_dir)
    cached = cache / f"{split}_images.npy"
    if cached.is_file():
        images = np.load(cached, mmap_mode="r")
        if images.shape == (len(labels), 32, 32, 3):
            return np.array(images[:n]), labels[:n]
    unpacked = _unpack(folder / _CIFAR10_TARBALL, cache)
    images = _decode(unpacked, cifar10_offline_files(labels[:n], split))
    if n == len(labels):  # the whole split: cache it (write then rename, so a reader never sees half a file)
        fd, tmp = tempfile.mkstemp(prefix=f".{split}-", suffix=".npy", dir=cache)
        with os.fdopen(fd, "wb") as f:
            np.save(f, images)
        os.replace(tmp, cached)
    return images, labels[:n]
