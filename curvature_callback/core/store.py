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

Every file opens with ``np.load(path, mmap_mode="r")``; nothing is pickled.

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

import fcntl
import json
import os
import secrets
import shutil
import time
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from curvature_callback.core.channels.definitions import check_class_slot_names, class_slots
from curvature_callback.core.channels.values import check_array, check_values
from curvature_callback.core.settings import MEANING_KEYS, same_setting
from curvature_callback.core.store_format import (
    DTYPES,
    FORMAT_VERSION,
    LABEL_UNKNOWN,
    PRIMARY,
    STORE_FILE,
    StoreChangedError,
    StoreCorruptError,
    StoreMismatchError,
    atomic_write_json,
    check_npy,
    create_npy,
    fsync_dir,
    meta_identity,
    read_meta,
    save_journal,
    save_npy,
    sync_arrays,
)

__all__ = [
    "LABEL_UNKNOWN", "PRIMARY", "CurvatureStore", "StoreChangedError", "StoreCorruptError", "StoreMismatchError",
]

_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: a commit's arrays, in its journal (one file; a journal of one ``.npy`` per array, as stores wrote before, replays)
JOURNAL_PARTS = "parts.npz"
#: how long a reader waits for a commit in progress before it gives up (seconds)
_READ_WAIT = 10.0


def _distinct_in_range(idx: np.ndarray, n: int) -> bool:
    """Whether ``idx`` holds distinct indices in ``[0, n)``; O(N) by bincount (``np.unique`` sorts: 0.9 s per
    commit at ImageNet's N, bench_store.py)."""
    return not len(idx) or (idx.min() >= 0 and idx.max() < n and np.count_nonzero(np.bincount(idx)) == len(idx))


