"""CurvatureStore: per-sample running means in memory-mapped ``.npy`` files (numpy only, no torch).

Layout of a store folder (DESIGN §2)::

    meta.json         N, settings (h, n_vectors, seed, loss, ...), epochs added, dataset fingerprint, version
    sum.npy           float64 [N]  sum of the curvature scores added for each sample
    count.npy         int64   [N]  how many epochs scored each sample
    mean.npy          float64 [N]  sum / count (NaN where count == 0), kept up to date at each commit
    last.npy          float32 [N]  the score of the latest epoch that scored each sample (NaN before)
    history.npy       float32 [capacity, N]  optional: row r holds the scores of epoch ``epochs[r]``
    <name>_sum.npy    float64 [N]  further channels scored in the same pass (loss, margin, ...)
    <name>_mean.npy   float64 [N]
    <name>_last.npy   float32 [N]
    <name>_history.npy float32 [capacity, N] (with history)

Every file opens with ``np.load(path, mmap_mode="r")``; nothing is pickled.

**Commits are atomic and idempotent.** ``commit_epoch`` first writes a journal (the epoch's values, and the sums
and counts they produce) and only then touches the arrays; all writes are absolute, so replaying a journal
after a crash gives the same arrays. ``meta.json`` (replaced atomically) lists the epochs added; an epoch
that is already there is never added again. One writer at a time (``flock`` on ``lock``; the kernel drops it
when the process dies).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["CurvatureStore", "StoreMismatchError"]

FORMAT_VERSION = 1
PRIMARY = "curvature"
#: settings that change what a score means: a store refuses to continue with other values
MEANING_KEYS = ("n", "h", "n_vectors", "seed", "loss")


class StoreMismatchError(ValueError):
    """An existing store was made with other settings than the ones asked for."""


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _npy_layout(path: Path) -> tuple[tuple[int, ...], int]:
    """Shape of a ``.npy`` file and the byte offset where its data starts."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)
        return shape, f.tell()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return a == b


