"""A store's journal: a commit's values written (and synced) before any array is touched, so that a commit
interrupted after its commit point is replayed, never dropped. Numpy only.

``journal/`` holds the commit's arrays in one ``parts.npz`` (:func:`~curvature_callback.core.store_format.
save_journal`; a journal of one ``.npy`` per array, which stores wrote before, still replays), then the commit
record ``journal.json`` (``{"epoch", "row", "scores", "steps"}``), whose atomic write is the commit point. Every
write the replay makes is absolute (the new sums and counts, not increments), so replaying twice gives the same
arrays. A journal is data from a stranger too: :func:`load` checks every part before any is applied.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.core.store_checks import distinct_in_range
from curvature_callback.core.store_format import (
    LABEL_UNKNOWN,
    PRIMARY,
    StoreCorruptError,
    atomic_write_json,
    fsync_dir,
    save_journal,
    sync_arrays,
)

__all__ = ["JOURNAL_PARTS", "apply", "check_folder", "discard", "folder", "load", "pending", "record", "write"]

#: a commit's arrays, in its journal (one file; a journal of one ``.npy`` per array, as stores wrote before, replays)
JOURNAL_PARTS = "parts.npz"


def folder(directory: Path) -> Path:
    """The store's journal folder (present only while a commit is written or applied)."""
    return directory / "journal"


def record(directory: Path) -> dict[str, Any] | None:
    """The commit record ``journal/journal.json``, or None where there is none (no commit past its commit
    point, or one that finished between our look and our read).

    Raises:
        StoreCorruptError: a record that does not parse or lacks a key.
    """
    path = folder(directory) / "journal.json"
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        found = json.loads(raw)
    except (ValueError, RecursionError):
        found = None
    if isinstance(found, dict):  # records before the training-time channels: the scores alone
        found.setdefault("scores", True)
        found.setdefault("steps", False)
    if not (isinstance(found, dict) and all(isinstance(found.get(k), int) and not isinstance(found[k], bool)
                                            for k in ("epoch", "row"))
            and all(isinstance(found[k], bool) for k in ("scores", "steps"))):
        raise StoreCorruptError(
            f"{path} is damaged: expected a commit record {{\"epoch\": <int>, \"row\": <int>, \"scores\": "
            f"<bool>, \"steps\": <bool>}}, got "
            f"{raw[:200]!r}. It marks a commit that may be half-applied: restore the store from a backup or use "
            "another `directory`; a damaged store is refused, not repaired."
        )
    return found


def pending(found: dict[str, Any] | None, meta: dict[str, Any]) -> bool:
    """Whether a commit record holds a part that ``meta`` (meta.json) does not list yet (a commit not fully
    applied)."""
    return found is not None and (
        (found["scores"] and found["epoch"] not in meta["epochs"])
        or (found["steps"] and found["epoch"] not in meta["step_epochs"]))


def write(directory: Path, epoch: int, row: int, parts: Iterable[tuple[str, np.ndarray]], *, scores: bool,
          steps: bool, before_commit_point: Callable[[], None]) -> None:
    """Write a commit's journal, then its record (the commit point).

    Args:
        parts: the commit's arrays by name, each computed as it is written (one at a time in memory).
        scores, steps: whether the commit adds the pass's scores, the training-time values.
        before_commit_point: run after the arrays are written (growing the history: a full disk fails there).

    Raises:
        ValueError, StoreCorruptError: from ``parts`` (nothing was applied; the journal is removed).
        OSError: the disk is full (or another write error): the store is as it was before this commit.
    """
    journal = folder(directory)
    try:
        journal.mkdir()  # the store's recovery left none
        save_journal(journal / JOURNAL_PARTS, parts)
        before_commit_point()
        fsync_dir(journal)
    except (ValueError, StoreCorruptError):
        shutil.rmtree(journal, ignore_errors=True)  # before the commit point: nothing was applied
        raise
    except OSError as e:
        raise OSError(
            e.errno,
            f"Could not write the commit of epoch {epoch} into {directory} ({e.strerror or e}): expected room "
            "for its journal and history. The store is as it was before this commit: free some space (or lift "
            "the limit), then commit again.",
        ) from e
    atomic_write_json(journal / "journal.json", {"epoch": epoch, "row": row, "scores": scores, "steps": steps})


