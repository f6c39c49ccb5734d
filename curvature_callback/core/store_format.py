"""The on-disk format of a store: file names and dtypes, ``meta.json`` read and typed, ``.npy`` headers checked
against it, durable writes (fsync, atomic replace, reserved space). Numpy only.

A store folder is data from a stranger: every function that reads refuses what does not fit with
:class:`StoreCorruptError` naming the file; nothing here repairs. What the arrays' values may be is each channel's
rule (:mod:`curvature_callback.core.channels.values`).
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import re
import shutil
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.core.settings import MEANING_KEYS, PASS_KINDS

__all__ = [
    "DTYPES", "FORMAT_VERSION", "LABEL_UNKNOWN", "OPTIONAL_META", "PRIMARY", "STORE_FILE", "StoreChangedError",
    "StoreCorruptError", "StoreMismatchError", "atomic_write_json", "check_npy", "create_npy", "file_name",
    "fsync_dir", "grow_history", "meta_identity", "npy_layout", "read_meta", "read_npy_header", "reserve",
    "save_journal", "save_npy", "sync_arrays",
]

#: 2: labels.npy, each scored sample's label key, checked at every commit (format 1 stores are read, not added to);
#: 3: meta.json's ``pass_kind`` (a format 2 store is a curvature pass's: the only kind there was)
FORMAT_VERSION = 3
PRIMARY = "curvature"
#: the names of the files a store writes, for any channel: ``create`` refuses a folder that holds one without meta.json
STORE_FILE = re.compile(r"(?:[A-Za-z_]\w*_)?(?:sum|mean|last|count|history|labels)\.npy")
#: keys a meta.json may lack (stores made before they existed): the fingerprint, the training-time channels, the
#: early class-evidence window (none: 0)
OPTIONAL_META = ("fingerprint", "step_channels", "step_epochs", "evidence_window")
#: dtype of each kind of array
DTYPES = {"sum": np.dtype(np.float64), "mean": np.dtype(np.float64), "last": np.dtype(np.float32),
           "count": np.dtype(np.int64), "history": np.dtype(np.float32), "labels": np.dtype(np.int64)}
#: the label key of a sample never scored (no label recorded yet); no sample may have it
LABEL_UNKNOWN = int(np.iinfo(np.int64).min)


def file_name(channel: str, kind: str) -> str:
    """The file of one array: ``count.npy`` and ``labels.npy`` (one per store), ``<kind>.npy`` for curvature,
    ``<channel>_<kind>.npy`` for the other channels.

    Example:
        >>> file_name("curvature", "mean"), file_name("loss", "history"), file_name("loss", "count")
        ('mean.npy', 'loss_history.npy', 'count.npy')
    """
    if kind in ("count", "labels"):  # one per store, not per channel
        return f"{kind}.npy"
    return f"{kind}.npy" if channel == PRIMARY else f"{channel}_{kind}.npy"


class StoreMismatchError(ValueError):
    """An existing store was made with other settings than the ones asked for."""


class StoreCorruptError(ValueError):
    """A store folder is damaged or is not a store: a file missing, truncated, of another type or shape, a
    ``meta.json`` that does not parse, counts that disagree with the epochs. It is refused, never repaired."""


class StoreChangedError(RuntimeError):
    """A read-only store was committed to since it was opened (or a commit is in progress for too long, or was
    interrupted): its arrays no longer match its ``epochs``. Open it again with ``CurvatureStore.open(path)``."""


def atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_npy(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
        f.write(memoryview(array).cast("B"))  # a file write keeps the errno (ENOSPC); numpy's tofile loses it
        f.flush()
        os.fsync(f.fileno())


def save_journal(path: Path, arrays: Iterable[tuple[str, np.ndarray]]) -> None:
    """A commit's arrays in one uncompressed ``.npz`` (read back with ``allow_pickle=False``), written one array at
    a time (an iterator computes each when it is written: memory stays at one array) and synced once.

    One file per commit rather than one ``.npy`` per array keeps a commit to a handful of fsyncs: per-file journals
    cost ~22 fsyncs and 18 unlinks, 110 ms a commit of 1,797 samples on this machine (``benchmarks/bench_store.py``).
    The layout is numpy's own ``np.savez``, written through :mod:`zipfile` so that arrays stream.
    """
    with open(path, "wb") as f:
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, array in arrays:
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _syncfs() -> Any:
    """Linux's ``syncfs(2)`` through the C library, or None where there is none (``os`` does not wrap it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _syncfs() if sys.platform.startswith("linux") else None


def sync_arrays(directory: Path, arrays: Iterable[np.memmap]) -> None:
    """Make the writes to a commit's memory maps durable before ``meta.json`` lists the epoch.

    Our own code because numpy syncs one map at a time (``memmap.flush``: an ``msync`` each): a commit writes 17-29
    small arrays, and 29 syncs took 114-140 ms here under load, one ``syncfs(2)`` of the store's filesystem 7-30 ms
    (``benchmarks/bench_store.py``). Where there is no ``syncfs`` (not Linux), each map is flushed.

    Raises:
        OSError: the filesystem reported a write error (EIO, ENOSPC): the journal stays, and the next commit or
            ``open(mode="r+")`` replays it.
    """
    if _SYNCFS is None:
        for array in arrays:
            array.flush()
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs of {directory}: {os.strerror(err)}")
    finally:
        os.close(fd)


