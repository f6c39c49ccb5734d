"""Reading and writing inside a folder handed to us: a run folder or a sweep folder is data from a stranger.

``curvature-report`` and ``curvature-collect`` read files of a folder someone else may have made, and write
beside them. A symbolic link planted there must not make them read a file elsewhere (its bytes would land in a
report) nor write through it (over a file elsewhere). The rules, in one place:

- reading: :func:`inside` resolves a path (every link followed) and refuses it unless it stays inside the
  resolved folder we were given; :func:`check_tree` does so for every link under a folder;
- writing: :func:`output_dir` refuses an output folder that is a link or leaves the given folder (unless the
  user named it); :func:`write_bytes` and :func:`write_text` refuse a path that is a link and replace the file
  atomically (a temporary file beside it, then ``os.replace``), so neither a symbolic link nor a hard link to a
  file elsewhere is ever written through; :func:`refuse_links` checks, before a program writes anything, that
  none of the names it will write in a folder is a link (``curvature-train`` in its run folder);
- reading a text file a person handed us (a corrections file, a ``label_issues.csv``): :func:`read_text_lines`
  opens regular files only (never blocking on a FIFO: :func:`open_without_waiting`, :func:`not_regular`) and reads a
  bounded number of bytes and characters a line.

Numpy-free and torch-free: the standard library only.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
from pathlib import Path

__all__ = [
    "UnsafePathError", "check_tree", "inside", "not_a_link", "not_regular", "open_without_waiting", "output_dir",
    "read_text_lines", "refuse_links", "subdir", "write_bytes", "write_text",
]

# the process's umask, read once (os.umask can only be read by setting it): new files get the usual mode, not
# mkstemp's 0600
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class UnsafePathError(ValueError):
    """A path that leaves the folder it belongs to, or a link where a file is to be written."""


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def inside(path: str | os.PathLike, root: str | os.PathLike, verb: str = "read") -> Path:
    """``path`` resolved, when it stays inside ``root`` (resolved too) once every link is followed.

    Args:
        path: a file or folder under ``root`` (it need not exist).
        root: the folder we were given.
        verb: what is refused, for the message (``"read"``, ``"write into"``).

    Returns:
        The resolved path: read that, not ``path``.

    Raises:
        UnsafePathError: ``path`` resolves outside ``root``.
    """
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if not _is_within(resolved, base):
        raise UnsafePathError(
            f"Refusing to {verb} {os.fspath(path)}: expected a path inside {base}, but a link takes it to "
            f"{resolved}. A run or sweep folder is only read and written inside itself: copy the file into the "
            "folder instead of linking to it (or, for output, pass --out to choose where it goes)."
        )
    return resolved


def check_tree(folder: str | os.PathLike, root: str | os.PathLike) -> None:
    """Refuse any link under ``folder`` (``folder`` included) that resolves outside ``root``.

    Links that stay inside are followed, each folder once (a link loop ends there).

    Raises:
        UnsafePathError: a link leaves ``root``.
    """
    seen = {inside(folder, root)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        for name in filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                inside(os.path.join(dirpath, name), root)
        for name in list(dirnames):
            resolved = inside(os.path.join(dirpath, name), root)
            if resolved in seen:
                dirnames.remove(name)  # reached already, through another path: a loop or an alias
            seen.add(resolved)


def output_dir(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Create the output folder ``path`` and return it.

    Args:
        path: the output folder.
        root: the given folder ``path`` must stay in (a default under a run folder), or None when the user
            named ``path`` (``--out``): then it may be anywhere, a link included.

    Raises:
        UnsafePathError: with ``root``, ``path`` is a link, or resolves outside ``root``.
        ValueError: ``path`` is there but is no folder (a file).
    """
    path = Path(path)
    if root is not None:
        if path.is_symlink():
            raise UnsafePathError(
                f"Refusing to write into {path}: expected a folder inside {Path(root).resolve()}, but it is a link to "
                f"{os.readlink(path)}. Remove the link, or pass --out to choose where the output goes."
            )
        inside(path, root, "write into")  # a parent that is a link out of root
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"Expected {path} to be a folder for the output, or nothing there, but it is a file: "
            + ("name another folder with --out, or move the file away." if root is None else
               "move the file away, or pass --out to choose where the output goes.")
        )
    path.mkdir(parents=True, exist_ok=True)
    if root is not None:
        inside(path, root, "write into")  # created: check again, in case a component appeared as a link meanwhile
    return path


def subdir(parent: Path, name: str) -> Path:
    """``parent / name``, created, refused when it is a link (an output folder's own subfolder, as thumbnails/).

    Raises:
        UnsafePathError: ``parent / name`` is a link.
    """
    path = parent / name
    if path.is_symlink():
        raise UnsafePathError(
            f"Refusing to write into {path}: expected a folder, but it is a link to {os.readlink(path)}. Remove "
            "the link, or pass --out to write elsewhere."
        )
    path.mkdir(exist_ok=True)
    return path


def not_a_link(path: str | os.PathLike, fix: str = "Remove the link, or pass --out to write elsewhere.") -> Path:
    """``path``, when it is not a symbolic link (a file to be written: the link and its target stay untouched).

    Args:
        path: the file to be written.
        fix: the message's last sentence: how to go on.

    Raises:
        UnsafePathError: ``path`` is a symbolic link.
    """
    path = Path(path)
    if path.is_symlink():
        raise UnsafePathError(
            f"Refusing to write {path}: expected a file or nothing there, but it is a link to {os.readlink(path)}; "
            f"links in an output folder are never written through. {fix}"
        )
    return path