class CurvatureStore:
    """Running per-sample means of curvature (and further channels), memory-mapped.

    Create one with :meth:`create` (or :meth:`open_or_create`), read one with :meth:`open`.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> s = CurvatureStore.create(d, 3, settings={"h": 1e-3, "n_vectors": 10, "seed": 0, "loss": "ce"})
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
        self._meta: dict[str, Any] = json.loads((self.directory / "meta.json").read_text())
        if self._meta.get("version", 0) > FORMAT_VERSION:
            raise RuntimeError(
                f"Store {self.directory} has format version {self._meta['version']}, this curvature_callback reads "
                f"up to {FORMAT_VERSION}: upgrade curvature_callback."
            )
        self._arrays: dict[str, np.memmap] = {}

    # ------------------------------------------------------------------------------------ opening
    @classmethod
    def open(cls, directory: str | os.PathLike, mode: Literal["r", "r+"] = "r") -> CurvatureStore:
        """Open an existing store, read-only by default (``mode="r+"`` to add epochs; one writer at a time)."""
        directory = Path(directory)
        if mode not in ("r", "r+"):
            raise ValueError(f"Expected `mode` 'r' or 'r+', got {mode!r}.")
        if not (directory / "meta.json").is_file():
            raise FileNotFoundError(
                f"No curvature store at {directory} (no meta.json). Pass the folder the callback wrote, "
                "e.g. <run dir>/curvature."
            )
        if mode == "r":
            store = cls(directory, "r")
            if (directory / "journal" / "journal.json").exists() and store._journal_pending():
                warnings.warn(
                    f"Store {directory} has a commit in progress or an interrupted one: the values may be "
                    "mid-update. Opening it once for writing (mode='r+') completes the commit.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return store
        fd = cls._lock(directory)
        try:
            store = cls(directory, "r+", fd)
            store._recover()
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
    ) -> CurvatureStore:
        """Create a new, empty store for ``n`` samples and open it for writing."""
        directory = Path(directory)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Expected the number of samples `n` to be a positive integer, got {n!r}.")
        if (directory / "meta.json").exists():
            raise FileExistsError(f"A store exists at {directory} already: open it, or use open_or_create.")
        for c in channels:
            if c == PRIMARY or not c.isidentifier():
                raise ValueError(f"Expected extra channel names that are identifiers, not {PRIMARY!r}; got {c!r}.")
        directory.mkdir(parents=True, exist_ok=True)
        fd = cls._lock(directory)
        try:
            names = [PRIMARY, *channels]
            for name in names:
                _save_npy(directory / cls._file(name, "sum"), np.zeros(n, dtype=np.float64))
                _save_npy(directory / cls._file(name, "mean"), np.full(n, np.nan, dtype=np.float64))
                _save_npy(directory / cls._file(name, "last"), np.full(n, np.nan, dtype=np.float32))
                if keep_history:
                    np.lib.format.open_memmap(
                        directory / cls._file(name, "history"), mode="w+", dtype=np.float32,
                        shape=(max(1, history_capacity), n),
                    ).flush()
            _save_npy(directory / "count.npy", np.zeros(n, dtype=np.int64))
            meta = {
                "version": FORMAT_VERSION,
                "n": n,
                **{k: v for k, v in settings.items() if k != "n"},
                "channels": list(channels),
                "keep_history": bool(keep_history),
                "epochs": [],
                "fingerprint": dict(fingerprint or {}),
            }
            _atomic_write_json(directory / "meta.json", meta)  # written last: its presence means complete
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
                fingerprint=fingerprint, history_capacity=history_capacity,
            )
        store = cls.open(directory, "r+")
        try:
            store.check_settings(n, settings, channels=channels, fingerprint=fingerprint, keep_history=keep_history)
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
    ) -> None:
        """Raise :class:`StoreMismatchError` naming the first setting that differs from this store's."""
        asked = {"n": n, **settings}
        for key in MEANING_KEYS:
            if key in asked and key in self._meta and not _same(asked[key], self._meta[key]):
                raise StoreMismatchError(
                    f"The store at {self.directory} was made with {key}={self._meta[key]!r}, this run asks "
                    f"{key}={asked[key]!r}. Scores made with another {key} do not average: use another "
                    f"`directory`, or set {key}={self._meta[key]!r}."
                )
        if channels is not None and list(channels) != list(self._meta.get("channels", [])):
            raise StoreMismatchError(
                f"The store at {self.directory} holds channels {self._meta.get('channels')}, this run records "
                f"{list(channels)}: use another `directory`."
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
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RuntimeError(
                f"The store at {directory} is open for writing elsewhere (pid {holder}): one writer at a time. "
                "Close the other writer, or open it read-only with CurvatureStore.open(path)."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def close(self) -> None:
        """Drop the memory maps and release the writer's lock. Safe to call twice."""
        self._arrays.clear()
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
        if kind == "count":
            return "count.npy"
        return f"{kind}.npy" if channel == PRIMARY else f"{channel}_{kind}.npy"

    def _array(self, channel: str, kind: str) -> np.memmap:
        """A memory map of one file. Readers keep theirs; the writer maps afresh each time and lets go, so the
        pages a commit touches leave its resident memory with the map (bounded memory over 200 epochs of
        ImageNet-size history)."""
        name = self._file(channel, kind)
        if name in self._arrays:
            return self._arrays[name]
        path = self.directory / name
        if not path.exists():
            raise KeyError(f"Store {self.directory} has no {kind} for {channel!r} ({name} is missing).")
        array = np.load(path, mmap_mode=self.mode, allow_pickle=False)
        if self.mode == "r":
            self._arrays[name] = array
        return array

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
    def sum(self) -> np.memmap:
        return self._array(PRIMARY, "sum")

    @property
    def count(self) -> np.memmap:
        """``int64 [N]``: epochs that scored each sample."""
        return self._array(PRIMARY, "count")

    @property
    def mean(self) -> np.memmap:
        """``float64 [N]``: the running mean curvature of each sample (NaN where never scored)."""
        return self._array(PRIMARY, "mean")

    @property
    def history(self) -> np.memmap | None:
        """``float32 [epochs, N]`` memory-mapped scores per added epoch (NaN where a sample was not scored),
        or None without ``keep_history``."""
        return self.channel_history(PRIMARY)

    def sum_of(self, channel: str = PRIMARY) -> np.memmap:
        """``float64 [N]``: the sum of a channel over the added epochs (for "forgetting": the event count)."""
        return self._array(channel, "sum")

    def channel_mean(self, channel: str) -> np.memmap:
        """Running mean of another channel (``"loss"``, ``"margin"``, ...)."""
        return self._array(channel, "mean")

    def channel_last(self, channel: str = PRIMARY) -> np.memmap:
        """``float32 [N]``: each sample's value at the latest epoch that scored it (NaN before any)."""
        return self._array(channel, "last")

    def channel_history(self, channel: str) -> np.memmap | None:
        if not self._meta.get("keep_history"):
            return None
        return self._array(channel, "history")[: len(self._meta["epochs"])]

    # ------------------------------------------------------------------------------------ writing
    def commit_epoch(
        self,
        epoch: int,
        values: np.ndarray | Mapping[str, np.ndarray],
        indices: np.ndarray | None = None,
    ) -> bool:
        """Add one epoch's scores, once.

        Args:
            epoch: the training epoch the scores belong to; an epoch already added is ignored.
            values: ``[M]`` curvature scores, or a mapping from channel name to ``[M]`` scores (the
                ``"curvature"`` channel and every extra channel of the store).
            indices: ``[M]`` distinct sample indices the values belong to (default: all ``N`` samples in order).

        Returns:
            True if the epoch was added, False if it was there already.
        """
        if self.mode != "r+":
            raise RuntimeError(f"Store {self.directory} is open read-only: open it with mode='r+' to add epochs.")
        epoch = int(epoch)
        if epoch in self._meta["epochs"]:
            return False
        if not isinstance(values, Mapping):
            values = {PRIMARY: values}
        if set(values) != set(self.channels):
            raise ValueError(f"Expected values for channels {self.channels}, got {sorted(values)}.")
        idx = np.arange(self.n) if indices is None else np.asarray(indices)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"Expected `indices` as a 1-d integer array, got {idx.dtype} of shape {idx.shape}.")
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n or np.count_nonzero(np.bincount(idx)) != len(idx)):
            raise ValueError(f"Expected distinct `indices` in [0, {self.n}), got out-of-range or repeated ones.")
        vals = {}
        for name, v in values.items():
            v = np.asarray(v, dtype=np.float64)
            if v.shape != idx.shape:
                raise ValueError(f"Expected {len(idx)} values for channel {name!r}, got shape {v.shape}.")
            if not np.isfinite(v).all():
                raise ValueError(f"Non-finite values for channel {name!r} at sample(s) {idx[~np.isfinite(v)][:20]}.")
            vals[name] = v

        journal = self.directory / "journal"
        if journal.exists():
            shutil.rmtree(journal)
        journal.mkdir()
        new_count = self.count[idx] + 1
        _save_npy(journal / "indices.npy", idx.astype(np.int64))
        _save_npy(journal / "count.npy", new_count)
        for name, v in vals.items():
            _save_npy(journal / f"{name}_values.npy", v)
            _save_npy(journal / f"{name}_sum.npy", self._array(name, "sum")[idx] + v)
        del new_count, vals
        row = len(self._meta["epochs"])
        _fsync_dir(journal)
        _atomic_write_json(journal / "journal.json", {"epoch": epoch, "row": row})  # the commit point
        self._apply_journal()
        return True

    def _journal_pending(self) -> bool:
        record = json.loads((self.directory / "journal" / "journal.json").read_text())
        return record["epoch"] not in self._meta["epochs"]

    def _recover(self) -> None:
        """Finish a commit that a crash interrupted after its commit point; drop one that did not reach it."""
        journal = self.directory / "journal"
        if not journal.exists():
            return
        if (journal / "journal.json").exists() and self._journal_pending():
            self._apply_journal()
        else:
            shutil.rmtree(journal)

    def _apply_journal(self) -> None:
        journal = self.directory / "journal"
        record = json.loads((journal / "journal.json").read_text())
        idx = np.load(journal / "indices.npy", allow_pickle=False)
        new_count = np.load(journal / "count.npy", allow_pickle=False)
        row = int(record["row"])
        if self._meta.get("keep_history"):
            self._ensure_history_rows(row + 1)
        self._write(self.count, idx, new_count)
        for name in self.channels:
            new_sum = np.load(journal / f"{name}_sum.npy", allow_pickle=False)
            self._write(self._array(name, "sum"), idx, new_sum)
            self._write(self._array(name, "mean"), idx, new_sum / new_count)
            values = np.load(journal / f"{name}_values.npy", allow_pickle=False)
            self._write(self._array(name, "last"), idx, values)
            if self._meta.get("keep_history"):
                line = np.full(self.n, np.nan, dtype=np.float32)
                line[idx] = values
                self._write(self._array(name, "history"), row, line)
        meta = dict(self._meta)
        meta["epochs"] = [*self._meta["epochs"], int(record["epoch"])]
        _atomic_write_json(self.directory / "meta.json", meta)
        self._meta = meta
        shutil.rmtree(journal)

    @staticmethod
    def _write(array: np.memmap, where: Any, values: Any) -> None:
        array[where] = values
        array.flush()

    def _ensure_history_rows(self, rows: int) -> None:
        """Grow each history file to hold ``rows`` (doubling): a new header, the old rows copied as bytes
        (no memory map, so resident memory stays flat), swapped in atomically."""
        for name in self.channels:
            path = self.directory / self._file(name, "history")
            old_shape, old_start = _npy_layout(path)
            if old_shape[0] >= rows:
                continue
            capacity = max(rows, 2 * old_shape[0])
            tmp = path.with_name(path.name + ".grow")
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(capacity, self.n)).flush()
            _, new_start = _npy_layout(tmp)
            with open(path, "rb") as src, open(tmp, "r+b") as dst:
                src.seek(old_start)
                dst.seek(new_start)
                shutil.copyfileobj(src, dst, 16 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            self._arrays.pop(self._file(name, "history"), None)
            os.replace(tmp, path)