def discard(directory: Path) -> None:
    """Remove the journal folder (an applied commit's, or one that never reached its commit point)."""
    shutil.rmtree(folder(directory))


def check_folder(directory: Path) -> bool:
    """Whether there is a journal folder (a commit in progress or interrupted).

    Raises:
        StoreCorruptError: ``journal`` is a file or a link.
    """
    journal = folder(directory)
    if not journal.exists() and not journal.is_symlink():
        return False
    if journal.is_symlink() or not journal.is_dir():
        raise StoreCorruptError(
            f"{journal} is damaged: expected the journal folder a commit writes, got a file or a link. Move it "
            "away if you know what it is, or use another `directory`; a damaged store is refused, not repaired."
        )
    return True


class _Parts:
    """The arrays of one journal, read and checked one by one (from ``parts.npz``, or an old journal's ``.npy``
    files), each refused with :class:`StoreCorruptError` naming it."""

    def __init__(self, directory: Path) -> None:
        self.journal = folder(directory)
        self.bundle = self.journal / JOURNAL_PARTS
        self.stored: dict[str, np.ndarray] | None = None  # None: a journal of one .npy per array (before bundles)
        if self.bundle.exists() or self.bundle.is_symlink():
            try:
                if self.bundle.is_symlink() or not self.bundle.is_file():
                    raise ValueError("a link or a folder")
                with np.load(self.bundle, allow_pickle=False) as z:
                    self.stored = {key: z[key] for key in z.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
                raise self.refuse(self.bundle, "a .npz file of the commit's arrays",
                                  f"{type(e).__name__}: {e}") from None

    @staticmethod
    def refuse(path: Path, expected: str, got: str) -> StoreCorruptError:
        return StoreCorruptError(
            f"{path} is damaged: expected {expected}, got {got}. It records a commit past its commit point that "
            "cannot be replayed: restore the store from a backup or use another `directory`; a damaged store "
            "is refused, not repaired."
        )

    def has(self, name: str) -> bool:
        return name.removesuffix(".npy") in self.stored if self.stored is not None else (self.journal / name).exists()

    def where(self, name: str) -> Path:
        """The journal array's name in messages: ``journal/parts.npz[count]`` (or the .npy of an old journal)."""
        return self.journal / name if self.stored is None else Path(f"{self.bundle}[{name.removesuffix('.npy')}]")

    def load(self, name: str, dtype: type, m: int | None) -> np.ndarray:
        """One 1-d array of ``dtype`` (``m`` values, where given), finite where it is a float."""
        key = name.removesuffix(".npy")
        path = self.where(name)
        if self.stored is not None:
            if key not in self.stored:
                raise self.refuse(path, f"the array '{key}' in {JOURNAL_PARTS}", f"arrays {sorted(self.stored)}")
            array = self.stored[key]
        else:
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise self.refuse(path, "a .npy file", f"{type(e).__name__}: {e}") from None
        if array.dtype != dtype or array.ndim != 1 or (m is not None and len(array) != m):
            raise self.refuse(path, f"a 1-d {np.dtype(dtype)} array" + (f" of {m} values" if m is not None else ""),
                              f"{array.dtype} of shape {array.shape}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise self.refuse(path, "finite values", "NaN or infinity")
        return array

    def indices(self, name: str, n: int) -> np.ndarray:
        idx = self.load(name, np.int64, None)
        if not distinct_in_range(idx, n):
            raise self.refuse(self.where(name), f"distinct indices in [0, {n})", "out-of-range or repeated ones")
        return idx


def load(directory: Path, found: dict[str, Any], meta: dict[str, Any], valued: list[str],
         step_channels: list[str]) -> dict[str, Any]:
    """The journal's parts, each checked before any is applied: ``indices``, ``count``, ``labels`` (None when the
    commit checked none), ``sums`` and ``values`` per channel of ``valued`` for the scores; ``step_indices``,
    ``step_labels``, ``step_sums`` and ``step_values`` for the training-time channels.

    Raises:
        StoreCorruptError: naming the journal file that does not fit the store.
    """
    epochs, n = meta["epochs"], int(meta["n"])
    if found["row"] != len(epochs):
        raise _Parts.refuse(folder(directory) / "journal.json",
                            f"row {len(epochs)} (meta.json lists {len(epochs)} epochs)", f"row {found['row']}")
    files = _Parts(directory)
    parts: dict[str, Any] = {}
    if found["scores"]:
        idx = files.indices("indices.npy", n)
        new_count = files.load("count.npy", np.int64, len(idx))
        if len(idx) and (new_count.min() < 1 or new_count.max() > len(epochs) + 1):
            raise files.refuse(files.where("count.npy"), f"counts in [1, {len(epochs) + 1}]",
                               f"counts in [{new_count.min()}, {new_count.max()}]")
        parts.update(
            indices=idx, count=new_count,
            labels=files.load("labels.npy", np.int64, len(idx)) if files.has("labels.npy") else None,
            sums={name: files.load(f"{name}_sum.npy", np.float64, len(idx)) for name in valued},
            values={name: files.load(f"{name}_values.npy", np.float64, len(idx)) for name in valued},
        )
    if found["steps"]:
        step_idx = files.indices("step_indices.npy", n)
        parts.update(
            step_indices=step_idx,
            step_labels=(files.load("step_labels.npy", np.int64, len(step_idx))
                         if files.has("step_labels.npy") else None),
            step_sums={name: files.load(f"{name}_sum.npy", np.float64, len(step_idx)) for name in step_channels},
            step_values={name: files.load(f"{name}_values.npy", np.float64, len(step_idx)) for name in step_channels},
        )
    return parts


def apply(directory: Path, meta: dict[str, Any], *, n: int, channels: list[str], valued: list[str],
          step_channels: list[str], array: Callable[[str, str], Any], write: Callable[[Any, Any, Any], None],
          grow_history: Callable[[int], None]) -> dict[str, Any]:
    """Replay the journal into the store's arrays, sync them, then list the epoch in meta.json; returns the new meta
    (the journal stays: the store removes it once it holds the new meta). Every write is absolute: a replay that is
    itself interrupted is replayed again to the same arrays.

    Args:
        meta: the store's meta.json before the commit.
        n, channels, valued, step_channels: the store's samples, channels (curvature first), the channels its
            commits add values to, and its training-time channels.
        array: ``array(channel, kind)``, the writer's memory map of one file.
        write: ``write(array, where, values)``, one write into a map.
        grow_history: grows every history file to the given rows (a no-op unless a crash came before the commit
            grew them).

    Raises:
        StoreCorruptError: the journal is damaged or vanished (see :func:`load`).
    """
    found = record(directory)
    if found is None:
        raise StoreCorruptError(f"{folder(directory) / 'journal.json'} vanished while a commit was being applied: is "
                                "another process writing to this store? One writer at a time.")
    parts = load(directory, found, meta, valued, step_channels)
    row = found["row"]
    written: list[Any] = []

    def put(target: Any, where: Any, values: Any) -> None:
        write(target, where, values)
        written.append(target)

    new = dict(meta)
    if found["scores"]:
        idx, new_count = parts["indices"], parts["count"]
        if meta["keep_history"]:
            grow_history(row + 1)
        put(array(PRIMARY, "count"), idx, new_count)
        if parts["labels"] is not None:
            put(array(PRIMARY, "labels"), idx, parts["labels"])
        for name in channels:
            valued_here = name in parts["sums"]  # not the curvature of a gradient or forward pass: it stays NaN
            if valued_here:
                put(array(name, "sum"), idx, parts["sums"][name])
                put(array(name, "mean"), idx, parts["sums"][name] / new_count)
                put(array(name, "last"), idx, parts["values"][name])
            if meta["keep_history"]:
                line = np.full(n, np.nan, dtype=np.float32)
                if valued_here:
                    line[idx] = parts["values"][name]
                put(array(name, "history"), row, line)
        new["epochs"] = [*meta["epochs"], found["epoch"]]
    if found["steps"]:
        if parts["step_labels"] is not None:
            known = parts["step_labels"] != LABEL_UNKNOWN  # the first key seen is recorded; the rest were checked
            put(array(PRIMARY, "labels"), parts["step_indices"][known], parts["step_labels"][known])
        for name in step_channels:
            put(array(name, "sum"), parts["step_indices"], parts["step_sums"][name])
            put(array(name, "last"), parts["step_indices"], parts["step_values"][name])
        new["step_epochs"] = [*meta["step_epochs"], found["epoch"]]
    sync_arrays(directory, written)  # every array on disk before meta.json lists the epoch
    atomic_write_json(directory / "meta.json", new)
    return new
