"""What a ``curvature-train`` run found, from its store, its datamodule's noise bookkeeping and the final model's
predictions: the columns of ``scores.csv``, the flagged labels and the figures of ``metrics.json`` (mislabel detection
by every signal, the flagged set against the planted flips, the training accuracies)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from curvature_callback.analysis import mislabel_metrics, suspicion_scores
from curvature_callback.analysis.label_issues import LabelIssues, find_label_issues
from curvature_callback.analysis.recommend import recommended_scores, used_signals
from curvature_callback.integration.callback import CurvatureCallback, default_batch_to_inputs

__all__ = ["Findings", "evaluate", "predict"]


@dataclass
class Findings:
    """What :func:`evaluate` found: ``scores.csv``'s columns, every signal (higher = more suspicious), the flagged
    labels, ``metrics.json``'s figures so far, and whether the run scored curvature."""

    columns: dict[str, np.ndarray]
    suspicion: dict[str, np.ndarray]
    issues: LabelIssues
    metrics: dict[str, Any]
    with_curvature: bool


def evaluate(store: Any, datamodule: pl.LightningDataModule, predictions: np.ndarray, *, epochs: int) -> Findings:
    """Read the run's store (every signal, the flagged labels) beside the datamodule's labels and the final model's
    ``predictions``; ``epochs`` is how many the run trained. The store stays open: the caller closes it.

    Raises:
        AttributeError: the datamodule lacks the noise bookkeeping (``original_labels``, ...).
    """
    suspicion = suspicion_scores(store)  # every signal: higher = more suspicious
    columns = _columns(store, datamodule, predictions, suspicion)
    metrics = _detection_metrics(columns, suspicion)
    metrics.update(epochs=int(epochs), scored_epochs=store.epochs)
    issues = find_label_issues(store, columns["given_label"], predictions=columns["pred"])  # no ground truth read
    metrics.update(_label_issue_metrics(issues, columns))
    # False: training-time signals only (score_curvature=False), or a gradient or forward pass (no curvature score)
    with_curvature = "curvature" in suspicion and bool(np.isfinite(suspicion["curvature"]).any())
    return Findings(columns, suspicion, issues, metrics, with_curvature)


@torch.no_grad()
def predict(
    model: pl.LightningModule, dataset: Dataset, callback: CurvatureCallback, device: torch.device
) -> np.ndarray:
    """Predicted class of every sample of ``dataset`` by the final model, in eval mode, on ``device`` (Lightning
    moves the model back to the CPU after fit; a GPU run predicts on its GPU)."""
    was_training = model.training
    model.eval().to(device)
    to_inputs = callback.batch_to_inputs or default_batch_to_inputs
    loader = DataLoader(dataset, batch_size=callback.batch_size, num_workers=callback.num_workers,
                        pin_memory=device.type == "cuda")
    preds = [model(to_inputs(batch)[0].to(device, non_blocking=True)).argmax(1).cpu() for batch in loader]
    model.train(was_training)
    return torch.cat(preds).numpy()


def _labels(datamodule: pl.LightningDataModule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(original, given, flipped)`` of the scored samples, from the datamodule's noise bookkeeping."""
    names = ("original_labels", "given_labels", "flipped")
    values = [getattr(datamodule, name, None) for name in names]
    missing = [name for name, value in zip(names, values, strict=True) if value is None]
    if missing:
        raise AttributeError(
            f"curvature-train reads {', '.join(names)} from the datamodule to measure mislabel detection, "
            f"but {type(datamodule).__name__} lacks {missing}: set them in setup()."
        )
    return tuple(np.asarray(v) for v in values)


def _columns(store: Any, datamodule: Any, pred: np.ndarray,
             suspicion: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The columns of scores.csv: labels, the recommended score (which labels are wrong), every channel's mean over
    the scored epochs, the training-time signals, counts, predictions."""
    original, given, flipped = _labels(datamodule)
    columns: dict[str, np.ndarray] = {"label": original, "given_label": given, "flipped": flipped}
    recommended = recommended_scores(suspicion)
    if "mislabeled" in recommended:
        columns["recommended"] = recommended["mislabeled"]
    columns["curvature"] = np.array(store.mean)
    for channel in store.channels[1:]:  # loss, margin, confidence, correct: means over the same epochs
        columns[channel] = np.array(store.channel_mean(channel))
    if "train_loss" in suspicion:  # recorded from the training steps: CSL (the sum), learning time, forgetting
        columns["csl"] = np.array(store.sum_of("train_loss"))
        columns["learning_time"] = suspicion["learning_time"]
        columns["train_forgetting"] = np.array(store.sum_of("train_forgetting"))
    columns.update(count=np.array(store.count), pred=pred)
    source = getattr(datamodule, "source_indices", None)
    if source is not None:
        columns["source_index"] = np.asarray(source)
    filenames = getattr(datamodule, "filenames", None)
    if filenames is not None:
        columns["file"] = np.asarray(filenames, dtype=object)
    return columns


def _detection_metrics(columns: Mapping[str, np.ndarray], suspicion: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """AUROC and AP of the recommended score, curvature and every other signal for the flipped labels, each over the
    scored samples it has a value for (null without noise), and the training accuracies."""
    flipped, given, original, pred = columns["flipped"], columns["given_label"], columns["label"], columns["pred"]
    # with fraction < 1 a short run may leave samples unscored; without curvature, the samples trained on
    scored = np.isfinite(columns["curvature"])
    if not scored.any():
        scored = np.isfinite(columns["recommended"])
    noisy = 0 < flipped[scored].sum() < scored.sum()  # detection needs both kinds; without noise these are null
    metrics: dict[str, Any] = {"recommended_signals": list(used_signals(suspicion)["mislabeled"])}
    scores = {"recommended": recommended_scores(suspicion)["mislabeled"], **suspicion}  # higher = more suspicious
    for name, score in scores.items():
        has = scored & np.isfinite(score)  # a training-time signal: the samples trained on (all, after an epoch)
        found = (mislabel_metrics(score[has], flipped[has]) if noisy and 0 < flipped[has].sum() < has.sum()
                 else {"auroc": None, "ap": None})
        metrics.update({f"{metric}_{name}": value for metric, value in found.items()})
    metrics.update(
        train_acc=float((pred == given).mean()),  # on the labels it trained on: memorization reaches 1.0
        train_acc_original=float((pred == original).mean()),
        flipped_memorized=float((pred == given)[flipped].mean()) if noisy else None,
        n_samples=len(flipped),
        n_scored=int(scored.sum()),
        n_flipped=int(flipped.sum()),
    )
    return metrics


def _label_issue_metrics(issues: LabelIssues, columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The flagged set against the planted flips: precision, recall, and among the flagged flips the share whose
    suggested label is the original (null where undefined: nothing flagged, no flips)."""
    flipped, original = columns["flipped"], columns["label"]
    hit = flipped[issues.flagged]
    found = issues.flagged[hit]
    return {
        "estimated_label_issues": issues.estimated,
        "flagged": len(issues.flagged),
        "label_issues_method": issues.method,
        "flagged_precision": float(hit.mean()) if len(hit) else None,
        "flagged_recall": float(hit.sum() / flipped.sum()) if flipped.any() else None,
        "suggested_label_accuracy": float((issues.suggested[found] == original[found]).mean()) if len(found) else None,
    }
