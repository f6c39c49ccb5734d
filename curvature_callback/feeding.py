"""Feeding the scoring pass: which samples each pass and rank scores, and how their batches reach the model.

- A pass scores all samples, or with ``fraction = 1/P`` the samples with ``index % P == pass % P``: over ``P``
  consecutive passes every sample is scored once, and the store's per-sample counts keep each mean exact.
- Each rank takes a contiguous block of whole batches of that list (so its batches are exactly the ones a single
  process would make: float32 results depend on batch shape, aligned blocks make DDP and one process agree).
- Batches come from the dataset through a DataLoader, or, when the whole dataset fits (``cache``), from tensors
  kept on the model's device after the first pass: no decoding, no host-to-device copies, no loader stalls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = ["BatchFeeder", "check_cache", "pass_indices", "period_of", "rank_block"]

CachePolicy = bool | Literal["auto"]
#: "auto" keeps a dataset on the device when it takes at most this many bytes (CIFAR-10 float32: 600 MB)
AUTO_CACHE_BYTES = 2 << 30


def check_cache(cache: object) -> CachePolicy:
    """``cache`` itself if it is ``True``, ``False`` or ``"auto"``, else ``ValueError``."""
    if cache not in (True, False, "auto") or not isinstance(cache, (bool, str)):
        raise ValueError(f"Expected argument `cache` to be True, False or 'auto', got {cache!r}.")
    return cache


def period_of(fraction: float) -> int:
    """``P`` for ``fraction = 1/P``.

    Example:
        >>> period_of(1.0), period_of(0.25), period_of(1 / 3)
        (1, 4, 3)
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"Expected argument `fraction` in (0, 1], got {fraction!r}.")
    period = round(1 / fraction)
    if abs(period * fraction - 1) > 1e-6:
        raise ValueError(
            f"Expected `fraction` = 1/P for a whole number P (1, 0.5, 0.25, ...), so that every sample is scored "
            f"equally often; got {fraction!r}. Use 1/{period} = {1 / period:.4g}."
        )
    return period


def pass_indices(n: int, pass_number: int, period: int = 1) -> np.ndarray:
    """Global indices a pass scores: all, or one residue class modulo ``period`` (rotating with the pass).

    Example:
        >>> pass_indices(10, 0, 3).tolist(), pass_indices(10, 1, 3).tolist(), pass_indices(10, 5, 3).tolist()
        ([0, 3, 6, 9], [1, 4, 7], [2, 5, 8])
    """
    return np.arange(pass_number % period, n, period, dtype=np.int64)


def rank_block(count: int, batch_size: int, world: int, rank: int) -> tuple[int, int, int]:
    """``(start, stop, block)``: this rank's positions ``[start, stop)`` in a list of ``count`` samples, where
    ``block`` (the padded length every rank shares) is a whole number of batches.

    Example:
        >>> [rank_block(50, 8, 2, r) for r in (0, 1)]
        [(0, 32, 32), (32, 50, 32)]
    """
    batches = -(-count // batch_size)
    block = -(-batches // world) * batch_size
    return min(rank * block, count), min((rank + 1) * block, count), block


class BatchFeeder:
    """Batches ``(indices, x, y)`` of given global indices, on ``device``.

    Args:
        dataset: the scored dataset (indices ``0..N-1``).
        to_inputs: ``batch -> (x, y)``.
        batch_size: samples per batch.
        num_workers: DataLoader workers (uncached).
        cache: keep ``x`` and ``y`` of the whole dataset on the device after the first pass: ``True``,
            ``False``, or ``"auto"`` (when it takes at most 2 GiB).
    """

    def __init__(
        self,
        dataset: Dataset,
        to_inputs: Callable[[Any], tuple[Tensor, Tensor]],
        batch_size: int,
        num_workers: int = 0,
        cache: CachePolicy = "auto",
    ) -> None:
        check_cache(cache)
        self.dataset, self.to_inputs = dataset, to_inputs
        self.batch_size, self.num_workers, self.cache = batch_size, num_workers, cache
        self._x: Tensor | None = None
        self._y: Tensor | None = None
        self._use_cache: bool | None = None  # decided at the first pass

    def _wants_cache(self) -> bool:
        if self._use_cache is None:
            if self.cache != "auto":
                self._use_cache = bool(self.cache)
            else:
                x, _ = self.to_inputs(next(iter(DataLoader(self.dataset, batch_size=1))))
                self._use_cache = x[0].nelement() * x.element_size() * len(self.dataset) <= AUTO_CACHE_BYTES
        return self._use_cache

    def _loader(self, indices: np.ndarray, device: torch.device) -> DataLoader:
        return DataLoader(
            Subset(self.dataset, indices.tolist()), batch_size=self.batch_size, shuffle=False,
            num_workers=self.num_workers, pin_memory=device.type == "cuda",
        )

    def _fill_cache(self, device: torch.device) -> None:
        xs, ys = [], []
        for batch in self._loader(np.arange(len(self.dataset)), device):
            x, y = self.to_inputs(batch)
            xs.append(x.to(device, non_blocking=True))
            ys.append(y.to(device, non_blocking=True))
        self._x, self._y = torch.cat(xs), torch.cat(ys)

    def batches(self, indices: np.ndarray, device: torch.device) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yield ``(global indices, x, y)`` on ``device`` for ``indices`` in order, ``batch_size`` at a time."""
        if self._x is None and len(indices) and self._wants_cache():
            self._fill_cache(device)
        if self._x is not None and self._y is not None:
            if self._x.device != device:
                self._x, self._y = self._x.to(device), self._y.to(device)
            for start in range(0, len(indices), self.batch_size):
                idx = torch.as_tensor(indices[start : start + self.batch_size], device=device)
                yield idx, self._x[idx], self._y[idx]
            return
        offset = 0
        for batch in self._loader(indices, device):
            x, y = self.to_inputs(batch)
            idx = torch.as_tensor(indices[offset : offset + len(x)], device=device)
            offset += len(x)
            yield idx, x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def num_batches(self, count: int) -> int:
        return -(-count // self.batch_size)

    def __getstate__(self) -> dict[str, Any]:  # a cache on a device does not travel to spawned processes
        return {**self.__dict__, "_x": None, "_y": None, "_use_cache": None}
