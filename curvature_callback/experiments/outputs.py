"""What a ``curvature-train`` run writes from what it found (:mod:`~curvature_callback.experiments.evaluation`):
``scores.csv``, ``label_issues.csv``, ``corrections.csv``, the figures, ``metrics.json``, the W&B summary and review
table, and the summary it prints. Every file goes through :mod:`curvature_callback.core.safe_paths`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import Dataset

from curvature_callback.analysis import write_scores_csv
from curvature_callback.analysis.label_issues import LabelIssues, write_label_issues_csv
from curvature_callback.analysis.plots import plot_histogram, plot_top_k
from curvature_callback.core import safe_paths
from curvature_callback.core.corrections import corrections_rows, write_corrections
from curvature_callback.experiments.evaluation import Findings
from curvature_callback.integration.callback import CurvatureCallback, default_batch_to_inputs
from curvature_callback.integration.sinks import log_review_table

__all__ = ["log_to_wandb", "prefill_corrections", "print_summary", "write_figures", "write_metrics", "write_tables"]


def write_tables(out: Path, found: Findings) -> None:
    """``scores.csv``, ``label_issues.csv`` and, unless a person's is there, ``corrections.csv``."""
    given = found.columns["given_label"]
    write_scores_csv(out / "scores.csv", found.columns)
    write_label_issues_csv(out / "label_issues.csv", found.issues, given)
    prefill_corrections(out, found.issues, given)


def prefill_corrections(out: Path, issues: LabelIssues, given: np.ndarray) -> None:
    """``corrections.csv``: a row per flagged sample for a person to edit (relabel to a confident suggestion, else
    keep). A file already there is a person's work (a rerun or a resume into this folder): left as it is."""
    path = out / "corrections.csv"
    if path.exists():  # a link was refused before the run (check_run_dir)
        print(f"curvature-train: {path} is there already: left as it is (a person's corrections)")
        return
    flagged = issues.flagged
    write_corrections(path, corrections_rows(flagged, given[flagged], issues.suggested[flagged],
                                             issues.suggestion_confidence[flagged]))


class _Inputs:
    """``view[i]`` is the input of sample ``i``: reads only the images a figure shows."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i][0]


def write_figures(out: Path, found: Findings, dataset: Dataset, *, top_k: int,
                  class_names: Sequence[str] | None) -> None:
    """``histogram.png`` (curvature of the clean and flipped samples; a run with curvature only) and ``top_k.png``
    (the ``top_k`` samples the recommended score ranks highest: which labels are wrong?)."""
    columns = found.columns
    if found.with_curvature:
        curved = np.isfinite(columns["curvature"])
        plot_histogram(columns["curvature"][curved], columns["flipped"][curved], out / "histogram.png")
    rank = columns["recommended"]
    plot_top_k(_Inputs(dataset), columns["given_label"], columns["label"], np.where(np.isfinite(rank), rank, -np.inf),
               out / "top_k.png", k=top_k, class_names=class_names,
               ranked_by="recommended score (which labels are wrong?)")


def write_metrics(out: Path, metrics: Mapping[str, Any]) -> None:
    """``metrics.json``: the figures, one key a line."""
    safe_paths.write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")


def log_to_wandb(loggers: Sequence[Any], found: Findings, dataset: Dataset, curvature: CurvatureCallback, *,
                 class_names: Sequence[str] | None, step: int) -> None:
    """For each W&B logger: the run's numbers in its summary, and the flagged samples as a review table."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):  # by type, as sinks.py tells loggers apart
            logger.experiment.summary.update({k: v for k, v in found.metrics.items() if isinstance(v, (int, float))})
            issues = found.issues
            log_review_table(logger, dataset, issues.flagged, found.columns["given_label"], issues.suggested,
                             issues.probability, issues.suggestion_confidence, issues.reasons,
                             curvature.batch_to_inputs or default_batch_to_inputs, class_names=class_names, step=step)


def print_summary(metrics: Mapping[str, Any], out: Path) -> None:
    """The run's three lines: the mislabel AUROCs, train accuracy and time split; the label issues; the folder."""
    aurocs = ", ".join(f"{s} {metrics[f'auroc_{s}']:.3f}" for s in ("recommended", "train_loss", "loss", "curvature")
                       if metrics.get(f"auroc_{s}") is not None)
    split = ", ".join(f"{k} {v:.0f} s" for k, v in metrics["time_s"].items())
    print(
        f"curvature-train: mislabel AUROC {aurocs or 'n/a (no flipped labels)'} | train acc "
        f"{metrics['train_acc']:.3f} on given labels | {metrics['wall_time_s']:.0f} s ({split})\n  label issues: "
        f"{metrics['estimated_label_issues']} estimated, {metrics['flagged']} flagged (label_issues.csv)\n"
        f"  outputs: {out}"
    )
