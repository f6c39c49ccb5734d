"""The offline CIFAR-10 copy: a JPEG tarball in the standard index order, unpacked and decoded once into a cache.

Nothing is searched: the copy's folder is the ``root`` its user names, or ``$CURVATURE_CIFAR10_OFFLINE``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["CIFAR10_CLASSES", "CIFAR10_TARBALL", "cifar10_offline_arrays", "cifar10_offline_files",
           "cifar10_offline_root", "data_cache_dir", "unpack"]

#: CIFAR-10's class names; the index is the label
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TARBALL = "cifar10-jpeg.tar.gz"


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
    if not (folder / CIFAR10_TARBALL).is_file():
        raise FileNotFoundError(
            f"Found no {CIFAR10_TARBALL} in {folder}: pass `root=` (data.root=...) or set $CURVATURE_CIFAR10_OFFLINE "
            "to the folder of the offline CIFAR-10 copy."
        )
    return folder


def data_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
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


def unpack(tarball: Path, cache: Path) -> Path:
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
    cache = data_cache_dir(cache_dir)
    cached = cache / f"{split}_images.npy"
    if cached.is_file():
        images = np.load(cached, mmap_mode="r")
        if images.shape == (len(labels), 32, 32, 3):
            return np.array(images[:n]), labels[:n]
    unpacked = unpack(folder / CIFAR10_TARBALL, cache)
    images = _decode(unpacked, cifar10_offline_files(labels[:n], split))
    if n == len(labels):  # the whole split: cache it (write then rename, so a reader never sees half a file)
        fd, tmp = tempfile.mkstemp(prefix=f".{split}-", suffix=".npy", dir=cache)
        with os.fdopen(fd, "wb") as f:
            np.save(f, images)
        os.replace(tmp, cached)
    return images, labels[:n]
