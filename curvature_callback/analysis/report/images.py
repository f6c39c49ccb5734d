"""Where the report's images come from (the caller's images or dataset, an ``.npy`` file, or the run's kept
``review_images.npy``), the checks of each, and the thumbnails the page draws from them."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.analysis.plots import save_thumbnail
from curvature_callback.analysis.references import load_npy
from curvature_callback.analysis.thumbnails import Thumbnails, load_thumbnails
from curvature_callback.core import safe_paths

__all__ = ["HOW", "Drawn", "Images", "Subset", "dataset_images", "has_image", "resolve_images"]

#: how to get the images when the report has none
HOW = ("pass --images FILE.npy (an [N, ...] array in the store's order), or --rebuild-data to rebuild this "
       "package's datamodule named in the run's .hydra/config.yaml")


@dataclass
class Images:
    """A view of the run's images in the store's order, and where it came from."""

    view: Any = None
    source: str = ""
    notes: list[str] = field(default_factory=list)


class _Inputs:
    """``view[i]`` is the input of sample ``i`` of a dataset of ``(x, y, ...)`` items."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i][0]


class Subset:
    """``view[k]`` is ``images[indices[k]]``."""

    def __init__(self, images: Any, indices: np.ndarray) -> None:
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Any:
        return self.images[int(self.indices[k])]


def dataset_images(dataset: Any) -> Any:
    """The images of a dataset of ``(x, y, ...)`` items, by index (a TensorDataset's first tensor as it is)."""
    tensors = getattr(dataset, "tensors", None)  # a TensorDataset: its first tensor, stacked already
    return tensors[0] if tensors else _Inputs(dataset)


def resolve_images(images: Any, images_file: str | None, n: int, source: str, note: str | None,
                   run_dir: Path) -> Images:
    """The report's images: the caller's ``images`` (from ``source``), else ``images_file``, else the run's kept
    ones, else none (with ``note``, or how to get them), each checked to hold the store's ``n`` samples."""
    if images is not None:
        if hasattr(images, "__len__") and len(images) != n:
            raise ValueError(f"Expected `images` of {n} samples (the store's N), got {len(images)}.")
        return Images(images, source)
    if images_file is not None:
        array = load_npy(images_file, "an .npy of numeric [N, ...] images", mmap_mode="r")
        if not isinstance(array, np.ndarray) or array.ndim < 3:
            what = f"shape {array.shape}" if isinstance(array, np.ndarray) else f"a {type(array).__name__}"
            raise ValueError(f"Expected {images_file} to be an .npy of [N, H, W] or [N, ...] images, got {what}: "
                             "save the images with np.save.")
        if len(array) != n:
            raise ValueError(f"Expected {images_file} to hold {n} images (the store's N), got shape {array.shape}.")
        return Images(array, images_file)
    kept = load_thumbnails(run_dir, n)  # the run's own: only the samples its report shows
    if kept is not None:
        return Images(kept, kept.source)
    return Images(notes=[note or "images unavailable: the run folder keeps none (review_images.npy), and the report "
                                 f"builds nothing from a run folder; {HOW}"])


def has_image(found: Images, i: int) -> bool:
    """Whether the report has the picture of sample ``i`` (the run's kept images hold only some)."""
    return found.view is not None and (not isinstance(found.view, Thumbnails) or i in found.view)


class Drawn:
    """Thumbnails of the samples the page shows, as data URIs, each written once to ``out/thumbnails/I.png`` (never
    read back from a file that was there: it may be a link); ``shown`` collects every sample drawn."""

    def __init__(self, found: Images, out: Path, shown: set[int]) -> None:
        self.found, self.out, self.shown = found, out, shown
        self._uri: dict[int, dict[str, str]] = {}

    def __call__(self, i: int) -> dict[str, str] | None:
        i = int(i)
        if not has_image(self.found, i):
            return None
        if i not in self._uri:
            buffer = io.BytesIO()
            save_thumbnail(self.found.view[i], buffer)
            data = buffer.getvalue()
            safe_paths.write_bytes(safe_paths.subdir(self.out, "thumbnails") / f"{i}.png", data)
            self._uri[i] = {"src": "data:image/png;base64," + base64.b64encode(data).decode(), "alt": f"sample {i}"}
            self.shown.add(i)
        return self._uri[i]
