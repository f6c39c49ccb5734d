"""Making a new store: its arguments checked, its files built in a hidden sibling folder and renamed into place, so
that a kill during the creation never leaves a half store under the store's name (its next open would refuse it).
Only a folder that holds other files already is written in place, ``meta.json`` last; nothing that is not ours is
ever overwritten. Numpy only.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.core import store_locking
from curvature_callback.core.channels.definitions import evidence_names_problem
from curvature_callback.core.settings import MEANING_KEYS, check_int
from curvature_callback.core.store_format import (
    DTYPES,
    FORMAT_VERSION,
    LABEL_UNKNOWN,
    PRIMARY,
    STORE_FILE,
    StoreCorruptError,
    atomic_write_json,
    create_npy,
    file_name,
    fsync_dir,
    save_npy,
)

__all__ = ["build", "check_arguments"]


def check_arguments(n: Any, settings: Mapping[str, Any], channels: Sequence[str], step_channels: Sequence[str]) -> None:
    """Refuse a new store's ``n``, ``settings`` without a meaning key, channel names that are not distinct
    identifiers other than curvature's (and, for the training-time channels, other than the pass's), or an early
    class-evidence window (``settings["evidence_window"]``) that is not an integer >= 0 or does not fit the
    training-time channels (:func:`~curvature_callback.core.channels.step_channels` gives the ones that fit)."""
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
    window = check_int("evidence_window", settings.get("evidence_window", 0), 0)
    problem = evidence_names_problem(list(step_channels), window)
    if problem is not None:
        raise ValueError(f"Expected training-time channels that fit the class evidence asked for: {problem}. Pass "
                         "step_channels=step_channels(class_evidence, evidence_window) (curvature_callback.core."
                         "channels).")


def _write_files(build: Path, n: int, meta: dict[str, Any], history_capacity: int, made: list[Path]) -> None:
    """Every array of an empty store (sums 0, means and latest values NaN, counts 0, labels unknown), then
    ``meta.json`` (its presence means complete); each file made is appended to ``made`` before it is written."""
    for name in [PRIMARY, *meta["channels"]]:
        for kind, fill in (("sum", 0.0), ("mean", np.nan), ("last", np.nan)):
            made.append(build / file_name(name, kind))
            save_npy(made[-1], np.full(n, fill, dtype=DTYPES[kind]))
        if meta["keep_history"]:
            made.append(build / file_name(name, "history"))
            create_npy(made[-1], DTYPES["history"], (max(1, history_capacity), n))
    for name in meta["step_channels"]:
        for kind, fill in (("sum", 0.0), ("last", np.nan)):
            made.append(build / file_name(name, kind))
            save_npy(made[-1], np.full(n, fill, dtype=DTYPES[kind]))
    made.append(build / "count.npy")
    save_npy(made[-1], np.zeros(n, dtype=np.int64))
    made.append(build / "labels.npy")
    save_npy(made[-1], np.full(n, LABEL_UNKNOWN, dtype=np.int64))
    atomic_write_json(build / "meta.json", meta)  # written last: its presence means complete


def _fill(directory: Path, build: Path, fresh: bool, n: int, meta: dict[str, Any], history_capacity: int) -> None:
    """Write the store's files into ``build`` (under the writer's lock) and, for a fresh store, rename it into
    place; a failure (a full disk, ^C) leaves none of its files behind, or the next create would refuse the folder.

    Raises:
        FileExistsError: a store exists at ``directory`` already, or appeared meanwhile.
        StoreCorruptError: ``build`` holds store files without a ``meta.json``.
    """
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
    made: list[Path] = []
    try:
        _write_files(build, n, meta, history_capacity, made)
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
        # these files did not exist before (checked above): we made them
        if fresh:
            shutil.rmtree(build, ignore_errors=True)
        else:
            for path in [*made, build / "meta.json.tmp", build / "meta.json"]:
                path.unlink(missing_ok=True)
        raise


def build(directory: Path, n: int, *, settings: Mapping[str, Any], keep_history: bool, channels: Sequence[str],
          fingerprint: Mapping[str, Any] | None, history_capacity: int, step_channels: Sequence[str]) -> int:
    """Create a new, empty store at ``directory`` (arguments checked by :func:`check_arguments` first); returns the
    writer's lock on it (:func:`~curvature_callback.core.store_locking.take`), for the store to open it with.

    Raises:
        FileExistsError: a store (``meta.json``) exists in ``directory`` already.
        StoreCorruptError: ``directory`` holds store files but no ``meta.json``. Nothing is overwritten.
        OSError: the disk is full (the history's space is reserved); nothing of the new store is left behind.
    """
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_create(directory, e) from e
    fresh = not directory.exists() or (directory.is_dir() and not directory.is_symlink()
                                       and not any(directory.iterdir()))
    if fresh:
        folder = directory.parent / f".{directory.name}.creating-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            folder.mkdir()
        except OSError as e:  # its message would name the hidden folder, not the one asked for
            raise _cannot_create(directory, e) from e
    else:
        directory.mkdir(exist_ok=True)  # a file there: mkdir says so
        folder = directory
    fd = store_locking.take(folder)  # flock holds the inode: the lock moves with the rename
    try:
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
        _fill(directory, folder, fresh, n, meta, history_capacity)
    except BaseException:
        os.close(fd)
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)  # ours, made just now (a no-op once renamed)
        raise
    return fd


def _cannot_create(directory: Path, e: OSError) -> OSError:
    """The error of a store folder that cannot be made (the same kind of ``OSError``), naming ``directory``, the
    folder asked for, not the hidden one it is built in, and why."""
    above = directory.parent
    while not above.exists() and above != above.parent:  # the nearest existing folder above
        above = above.parent
    if not above.is_dir():
        why = f"{above} is a file, not a folder"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = f"{above} takes no new folder: not writable by this user, read-only, or not a real filesystem"
    elif e.errno == errno.ENOENT and directory.parent.is_dir():  # a folder there, and yet no folder can be made
        why = f"{directory.parent} takes no new folder: not a real filesystem (a virtual one, such as /proc)"
    else:
        why = f"creating it under {above} failed"
    return type(e)(f"Cannot create the store folder {directory}: {why} ({e.strerror}). Pass a `directory` on a "
                   "writable disk, a folder you may create files in (or whose parent you may).")
