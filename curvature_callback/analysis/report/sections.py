"""The context of each section of the report's page after the samples to review: the run's summary, which signal
answers which question, mislabel detection, each question's top samples, the curvature histograms and the comparison
with a reference memorization score. Each returns plain strings, numbers, lists and mappings (figures as data URIs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.analysis.metrics import detection_table
from curvature_callback.analysis.plots import (
    plot_class_histograms,
    plot_detection_curves,
    plot_histogram,
    plot_memorization,
)
from curvature_callback.analysis.recommend import RULES, used_signals
from curvature_callback.analysis.references import memorization_comparison
from curvature_callback.analysis.report import cells
from curvature_callback.analysis.report.images import Drawn, Images
from curvature_callback.analysis.report.run import Run
from curvature_callback.analysis.scores import SCORE_NOTES

__all__ = ["AT_PERCENT", "SIGNAL_COLUMNS", "classes", "detection", "memorization", "questions", "summary", "tops"]

#: percentages of the samples inspected in the detection table
AT_PERCENT = (1, 5, 10)
#: columns of the tables of samples, when the run has them (curvature one among the others)
SIGNAL_COLUMNS = ("curvature", "loss", "train_loss", "input_grad", "margin", "confidence", "learning_time")


def summary(run: Run, found: Images) -> list[tuple[str, str]]:
    """The first table: the run, its settings, the train accuracies of ``metrics.json``, where the images are."""
    n, n_scored, flipped = run.n, int(run.scored.sum()), run.flipped
    meta = run.store.meta
    rows = [
        ("run directory", str(run.directory)),
        ("samples", str(n) if n_scored == n else f"{n}, of which {n_scored} scored (the rest: NaN, left out)"),
        ("classes", str(len(np.unique(run.given)))),
        ("flipped labels", f"{int(flipped.sum())} ({flipped.mean():.1%})"),
        ("scored epochs", str(run.store.epochs)),
        ("pass", str(meta.get("pass_kind", "curvature"))),
    ]
    if run.curvature is not None:
        rows.append(("h, vectors, seed", f"{meta.get('h')}, {meta.get('n_vectors')}, {meta.get('seed')}"))
    for key, label in (("train_acc", "train accuracy on the given labels"),
                       ("train_acc_original", "train accuracy on the original labels"),
                       ("flipped_memorized", "flipped samples fit (memorized)")):
        value = run.metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # a stranger's file: numbers only
            rows.append((label, f"{value:.3f}"))
    rows.append(("images", found.source or "; ".join(found.notes)))
    return rows


def questions(scores: Mapping[str, np.ndarray]) -> list[dict[str, str]]:
    """For each question: the signals its recommended score averages in this run, and the evidence for the rule."""
    used = used_signals(scores)
    return [{"asks": rule.asks, "signals": " + ".join(used[q]) or "none recorded", "evidence": rule.evidence,
             "rule": " + ".join(rule.signals)} for q, rule in RULES.items()]


def detection(run: Run, out: Path) -> dict[str, Any] | None:
    """Mislabel detection over the scored samples by the recommended score (which labels are wrong?) and every signal
    that has a value for each of them; None without noise. Writes ``detection.png``."""
    recommended = run.recommended
    signals = {**({"recommended": recommended["mislabeled"]} if "mislabeled" in recommended else {}), **run.scores}
    scored = run.scored
    # one table over one set of samples: a signal without a value for some scored sample (a training-time signal
    # of a run stopped within its first epoch) is left out of it
    signals = {k: v for k, v in signals.items() if np.isfinite(v[scored]).all()}
    return _detection_table({k: v[scored] for k, v in signals.items()}, run.flipped[scored], out)


def _detection_table(scores: Mapping[str, np.ndarray], flipped: np.ndarray, out: Path) -> dict[str, Any] | None:
    """Every score's detection metrics (the best per column marked) and the detection curves; None without noise.

    Writes ``detection.png``.
    """
    if not 0 < flipped.sum() < len(flipped):
        return None
    rate = 100 * flipped.mean()
    table = detection_table(scores, flipped, at_percent=(*AT_PERCENT, rate))
    keys = ["auroc", "ap"] + [f"{w}@{p:g}%" for p in AT_PERCENT for w in ("precision", "recall")]
    keys.append(f"precision@{rate:g}%")
    best = {k: max(row[k] for row in table.values()) for k in keys}
    header = ["score", "AUROC", "AP"] + [f"{w} @{p}%" for p in AT_PERCENT for w in ("precision", "recall")]
    header.append("precision @ noise rate")
    plot_detection_curves(scores, flipped, out / "detection.png")
    return {
        "header": header,
        "rows": [{"name": name, "cells": [{"text": cells.fmt(row[k]), "best": row[k] == best[k]} for k in keys]}
                 for name, row in table.items()],
        "chance_ap": f"{flipped.mean():.3f}",
        "notes": [{"name": k, "text": SCORE_NOTES.get(k, "the mean of the ranks of the signals above it recommends "
                                                         "for this question")} for k in scores],
        "figure": cells.figure(out / "detection.png", "detection curves"),
    }


def tops(
    run: Run, found: Images, names: Sequence[str] | None, top_k: int, out: Path, shown: set[int],
) -> list[dict[str, Any]]:
    """For each question, the ``top_k`` samples its recommended score ranks highest: thumbnails and a table with
    every signal of :data:`SIGNAL_COLUMNS` the run has (curvature one column among them)."""
    draw = Drawn(found, out, shown)
    used = used_signals(run.scores)
    columns = [c for c in SIGNAL_COLUMNS if c in run.scores and np.isfinite(run.scores[c]).any()]
    tops = []
    for q, score in run.recommended.items():
        top = run.order(score)[:top_k]
        tiles = [{"index": int(i), "given": cells.label(run.given[i], names),
                  "original": cells.label(run.original[i], names), "differs": bool(run.given[i] != run.original[i]),
                  "image": draw(int(i))} for i in top]
        rows = [[str(int(i)), cells.label(run.given[i], names), cells.label(run.original[i], names),
                 f"{score[i]:.3f}", *(cells.num(run.scores[c][i]) for c in columns)] for i in top]
        tops.append({"question": q, "asks": RULES[q].asks, "signals": " + ".join(used[q]), "k": len(top),
                     "tiles": tiles, "with_images": any(t["image"] is not None for t in tiles),
                     "header": ["index", "given", "original", "recommended", *columns], "rows": rows})
    return tops


def classes(run: Run, names: Sequence[str] | None, out: Path) -> dict[str, Any] | None:
    """The curvature histogram per class and over all samples (``class_histograms.png``, ``histogram.png``); None
    for a run without curvature."""
    if run.curvature is None:
        return None
    scored = run.scored
    curvature, flipped = run.curvature[scored], run.flipped[scored]
    plot_class_histograms(curvature, run.given[scored], flipped, out / "class_histograms.png", class_names=names)
    plot_histogram(curvature, flipped, out / "histogram.png")
    return {"per_class": cells.figure(out / "class_histograms.png", "curvature per class"),
            "overall": cells.figure(out / "histogram.png", "curvature histogram")}


def memorization(ref: np.ndarray, name: str, note: str, run: Run, out: Path) -> dict[str, Any]:
    """Correlations and top-k cosine similarities of the memorized question's recommended score and of curvature
    with a reference score (scored samples only); ``memorization.png`` (curvature against it) when there is
    curvature.

    ``ref`` is the reference at the scored samples; ``note`` says how its alignment was checked.
    """
    scored = run.scored
    signals = {}
    if "memorized" in run.recommended:
        signals["recommended"] = run.recommended["memorized"][scored]
    if run.curvature is not None:
        signals["curvature"] = run.curvature[scored]
    n = int(scored.sum())
    ks = sorted({k for k in (100, 500, 1000, 5000, n // 10, n) if 0 < k <= n})
    correlations, cosine = [["Pearson"], ["Spearman"]], []
    for signal, values in signals.items():
        if values.shape != ref.shape:
            raise ValueError(f"Expected a reference of shape {values.shape}, got {ref.shape}.")
        has = np.isfinite(values)
        full = memorization_comparison(values[has], ref[has])
        correlations[0].append(cells.fmt(full["pearson"]))
        correlations[1].append(cells.fmt(full["spearman"]))
        for by in ("reference", "scores"):
            m = memorization_comparison(values[has], ref[has], top_k=[k for k in ks if k <= has.sum()], by=by)
            for k in ks:
                if f"cosine@{k}" in m:
                    cosine.append((f"top {k} by {'the reference' if by == 'reference' else signal}", signal,
                                   cells.fmt(m[f"cosine@{k}"]), cells.fmt(m[f"cosine_chance@{k}"])))
    figure = None
    if run.curvature is not None:
        plot_memorization(run.curvature[scored], ref, out / "memorization.png", name=name)
        figure = cells.figure(out / "memorization.png", "curvature against memorization")
    return {"note": note, "header": ["", *signals], "correlations": correlations, "cosine": cosine, "figure": figure}