def npy_layout(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int, int]:
    """Shape, Fortran order, dtype of a ``.npy`` file, the byte offset where its data starts, and its size.

    Header and size come from one open file: a history that grows is replaced by a new file, and a size taken
    by path after the header was read could be the new file's.

    Raises:
        StoreCorruptError: the file does not open as ``.npy`` (bad magic, unknown version, unparsable header).
        FileNotFoundError: there is no such file.
    """
    with open(path, "rb") as f:
        try:
            shape, fortran_order, dtype = read_npy_header(f)
        except ValueError as e:
            raise StoreCorruptError(
                f"{path} is damaged: expected a .npy file, got an unreadable header ({e}). Restore the file from a "
                "backup or use another `directory`; a damaged store is refused, not repaired."
            ) from None
        return shape, fortran_order, dtype, f.tell(), os.fstat(f.fileno()).st_size


def read_npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of the ``.npy`` file open in ``f`` (binary, at its start); ``f`` is left where
    the data starts. Reads the header only: what the array would take is known before anything is allocated.

    Raises:
        ValueError: the header does not parse (bad magic, unknown version, a malformed dictionary), with why.
    """
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown .npy format version {version}")
        # 3.0 differs from 2.0 only in allowing utf-8 field names, which none of our dtypes has
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read(f)
    except (ValueError, TypeError, SyntaxError, RecursionError) as e:
        raise ValueError(str(e)) from None


def check_npy(path: Path, dtype: np.dtype, n: int, min_rows: int | None = None) -> tuple[tuple[int, ...], int]:
    """Check one array file of a store: it exists, parses, has ``dtype``, C order, shape ``[n]`` (or
    ``[rows >= min_rows, n]`` for a history) and exactly the bytes its header announces. Returns shape and offset.

    Raises:
        StoreCorruptError: naming the file and what differs.
    """

    def refuse(expected: str, got: str) -> StoreCorruptError:
        return StoreCorruptError(
            f"{path} is damaged: expected {expected}, got {got}. Restore the file from a backup or use another "
            "`directory`; a damaged store is refused, not repaired."
        )

    try:
        shape, fortran_order, got_dtype, offset, size = npy_layout(path)
    except FileNotFoundError:
        raise refuse("the file (meta.json's n, channels and keep_history call for it)", "no such file") from None
    if got_dtype != dtype:  # native byte order only: what np.save writes and what the writer maps
        raise refuse(f"dtype {dtype}", f"dtype {got_dtype}")
    if fortran_order and len(shape) > 1:
        raise refuse("C order", "Fortran order")
    if min_rows is None and shape != (n,):
        raise refuse(f"shape ({n},) (n={n} in meta.json)", f"shape {shape}")
    if min_rows is not None and (len(shape) != 2 or shape[1] != n or shape[0] < min_rows):
        raise refuse(f"shape (capacity >= {min_rows} epochs, {n}) (n={n} and {min_rows} epochs in meta.json)",
                     f"shape {shape}")
    want = offset + math.prod(shape) * dtype.itemsize
    if size != want:
        raise refuse(f"{want} bytes (header {offset} + data {want - offset})",
                     f"{size} bytes ({'truncated' if size < want else 'extra bytes at the end'})")
    return shape, offset


def reserve(fd: int, offset: int, length: int) -> None:
    """Allocate the disk blocks of ``[offset, offset + length)`` so that writes through a memory map never need
    new blocks: on a full disk this raises OSError (ENOSPC) now, instead of SIGBUS in the middle of a commit."""
    if length <= 0:
        return
    try:
        os.posix_fallocate(fd, offset, length)
        return
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    # fallocate unsupported by this file system: write the zeros ourselves (a full disk fails here just the same)
    chunk = bytes(min(length, 16 << 20))
    done = 0
    while done < length:
        done += os.pwrite(fd, chunk[: min(len(chunk), length - done)], offset + done)


def create_npy(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Create a zero-filled ``.npy`` file with its space reserved (see :func:`reserve`); returns the data offset."""
    with open(path, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        f.flush()
        offset = f.tell()
        reserve(f.fileno(), offset, math.prod(shape) * dtype.itemsize)
        os.fsync(f.fileno())
    return offset


def grow_history(path: Path, n: int, epochs: int, rows: int) -> bool:
    """Grow a history file to hold ``rows`` (doubling); returns whether it was replaced. A new header, its space
    reserved (a full disk fails here, with the old file untouched), the old rows copied as bytes (no memory map, so
    resident memory stays flat), swapped in atomically: a reader's map keeps the old inode, whose rows do not change.

    Args:
        n, epochs: the store's samples and epochs (meta.json's), which the file is checked against.
    """
    old_shape, old_start = check_npy(path, DTYPES["history"], n, epochs)
    if old_shape[0] >= rows:
        return False
    capacity = max(rows, 2 * old_shape[0])
    tmp = path.with_name(path.name + ".grow")
    try:
        new_start = create_npy(tmp, DTYPES["history"], (capacity, n))
        with open(path, "rb") as src, open(tmp, "r+b") as dst:
            src.seek(old_start)
            dst.seek(new_start)
            shutil.copyfileobj(src, dst, 16 << 20)  # into reserved blocks: no new space needed
            dst.flush()
            os.fsync(dst.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # ours, made just now
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return True


def meta_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    # meta.json is replaced (new inode) at each commit and grows by one epoch: the size tells even if the
    # file system hands a freed inode out again within its mtime granularity
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def read_meta(directory: Path) -> tuple[dict[str, Any], tuple[int, int, int, int]]:
    """Read and check ``meta.json``; returns it and the identity of the file read (for :class:`StoreChangedError`).

    Raises:
        StoreCorruptError: not JSON, not an object, a key missing or of another type.
        RuntimeError: a newer format version.
    """
    path = directory / "meta.json"
    with open(path, "rb") as f:
        identity = meta_identity(os.fstat(f.fileno()))
        raw = f.read()

    def refuse(expected: str, got: str) -> StoreCorruptError:
        return StoreCorruptError(
            f"{path} is damaged: expected {expected}, got {got}. Restore meta.json from a backup or use another "
            "`directory`; a damaged store is refused, not repaired."
        )

    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise refuse("a JSON object", f"text that does not parse as JSON ({e})") from None
    if not isinstance(meta, dict):
        raise refuse("a JSON object", f"a JSON {type(meta).__name__}")
    if meta.get("version") in (1, 2):  # formats before pass kinds: every store was a curvature pass's
        meta.setdefault("pass_kind", "curvature")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    checks = {  # key: (what it must be, test); version first: a newer format may have other keys
        "version": ("a positive integer", lambda v: is_int(v) and v >= 1),
        "n": ("a positive integer", lambda v: is_int(v) and v >= 1),
        "epochs": ("a list of distinct integers",
                   lambda v: isinstance(v, list) and all(map(is_int, v)) and len(set(v)) == len(v)),
        "channels": (f"a list of distinct identifier strings other than {PRIMARY!r}",
                     lambda v: isinstance(v, list) and all(isinstance(c, str) and c.isidentifier() and c != PRIMARY
                                                           for c in v) and len(set(v)) == len(v)),
        "keep_history": ("true or false", lambda v: isinstance(v, bool)),
        "fingerprint": ("an object", lambda v: isinstance(v, dict)),
        "step_channels": (f"a list of distinct identifier strings other than {PRIMARY!r}",
                          lambda v: isinstance(v, list) and all(isinstance(c, str) and c.isidentifier()
                                                                and c != PRIMARY for c in v) and len(set(v)) == len(v)),
        "step_epochs": ("a list of distinct integers",
                        lambda v: isinstance(v, list) and all(map(is_int, v)) and len(set(v)) == len(v)),
        # what a score means (settings.MEANING_KEYS): a store without one would average any value asked of it
        "h": ("a positive finite number", lambda v: is_number(v) and math.isfinite(v) and v > 0),
        "n_vectors": ("an integer >= 0", lambda v: is_int(v) and v >= 0),
        "seed": ("an integer >= 0", lambda v: is_int(v) and v >= 0),
        "loss": ("a non-empty string (the loss's identity)", lambda v: isinstance(v, str) and bool(v)),
        "fast": ("true or false", lambda v: isinstance(v, bool)),
        "pass_kind": (f"one of {list(PASS_KINDS)}", lambda v: v in PASS_KINDS),
        "evidence_window": ("an integer >= 0 (epochs)", lambda v: is_int(v) and v >= 0),
    }
    assert set(MEANING_KEYS) <= set(checks), "every meaning key is checked here"
    for key, (expected, ok) in checks.items():
        if key not in meta:
            if key in OPTIONAL_META:
                continue
            raise refuse(f"key {key!r} ({expected})", "no such key")
        if not ok(meta[key]):
            raise refuse(f"{key!r} as {expected}", f"{meta[key]!r}")
        if key == "version" and meta[key] > FORMAT_VERSION:
            raise RuntimeError(
                f"Store {directory} has format version {meta['version']}, this curvature_callback reads "
                f"up to {FORMAT_VERSION}: upgrade curvature_callback."
            )
    if (meta["n_vectors"] >= 1) != (meta["pass_kind"] == "curvature"):
        raise refuse("'n_vectors' >= 1 for a curvature pass, 0 for a gradient or forward pass",
                     f"n_vectors={meta['n_vectors']} with pass_kind={meta['pass_kind']!r}")
    if set(meta.get("step_channels", [])) & {*meta["channels"], PRIMARY}:
        raise refuse("'step_channels' with names other than the channels'", f"{meta['step_channels']!r}")
    meta.setdefault("step_channels", [])
    meta.setdefault("step_epochs", [])
    return meta, identity
