"""What a store checks before it trusts a folder or changes it: every file an open finds (its ``.npy`` header, dtype,
shape and size, the counts against the epochs) and every commit's inputs (indices, values, label keys). The values'
rules of each channel are the channel's (:mod:`curvature_callback.core.channels.values`). Numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.core.store_format import (
    DTYPES,
    LABEL_UNKNOWN,
    StoreCorruptError,
    StoreMismatchError,
    check_npy,
    file_name,
)

__all__ = ["check_counts", "check_files", "check_labels", "check_values_in", "distinct_in_range"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def distinct_in_range(idx: np.ndarray, n: int) -> bool:
    """Whether ``idx`` holds distinct indices in ``[0, n)``; O(N) by bincount (``np.unique`` sorts: 0.9 s per
    commit at ImageNet's N, bench_store.py)."""
    return not len(idx) or (idx.min() >= 0 and idx.max() < n and np.count_nonzero(np.bincount(idx)) == len(idx))


def check_files(directory: Path, meta: dict[str, Any], channels: list[str], step_channels: list[str]) -> None:
    """Check every array file meta.json calls for (see :func:`~curvature_callback.core.store_format.check_npy`)."""
    n = int(meta["n"])
    check_npy(directory / "count.npy", DTYPES["count"], n)
    if meta["version"] >= 2:
        check_npy(directory / "labels.npy", DTYPES["labels"], n)
    for name in channels:
        for kind in ("sum", "mean", "last"):
            check_npy(directory / file_name(name, kind), DTYPES[kind], n)
        if meta["keep_history"]:
            check_npy(directory / file_name(name, "history"), DTYPES["history"], n, len(meta["epochs"]))
    for name in step_channels:
        for kind in ("sum", "last"):
            check_npy(directory / file_name(name, kind), DTYPES[kind], n)


def check_counts(directory: Path, meta: dict[str, Any], count: np.ndarray, pending: bool = False) -> None:
    """Refuse counts outside ``[0, len(epochs)]`` (one more while a commit is pending)."""
    top = len(meta["epochs"]) + int(pending)
    bad = np.flatnonzero((count < 0) | (count > top))
    if len(bad):
        i = int(bad[0])
        raise StoreCorruptError(
            f"{directory / 'count.npy'} is damaged: expected counts in [0, {top}] (meta.json lists "
            f"{len(meta['epochs'])} epoch(s){', and a commit is pending' if pending else ''}), got "
            f"{int(count[i])} for sample {i} ({len(bad)} sample(s) out of range). Restore the store from a "
            "backup or use another `directory`; a damaged store is refused, not repaired."
        )


def check_values_in(values: Mapping[str, Any], indices: np.ndarray | None, names: Sequence[str], what: str,
                    n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A commit's ``(indices, {name: float64 values})``, checked: distinct indices in ``[0, n)``, one array per name,
    one finite value per index, within float32's range (the latest value and the history are float32)."""
    if set(values) != set(names):
        raise ValueError(f"Expected values for {what} {list(names)}, got {sorted(values)}.")
    idx = np.arange(n) if indices is None else np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"Expected `indices` as a 1-d integer array, got {idx.dtype} of shape {idx.shape}.")
    if not distinct_in_range(idx, n):
        raise ValueError(f"Expected distinct `indices` in [0, {n}), got out-of-range or repeated ones.")
    vals = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        if v.shape != idx.shape:
            raise ValueError(f"Expected {len(idx)} values for channel {name!r}, got shape {v.shape}.")
        if not np.isfinite(v).all():
            raise ValueError(f"Non-finite values for channel {name!r} at sample(s) {idx[~np.isfinite(v)][:20]}.")
        big = np.abs(v) > _FLOAT32_MAX  # the latest value and the history are float32: they must stay finite
        if big.any():
            raise ValueError(f"Expected values for channel {name!r} within float32's range (|v| <= 3.4e38), got "
                             f"{v[big][0].item()!r} at sample {int(idx[big][0])}.")
        vals[name] = v
    return idx, vals


def check_labels(directory: Path, recorded: np.ndarray | None, idx: np.ndarray, labels: Any, *,
                 unknown_ok: bool = False, also: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``labels`` as int64, checked against the keys ``recorded`` for ``idx`` (the store's ``labels.npy``; None for
    a store that records none) and against ``also`` (keys of the same commit's other part). ``unknown_ok``:
    :data:`~curvature_callback.core.store_format.LABEL_UNKNOWN` marks a key not known, checked against nothing.

    Raises:
        StoreMismatchError: a sample recorded under another label.
    """
    what = "`step_labels`" if unknown_ok else "`labels`"
    keys = np.asarray(labels)
    if keys.shape != idx.shape or not (np.issubdtype(keys.dtype, np.integer) or keys.dtype == bool):
        raise ValueError(f"Expected {what} as {len(idx)} integer label keys (one per index), got {keys.dtype} of "
                         f"shape {keys.shape}.")
    keys = keys.astype(np.int64)
    if not unknown_ok and (keys == LABEL_UNKNOWN).any():
        raise ValueError(f"Expected label keys other than {LABEL_UNKNOWN} (the store's mark of 'no label yet').")
    if recorded is None:
        return keys
    before = np.asarray(recorded[idx])
    if also is not None:  # the scores' keys of this commit, for the samples both parts hold
        now = np.full(len(recorded), LABEL_UNKNOWN, dtype=np.int64)
        now[also[0]] = also[1]
        before = np.where(before == LABEL_UNKNOWN, now[idx], before)
    differ = np.flatnonzero((before != LABEL_UNKNOWN) & (keys != LABEL_UNKNOWN) & (before != keys))
    if len(differ):
        i = differ[0]
        raise StoreMismatchError(
            f"The store at {directory} recorded samples {idx[differ][:10].tolist()} under other labels "
            f"({len(differ)} sample(s); e.g. sample {int(idx[i])}: label key {int(before[i])} then, "
            f"{int(keys[i])} now{', in the training steps' if unknown_ok else ''}): the dataset's labels changed "
            "since. Values under other labels do not average: use another `directory` for other labels, or train "
            "and score the dataset the store was made for. Nothing of this epoch was added."
        )
    return keys
