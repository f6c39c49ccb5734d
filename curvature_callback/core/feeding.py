"""Feeding the scoring pass: which samples each pass and rank scores, and how their batches reach the model.

- A pass scores all samples, or with ``fraction = 1/P`` the samples with ``index % P == pass % P``: over ``P``
  consecutive passes every sample is scored once, and the store's per-sample counts keep each mean exact.
- Each rank takes a contiguous block of whole batches of that list (so its batches are exactly the ones a single
  process would make: float32 results depend on batch shape, aligned blocks make DDP and one process agree).
- Whether the items themselves are random (an augmenting transform) is told by behaviour: :func:`reads_differ`
  reads one item twice, with the global random states kept as they were.
- Batches come from the dataset through one DataLoader whose workers persist across passes, or, when the
  samples a rank scores fit (``cache``), from tensors kept on the model's device after the first pass: no
  decoding, no host-to-device copies, no loader stalls. Each rank caches only its own samples.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from curvature_callback.core.settings import check_float

__all__ = [
    "BatchFeeder", "WithIndex", "check_cache", "pass_indices", "period_of", "random_states_kept", "rank_block",
    "rank_universe", "reads_differ",
]

CachePolicy = bool | Literal["auto"]
#: "auto" keeps a dataset on the device when it takes at most this many bytes (CIFAR-10 float32: 600 MB)
AUTO_CACHE_BYTES = 2 << 30


class WithIndex(Dataset):
    """A dataset whose items carry their index: ``(x, y, index)`` for ``(x, y)`` items (``(*item, index)`` for
    other tuples, ``{**item, "index": index}`` for dicts), so a training step can tell the callback which samples
    it saw (:func:`~curvature_callback.integration.training_steps.sample_outputs`).

    Batches carry the index too whatever the wrapped dataset implements: a DataLoader reads a batch with
    ``__getitems__`` when the dataset has one (``Subset``, what ``random_split`` returns, does), and this one keeps
    the wrapped dataset's batched read, adding each item's index.

    Example:
        >>> WithIndex([("a", 0), ("b", 1)])[1]
        ('b', 1, 1)
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @staticmethod
    def _with(item: Any, i: Any) -> Any:
        if isinstance(item, Mapping):
            return {**item, "index": i}
        if isinstance(item, (tuple, list)):
            return (*item, i)
        return item, i

    def __getitem__(self, i: int) -> Any:
        return self._with(self.dataset[i], i)

    def __getitems__(self, indices: list[int]) -> list[Any]:
        """The items of ``indices`` with their indices, through the wrapped dataset's ``__getitems__`` (its batched
        read) when it has one and it returns one item per index; else item by item."""
        read = getattr(self.dataset, "__getitems__", None)
        items = read(indices) if callable(read) else None
        if not isinstance(items, (list, tuple)) or len(items) != len(indices):  # none, or batched in its own shape
            items = [self.dataset[i] for i in indices]
        return [self._with(item, i) for item, i in zip(items, indices, strict=True)]

    def __getattr__(self, name: str) -> Any:  # targets, classes, transform ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


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
    fraction = check_float("fraction", fraction, at_most=1.0)
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


def rank_universe(n: int, period: int, batch_size: int, world: int, rank: int) -> np.ndarray:
    """Every global index that ``rank`` scores over ``period`` consecutive passes (what its cache needs).

    Pass ``p`` scores ``p, p + P, p + 2P, ...``: its lists have one of two lengths (``q + 1`` for ``p < r``, ``q``
    after, with ``n = qP + r``), so the rank's positions ``[start, stop)`` are computed once per length and the indices
    are ``p + P * position``: at most ``n`` of them, whatever ``P`` (``fraction = 1e-8`` is as quick as ``1``).

    Example:
        >>> rank_universe(10, 1, 2, 2, 1).tolist(), rank_universe(10, 2, 2, 2, 1).tolist()
        ([6, 7, 8, 9], [8, 9])
    """
    q, r = divmod(n, period)
    parts = [np.empty(0, dtype=np.int64)]
    for length, passes in ((q + 1, range(min(r, period))), (q, range(r, period if q else r))):
        start, stop, _ = rank_block(length, batch_size, world, rank)
        if length and stop > start and len(passes):
            positions = np.arange(start, stop, dtype=np.int64)
            parts.append((np.arange(passes.start, passes.stop, dtype=np.int64)[:, None] + period * positions).ravel())
    return np.sort(np.concatenate(parts), kind="stable")  # disjoint (one residue per pass): no np.unique needed


