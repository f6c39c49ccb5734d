"""What the report reads from a run folder: the store's scores beside ``scores.csv``'s labels and ``metrics.json``,
each file checked to stay inside the run folder (the label issues: :mod:`curvature_callback.analysis.report.issues`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.analysis.recommend import recommended_scores
from curvature_callback.analysis.scores import read_metrics, read_scores_csv, suspicion_scores
from curvature_callback.core import safe_paths

__all__ = ["Run", "read_run", "scores_csv"]


@dataclass
class Run:
    """What the report reads from a run folder: the store's scores beside ``scores.csv``'s labels.

    ``scored`` marks the samples with a score (curvature where the run scored it, else the recommended score); a run
    with ``fraction < 1`` may end before every sample had its turn, and its unscored samples (NaN) are left out of
    every section.
    """

    directory: Path  # resolved
    store: Any
    columns: Mapping[str, np.ndarray]
    metrics: Mapping[str, Any]
    given: np.ndarray
    original: np.ndarray
    flipped: np.ndarray
    scores: dict[str, np.ndarray]
    filenames: list[str] | None

    @property
    def n(self) -> int:
        return self.store.n

    @property
    def curvature(self) -> np.ndarray | None:
        """Curvature, or None for a run that scored none (a gradient or forward pass, training-time signals only)."""
        c = self.scores.get("curvature")
        return c if c is not None and np.isfinite(c).any() else None

    @cached_property
    def recommended(self) -> dict[str, np.ndarray]:
        return recommended_scores(self.scores)

    @cached_property
    def scored(self) -> np.ndarray:
        if self.curvature is not None:
            return np.isfinite(self.curvature)
        return np.isfinite(self.recommended["mislabeled"]) if "mislabeled" in self.recommended \
            else np.zeros(self.n, dtype=bool)

    def order(self, score: np.ndarray) -> np.ndarray:
        """The scored samples with a value of ``score``, highest first (ties in index order)."""
        has = self.scored & np.isfinite(score)
        return np.argsort(-np.where(has, score, -np.inf), kind="stable")[: int(has.sum())]


def scores_csv(run_dir: Path) -> Path:
    """``RUN_DIR/scores.csv``, resolved: it must exist and stay inside the run folder once links are followed."""
    csv_path = run_dir / "scores.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"No scores.csv in {run_dir}: pass the directory a curvature-train run wrote (it holds scores.csv, "
            "metrics.json and curvature/)."
        )
    return safe_paths.inside(csv_path, run_dir)


def read_run(run_dir: Path, csv_path: Path, store_dir: str | os.PathLike | None) -> Run:
    """Open the store and read ``scores.csv`` and ``metrics.json``, checking that they describe the same samples.

    The default store ``RUN_DIR/curvature`` is checked link by link first (its files and ``filenames.txt`` must
    stay in the run folder); a ``store_dir`` the caller names may be anywhere. The caller closes ``store``.
    """
    from curvature_callback.core.store import CurvatureStore

    if store_dir is None:
        store_dir = run_dir / "curvature"
        if store_dir.exists() or store_dir.is_symlink():
            safe_paths.check_tree(store_dir, run_dir)
    store = CurvatureStore.open(store_dir)
    try:
        columns = read_scores_csv(csv_path)
        if len(columns["index"]) != store.n:
            raise ValueError(f"scores.csv has {len(columns['index'])} rows, the store {store.n} samples: not the same "
                             "run. Pass the run directory whose curvature/ wrote this scores.csv.")
        metrics_path = run_dir / "metrics.json"
        metrics = read_metrics(safe_paths.inside(metrics_path, run_dir)) if metrics_path.is_file() else {}
        given = columns.get("given_label", columns.get("label"))
        if given is None:
            raise ValueError(f"scores.csv lacks a label column (has {sorted(columns)}): expected label, given_label.")
        original = columns.get("label", given)
        flipped = columns["flipped"].astype(bool) if "flipped" in columns else given != original
        scores = suspicion_scores(store)
        if not any(np.isfinite(v).any() for v in scores.values()):
            raise ValueError(f"No sample of the store at {store.directory} was scored: nothing to report. Run "
                             "curvature-train until at least one epoch is committed.")
        filenames = _run_filenames(columns, store.directory)
    except BaseException:
        store.close()
        raise
    return Run(run_dir.resolve(), store, columns, metrics, given, original, flipped, scores, filenames)


def _run_filenames(columns: Mapping[str, np.ndarray], store_dir: Path) -> list[str] | None:
    """The samples' file names: scores.csv's ``file`` column, else ``filenames.txt`` beside the store."""
    if "file" in columns:
        return [str(f) for f in columns["file"]]
    listed = store_dir / "filenames.txt"
    if listed.is_file():  # the store was checked: its links, if any, stay in the run folder
        try:
            return listed.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"Expected {listed} to be UTF-8 text, one file name a line (curvature-train writes it), "
                             f"got bytes that are not ({e}): remove or fix the file.") from e
    return None
