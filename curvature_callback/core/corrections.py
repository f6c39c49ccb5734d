"""Corrections a person made to a run's labels, as a CSV file, and how training applies them (numpy only).

The loop: a run flags the samples whose labels look wrong (``label_issues.csv``); ``curvature-train`` writes
``corrections.csv`` beside it, one row per flagged sample, for a person to edit; the next run trains on the
corrected labels (``curvature-train data.corrections=FILE``, or :func:`apply_corrections` in one's own datamodule).

The file (:data:`COLUMNS`; other columns, a person's notes, are ignored)::

    index,given_label,suggested_label,action,new_label
    17,3,5,relabel,5        # train sample 17 as class 5
    40,1,7,keep,            # its label is right: train it as given
    99,2,2,drop,            # leave it out of training

- ``index``: the sample's index in the scored dataset (``scores.csv``'s ``index``), each at most once;
- ``given_label``: the label the run trained on; checked against the labels the corrections are applied to, so a
  file made for another dataset, another noise seed or another order is refused rather than applied;
- ``suggested_label``: what the run suggested (for the person; not read);
- ``action``: ``keep``, ``relabel`` or ``drop`` (any case);
- ``new_label``: the label a ``relabel`` row trains with, a class in ``[0, C)``; read only for ``relabel``.

Pre-filled (:func:`corrections_rows`): ``relabel`` to the suggestion where the suggestion differs from the given
label with a confidence of at least :data:`RELABEL_CONFIDENCE`, else ``keep``: the file says what the run would do,
and a person changes the rows they disagree with. Samples not in the file keep their label.

A corrections file may come from anyone: every cell is checked (columns, actions, integers, labels and indices in
range, indices distinct, given labels matching) and a bad one is a :class:`CorrectionsError` naming the file, the
line, what was expected and what was found. What is read is bounded (:func:`read_text_lines`): a regular file only
(not a FIFO, a device such as ``/dev/zero``, or a folder), at most :data:`MAX_LINE` characters a line, and at most
as many bytes as a header and one row per sample can take.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from curvature_callback.core import safe_paths

__all__ = [
    "ACTIONS", "COLUMNS", "MAX_LINE", "RELABEL_CONFIDENCE", "Corrections", "CorrectionsError", "apply_corrections",
    "corrections_rows", "read_corrections", "write_corrections",
]

#: what a row may ask
ACTIONS = ("keep", "relabel", "drop")
#: the columns of ``corrections.csv``, in the order they are written
COLUMNS = ("index", "given_label", "suggested_label", "action", "new_label")
#: the columns a corrections file must have (``suggested_label`` is for the person only)
REQUIRED = ("index", "given_label", "action", "new_label")
#: least suggestion confidence for a pre-filled ``relabel`` (below it, ``keep``)
RELABEL_CONFIDENCE = 0.5
#: the longest line a corrections file may have, in characters: a row of four integers and an action is under 100;
#: the rest is room for a person's notes
MAX_LINE = 1024
#: blank lines a spreadsheet may leave beyond the header and one row per sample, for the size cap
_SPARE_LINES = 1024
_INTEGER = re.compile(r"[+-]?\d{1,18}")


class CorrectionsError(ValueError):
    """A corrections file that cannot be applied: its cells, or the labels it was made for."""


@dataclass(frozen=True)
class Corrections:
    """A corrections file, checked: one entry per row, in file order.

    Attributes:
        index: ``int64 [R]`` distinct sample indices.
        given: ``int64 [R]`` the labels the file says the samples had.
        action: ``[R]`` strings, each one of :data:`ACTIONS`.
        new_label: ``int64 [R]`` the new label of ``relabel`` rows, -1 elsewhere.
        path: where it was read from.
    """

    index: np.ndarray
    given: np.ndarray
    action: np.ndarray
    new_label: np.ndarray
    path: str


def read_corrections(path: str | os.PathLike, n: int, num_classes: int) -> Corrections:
    """Read and check a corrections file for a dataset of ``n`` samples in ``num_classes`` classes.

    Args:
        path: the CSV file (UTF-8; a spreadsheet's byte-order mark is accepted).
        n: samples in the dataset the indices refer to.
        num_classes: classes; a ``new_label`` must be in ``[0, num_classes)``.

    Returns:
        The rows as :class:`Corrections`.

    Raises:
        CorrectionsError: the file is missing, no regular file (a folder, a FIFO, a device), larger than a header
            and ``n`` rows can be, has a line over :data:`MAX_LINE` characters, is not UTF-8 CSV, lacks a column of
            :data:`REQUIRED`, or a row has an index out of ``[0, n)`` or seen before, an action not in
            :data:`ACTIONS`, or a ``relabel`` without a ``new_label`` in ``[0, num_classes)``; the message names the
            line.
    """
    where = os.fspath(path)
    fix = "fix the file (curvature-train writes one to start from: corrections.csv in the run folder)"
    # The largest legitimate file: a header, n rows (distinct indices in [0, n)) and some blank lines, each line at most
    # MAX_LINE characters (over 10 times a row's length); a larger one, or /dev/zero, is refused before it is read.
    lines = safe_paths.read_text_lines(
        path, what="corrections file", max_bytes=(n + 1 + _SPARE_LINES) * MAX_LINE, max_line=MAX_LINE, fix=fix,
        why=f"a header and a row per sample of {n}, each at most {MAX_LINE} characters", encoding="utf-8-sig",
        path_fix="pass the path of an existing CSV (index, given_label, suggested_label, action, new_label)",
        error=CorrectionsError)
    try:
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None:
            raise CorrectionsError(f"{where} is empty: expected a header row ({', '.join(COLUMNS)}); {fix}.")
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED if c not in header]
        if missing or len(set(header)) != len(header):
            raise CorrectionsError(
                f"Expected {where} to have a header of distinct column names with {', '.join(REQUIRED)}, got "
                f"{header[:8]!r}{' ...' if len(header) > 8 else ''} (missing: {', '.join(missing) or 'none'}); "
                f"{fix}.")
        at = {c: header.index(c) for c in REQUIRED}
        rows: list[tuple[int, list[str]]] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # a blank line a spreadsheet left
            if len(rows) >= n:  # distinct indices in [0, n): no more than n rows
                raise CorrectionsError(f"{where} has more than {n} rows, the dataset {n} samples: each index "
                                       f"at most once; {fix}.")
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise CorrectionsError(f"Expected {where} to be CSV, got text the csv module refuses ({e}); {fix}.") from e

    index = np.empty(len(rows), dtype=np.int64)
    given = np.empty(len(rows), dtype=np.int64)
    new_label = np.full(len(rows), -1, dtype=np.int64)
    action = np.empty(len(rows), dtype=object)
    seen: dict[int, int] = {}
    for k, (line, row) in enumerate(rows):
        cells = {name: row[j].strip() if j < len(row) else "" for name, j in at.items()}
        i = _integer(cells, "index", 0, n, f"a sample of the dataset ({n} samples)", line, where, fix)
        if i in seen:
            raise CorrectionsError(f"Sample {i} is on lines {seen[i]} and {line} of {where}: expected each index "
                                   f"at most once (which correction holds?); {fix}.")
        seen[i] = line
        index[k] = i
        given[k] = _integer(cells, "given_label", 0, num_classes, f"a class ({num_classes} classes)", line, where, fix)
        act = cells["action"].lower()
        if act not in ACTIONS:
            raise CorrectionsError(f"Expected action on line {line} of {where} to be one of {', '.join(ACTIONS)}, "
                                   f"got {cells['action']!r}; {fix}.")
        action[k] = act
        if act == "relabel":
            new_label[k] = _integer(cells, "new_label", 0, num_classes,
                                    f"the class a relabel row trains with ({num_classes} classes)", line, where, fix)
    return Corrections(index, given, action.astype(str) if len(rows) else np.empty(0, dtype="<U7"), new_label, where)


def _integer(cells: dict[str, str], name: str, low: int, high: int, what: str, line: int, where: str, fix: str) -> int:
    text = cells[name]
    if not _INTEGER.fullmatch(text) or not low <= int(text) < high:
        raise CorrectionsError(f"Expected {name} on line {line} of {where} to be {what}, an integer in "
                               f"[{low}, {high}), got {text!r}; {fix}.")
    return int(text)


def apply_corrections(
    labels: Any, path: str | os.PathLike, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The labels to train on after a corrections file, and which samples to train on.

    Call it where a datamodule sets its training labels, with the labels the file was made for (the run's given
    labels), then train on ``new_labels`` and only the samples where ``keep_mask`` is True; keep scoring every
    sample with its index unchanged, so a score of the next run means the same sample.

    Args:
        labels: ``[N]`` integer labels the file was made for (a list, an array, a tensor's ``.numpy()``).
        path: the corrections CSV (see the module's documentation).
        num_classes: classes; default ``max(labels) + 1``.

    Returns:
        ``(new_labels, keep_mask)``: ``int64 [N]`` labels with every ``relabel`` applied, ``bool [N]`` False for the
        ``drop`` rows.

    Raises:
        CorrectionsError: the file is malformed (:func:`read_corrections`), or a row's ``given_label`` is not the
            label of its sample here (a file made for other labels).

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "corrections.csv"
        >>> _ = f.write_text("index,given_label,suggested_label,action,new_label\\n1,1,0,relabel,0\\n2,2,,drop,\\n")
        >>> new, keep = apply_corrections([0, 1, 2, 0], f)
        >>> new.tolist(), keep.tolist()
        ([0, 0, 2, 0], [True, True, False, True])
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise ValueError(f"Expected `labels` as a 1-d integer array, got {labels.dtype} of shape {labels.shape}.")
    labels = labels.astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise ValueError(f"Expected `labels` >= 0 (class indices), got {int(labels.min())}.")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else 0
    fixes = read_corrections(path, len(labels), num_classes)
    differ = np.flatnonzero(labels[fixes.index] != fixes.given)
    if len(differ):
        k = int(differ[0])
        raise CorrectionsError(
            f"{fixes.path} says sample {fixes.index[k]} has given_label {fixes.given[k]}, but its label here is "
            f"{labels[fixes.index[k]]} ({len(differ)} row(s) disagree): the file was made for other labels (another "
            "dataset, noise seed or order). Apply it to the labels of the run that wrote it.")
    new = labels.copy()
    relabel = fixes.action == "relabel"
    new[fixes.index[relabel]] = fixes.new_label[relabel]
    keep = np.ones(len(labels), dtype=bool)
    keep[fixes.index[fixes.action == "drop"]] = False
    return new, keep


def corrections_rows(
    index: Sequence[int], given: Sequence[int], suggested: Sequence[int], confidence: Sequence[float],
) -> list[tuple[int, int, int, str, str]]:
    """The pre-filled rows of a corrections file for flagged samples: ``relabel`` to the suggestion where it differs
    from the given label with ``confidence >= RELABEL_CONFIDENCE``, else ``keep`` (with no ``new_label``). A
    suggestion below 0 means none (an empty ``suggested_label``)."""
    rows = []
    for i, g, s, c in zip(index, given, suggested, confidence, strict=True):
        s = int(s)
        relabel = 0 <= s != int(g) and float(c) >= RELABEL_CONFIDENCE
        rows.append((int(i), int(g), str(s) if s >= 0 else "", "relabel" if relabel else "keep",
                     str(s) if relabel else ""))
    return rows


def write_corrections(path: str | os.PathLike, rows: Sequence[tuple[Any, ...]]) -> os.PathLike:
    """Write ``rows`` (:func:`corrections_rows`) as a corrections CSV, never through a link; returns the path."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return safe_paths.write_text(path, buffer.getvalue())