class CurvatureStore:
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

    def __init__(self, directory: str | os.PathLike, mode: Literal["r", "r+"], _lock_fd: int | None = None):
        self.directory = Path(directory)
        self.mode = mode
        self._lock_fd = _lock_fd
        self._meta, self._identity = read_meta(self.directory)
        check_class_slot_names(self.directory / "meta.json", self._meta["step_channels"])
        self._arrays: dict[str, np.memmap] = {}  # a reader's memory maps (the writer's, during one commit)
        self._in_commit = False
        self._copies: dict[str, np.ndarray] = {}  # a reader's snapshot: arrays copied while no commit ran
        self._check_files()

    # ------------------------------------------------------------------------------------ opening
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
        if mode == "r":
            for _ in range(20):
                store = cls(directory, "r")
                try:
                    count = store._read_consistent(PRIMARY, "count")
                except StoreChangedError:
                    if store._state() == "changed":
                        continue  # a commit landed while we opened: open the newer store
                    record = store._journal_record()
                    if record is not None and not store._writer_alive():
                        store._load_journal(record)  # a damaged journal is said to be damaged now, not at the writer
                    warnings.warn(
                        f"Store {directory} has a commit in progress or an interrupted one: its arrays are "
                        "mid-update, and reading them raises StoreChangedError until the commit is finished. "
                        "Opening it once for writing (mode='r+') completes an interrupted commit.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    # the pending epoch may already be counted
                    store._check_counts(np.array(store._map(PRIMARY, "count")), pending=True)
                    return store
                store._check_counts(count)
                store._copies[store._file(PRIMARY, "count")] = count
                try:
                    store._check_values()
                except StoreChangedError:
                    pass  # a commit landed while we checked: each array is checked when it is read instead
                return store
            raise StoreChangedError(
                f"The store at {directory} kept changing while it was opened (20 commits in a row): open it "
                "again with CurvatureStore.open(...) once the writer slows down."
            )
        fd = cls._lock(directory)
        try:
            store = cls(directory, "r+", fd)
            if store._meta["version"] < 2:
                raise StoreMismatchError(
                    f"The store at {directory} has format version {store._meta['version']}, which records no labels: "
                    "this curvature_callback adds epochs only to stores of format 2 and later, whose commits check "
                    "each sample's label. Read it with CurvatureStore.open(path), and write to another `directory`."
                )
            record = store._journal_record()
            # checked before the recovery writes anything, with room for the pending epoch
            store._check_counts(np.array(store.count), pending=record is not None and record["scores"])
            store._recover()
            store._check_counts(np.array(store.count))
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

        Raises:
            FileExistsError: a store (``meta.json``) exists in ``directory`` already.
            StoreCorruptError: ``directory`` holds store files (``sum.npy``, ``count.npy``, ``journal``, ...) but no
                ``meta.json``: a damaged store, or other data. Nothing is overwritten.
            OSError: the disk is full (the history's space is reserved); nothing of the new store is left behind.
        """
        directory = Path(directory)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Expected the number of samples `n` to be a positive integer, got {n!r}.")
        missing = [k for k in MEANING_KEYS if k not in settings]
        if missing:  # a store records what its scores mean, or it would later average any value asked of it
            raise ValueError(f"Expected `settings` with every key that defines a score's meaning {list(MEANING_KEYS)}, "
                             f"got none for {missing}: pass them (ScoreSettings(...).to_dict() has them all).")
        for c in channels:
            if c == PRIMARY or not isinstance(c, str) or not c.isidentifier():
                raise ValueError(f"Expected extra channel names that are identifiers, not {PRIMARY!r}; got {c!r}.")
        for c in step_channels:
            if c == PRIMARY or c in channels or not isinstance(c, str) or not c.isidentifier():
                raise ValueError(f"Expected step channel names that are identifiers, not {PRIMARY!r} nor a channel's; "
                                 f"got {c!r}.")
        if len(set(channels)) != len(channels) or len(set(step_channels)) != len(step_channels):
            raise ValueError(f"Expected distinct channel names, got {list(channels)} and {list(step_channels)}.")
        directory.parent.mkdir(parents=True, exist_ok=True)
        # A new store is built in a hidden sibling folder and renamed into place, so that a kill during the creation
        # never leaves a half store under the store's name (its next open would refuse it). Only a folder that holds
        # other files already is written in place, meta.json last.
        fresh = not directory.exists() or (directory.is_dir() and not directory.is_symlink()
                                           and not any(directory.iterdir()))
        if fresh:
            build = directory.parent / f".{directory.name}.creating-{os.getpid()}-{secrets.token_hex(4)}"
            build.mkdir()
        else:
            directory.mkdir(exist_ok=True)  # a file there: mkdir says so
            build = directory
        fd = cls._lock(build)  # flock holds the inode: the lock moves with the rename
        try:
            # checked under the lock, so that two processes creating the same store cannot both pass
            if (directory / "meta.json").exists():
                raise FileExistsError(f"A store exists at {directory} already: open it, or use open_or_create.")
            found = sorted(f for f in os.listdir(build) if f == "journal" or STORE_FILE.fullmatch(f))
            if found:
                raise StoreCorruptError(
                    f"Expected no store files in {directory} without a meta.json, got {', '.join(found)} but "
                    "meta.json is missing: a damaged store, or data that is not ours. Nothing was overwritten. "
                    "Restore meta.json from a backup, or use another `directory` (delete those files yourself "
                    "if you know they are not needed)."
                )
            names = [PRIMARY, *channels]
            made: list[Path] = []
            try:
                for name in names:
                    for kind, fill in (("sum", 0.0), ("mean", np.nan), ("last", np.nan)):
                        made.append(build / cls._file(name, kind))
                        save_npy(made[-1], np.full(n, fill, dtype=DTYPES[kind]))
                    if keep_history:
                        made.append(build / cls._file(name, "history"))
                        create_npy(made[-1], DTYPES["history"], (max(1, history_capacity), n))
                for name in step_channels:
                    for kind, fill in (("sum", 0.0), ("last", np.nan)):
                        made.append(build / cls._file(name, kind))
                        save_npy(made[-1], np.full(n, fill, dtype=DTYPES[kind]))
                made.append(build / "count.npy")
                save_npy(made[-1], np.zeros(n, dtype=np.int64))
                made.append(build / "labels.npy")
                save_npy(made[-1], np.full(n, LABEL_UNKNOWN, dtype=np.int64))
                meta = {
                    "version": FORMAT_VERSION,
                    "n": n,
                    **{k: v for k, v in settings.items() if k not in ("n", "version")},
                    "channels": list(channels),
                    "keep_history": bool(keep_history),
                    "epochs": [],
                    "fingerprint": dict(fingerprint or {}),
                    "step_channels": list(step_channels),
                    "step_epochs": [],
                }
                atomic_write_json(build / "meta.json", meta)  # written last: its presence means complete
                if fresh:
                    try:  # rename(2) replaces an empty folder atomically, and fails on one that filled meanwhile
                        os.rename(build, directory)
                    except OSError as e:
                        raise FileExistsError(
                            f"A store (or other files) appeared at {directory} while this one was being created: "
                            f"open it, or use another `directory` ({e.strerror})."
                        ) from None
                    fsync_dir(directory.parent)
            except BaseException:
                # a failed create (a full disk, ^C) leaves none of its files behind, or the next create would
                # refuse the folder; these files did not exist before (checked above), we made them
                if fresh:
                    shutil.rmtree(build, ignore_errors=True)
                else:
                    for path in [*made, build / "meta.json.tmp", build / "meta.json"]:
                        path.unlink(missing_ok=True)
                raise
            return cls(directory, "r+", fd)
        except BaseException:
            os.close(fd)
            if fresh:
                shutil.rmtree(build, ignore_errors=True)  # ours, made just now (a no-op once renamed)
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
        """Raise :class:`StoreMismatchError` naming the first setting that differs from this store's."""
        asked = {"n": n, **settings}
        for key in ("n", *MEANING_KEYS):  # N, and what the settings say changes a score's meaning
            if key in asked and key in self._meta and not same_setting(asked[key], self._meta[key]):
                # the loss is recorded by its identity (name and arguments), not a value one can set back
                fix = "pass the loss it names (or its `loss_id`)" if key == "loss" else f"set {key}={self._meta[key]!r}"
                raise StoreMismatchError(
                    f"The store at {self.directory} was made with {key}={self._meta[key]!r}, this run asks "
                    f"{key}={asked[key]!r}. Scores made with another {key} do not average: use another "
                    f"`directory`, or {fix}."
                )
        if channels is not None and list(channels) != list(self._meta.get("channels", [])):
            raise StoreMismatchError(
                f"The store at {self.directory} holds channels {self._meta.get('channels')}, this run records "
                f"{list(channels)}: use another `directory`."
            )
        if (step_channels is not None and self.step_channels and list(step_channels)
                and class_slots(list(step_channels)) != class_slots(self.step_channels)):
            have, asked_k = class_slots(self.step_channels), class_slots(list(step_channels))
            raise StoreMismatchError(
                f"The store at {self.directory} keeps class evidence in {have} slot(s) per sample "
                f"(class_evidence={have}), this run asks for {asked_k} (class_evidence={asked_k}): evidence kept in "
                f"another number of slots does not continue. Resume with CurvatureCallback(class_evidence={have}), or "
                "use another `directory`."
            )
        if step_channels is not None and list(step_channels) != self.step_channels:
            raise StoreMismatchError(
                f"The store at {self.directory} holds training-time channels {self.step_channels}, this run records "
                f"{list(step_channels)}: use another `directory` (or the callback's record_training setting the "
                "store was made with)."
            )
        if keep_history and not self._meta.get("keep_history"):
            raise StoreMismatchError(
                f"The store at {self.directory} was made without history (keep_history=False), this run asks for "
                "it: use another `directory`, or keep_history=False."
            )
        old = self._meta.get("fingerprint") or {}
        for key, value in (fingerprint or {}).items():
            if key in old and old[key] != value:
                raise StoreMismatchError(
                    f"The store at {self.directory} was made for another dataset ({key}: {old[key]!r}, now "
                    f"{value!r}): use another `directory` for another dataset or other labels."
                )

    @staticmethod
    def _lock(directory: Path) -> int:
        """Take the writer's lock: ``flock`` on the folder itself (deleting the ``lock`` file, which only holds the
        pid for the message, does not let a second writer in)."""
        fd = os.open(directory, os.O_RDONLY)
        try:
            for attempt in range(20):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 19:
                        raise
                    time.sleep(0.01)  # a reader asking whether a writer is alive holds a shared lock for a moment
            pid = os.open(directory / "lock", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            try:
                os.write(pid, str(os.getpid()).encode())
            finally:
                os.close(pid)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = (directory / "lock").read_text(errors="replace").strip()[:32] or "unknown"
            except OSError:
                holder = "unknown"
            raise RuntimeError(
                f"The store at {directory} is open for writing elsewhere (pid {holder}): one writer at a time. "
                "Close the other writer, or open it read-only with CurvatureStore.open(path)."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def close(self) -> None:
        """Drop the memory maps and release the writer's lock. Safe to call twice."""
        self._arrays.clear()
        self._copies.clear()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> CurvatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CurvatureStore({str(self.directory)!r}, n={self.n}, epochs={self.epochs}, mode={self.mode!r})"

    # ------------------------------------------------------------------------------------ reading
    @staticmethod
    def _file(channel: str, kind: str) -> str:
        if kind in ("count", "labels"):  # one per store, not per channel
            return f"{kind}.npy"
        return f"{kind}.npy" if channel == PRIMARY else f"{channel}_{kind}.npy"

    def _map(self, channel: str, kind: str) -> np.memmap:
        """A memory map of one file, checked first (a writer's ``r+`` map of a truncated file would silently pad it
        with zeros). Readers keep theirs; the writer maps each file once per commit and lets go at its end, so the
        pages a commit touches leave its resident memory with the map (bounded memory over 200 epochs of
        ImageNet-size history)."""
        name = self._file(channel, kind)
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
        name = self._file(channel, kind)
        if name not in self._copies:
            data = self._read_consistent(channel, kind)
            if kind in ("sum", "mean", "last"):  # against the snapshot's count and sums, read the same way
                check_array(self.directory, self._meta, channel, kind, data, self._array)
            self._copies[name] = data
        return self._copies[name]

    def _check_files(self) -> None:
        """Check every array file meta.json calls for (see :func:`check_npy`)."""
        check_npy(self.directory / "count.npy", DTYPES["count"], self.n)
        if self._meta["version"] >= 2:
            check_npy(self.directory / "labels.npy", DTYPES["labels"], self.n)
        for name in self.channels:
            for kind in ("sum", "mean", "last"):
                check_npy(self.directory / self._file(name, kind), DTYPES[kind], self.n)
            if self._meta["keep_history"]:
                check_npy(self.directory / self._file(name, "history"), DTYPES["history"], self.n,
                           len(self._meta["epochs"]))
        for name in self.step_channels:
            for kind in ("sum", "last"):
                check_npy(self.directory / self._file(name, kind), DTYPES[kind], self.n)

    def _check_counts(self, count: np.ndarray, pending: bool = False) -> None:
        """Refuse counts outside ``[0, len(epochs)]`` (one more while a commit is pending)."""
        top = len(self._meta["epochs"]) + int(pending)
        bad = np.flatnonzero((count < 0) | (count > top))
        if len(bad):
            i = int(bad[0])
            raise StoreCorruptError(
                f"{self.directory / 'count.npy'} is damaged: expected counts in [0, {top}] (meta.json lists "
                f"{len(self._meta['epochs'])} epoch(s){', and a commit is pending' if pending else ''}), got "
                f"{int(count[i])} for sample {i} ({len(bad)} sample(s) out of range). Restore the store from a "
                "backup or use another `directory`; a damaged store is refused, not repaired."
            )

    def _check_values(self) -> None:
        """Check the values of every array against each other (:func:`check_values`), at the open: a reader reads
        each one consistently and lets it go (only ``count`` is kept; each array is checked again when it is read),
        the writer through its maps."""
        if self.mode == "r+":
            check_values(self.directory, self._meta, lambda c, k: np.asarray(self._map(c, k)))
        else:
            kept = self._copies  # count, read at the open
            check_values(self.directory, self._meta,
                         lambda c, k: kept[self._file(c, k)] if k == "count" else self._read_consistent(c, k))

    def _pending(self, record: dict[str, Any] | None) -> bool:
        """Whether a commit record holds a part that meta.json does not list yet (a commit not fully applied)."""
        return record is not None and (
            (record["scores"] and record["epoch"] not in self._meta["epochs"])
            or (record["steps"] and record["epoch"] not in self._meta["step_epochs"]))

    def _journal_record(self) -> dict[str, Any] | None:
        """The commit record ``journal/journal.json``, or None where there is none (no commit past its commit
        point, or one that finished between our look and our read)."""
        path = self.directory / "journal" / "journal.json"
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict):  # records before the training-time channels: the scores alone
            record.setdefault("scores", True)
            record.setdefault("steps", False)
        if not (isinstance(record, dict) and all(isinstance(record.get(k), int) and not isinstance(record[k], bool)
                                                 for k in ("epoch", "row"))
                and all(isinstance(record[k], bool) for k in ("scores", "steps"))):
            raise StoreCorruptError(
                f"{path} is damaged: expected a commit record {{\"epoch\": <int>, \"row\": <int>, \"scores\": "
                f"<bool>, \"steps\": <bool>}}, got "
                f"{raw[:200]!r}. It marks a commit that may be half-applied: restore the store from a backup or use "
                "another `directory`; a damaged store is refused, not repaired."
            )
        return record

    def _state(self) -> Literal["ok", "busy", "changed"]:
        """For a reader: ``"changed"`` if meta.json is no longer the file read at open, ``"busy"`` while a commit
        past its commit point is not applied yet, else ``"ok"``. The journal is looked at first: a commit that
        finishes between the two looks has replaced meta.json by the second."""
        record = self._journal_record()
        busy = self._pending(record)
        try:
            identity = meta_identity(os.stat(self.directory / "meta.json"))
        except FileNotFoundError:
            return "changed"
        if identity != self._identity:
            return "changed"
        return "busy" if busy else "ok"

    def _writer_alive(self) -> bool:
        """Whether a writer holds the lock (a shared ``flock`` for a moment: :meth:`_lock` retries for that)."""
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # no flock on this file system: assume a writer, and wait for it
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def _read_consistent(self, channel: str, kind: str) -> np.ndarray:
        """Copy one array while no commit touches it (a seqlock: the same quiet state before and after the copy),
        waiting out a commit in progress.

        Raises:
            StoreChangedError: a commit landed since the open, a commit was interrupted, or one ran too long.
        """
        waited, delay = 0.0, 0.001
        for _ in range(100_000):
            state = self._state()
            if state == "ok":
                data = np.array(self._map(channel, kind))
                if self._state() == "ok":
                    data.flags.writeable = False  # a snapshot of the store, not a scratch array
                    return data
                continue  # a commit ran during the copy: the next look tells which
            if state == "changed":
                raise StoreChangedError(
                    f"The store at {self.directory} has committed epoch(s) since you opened it (you hold epochs "
                    f"{self._meta['epochs']}), so its arrays no longer match them: open it again with "
                    "CurvatureStore.open(...)."
                )
            if not self._writer_alive():
                raise StoreChangedError(
                    f"The store at {self.directory} has an interrupted commit (journal/journal.json, no writer "
                    "alive): its arrays are half-updated. Open it once for writing, CurvatureStore.open(path, "
                    "'r+').close(), to finish the commit, then open it again for reading."
                )
            if waited >= _READ_WAIT:
                break
            time.sleep(delay)
            waited += delay
            delay = min(2 * delay, 0.05)
        raise StoreChangedError(
            f"The store at {self.directory} has had a commit in progress for over {_READ_WAIT:.0f} s: try again "
            "later with CurvatureStore.open(...)."
        )

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
            idx, vals = self._checked(values if isinstance(values, Mapping) else {PRIMARY: values}, indices,
                                      self._valued, "channels")
            keys = None if labels is None else self._check_labels(idx, labels)
        if stepped:
            step_idx, step_vals = self._checked(steps, step_indices, self.step_channels, "training-time channels")
            step_keys = None if step_labels is None else self._check_labels(
                step_idx, step_labels, unknown_ok=True, also=(idx, keys) if scored and keys is not None else None)

        journal = self.directory / "journal"
        row = len(self._meta["epochs"])
        try:
            journal.mkdir()  # _recover left none

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

            save_journal(journal / JOURNAL_PARTS, parts())
            if scored and self._meta["keep_history"]:
                self._ensure_history_rows(row + 1)  # before the commit point, so a full disk fails here
            fsync_dir(journal)
        except (ValueError, StoreCorruptError):
            shutil.rmtree(journal, ignore_errors=True)  # before the commit point: nothing was applied
            raise
        except OSError as e:
            raise OSError(
                e.errno,
                f"Could not write the commit of epoch {epoch} into {self.directory} ({e.strerror or e}): expected room "
                "for its journal and history. The store is as it was before this commit: free some space (or lift "
                "the limit), then commit again.",
            ) from e
        # the commit point
        atomic_write_json(journal / "journal.json", {"epoch": epoch, "row": row, "scores": scored, "steps": stepped})
        self._apply_journal()
        return True

    def _new_sum(self, name: str, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A channel's sums after adding ``values`` at ``idx``; a sum that is not finite (a file changed under the
        writer since its open checked it) is refused before the journal is written: a journal must always replay."""
        old = np.asarray(self._array(name, "sum")[idx])
        bad = np.flatnonzero(~np.isfinite(old))
        if len(bad):
            raise StoreCorruptError(
                f"{self.directory / self._file(name, 'sum')} is damaged: expected finite sums, got "
                f"{old[bad[0]].item()!r} for sample {int(idx[bad[0]])}. Nothing of this commit was applied. Restore "
                "the store from a backup or use another `directory`; a damaged store is refused, not repaired."
            )
        return old + values  # finite: values are within float32's range, far from float64's

    def _checked(self, values: Mapping[str, Any], indices: np.ndarray | None, names: Sequence[str],
                 what: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(indices, {name: float64 values})``, checked: distinct indices in range, one finite value each, one
        array per name."""
        if set(values) != set(names):
            raise ValueError(f"Expected values for {what} {list(names)}, got {sorted(values)}.")
        idx = np.arange(self.n) if indices is None else np.asarray(indices)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"Expected `indices` as a 1-d integer array, got {idx.dtype} of shape {idx.shape}.")
        if not _distinct_in_range(idx, self.n):
            raise ValueError(f"Expected distinct `indices` in [0, {self.n}), got out-of-range or repeated ones.")
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

    def _check_labels(self, idx: np.ndarray, labels: Any, *, unknown_ok: bool = False,
                      also: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """``labels`` as int64, checked against the keys recorded for ``idx`` (and against ``also``: keys of the same
        commit's other part). ``unknown_ok``: :data:`LABEL_UNKNOWN` marks a key not known, checked against nothing."""
        what = "`step_labels`" if unknown_ok else "`labels`"
        keys = np.asarray(labels)
        if keys.shape != idx.shape or not (np.issubdtype(keys.dtype, np.integer) or keys.dtype == bool):
            raise ValueError(f"Expected {what} as {len(idx)} integer label keys (one per index), got {keys.dtype} of "
                             f"shape {keys.shape}.")
        keys = keys.astype(np.int64)
        if not unknown_ok and (keys == LABEL_UNKNOWN).any():
            raise ValueError(f"Expected label keys other than {LABEL_UNKNOWN} (the store's mark of 'no label yet').")
        recorded = self.labels
        if recorded is None:
            return keys
        before = np.asarray(recorded[idx])
        if also is not None:  # the scores' keys of this commit, for the samples both parts hold
            now = np.full(self.n, LABEL_UNKNOWN, dtype=np.int64)
            now[also[0]] = also[1]
            before = np.where(before == LABEL_UNKNOWN, now[idx], before)
        differ = np.flatnonzero((before != LABEL_UNKNOWN) & (keys != LABEL_UNKNOWN) & (before != keys))
        if len(differ):
            i = differ[0]
            raise StoreMismatchError(
                f"The store at {self.directory} recorded samples {idx[differ][:10].tolist()} under other labels "
                f"({len(differ)} sample(s); e.g. sample {int(idx[i])}: label key {int(before[i])} then, "
                f"{int(keys[i])} now{', in the training steps' if unknown_ok else ''}): the dataset's labels changed "
                "since. Values under other labels do not average: use another `directory` for other labels, or train "
                "and score the dataset the store was made for. Nothing of this epoch was added."
            )
        return keys

    def _recover(self) -> None:
        """Finish a commit that a crash (or an error) interrupted after its commit point; drop one that did not
        reach it (no journal.json: the arrays were not touched)."""
        journal = self.directory / "journal"
        if not journal.exists() and not journal.is_symlink():
            return
        if journal.is_symlink() or not journal.is_dir():
            raise StoreCorruptError(
                f"{journal} is damaged: expected the journal folder a commit writes, got a file or a link. Move it "
                "away if you know what it is, or use another `directory`; a damaged store is refused, not repaired."
            )
        record = self._journal_record()
        if self._pending(record):
            self._apply_journal()
        else:
            shutil.rmtree(journal)

    def _load_journal(self, record: dict[str, Any]) -> dict[str, Any]:
        """The journal's parts, each checked before any is applied: ``indices``, ``count``, ``labels`` (None when the
        commit checked none), ``sums`` and ``values`` per channel for the scores; ``step_indices``, ``step_sums``
        and ``step_values`` for the training-time channels.

        Raises:
            StoreCorruptError: naming the journal file that does not fit the store.
        """
        journal = self.directory / "journal"
        epochs = self._meta["epochs"]

        def refuse(path: Path, expected: str, got: str) -> StoreCorruptError:
            return StoreCorruptError(
                f"{path} is damaged: expected {expected}, got {got}. It records a commit past its commit point that "
                "cannot be replayed: restore the store from a backup or use another `directory`; a damaged store "
                "is refused, not repaired."
            )

        if record["row"] != len(epochs):
            raise refuse(journal / "journal.json", f"row {len(epochs)} (meta.json lists {len(epochs)} epochs)",
                         f"row {record['row']}")

        bundle = journal / JOURNAL_PARTS
        stored: dict[str, np.ndarray] | None = None  # None: a journal of one .npy per array (stores before bundles)
        if bundle.exists() or bundle.is_symlink():
            try:
                if bundle.is_symlink() or not bundle.is_file():
                    raise ValueError("a link or a folder")
                with np.load(bundle, allow_pickle=False) as z:
                    stored = {key: z[key] for key in z.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
                raise refuse(bundle, "a .npz file of the commit's arrays", f"{type(e).__name__}: {e}") from None

        def has(name: str) -> bool:
            return name.removesuffix(".npy") in stored if stored is not None else (journal / name).exists()

        def load(name: str, dtype: type, m: int | None) -> np.ndarray:
            key = name.removesuffix(".npy")
            path = where(name)
            if stored is not None:
                if key not in stored:
                    raise refuse(path, f"the array '{key}' in {JOURNAL_PARTS}", f"arrays {sorted(stored)}")
                array = stored[key]
            else:
                try:
                    array = np.load(path, allow_pickle=False)
                except (OSError, ValueError, EOFError) as e:
                    raise refuse(path, "a .npy file", f"{type(e).__name__}: {e}") from None
            if array.dtype != dtype or array.ndim != 1 or (m is not None and len(array) != m):
                raise refuse(path, f"a 1-d {np.dtype(dtype)} array" + (f" of {m} values" if m is not None else ""),
                             f"{array.dtype} of shape {array.shape}")
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise refuse(path, "finite values", "NaN or infinity")
            return array

        def where(name: str) -> Path:
            """The journal array's name in messages: ``journal/parts.npz[count]`` (or the .npy of an old journal)."""
            return journal / name if stored is None else Path(f"{bundle}[{name.removesuffix('.npy')}]")

        def load_indices(name: str) -> np.ndarray:
            idx = load(name, np.int64, None)
            if not _distinct_in_range(idx, self.n):
                raise refuse(where(name), f"distinct indices in [0, {self.n})", "out-of-range or repeated ones")
            return idx

        parts: dict[str, Any] = {}
        if record["scores"]:
            idx = load_indices("indices.npy")
            new_count = load("count.npy", np.int64, len(idx))
            if len(idx) and (new_count.min() < 1 or new_count.max() > len(epochs) + 1):
                raise refuse(where("count.npy"), f"counts in [1, {len(epochs) + 1}]",
                             f"counts in [{new_count.min()}, {new_count.max()}]")
            parts.update(
                indices=idx, count=new_count,
                labels=load("labels.npy", np.int64, len(idx)) if has("labels.npy") else None,
                sums={name: load(f"{name}_sum.npy", np.float64, len(idx)) for name in self._valued},
                values={name: load(f"{name}_values.npy", np.float64, len(idx)) for name in self._valued},
            )
        if record["steps"]:
            step_idx = load_indices("step_indices.npy")
            parts.update(
                step_indices=step_idx,
                step_labels=(load("step_labels.npy", np.int64, len(step_idx))
                             if has("step_labels.npy") else None),
                step_sums={name: load(f"{name}_sum.npy", np.float64, len(step_idx)) for name in self.step_channels},
                step_values={name: load(f"{name}_values.npy", np.float64, len(step_idx))
                             for name in self.step_channels},
            )
        return parts

    def _apply_journal(self) -> None:
        journal = self.directory / "journal"
        record = self._journal_record()
        if record is None:
            raise StoreCorruptError(f"{journal / 'journal.json'} vanished while a commit was being applied: is "
                                    "another process writing to this store? One writer at a time.")
        parts = self._load_journal(record)
        row = record["row"]
        written: list[np.memmap] = []

        def put(array: np.memmap, where: Any, values: Any) -> None:
            self._write(array, where, values)
            written.append(array)

        meta = dict(self._meta)
        if record["scores"]:
            idx, new_count = parts["indices"], parts["count"]
            if self._meta["keep_history"]:
                self._ensure_history_rows(row + 1)  # a no-op unless a crash came before the commit grew it
            put(self.count, idx, new_count)
            if parts["labels"] is not None:
                put(self._array(PRIMARY, "labels"), idx, parts["labels"])
            for name in self.channels:
                valued = name in parts["sums"]  # not the curvature of a gradient or forward pass: it stays NaN
                if valued:
                    put(self._array(name, "sum"), idx, parts["sums"][name])
                    put(self._array(name, "mean"), idx, parts["sums"][name] / new_count)
                    put(self._array(name, "last"), idx, parts["values"][name])
                if self._meta["keep_history"]:
                    line = np.full(self.n, np.nan, dtype=np.float32)
                    if valued:
                        line[idx] = parts["values"][name]
                    put(self._array(name, "history"), row, line)
            meta["epochs"] = [*self._meta["epochs"], record["epoch"]]
        if record["steps"]:
            if parts["step_labels"] is not None:
                known = parts["step_labels"] != LABEL_UNKNOWN  # the first key seen is recorded; the rest were checked
                put(self._array(PRIMARY, "labels"), parts["step_indices"][known], parts["step_labels"][known])
            for name in self.step_channels:
                put(self._array(name, "sum"), parts["step_indices"], parts["step_sums"][name])
                put(self._array(name, "last"), parts["step_indices"], parts["step_values"][name])
            meta["step_epochs"] = [*self._meta["step_epochs"], record["epoch"]]
        sync_arrays(self.directory, written)  # every array on disk before meta.json lists the epoch
        atomic_write_json(self.directory / "meta.json", meta)
        self._meta = meta
        shutil.rmtree(journal)

    @staticmethod
    def _write(array: np.memmap, where: Any, values: Any) -> None:
        array[where] = values  # synced with the commit's other arrays at once (store_format.sync_arrays)

    def _ensure_history_rows(self, rows: int) -> None:
        """Grow each history file to hold ``rows`` (doubling): a new header, its space reserved (a full disk fails
        here, with the old file untouched), the old rows copied as bytes (no memory map, so resident memory stays
        flat), swapped in atomically. A reader's map keeps the old inode, whose rows do not change."""
        for name in self.channels:
            path = self.directory / self._file(name, "history")
            old_shape, old_start = check_npy(path, DTYPES["history"], self.n, len(self._meta["epochs"]))
            if old_shape[0] >= rows:
                continue
            capacity = max(rows, 2 * old_shape[0])
            tmp = path.with_name(path.name + ".grow")
            try:
                new_start = create_npy(tmp, DTYPES["history"], (capacity, self.n))
                with open(path, "rb") as src, open(tmp, "r+b") as dst:
                    src.seek(old_start)
                    dst.seek(new_start)
                    shutil.copyfileobj(src, dst, 16 << 20)  # into reserved blocks: no new space needed
                    dst.flush()
                    os.fsync(dst.fileno())
            except BaseException:
                tmp.unlink(missing_ok=True)  # ours, made just now
                raise
            self._arrays.pop(self._file(name, "history"), None)
            os.replace(tmp, path)
            fsync_dir(self.directory)
