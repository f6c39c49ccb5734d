"""One writer at a time, and readers that never see a half-applied commit. Numpy only.

The writer holds ``flock`` on the store folder itself (deleting ``lock``, which only holds the writer's pid for
messages, does not let a second writer in; the kernel drops the lock when the process dies). A reader copies an
array between two looks that find no commit being applied and ``meta.json`` still the file it read at its open
(:func:`read_consistent`, a seqlock): ``meta.json`` is replaced at each commit and grows by one epoch, so its inode,
mtime and size tell.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from curvature_callback.core import store_journal
from curvature_callback.core.store_format import StoreChangedError, meta_identity

__all__ = ["READ_WAIT", "read_consistent", "release", "state", "take", "writer_alive"]

#: how long a reader waits for a commit in progress before it gives up (seconds)
READ_WAIT = 10.0


def take(directory: Path) -> int:
    """Take the writer's lock: ``flock`` on the folder itself (deleting the ``lock`` file, which only holds the
    pid for the message, does not let a second writer in). Returns the locked descriptor.

    Raises:
        RuntimeError: another process holds the lock (the message names its pid).
    """
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


def release(fd: int) -> None:
    """Release the writer's lock taken by :func:`take`."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def writer_alive(directory: Path) -> bool:
    """Whether a writer holds the lock (a shared ``flock`` for a moment: :func:`take` retries for that)."""
    fd = os.open(directory, os.O_RDONLY)
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


def state(directory: Path, identity: tuple[int, int, int, int],
          meta: dict[str, Any]) -> Literal["ok", "busy", "changed"]:
    """For a reader: ``"changed"`` if meta.json is no longer the file read at open (``identity``), ``"busy"`` while
    a commit past its commit point is not applied yet, else ``"ok"``. The journal is looked at first: a commit that
    finishes between the two looks has replaced meta.json by the second."""
    busy = store_journal.pending(store_journal.record(directory), meta)
    try:
        now = meta_identity(os.stat(directory / "meta.json"))
    except FileNotFoundError:
        return "changed"
    if now != identity:
        return "changed"
    return "busy" if busy else "ok"


def read_consistent(directory: Path, identity: tuple[int, int, int, int], meta: dict[str, Any],
                    copy: Callable[[], np.ndarray]) -> np.ndarray:
    """``copy()`` taken while no commit touches the store (the same quiet :func:`state` before and after it),
    waiting out a commit in progress; returned read-only.

    Raises:
        StoreChangedError: a commit landed since the open, a commit was interrupted, or one ran too long.
    """
    waited, delay = 0.0, 0.001
    for _ in range(100_000):
        now = state(directory, identity, meta)
        if now == "ok":
            data = copy()
            if state(directory, identity, meta) == "ok":
                data.flags.writeable = False  # a snapshot of the store, not a scratch array
                return data
            continue  # a commit ran during the copy: the next look tells which
        if now == "changed":
            raise StoreChangedError(
                f"The store at {directory} has committed epoch(s) since you opened it (you hold epochs "
                f"{meta['epochs']}), so its arrays no longer match them: open it again with "
                "CurvatureStore.open(...)."
            )
        if not writer_alive(directory):
            raise StoreChangedError(
                f"The store at {directory} has an interrupted commit (journal/journal.json, no writer "
                "alive): its arrays are half-updated. Open it once for writing, CurvatureStore.open(path, "
                "'r+').close(), to finish the commit, then open it again for reading."
            )
        if waited >= READ_WAIT:
            break
        time.sleep(delay)
        waited += delay
        delay = min(2 * delay, 0.05)
    raise StoreChangedError(
        f"The store at {directory} has had a commit in progress for over {READ_WAIT:.0f} s: try again "
        "later with CurvatureStore.open(...)."
    )