def refuse_links(folder: str | os.PathLike, names: tuple[str, ...], trees: tuple[str, ...] = (), *,
                 fix: str) -> None:
    """Refuse a link at ``folder/NAME`` for each of ``names`` (glob patterns: ``*.log``), and anywhere under each of
    ``trees`` (folders of ``folder`` that a program writes into): checked before it writes anything there.

    ``folder`` itself may be a link (the user named it). Links elsewhere in ``folder`` are not looked at: a run
    folder may sit beside a linked dataset.

    Args:
        folder: the output folder (it need not exist).
        names: the names the program writes directly in ``folder``.
        trees: the folders it writes into (also refused when they are links themselves).
        fix: the message's last sentence: how to go on.

    Raises:
        UnsafePathError: naming the first link found, and where it leads.
    """
    import fnmatch

    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_symlink() and any(fnmatch.fnmatchcase(entry.name, p) for p in (*names, *trees)):
            not_a_link(entry.path, fix)
    for tree in trees:
        if (folder / tree).is_dir():
            for dirpath, dirnames, filenames in os.walk(folder / tree):  # links to folders are listed, not entered
                for name in sorted((*dirnames, *filenames)):
                    not_a_link(os.path.join(dirpath, name), fix)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` without following a link there; returns ``path``.

    The bytes go to a new temporary file beside ``path``, which then replaces it: a hard link at ``path`` to a
    file elsewhere is unlinked, not written through, and a reader never sees half a file.

    Raises:
        UnsafePathError: ``path`` is a symbolic link (left as it is, and its target untouched).
    """
    path = not_a_link(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # O_EXCL: a new file
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)  # replaces the name: a link planted after the check above is replaced, not followed
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`write_bytes` of ``text`` encoded."""
    return write_bytes(path, text.encode(encoding))


def open_without_waiting(path: str | os.PathLike) -> tuple[int, os.stat_result]:
    """``path`` opened for reading without blocking (a FIFO with no writer would block forever), and the opened
    descriptor's status: check that it is a regular file (``stat.S_ISREG``) before reading, and close it.

    Raises:
        OSError: the path cannot be opened (missing, no permission).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        return fd, os.fstat(fd)
    except OSError:
        os.close(fd)
        raise


def not_regular(path: str | os.PathLike, opened: os.stat_result) -> str:
    """What ``path``, no regular file, is, for a message: ``"a named pipe (FIFO)"``, and where a link leads."""
    mode, where = opened.st_mode, os.fspath(path)
    kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "no file")
    real = os.path.realpath(where)
    return kind + (f" (the path leads to {real})" if real != os.path.abspath(where) else "")


def read_text_lines(path: str | os.PathLike, *, what: str, max_bytes: int, why: str, max_line: int, fix: str,
                    path_fix: str, encoding: str = "utf-8", error: type[ValueError] = ValueError) -> list[str]:
    """The lines of a text file from a stranger, read with bounds (for :mod:`csv`: line endings kept, as ``open(...,
    newline="")`` gives them).

    The file is opened without blocking (a FIFO with no writer would block forever) and checked on the opened
    descriptor (no race with a swap of the path): a regular file only, of at most ``max_bytes``; it is read to its
    size at opening and one byte more, so a file that grows while read is refused rather than followed.

    Args:
        path: the file (a link to a regular file is followed).
        what: the kind of file, for the messages (``"corrections file"``).
        max_bytes: the largest size a legitimate file can have ...
        why: ... and why, for the message (``"a header and a row per sample of 10, each at most 1024 characters"``).
        max_line: the most characters a line may have (its line ending not counted).
        fix: the messages' last words for a file of bad contents (too big, lines too long, not UTF-8).
        path_fix: the last words for a path that is no readable regular file.
        encoding: the text's encoding (``"utf-8-sig"`` accepts a spreadsheet's byte-order mark).
        error: the exception raised (a ``ValueError`` subclass).

    Raises:
        ValueError: (``error``) naming the file, what was expected and what came, and ``fix`` or ``path_fix``.
    """
    where = os.fspath(path)
    try:
        fd, opened = open_without_waiting(path)
    except FileNotFoundError:
        raise error(f"No {what} {where}: expected an existing file; {path_fix}.") from None
    except OSError as e:
        raise error(f"Cannot open {where} ({e.strerror}): expected a readable {what}; {path_fix}.") from None
    if not stat.S_ISREG(opened.st_mode):
        os.close(fd)
        raise error(f"Expected {where} to be a {what}, a regular file, got {not_regular(where, opened)}; {path_fix}.")
    with os.fdopen(fd, "rb") as f:
        if opened.st_size > max_bytes:
            raise error(f"Expected {where} to hold at most {max_bytes} bytes ({why}), got {opened.st_size}: too big "
                        f"to be a {what}; {fix}.")
        try:
            data = f.read(opened.st_size + 1)
        except OSError as e:
            raise error(f"Cannot read {where} ({e.strerror}): expected a readable {what}; {path_fix}.") from None
    if len(data) > opened.st_size:
        raise error(f"{where} grew while it was read (from {opened.st_size} bytes): expected a {what} that stays as "
                    "it is; let whatever writes it finish, then try again.")
    try:
        lines = io.StringIO(data.decode(encoding), newline="").readlines()
    except UnicodeDecodeError as e:
        raise error(f"Expected {where} to be UTF-8 text, got bytes that are not ({e}); {fix}.") from None
    for number, line in enumerate(lines, start=1):
        length = len(line.rstrip("\r\n"))
        if length > max_line:
            raise error(f"Expected lines of at most {max_line} characters in {where}, got {length} on line {number}; "
                        f"{fix}.")
    return lines