@contextmanager
def random_states_kept() -> Iterator[None]:
    """Python's, numpy's and torch's global random states (CUDA's too, once initialized) as they were on entry:
    a probe or a scoring pass that draws from them (a DataLoader's iterator draws its base seed from torch's) must not
    change what training draws next."""
    python, legacy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(legacy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _same(a: Any, b: Any) -> bool:
    """Whether two reads of an item hold equal values (NaN equal to NaN); a type whose values cannot be compared
    (no ``__eq__`` of its own) counts as equal: the probe warns only on a difference it has seen."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if torch.equal(a, b):
            return True
        return (a.is_floating_point() or a.is_complex()) and bool(((a == b) | (a.isnan() & b.isnan())).all())
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__array_interface__") or isinstance(a, np.ndarray):  # numpy arrays, PIL images
        x, y = np.asarray(a), np.asarray(b)
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        try:
            return bool(np.array_equal(x, y, equal_nan=True))
        except TypeError:  # equal_nan on a non-numeric dtype
            return bool(np.array_equal(x, y))
    if type(a) is not type(b):
        return False
    if type(a).__eq__ is object.__eq__:  # identity only: two reads are two objects, which says nothing
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # an elementwise or refused comparison: cannot tell
        return True


def reads_differ(dataset: Dataset, index: int = 0) -> bool:
    """Whether reading ``dataset[index]`` twice gives different values: a random transform (augmentation), whose
    noise a curvature score would then include.

    Behaviour, not names: any transform library counts, and a deterministic transform named "Random..." does not.
    The global random states (Python, numpy, torch, CUDA) are restored after the two reads, so training draws
    what it would have drawn without the probe; a generator the dataset owns is its own and advances.

    Example:
        >>> class Noisy(torch.utils.data.Dataset):
        ...     def __getitem__(self, i):
        ...         return torch.rand(2), 0
        >>> reads_differ(Noisy()), reads_differ([(torch.zeros(2), 0)])
        (True, False)
    """
    with random_states_kept():
        first = dataset[index]
        second = dataset[index]
    return not _same(first, second)


class _Positions(Sampler[int]):
    """The indices of the current pass: set before each pass, read by a loader whose workers persist."""

    def __init__(self) -> None:
        self.indices = np.empty(0, dtype=np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices.tolist())

    def __len__(self) -> int:
        return len(self.indices)


class BatchFeeder:
    """Batches ``(indices, x, y)`` of given global indices, on ``device``.

    Uncached, batches come from one DataLoader kept for the feeder's life: its workers (``num_workers > 0``)
    start at the first pass and persist, memory is pinned for CUDA. Cached, the inputs of the samples a rank
    will ever score (``universe``) stay on the device after the first pass.

    Args:
        dataset: the scored dataset (indices ``0..N-1``).
        to_inputs: ``batch -> (x, y)``.
        batch_size: samples per batch.
        num_workers: DataLoader workers (uncached).
        cache: keep ``x`` and ``y`` of the scored samples on the device after the first pass: ``True``,
            ``False``, or ``"auto"`` (when they take at most 2 GiB).
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
        self._row: Tensor | None = None  # [N] on the device: global index -> row of the cache, -1 if not cached
        self._cached: np.ndarray | None = None  # [N] bool on the host: which indices the cache holds
        self._use_cache: bool | None = None  # decided at the first pass
        self._positions = _Positions()
        self._loader: DataLoader | None = None

    def _wants_cache(self, count: int) -> bool:
        if self._use_cache is None:
            if self.cache != "auto":
                self._use_cache = bool(self.cache)
            else:
                x, _ = self.to_inputs(next(iter(DataLoader(self.dataset, batch_size=1))))
                self._use_cache = x[0].nelement() * x.element_size() * count <= AUTO_CACHE_BYTES
        return self._use_cache

    def _load(self, indices: np.ndarray, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x, y)`` batches of ``indices`` in order, through the feeder's one loader."""
        pin = device.type == "cuda"
        if self._loader is None or self._loader.pin_memory != pin:
            self.close()
            self._loader = DataLoader(
                self.dataset, batch_size=self.batch_size, sampler=self._positions, num_workers=self.num_workers,
                pin_memory=pin, persistent_workers=self.num_workers > 0,
            )
        self._positions.indices = np.asarray(indices, dtype=np.int64)
        for batch in self._loader:
            yield self.to_inputs(batch)

    def _fill_cache(self, universe: np.ndarray, device: torch.device) -> None:
        """Cache the samples of ``universe`` (sorted, unique)."""
        xs, ys = [], []
        for x, y in self._load(universe, device):
            xs.append(x.to(device, non_blocking=True))
            ys.append(y.to(device, non_blocking=True))
        self._x, self._y = torch.cat(xs), torch.cat(ys)
        row = torch.full((len(self.dataset),), -1, dtype=torch.long)
        row[torch.from_numpy(universe)] = torch.arange(len(universe))
        self._row = row.to(device)
        self._cached = np.zeros(len(self.dataset), dtype=bool)
        self._cached[universe] = True

    def batches(
        self, indices: np.ndarray, device: torch.device, universe: np.ndarray | None = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yield ``(global indices, x, y)`` on ``device`` for ``indices`` in order, ``batch_size`` at a time.

        ``universe``: every index this feeder will be asked for (default: all); the cache holds only these.
        Indices outside the cache are read through the loader.
        """
        if self._x is None and len(indices):
            universe = np.arange(len(self.dataset)) if universe is None else np.unique(universe)
            if self._wants_cache(len(universe)):
                self._fill_cache(universe, device)
        cached = self._x is not None and self._cached is not None and bool(self._cached[indices].all())
        if cached:
            assert self._x is not None and self._y is not None and self._row is not None
            if self._x.device != device:
                self._x, self._y, self._row = self._x.to(device), self._y.to(device), self._row.to(device)
            for start in range(0, len(indices), self.batch_size):
                idx = torch.as_tensor(indices[start : start + self.batch_size], device=device)
                rows = self._row[idx]
                yield idx, self._x[rows], self._y[rows]
            return
        offset = 0
        for x, y in self._load(indices, device):
            idx = torch.as_tensor(indices[offset : offset + len(x)], device=device)
            offset += len(x)
            yield idx, x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def num_batches(self, count: int) -> int:
        return -(-count // self.batch_size)

    @property
    def cached_count(self) -> int:
        """How many samples the device cache holds (0 when there is none)."""
        return 0 if self._x is None else len(self._x)

    def close(self) -> None:
        """Stop the loader's persistent workers (a later pass starts new ones); the cache stays."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def __getstate__(self) -> dict[str, Any]:  # a cache on a device or live workers do not travel
        return {**self.__dict__, "_x": None, "_y": None, "_row": None, "_cached": None, "_use_cache": None,
                "_loader": None}
