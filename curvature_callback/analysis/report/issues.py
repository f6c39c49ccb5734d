"""The label issues the page shows: the run's own ``label_issues.csv`` where it is there (what ``curvature-train``
flagged, in its order, with its probabilities, suggestions and reasons), compared with what the store gives now;
else found from the store as ``curvature-train`` finds them. The page says which it shows and how the two differ."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.analysis.label_issues import LabelIssues, find_label_issues, read_label_issues_csv
from curvature_callback.analysis.report.run import Run
from curvature_callback.core import safe_paths

__all__ = ["find_issues", "read_issues_file", "run_issues"]

#: the run's label issues, beside scores.csv
ISSUES_FILE = "label_issues.csv"


def read_issues_file(run_dir: Path) -> dict[str, np.ndarray] | None:
    """The columns of ``RUN_DIR/label_issues.csv`` (checked, :func:`read_label_issues_csv`), None without one.

    Raises:
        ValueError: the file is damaged (the reader's message), or a link out of the run folder.
    """
    path = run_dir / ISSUES_FILE
    if not (path.exists() or path.is_symlink()):
        return None
    return read_label_issues_csv(safe_paths.inside(path, run_dir))


def find_issues(run: Run) -> Any | str:
    """The run's label issues, found as ``curvature-train`` found them (its store, given labels and the final model's
    predictions, ``scores.csv``'s ``pred``); the reason where they cannot be found."""
    pred = run.columns.get("pred")
    classes = int(max(run.given.max(), run.original.max())) + 1 if run.n else 0
    if pred is None or pred.dtype != np.int64 or (len(pred) and not (0 <= pred.min() and pred.max() < classes)):
        pred = None  # a stranger's column that is not class indices: found without it
    try:
        return find_label_issues(run.store, run.given, predictions=pred)
    except ValueError as e:  # a store with none of the mislabeled rule's signals: the rest of the report holds
        return str(e)


def run_issues(run: Run, table: Mapping[str, np.ndarray] | None) -> tuple[Any | str, str]:
    """``(issues, source)``: the file's rows where there is a file (``table``), else the store's answer; ``source``
    is one line for the page: which was shown and, for the file, how the store's answer now differs ("" without a
    file: the page shows what the store gives, as it always did).

    Raises:
        ValueError: the file names a sample the run does not have, or another given label than ``scores.csv``'s:
            it is another run's.
    """
    now = find_issues(run)
    if table is None:
        return now, ""
    filed = _from_table(run, table)
    return filed, _compare(filed.flagged, now)


def _from_table(run: Run, table: Mapping[str, np.ndarray]) -> LabelIssues:
    """The file's rows as per-sample arrays, checked against the run: indices in ``[0, N)``, the given labels
    ``scores.csv``'s."""
    where = run.directory / ISSUES_FILE
    index = table["index"]
    fix = "it is another run's: remove it (the report then finds the issues from the store) or rerun curvature-train"
    if len(index) and index.max() >= run.n:
        raise ValueError(f"Expected the indices of {where} in [0, {run.n}) (the run's samples), got "
                         f"{int(index.max())}: {fix}.")
    differ = np.flatnonzero(run.given[index] != table["given_label"])
    if len(differ):
        k = int(differ[0])
        raise ValueError(f"Expected {where} to hold the run's given labels, got given_label {table['given_label'][k]} "
                         f"for sample {index[k]}, whose label in scores.csv is {run.given[index[k]]} ({len(differ)} "
                         f"row(s) differ): {fix}.")
    n = run.n
    probability, score = np.full(n, np.nan), np.full(n, np.nan)
    suggested, confidence = np.full(n, -1, dtype=np.int64), np.zeros(n)
    probability[index], score[index] = table["probability"], table["score"]
    suggested[index], confidence[index] = table["suggested_label"], table["suggestion_confidence"]
    estimated = run.metrics.get("estimated_label_issues")
    method = run.metrics.get("label_issues_method")
    if isinstance(estimated, bool) or not isinstance(estimated, int) or estimated < 0:  # a stranger's file
        estimated, method = "not recorded (no estimated_label_issues in metrics.json)", ""
    # the file's rows as LabelIssues (the page reads the same attributes): [N] arrays NaN, -1 or 0 where the file
    # has no row; estimated and method are metrics.json's, or say there are none (the file does not hold them)
    return LabelIssues(estimated, index, probability, score, suggested, confidence,
                       tuple(str(r) for r in table["reasons"]), method if isinstance(method, str) else "")


def _compare(flagged: np.ndarray, now: Any | str) -> str:
    """One line: the file was shown, and whether the store now flags the same samples in the same order."""
    head = f"Shown: the run's {ISSUES_FILE} ({len(flagged)} flagged, as curvature-train wrote it)"
    if isinstance(now, str):
        return f"{head}; the store cannot find them again now ({now})."
    again = np.asarray(now.flagged, dtype=np.int64)
    filed, found = set(flagged.tolist()), set(again.tolist())
    if filed == found:
        same = np.array_equal(again, flagged)
        return f"{head}; the store gives the same {len(found)} flagged sample(s) now" + \
            ("." if same else ", in another order.")
    return (f"{head}; the store would now give another answer: {len(found)} flagged (estimated {now.estimated}), "
            f"{len(found - filed)} of them not in the file, {len(filed - found)} of the file's not flagged now.")
