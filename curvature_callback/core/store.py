"""CurvatureStore: per-sample running means in memory-mapped ``.npy`` files (numpy only, no torch).

Layout of a store folder (docs/DESIGN.md §2)::

    meta.json         N, settings (h, n_vectors, seed, loss, ...), epochs added, dataset fingerprint, version
    sum.npy           float64 [N]  sum of the curvature scores added for each sample
    count.npy         int64   [N]  how many epochs scored each sample
    labels.npy        int64   [N]  the label key each sample was scored with (checked at every commit)
    mean.npy          float64 [N]  sum / count (NaN where count == 0), kept up to date at each commit
    last.npy          float32 [N]  the score of the latest epoch that scored each sample (NaN before)
    history.npy       float32 [capacity, N]  optional: row r holds the scores of epoch ``epochs[r]``
    <name>_sum.npy    float64 [N]  further channels scored in the same pass (loss, margin, ...)
    <name>_mean.npy   float64 [N]
    <name>_last.npy   float32 [N]
    <name>_history.npy float32 [capacity, N] (with history)
    <step>_sum.npy    float64 [N]  training-time channels (from the training steps, every epoch): their sum over
    <step>_last.npy   float32 [N]  the epochs committed, and the value of the latest one that saw each sample

The training-time ("step") channels are committed by the same journal as the pass, for their own samples (those the
epoch's training steps saw) and epochs (``meta.json``'s ``step_epochs``); ``epochs`` stays the list of scored
(curvature) epochs, the rows of the history.

Every file opens with ``np.load(path, mmap_mode="r")``; nothing is pickled. This module is the store's face (open,
create, read, commit); its collaborators each hold one concept: the on-disk format (:mod:`~curvature_callback.core.
store_format`), the making of a new store (:mod:`~curvature_callback.core.store_create`), the journal and its replay
(:mod:`~curvature_callback.core.store_journal`), locking and readers' consistency (:mod:`~curvature_callback.core.
store_locking`), the checks of an open and of a commit's inputs (:mod:`~curvature_callback.core.store_checks`),
settings compatibility (:mod:`~curvature_callback.core.store_compat`); what each channel's values may be is the
channel's (:mod:`curvature_callback.core.channels`).

**Commits are atomic and idempotent.** ``commit_epoch`` first writes a journal (the epoch's values, and the sums
and counts they produce, in one ``journal/parts.npz`` synced once) and only then touches the arrays (synced together
before ``meta.json`` lists the epoch); all writes are absolute, so replaying a journal after a crash gives the same
arrays. ``meta.json`` (replaced atomically) lists the epochs added; an epoch
that is already there is never added again. One writer at a time (``flock`` on the folder itself, so deleting
``lock``, which only holds the writer's pid for messages, does not let a second writer in; the kernel drops the
lock when the process dies). A commit that failed after its commit point is finished by the writer's next commit
or the next ``open(mode="r+")``, never dropped. History files are created and grown with their space reserved
(``posix_fallocate``), so a full disk is an ``OSError`` before anything changes, not a ``SIGBUS`` mid-write.

**Threat model.** A store folder is data from a stranger: it may hold anything (truncated or swapped files,
hand-edited ``meta.json``, a half-written journal). Every open checks ``meta.json`` (valid JSON, keys and types),
each array's ``.npy`` header, dtype, C order, shape and exact file size, the counts against the epochs, and a
journal before replaying it. A damaged store is refused with :class:`StoreCorruptError` naming the file; nothing is
repaired, padded or overwritten, and :meth:`CurvatureStore.create` never writes over store files it did not make.

**Readers during training.** A read-only store is a snapshot of the epochs listed when it was opened: each array is
copied into memory (read-only) the first time it is read, between two checks that no commit is being applied and
that ``meta.json`` is the file read at open (``meta.json`` is replaced at each commit, and grows by one epoch, so
its inode, mtime and size tell). A commit in progress is waited for (10 s at most); if a commit landed since the
open, or a dead writer left one half-applied, the read raises :class:`StoreChangedError`: open the store again.
Arrays read once stay as they were, consistent with ``epochs``. ``history`` stays a memory map: rows below
``len(epochs)`` are written once and never again (growing the file copies them into a new file swapped in
atomically; the old inode keeps them).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from curvature_callback.core import store_checks, store_create, store_journal, store_locking
from curvature_callback.core.store_compat import check_settings
from curvature_callback.core.store_format import (
    LABEL_UNKNOWN,
    PRIMARY,
    StoreChangedError,
    StoreCorruptError,
    StoreMismatchError,
    file_name,
    grow_history,
)
from curvature_callback.core.store_reader import StoreReader

__all__ = [
    "LABEL_UNKNOWN", "PRIMARY", "CurvatureStore", "StoreChangedError", "StoreCorruptError", "StoreMismatchError",
]


class CurvatureStore(StoreReader):
    """Running per-sample means of curvature (and further channels), memory-mapped.

    Create one with :meth:`create` (or :meth:`open_or_create`), read one with :meth:`open`.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> settings = {"pass_kind": "curvature", "h": 1e-3, "n_vectors": 10, "seed": 0, "loss": "ce", "fast": False}
        >>> s = CurvatureStore.create(d, 3, settings=settings)
        >>> s.commit_epoch(0, np.array([1.0, 2.0, 3.0]))
        True
        >>> s.commit_epoch(1, np.array([3.0, 2.0, 1.0]))
        True
        >>> s.commit_epoch(1, np.array([9.0, 9.0, 9.0]))  # epoch 1 is in already: ignored
        False
        >>> s.close(); r = CurvatureStore.open(d)
        >>> r.mean.tolist(), r.count.tolist(), r.epochs
        ([2.0, 2.0, 2.0], [2, 2, 2], [0, 1])
    """

    # ------------------------------------------------------------------------------------ opening and creating
    @classmethod
    def open(cls, directory: str | os.PathLike, mode: Literal["r", "r+"] = "r") -> CurvatureStore:
        """Open an existing store, read-only by default (``mode="r+"`` to add epochs; one writer at a time).

        Every open checks ``meta.json``, every array file and the counts (see the module's threat model). A
        reader is a snapshot of the epochs listed at the open: see :class:`StoreChangedError`.

        Raises:
            FileNotFoundError: no ``meta.json`` in ``directory``.
            StoreCorruptError: a damaged file, named in the message.
            StoreChangedError: (read-only) commits kept landing while the store was being opened.
            RuntimeError: (``mode="r+"``) another process has the store open for writing.
        """
        directory = Path(directory)
        if mode not in ("r", "r+"):
            raise ValueError(f"Expected `mode` 'r' or 'r+', got {mode!r}.")
        if not (directory / "meta.json").is_file():
            raise FileNotFoundError(
                f"No curvature store at {directory} (no meta.json). Pass the folder the callback wrote, "
                "e.g. <run dir>/curvature."
            )
        return cls._open_reader(directory) if mode == "r" else cls._open_writer(directory)

    @classmethod
    def _open_reader(cls, directory: Path) -> CurvatureStore:
        """A reader: its ``count`` read consistently and every array's values checked, or, while a commit is in
        progress or was interrupted, a warned reader whose reads wait for it (or raise)."""
        for _ in range(20):
            store = cls(directory, "r")
            try:
                count = store._read_consistent(PRIMARY, "count")
            except StoreChangedError:
                if store._state() == "changed":
                    continue  # a commit landed while we opened: open the newer store
                record = store_journal.record(directory)
                if record is not None and not store_locking.writer_alive(directory):
                    # a damaged journal is said to be damaged now, not at the writer
                    store_journal.load(directory, record, store._meta, store._valued, store.step_channels)
                warnings.warn(
                    f"Store {directory} has a commit in progress or an interrupted one: its arrays are "
                    "mid-update, and reading them raises StoreChangedError until the commit is finished. "
                    "Opening it once for writing (mode='r+') completes an interrupted commit.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                # the pending epoch may already be counted
                store_checks.check_counts(directory, store._meta, np.array(store._map(PRIMARY, "count")),
                                          pending=True)
                return store
            store_checks.check_counts(directory, store._meta, count)
            store._copies[file_name(PRIMARY, "count")] = count
            try:
                store._check_values()
            except StoreChangedError:
                pass  # a commit landed while we checked: each array is checked when it is read instead
            return store
        raise StoreChangedError(
            f"The store at {directory} kept changing while it was opened (20 commits in a row): open it "
            "again with CurvatureStore.open(...) once the writer slows down."
        )

    @classmethod
    def _open_writer(cls, directory: Path) -> CurvatureStore:
        """The writer: the lock taken, an interrupted commit finished, the counts and values checked."""
        fd = store_locking.take(directory)
        try:
            store = cls(directory, "r+", fd)
            if store._meta["version"] < 2:
                raise StoreMismatchError(
                    f"The store at {directory} has format version {store._meta['version']}, which records no labels: "
                    "this curvature_callback adds epochs only to stores of format 2 and later, whose commits check "
                    "each sample's label. Read it with CurvatureStore.open(path), and write to another `directory`."
                )
            record = store_journal.record(directory)
            # checked before the recovery writes anything, with room for the pending epoch
            store_checks.check_counts(directory, store._meta, np.array(store.count),
                                      pending=record is not None and record["scores"])
            store._recover()
            store_checks.check_counts(directory, store._meta, np.array(store.count))
            store._check_values()
        except BaseException:
            os.close(fd)
            raise
        return store

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike,
        n: int,
        *,
        settings: Mapping[str, Any],
        keep_history: bool = False,
        channels: Sequence[str] = (),
        fingerprint: Mapping[str, Any] | None = None,
        history_capacity: int = 16,
        step_channels: Sequence[str] = (),
    ) -> CurvatureStore:
        """Create a new, empty store for ``n`` samples and open it for writing.

        ``channels`` and ``step_channels`` name what it keeps beside curvature:
        :func:`~curvature_callback.core.channels.pass_channels` and
        :func:`~curvature_callback.core.channels.step_channels` give what the callback records.

        Raises:
            FileExistsError: a store (``meta.json``) exists in ``directory`` already.
            StoreCorruptError: ``directory`` holds store files (``sum.npy``, ``count.npy``, ``journal``, ...) but no
                ``meta.json``: a damaged store, or other data. Nothing is overwritten.
            OSError: the disk is full (the history's space is reserved); nothing of the new store is left behind.
        """
        directory = Path(directory)
        store_create.check_arguments(n, settings, channels, step_channels)
        fd = store_create.build(directory, n, settings=settings, keep_history=keep_history, channels=channels,
                                fingerprint=fingerprint, history_capacity=history_capacity,
                                step_channels=step_channels)
        try:
            return cls(directory, "r+", fd)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def open_or_create(
        cls,
        directory: str | os.PathLike,
        n: int,
        *,
        settings: Mapping[str, Any],
        keep_history: bool = False,
        channels: Sequence[str] = (),
        fingerprint: Mapping[str, Any] | None = None,
        history_capacity: int = 16,
        step_channels: Sequence[str] = (),
    ) -> CurvatureStore:
        """Open the store at ``directory`` for writing if its settings match, else create it.

        Raises:
            StoreMismatchError: the existing store was made with another ``N``, ``h``, ``n_vectors``, ``seed``,
                loss, channels or dataset; the message names the setting.
        """
        directory = Path(directory)
        if not (directory / "meta.json").exists():
            return cls.create(
                directory, n, settings=settings, keep_history=keep_history, channels=channels,
                fingerprint=fingerprint, history_capacity=history_capacity, step_channels=step_channels,
            )
        store = cls.open(directory, "r+")
        try:
            store.check_settings(n, settings, channels=channels, fingerprint=fingerprint, keep_history=keep_history,
                                 step_channels=step_channels)
        except BaseException:
            store.close()
            raise
        return store

    def check_settings(
        self,
        n: int,
        settings: Mapping[str, Any],
        *,
        channels: Sequence[str] | None = None,
        fingerprint: Mapping[str, Any] | None = None,
        keep_history: bool | None = None,
        step_channels: Sequence[str] | None = None,
    ) -> None:
        """Raise :class:`StoreMismatchError` naming the first setting that differs from this store's
        (:func:`~curvature_callback.core.store_compat.check_settings`)."""
        check_settings(self.directory, self._meta, n, settings, channels=channels, fingerprint=fingerprint,
                       keep_history=keep_history, step_channels=step_channels)

    # ------------------------------------------------------------------------------------ writing
    def commit_epoch(
        self,
        epoch: int,
        values: np.ndarray | Mapping[str, np.ndarray] | None,
        indices: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        *,
        steps: Mapping[str, np.ndarray] | None = None,
        step_indices: np.ndarray | None = None,
        step_labels: np.ndarray | None = None,
    ) -> bool:
        """Add one epoch's scores (and its training-time values), once, in one journaled commit.

        Args:
            epoch: the training epoch the scores belong to; an epoch already added is ignored (each part apart:
                scores for an epoch in :attr:`epochs`, training-time values for one in :attr:`step_epochs`).
            values: ``[M]`` curvature scores, or a mapping from channel name to ``[M]`` scores (the
                ``"curvature"`` channel and every extra channel of the store); None for an epoch without a pass.
            indices: ``[M]`` distinct sample indices the values belong to (default: all ``N`` samples in order).
            labels: ``[M]`` integer label keys the samples were scored with: each must equal the key recorded at
                the sample's earlier commits (the first one records it), so that scores under other labels never
                average. None skips the check (and records nothing).
            steps: the epoch's training-time values, ``[K]`` for each of :attr:`step_channels`: each is added to
                the channel's sum and becomes its latest value (:meth:`channel_last`).
            step_indices: ``[K]`` distinct sample indices of ``steps`` (default: all ``N``).
            step_labels: ``[K]`` the label keys the training steps saw for ``step_indices``
                (:data:`LABEL_UNKNOWN` where not known), checked and recorded like ``labels``: training-time values
                under other labels never add to a sample's sums either. None skips the check.

        Returns:
            True if anything was added, False if every part given was there already.

        Raises:
            StoreMismatchError: a sample's label differs from the one it was scored with before; nothing is added.
            OSError: writing failed (a full disk: ENOSPC). Before the commit point the store is as before; after
                it, the next ``commit_epoch`` (or ``open(mode="r+")``) finishes the commit.
        """
        self._in_commit = True  # the writer keeps its maps for one commit (each file is mapped once, not ~2x)
        try:
            return self._commit(epoch, values, indices, labels, steps=steps, step_indices=step_indices,
                                step_labels=step_labels)
        finally:
            self._in_commit = False
            self._arrays.clear()  # and lets them go: the pages a commit touched leave its resident memory

    def _commit(self, epoch: Any, values: Any, indices: Any, labels: Any, *, steps: Any, step_indices: Any,
                step_labels: Any) -> bool:
        if self.mode != "r+":
            raise RuntimeError(f"Store {self.directory} is open read-only: open it with mode='r+' to add epochs.")
        if isinstance(epoch, (bool, np.bool_)) or not isinstance(epoch, (int, np.integer)):
            raise ValueError(
                f"Expected `epoch` as an integer (the training epoch), got {epoch!r} of type "
                f"{type(epoch).__name__}: pass an int (int(epoch) if it is a whole number)."
            )
        epoch = int(epoch)
        # a commit that failed after its commit point (an OSError while applying) holds a committed epoch:
        # finish it first, never drop its journal
        self._recover()
        scored = values is not None and epoch not in self._meta["epochs"]
        stepped = steps is not None and epoch not in self._meta["step_epochs"]
        if steps is not None and not self.step_channels:
            raise ValueError(f"Store {self.directory} has no training-time channels: it was made without them.")
        if not (scored or stepped):
            return False
        if scored:
            idx, vals = store_checks.check_values_in(values if isinstance(values, Mapping) else {PRIMARY: values},
                                                     indices, self._valued, "channels", self.n)
            keys = None if labels is None else store_checks.check_labels(self.directory, self.labels, idx, labels)
        if stepped:
            step_idx, step_vals = store_checks.check_values_in(steps, step_indices, self.step_channels,
                                                               "training-time channels", self.n)
            step_keys = None if step_labels is None else store_checks.check_labels(
                self.directory, self.labels, step_idx, step_labels, unknown_ok=True,
                also=(idx, keys) if scored and keys is not None else None)

        def parts() -> Iterator[tuple[str, np.ndarray]]:  # each computed as it is written: one at a time in memory
            if scored:
                yield "indices", idx.astype(np.int64)
                yield "count", self.count[idx] + 1
                if keys is not None:
                    yield "labels", keys
                for name, v in vals.items():
                    yield f"{name}_values", v
                    yield f"{name}_sum", self._new_sum(name, idx, v)
            if stepped:
                yield "step_indices", step_idx.astype(np.int64)
                if step_keys is not None:
                    yield "step_labels", step_keys
                for name, v in step_vals.items():
                    yield f"{name}_values", v
                    yield f"{name}_sum", self._new_sum(name, step_idx, v)

        row = len(self._meta["epochs"])

        def grow() -> None:  # before the commit point, so that a full disk fails here
            if scored and self._meta["keep_history"]:
                self._ensure_history_rows(row + 1)

        store_journal.write(self.directory, epoch, row, parts(), scores=scored, steps=stepped, before_commit_point=grow)
        self._apply_journal()
        return True

    def _new_sum(self, name: str, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A channel's sums after adding ``values`` at ``idx``; a sum that is not finite (a file changed under the
        writer since its open checked it) is refused before the journal is written: a journal must always replay."""
        old = np.asarray(self._array(name, "sum")[idx])
        bad = np.flatnonzero(~np.isfinite(old))
        if len(bad):
            raise StoreCorruptError(
                f"{self.directory / file_name(name, 'sum')} is damaged: expected finite sums, got "
                f"{old[bad[0]].item()!r} for sample {int(idx[bad[0]])}. Nothing of this commit was applied. Restore "
                "the store from a backup or use another `directory`; a damaged store is refused, not repaired."
            )
        return old + values  # finite: values are within float32's range, far from float64's

    # ------------------------------------------------------------------------------------ applying the journal
    def _recover(self) -> None:
        """Finish a commit that a crash (or an error) interrupted after its commit point; drop one that did not
        reach it (no journal.json: the arrays were not touched)."""
        if not store_journal.check_folder(self.directory):
            return
        if store_journal.pending(store_journal.record(self.directory), self._meta):
            self._apply_journal()
        else:
            store_journal.discard(self.directory)

    def _apply_journal(self) -> None:
        """Replay the journal into the arrays (:func:`~curvature_callback.core.store_journal.apply`), then hold the
        meta.json that lists the epoch and remove the journal."""
        self._meta = store_journal.apply(self.directory, self._meta, n=self.n, channels=self.channels,
                                         valued=self._valued, step_channels=self.step_channels, array=self._array,
                                         write=self._write, grow_history=self._ensure_history_rows)
        store_journal.discard(self.directory)

    @staticmethod
    def _write(array: np.memmap, where: Any, values: Any) -> None:
        array[where] = values  # synced with the commit's other arrays at once (store_format.sync_arrays)

    def _ensure_history_rows(self, rows: int) -> None:
        """Grow each history file to hold ``rows`` (:func:`~curvature_callback.core.store_format.grow_history`);
        the writer lets go of the old file's map."""
        for name in self.channels:
            path = self.directory / file_name(name, "history")
            if grow_history(path, self.n, len(self._meta["epochs"]), rows):
                self._arrays.pop(file_name(name, "history"), None)
