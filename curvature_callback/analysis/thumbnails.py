"""The images a report shows, kept in the run folder as plain data: ``review_images.npy`` and ``review_indices.npy``.

A store holds scores, not pixels; the report of a run needs the pictures of the few samples it shows (the flagged
samples, each question's top, the duplicate pairs), never the whole dataset. ``curvature-train`` writes them
(:func:`save_thumbnails`) so that ``curvature-report RUN_DIR`` shows images without rebuilding the data:

- ``review_images.npy``: ``uint8 [K, H, W, C]`` (``C`` 1 or 3), each image scaled to ``[0, 255]`` by its own
  minimum and maximum (the inputs are normalized: this undoes it for display) and shrunk by whole strides to at
  most :data:`MAX_SIDE` pixels a side;
- ``review_indices.npy``: ``int64 [K]``, increasing, each image's sample index in the store's order.

Both are ``np.save`` arrays that :func:`load_thumbnails` reads without pickle and checks as data from a stranger
(dtype, shape, sizes, indices in range and increasing, at most :data:`MAX_COUNT` images), refusing a bad one with a
message that names the file.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.analysis.references import load_npy
from curvature_callback.core import safe_paths
from curvature_callback.core.numeric import to_unit_range

__all__ = ["IMAGES_FILE", "INDICES_FILE", "MAX_COUNT", "MAX_SIDE", "Thumbnails", "load_thumbnails", "save_thumbnails"]

IMAGES_FILE = "review_images.npy"
INDICES_FILE = "review_indices.npy"
#: largest side of a kept image, in pixels (ImageNet's 224 becomes 56: enough to judge a label)
MAX_SIDE = 64
#: most images kept (what a report shows is a few hundred)
MAX_COUNT = 20_000


def to_pixels(image: Any) -> np.ndarray:
    """One input (``[C, H, W]``, ``[H, W, C]`` or ``[H, W]``, array or tensor) as ``uint8 [H, W, C]``, scaled by its
    own range and shrunk by a whole stride (area mean) to at most :data:`MAX_SIDE` a side."""
    a = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float64)
    if a.ndim == 2:
        a = a[..., None]
    elif a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"Expected an image [C, H, W], [H, W, C] or [H, W] with 1 or 3 channels, got shape "
                         f"{a.shape}.")
    stride = math.ceil(max(a.shape[:2]) / MAX_SIDE)
    if stride > 1:  # mean over stride x stride blocks (the edge cropped to whole blocks)
        h, w = a.shape[0] // stride, a.shape[1] // stride
        a = a[: h * stride, : w * stride].reshape(h, stride, w, stride, a.shape[-1]).mean(axis=(1, 3))
    return np.round(to_unit_range(a) * 255).astype(np.uint8)


def save_thumbnails(run_dir: str | os.PathLike, images: Any, indices: Iterable[int]) -> np.ndarray:
    """Write the images of ``indices`` (``images[i]`` is sample ``i``) into ``run_dir``, never through a link.

    Images of different shapes (a folder of photos) are padded with black to the largest. Returns the indices
    written (sorted, distinct).

    Raises:
        ValueError: more than :data:`MAX_COUNT` indices.
    """
    kept = np.unique(np.asarray(list(indices), dtype=np.int64))
    if len(kept) > MAX_COUNT:
        raise ValueError(f"Expected at most {MAX_COUNT} thumbnails (what a report shows), got {len(kept)}.")
    tiles = [to_pixels(images[int(i)]) for i in kept]
    c = max((t.shape[-1] for t in tiles), default=1)
    h = max((t.shape[0] for t in tiles), default=1)
    w = max((t.shape[1] for t in tiles), default=1)
    stacked = np.zeros((len(tiles), h, w, c), dtype=np.uint8)
    for k, t in enumerate(tiles):
        stacked[k, : t.shape[0], : t.shape[1]] = t  # grayscale broadcast to RGB when others are colour
    run_dir = Path(run_dir)
    for name, array in ((IMAGES_FILE, stacked), (INDICES_FILE, kept)):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        safe_paths.write_bytes(run_dir / name, buffer.getvalue())
    return kept


class Thumbnails:
    """``view[i]`` is the kept image of sample ``i`` (``uint8 [H, W, C]``); ``i in view`` says whether it is kept."""

    def __init__(self, images: np.ndarray, indices: np.ndarray, source: str) -> None:
        self.images, self.indices, self.source = images, indices, source
        self._row = {int(i): k for k, i in enumerate(indices)}

    def __len__(self) -> int:
        return len(self.indices)

    def __contains__(self, i: object) -> bool:
        return isinstance(i, (int, np.integer)) and int(i) in self._row

    def __getitem__(self, i: int) -> np.ndarray:
        row = self._row.get(int(i))
        if row is None:
            raise KeyError(f"No kept image of sample {i} in {self.source}.")
        return self.images[row]


def _load(path: Path, what: str) -> np.ndarray:
    fix = "remove it, or rerun curvature-train"
    size = path.stat().st_size
    if size > 16 + (MAX_COUNT * MAX_SIDE * MAX_SIDE * 3 + 4096):
        raise ValueError(f"Expected {path} to hold at most {MAX_COUNT} images of {MAX_SIDE} pixels a side, got a "
                         f"file of {size} bytes: {fix}.")
    array = load_npy(path, what, fix=fix)  # a regular file, as large as its header says, never unpickled
    if not isinstance(array, np.ndarray):
        array.close()
        raise ValueError(f"Expected {path} to be {what}, got an archive of arrays: {fix}.")
    return array


def load_thumbnails(run_dir: str | os.PathLike, n: int) -> Thumbnails | None:
    """The kept images of a run of ``n`` samples, checked; None when the run folder has none.

    Both files must stay inside ``run_dir`` once links are followed.

    Raises:
        ValueError: one file without the other, or either not what :func:`save_thumbnails` writes: not an ``.npy``,
            pickled, the wrong dtype or shape, sizes that disagree, an image larger than :data:`MAX_SIDE`, an index
            out of ``[0, n)`` or not increasing. The message names the file and what was found.
        safe_paths.UnsafePathError: a file links out of ``run_dir``.
    """
    run_dir = Path(run_dir)
    paths = [run_dir / IMAGES_FILE, run_dir / INDICES_FILE]
    there = [p.exists() or p.is_symlink() for p in paths]
    if not any(there):
        return None
    if not all(there):
        missing = paths[there.index(False)]
        raise ValueError(f"{run_dir} has {paths[there.index(True)].name} without {missing.name}: the two go "
                         "together (curvature-train writes both). Remove the other, or rerun curvature-train.")
    images_path, indices_path = (safe_paths.inside(p, run_dir) for p in paths)
    images = _load(images_path, "an .npy of uint8 [K, H, W, C] images")
    indices = _load(indices_path, "an .npy of int64 [K] sample indices")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) \
            or not 0 < images.shape[1] <= MAX_SIDE or not 0 < images.shape[2] <= MAX_SIDE:
        raise ValueError(f"Expected {images_path} to be uint8 [K, H, W, C] images with C 1 or 3 and H, W in [1, "
                         f"{MAX_SIDE}], got {images.dtype} {list(images.shape)}: remove it, or rerun curvature-train.")
    if indices.dtype != np.int64 or indices.ndim != 1 or len(indices) != len(images):
        raise ValueError(f"Expected {indices_path} to be int64 [{len(images)}] (one index per image of "
                         f"{images_path.name}), got {indices.dtype} {list(indices.shape)}: remove both, or rerun "
                         "curvature-train.")
    if len(indices) and (indices.min() < 0 or indices.max() >= n or (np.diff(indices) <= 0).any()):
        order = ", not increasing" if (np.diff(indices) <= 0).any() else ""
        raise ValueError(f"Expected {indices_path} to hold increasing sample indices in [0, {n}) (the store's N), got "
                         f"values in [{indices.min()}, {indices.max()}]{order}: not this run's file; remove both, or "
                         "rerun curvature-train.")
    return Thumbnails(images, indices, f"{images_path.name} in the run folder ({len(indices)} images)")
