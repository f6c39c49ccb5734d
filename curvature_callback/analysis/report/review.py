"""The page's first section, the samples to review: the flagged labels (thumbnails, then a table with a choice per
row, keep / relabel / drop, pre-filled as ``corrections.csv`` is, which the page saves as a corrections file) and
the duplicates with conflicting labels, as pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.analysis.duplicates import DuplicatePair, find_conflicting_duplicates, pixel_features
from curvature_callback.analysis.report import cells
from curvature_callback.analysis.report.images import Drawn, Images, Subset
from curvature_callback.analysis.report.run import Run
from curvature_callback.analysis.thumbnails import Thumbnails
from curvature_callback.core.corrections import COLUMNS, corrections_rows

__all__ = ["MAX_PAIRS", "REVIEW_GRID", "REVIEW_TABLE", "review"]

#: most duplicate pairs listed with thumbnails
MAX_PAIRS = 40
#: flagged samples shown as thumbnails; the next ones are table rows
REVIEW_GRID = 100
#: flagged samples listed on the page at most (the rest: label_issues.csv); keeps a page of ImageNet's flags light
REVIEW_TABLE = 1000


def review(
    run: Run, issues: Any, source: str, found: Images, names: Sequence[str] | None, dup_top_k: int | None,
    threshold: float, out: Path, shown: set[int],
) -> dict[str, Any]:
    """The samples to review: the flagged ones (grid, then table, each row with its pre-filled choice), how many
    were estimated and how, where they come from (``source``, one line or ""), and the conflicting duplicate
    pairs."""
    draw = Drawn(found, out, shown)
    section: dict[str, Any] = {"unavailable": "; ".join(found.notes), "source": source, "duplicates": _duplicates(
        run, found, names, dup_top_k, threshold, draw)}
    if isinstance(issues, str):
        section.update(found=False, note=issues)
        return section
    flagged = np.asarray(issues.flagged, dtype=np.int64)
    k = len(flagged)
    reasons = issues.reasons  # one per flagged sample, in its order; the rest are one value per sample
    listed = flagged[:REVIEW_TABLE]
    choices = corrections_rows(listed, run.given[listed], issues.suggested[listed],
                               issues.suggestion_confidence[listed])

    def entry(position: int, i: int) -> dict[str, Any]:
        s = int(issues.suggested[i])
        _, given, suggested, action, new_label = choices[position]
        return {
            "choice": {"given": given, "suggested": suggested, "action": action, "new_label": new_label},
            "index": i, "given": cells.label(run.given[i], names),
            "suggested": cells.label(s, names) if s >= 0 else "none",
            "differs": s >= 0 and s != int(run.given[i]),
            "probability": cells.num(float(issues.probability[i]), 2),
            "confidence": cells.num(float(issues.suggestion_confidence[i]), 2),
            "reason": cells.text(reasons[position]) if position < len(reasons) else "",
        }

    grid = []
    for position, i in enumerate(flagged[:REVIEW_GRID]):
        row = entry(position, int(i))
        row["image"] = draw(int(i))
        grid.append(row)
    rows = [entry(position, int(i)) for position, i in enumerate(flagged[:REVIEW_TABLE]) if position >= REVIEW_GRID]
    section.update(
        found=True, flagged=k, estimated=str(issues.estimated), method=cells.text(issues.method), grid=grid, rows=rows,
        more=max(0, k - REVIEW_TABLE),
        with_images=any(g["image"] is not None for g in grid),
        columns=",".join(COLUMNS), classes=_classes(run, issues.suggested[listed], names),
    )
    return section


def _classes(run: Run, suggested: np.ndarray, names: Sequence[str] | None) -> list[dict[str, str]]:
    """The classes a row may be relabeled to, for the page's one list of them: every named class, else every label
    up to the largest one the run or a suggestion shows."""
    labels = np.concatenate([run.given, run.original, suggested])
    count = len(names) if names is not None else (int(labels.max()) + 1 if len(labels) else 0)
    return [{"value": str(c), "label": cells.label(c, names)} for c in range(count)]


def _duplicates(
    run: Run, found: Images, names: Sequence[str] | None, dup_top_k: int | None, threshold: float, draw: Drawn,
) -> dict[str, Any]:
    """Conflicting duplicates among the samples the duplicates question's recommended score ranks highest, as pairs
    of thumbnails. Without images, only why they are unavailable."""
    question = next((q for q in ("duplicates", "mislabeled") if q in run.recommended), None)
    score = run.recommended[question] if question else run.curvature
    order = run.order(score) if score is not None else np.zeros(0, dtype=np.int64)
    k = min(len(order), dup_top_k if dup_top_k is not None else max(50, math.ceil(0.02 * run.n)))
    section: dict[str, Any] = {"k": k, "threshold": threshold, "by": question or "curvature",
                               "unavailable": "; ".join(found.notes)}
    if found.view is None:
        return section
    candidates = order[:k]
    if isinstance(found.view, Thumbnails):  # the run's kept images: the candidates that have one
        candidates = np.array([i for i in candidates if i in found.view], dtype=np.int64)
        section["kept"] = len(candidates)
    pairs = _conflicting_pairs(found.view, candidates, run.given, threshold)
    rank = np.empty(run.n, dtype=np.int64)
    rank[np.argsort(-np.where(np.isfinite(score), score, -np.inf), kind="stable")] = np.arange(1, run.n + 1)
    section.update(unavailable="", found=len(pairs), more=max(0, len(pairs) - MAX_PAIRS),
                   pairs=[_pair_row(p, run, names, rank, draw) for p in pairs[:MAX_PAIRS]])
    return section


def _conflicting_pairs(view: Any, candidates: np.ndarray, given: np.ndarray, threshold: float) -> list[DuplicatePair]:
    """Pairs among ``candidates`` (sample indices) with near-identical pixels and different given labels."""
    candidates = np.sort(candidates)  # only the candidates' pixels are read, in the store's order
    if len(candidates) < 2:
        return []
    feats = pixel_features(Subset(view, candidates))
    local = find_conflicting_duplicates(feats, given[candidates], np.arange(len(candidates)), threshold=threshold)
    return [DuplicatePair(int(candidates[p.i]), int(candidates[p.j]), p.similarity, p.label_i, p.label_j)
            for p in local]


def _pair_row(p: DuplicatePair, run: Run, names: Sequence[str] | None, rank: np.ndarray,
              draw: Drawn) -> dict[str, Any]:
    """One pair: both thumbnails, labels, similarity and ranks by the duplicates score (1: the highest)."""
    return {
        "first": draw(p.i), "second": draw(p.j), "i": p.i, "j": p.j,
        "given": f"{cells.label(run.given[p.i], names)} / {cells.label(run.given[p.j], names)}",
        "original": f"{cells.label(run.original[p.i], names)} / {cells.label(run.original[p.j], names)}",
        "similarity": f"{p.similarity:.4f}",
        "ranks": f"{rank[p.i]} / {rank[p.j]}",
    }
