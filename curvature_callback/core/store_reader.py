"""What every open store reads, a writer's as a reader's: ``meta.json``, the arrays (the writer's memory maps, a
reader's snapshot copies, each checked against its channel's rules) and the public readers of
:class:`~curvature_callback.core.store.CurvatureStore`, which opens, creates and commits. Numpy only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from curvature_callback.core import store_checks, store_locking
from curvature_callback.core.channels.definitions import check_class_slot_names
from curvature_callback.core.channels.values import check_array, check_values
from curvature_callback.core.store_format import DTYPES, PRIMARY, check_npy, file_name, read_meta

__all__ = ["StoreReader"]

_Store = TypeVar("_Store", bound="StoreReader")


class StoreReader:
    """One open store folder and its readers (the base of :class:`~curvature_callback.core.store.CurvatureStore`).

    A read-only store is a snapshot of the epochs listed at its open: each array is copied into memory (read-only)
    the first time it is read, between two looks that no commit is being applied (:mod:`~curvature_callback.core.
    store_locking`); the writer (``mode="r+"``) maps each file once per commit.
    """

    def __init__(self, directory: str | os.PathLike, mode: Literal["r", "r+"], _lock_fd: int | None = None):
        self.directory = Path(directory)
        self.mode = mode
        self._lock_fd = _lock_fd
        self._meta, self._identity = read_meta(self.directory)
        check_class_slot_names(self.directory / "meta.json", self._meta["step_channels"], self.evidence_window)
        self._arrays: dict[str, np.memmap] = {}  # a reader's memory maps (the writer's, during one commit)
        self._in_commit = False
        self._copies: dict[str, np.ndarray] = {}  # a reader's snapshot: arrays copied while no commit ran
        store_checks.check_files(self.directory, self._meta, self.channels, self.step_channels)

    def close(self) -> None:
        """Drop the memory maps and release the writer's lock. Safe to call twice."""
        self._arrays.clear()
        self._copies.clear()
        if self._lock_fd is not None:
            store_locking.release(self._lock_fd)
            self._lock_fd = None

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r}, n={self.n}, epochs={self.epochs}, mode={self.mode!r})"

    # ------------------------------------------------------------------------------------ the arrays
    def _map(self, channel: str, kind: str) -> np.memmap:
        """A memory map of one file, checked first (a writer's ``r+`` map of a truncated file would silently pad it
        with zeros). Readers keep theirs; the writer maps each file once per commit and lets go at its end, so the
        pages a commit touches leave its resident memory with the map (bounded memory over 200 epochs of
        ImageNet-size history)."""
        name = file_name(channel, kind)
        if name in self._arrays:
            return self._arrays[name]
        if channel not in self.channels and not (channel in self.step_channels and kind in ("sum", "last")):
            raise KeyError(f"Store {self.directory} has no {kind} for {channel!r} (its channels: {self.channels}, "
                           f"training-time channels: {self.step_channels}).")
        path = self.directory / name
        check_npy(path, DTYPES[kind], self.n, len(self._meta["epochs"]) if kind == "history" else None)
        array = np.load(path, mmap_mode=self.mode, allow_pickle=False)
        if self.mode == "r" or self._in_commit:
            self._arrays[name] = array
        return array

    def _array(self, channel: str, kind: str) -> np.ndarray:
        """The writer's memory map of one file; for a reader, its snapshot copy (the history stays a map: its rows
        below ``len(epochs)`` never change)."""
        if self.mode == "r+" or kind == "history":
            return self._map(channel, kind)
        name = file_name(channel, kind)
        if name not in self._copies:
            data = self._read_consistent(channel, kind)
            if kind in ("sum", "mean", "last"):  # against the snapshot's count and sums, read the same way
                check_array(self.directory, self._meta, channel, kind, data, self._array)
            self._copies[name] = data
        return self._copies[name]

    def _read_consistent(self, channel: str, kind: str) -> np.ndarray:
        """One array copied while no commit touches it (:func:`~curvature_callback.core.store_locking.
        read_consistent`)."""
        return store_locking.read_consistent(self.directory, self._identity, self._meta,
                                             lambda: np.array(self._map(channel, kind)))

    def _state(self) -> Literal["ok", "busy", "changed"]:
        """For a reader: whether the store is as opened (:func:`~curvature_callback.core.store_locking.state`)."""
        return store_locking.state(self.directory, self._identity, self._meta)

    def _check_values(self) -> None:
        """Check the values of every array against each other (each channel's rules,
        :func:`~curvature_callback.core.channels.values.check_values`), at the open: a reader reads each one
        consistently and lets it go (only ``count`` is kept; each array is checked again when it is read), the
        writer through its maps."""
        if self.mode == "r+":
            check_values(self.directory, self._meta, lambda c, k: np.asarray(self._map(c, k)))
        else:
            kept = self._copies  # count, read at the open
            check_values(self.directory, self._meta,
                         lambda c, k: kept[file_name(c, k)] if k == "count" else self._read_consistent(c, k))

    # ------------------------------------------------------------------------------------ the readers
    @property
    def meta(self) -> dict[str, Any]:
        """A copy of ``meta.json``."""
        return json.loads(json.dumps(self._meta))

    @property
    def n(self) -> int:
        return int(self._meta["n"])

    @property
    def epochs(self) -> list[int]:
        """The epochs added, in the order they were added (the rows of :attr:`history`)."""
        return list(self._meta["epochs"])

    @property
    def channels(self) -> list[str]:
        return [PRIMARY, *self._meta.get("channels", [])]

    @property
    def pass_kind(self) -> str:
        """Which pass made the scores (``meta.json``'s ``pass_kind``): ``"curvature"``; ``"gradient"`` or ``"forward"``
        (no curvature: :attr:`mean` and :attr:`sum` stay NaN and 0, the other channels hold the values)."""
        return str(self._meta["pass_kind"])

    @property
    def evidence_window(self) -> int:
        """The early class-evidence window ``W`` (``meta.json``'s ``evidence_window``): the class evidence of epochs
        ``0..W-1`` is also kept apart (``train_early_*``) and frozen after; 0: none (a store made before it existed)."""
        return int(self._meta.get("evidence_window", 0))

    @property
    def _valued(self) -> list[str]:
        """The channels a commit adds values to (all but curvature, for a pass that computes none)."""
        return self.channels if self.pass_kind == "curvature" else self.channels[1:]

    @property
    def step_channels(self) -> list[str]:
        """The training-time channels (recorded from the training steps; :meth:`sum_of` and :meth:`channel_last`
        read them)."""
        return list(self._meta["step_channels"])

    @property
    def step_epochs(self) -> list[int]:
        """The epochs whose training-time channels were added, in order."""
        return list(self._meta["step_epochs"])

    @property
    def sum(self) -> np.ndarray:
        """``float64 [N]``: the sum of the curvature scores added for each sample.

        The arrays of a read-only store are read-only in-memory copies, consistent with :attr:`epochs` (read
        once, kept); a writer's are memory maps. Reading one raises :class:`StoreChangedError` where a commit
        landed since the open."""
        return self._array(PRIMARY, "sum")

    @property
    def count(self) -> np.ndarray:
        """``int64 [N]``: epochs that scored each sample."""
        return self._array(PRIMARY, "count")

    @property
    def mean(self) -> np.ndarray:
        """``float64 [N]``: the running mean curvature of each sample (NaN where never scored)."""
        return self._array(PRIMARY, "mean")

    @property
    def labels(self) -> np.ndarray | None:
        """``int64 [N]``: the label key each sample was scored with (its class index, or a hash of a non-integer
        target), :data:`LABEL_UNKNOWN` where never scored; None for a format 1 store."""
        return self._array(PRIMARY, "labels") if self._meta["version"] >= 2 else None

    @property
    def history(self) -> np.memmap | None:
        """``float32 [epochs, N]`` memory-mapped scores per added epoch (NaN where a sample was not scored),
        or None without ``keep_history``."""
        return self.channel_history(PRIMARY)

    def sum_of(self, channel: str = PRIMARY) -> np.ndarray:
        """``float64 [N]``: the sum of a channel over the added epochs (for "forgetting": the event count)."""
        return self._array(channel, "sum")

    def channel_mean(self, channel: str) -> np.ndarray:
        """Running mean of another channel (``"loss"``, ``"margin"``, ...)."""
        return self._array(channel, "mean")

    def channel_last(self, channel: str = PRIMARY) -> np.ndarray:
        """``float32 [N]``: each sample's value at the latest epoch that scored it (NaN before any)."""
        return self._array(channel, "last")

    def channel_history(self, channel: str) -> np.memmap | None:
        """``float32 [epochs, N]`` memory-mapped scores of a channel per added epoch, or None without history.

        A reader may keep it while commits land: the rows below ``len(epochs)`` are written once (by the commit
        that adds the epoch, before meta.json lists it) and never again, and growing the file writes a new file
        that replaces the old one atomically, so the map keeps the old inode and its rows."""
        if not self._meta.get("keep_history"):
            return None
        return self._array(channel, "history")[: len(self._meta["epochs"])]
