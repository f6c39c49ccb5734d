"""``write_report``: a run folder read, each section's context computed, the page rendered and written."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.analysis.references import load_reference
from curvature_callback.analysis.report.images import dataset_images, resolve_images
from curvature_callback.analysis.report.issues import read_issues_file, run_issues
from curvature_callback.analysis.report.render import render
from curvature_callback.analysis.report.review import review
from curvature_callback.analysis.report.run import Run, read_run, scores_csv
from curvature_callback.analysis.report.sections import classes, detection, memorization, questions, summary, tops
from curvature_callback.analysis.thumbnails import Thumbnails, save_thumbnails
from curvature_callback.core import safe_paths

__all__ = ["write_report"]


# long for its docstring only (16 documented arguments); the body is the report's story in some 40 lines
def write_report(
    run_dir: str | os.PathLike,
    *,
    out_dir: str | os.PathLike | None = None,
    store_dir: str | os.PathLike | None = None,
    images: Any = None,
    dataset: Any = None,
    images_file: str | None = None,
    class_names: Sequence[str] | None = None,
    reference: str | os.PathLike | np.ndarray | None = None,
    reference_order: np.ndarray | None = None,
    top_k: int = 25,
    dup_top_k: int | None = None,
    dup_threshold: float = 0.95,
    images_source: str = "the caller",
    images_note: str | None = None,
    issues: Any = None,
    keep_images: bool = False,
) -> Path:
    """Write the HTML report of a ``curvature-train`` run; returns the path of ``index.html``.

    Args:
        run_dir: the run directory (``scores.csv``, ``metrics.json``, ``curvature/``). Its files are read only
            where they stay inside it once links are followed.
        out_dir: where to write; default ``RUN_DIR/report``, which must then be a folder of the run directory
            (not a link, not leading out of it). A given ``out_dir`` may be anywhere.
        store_dir: the store, if not ``RUN_DIR/curvature`` (a given one may be anywhere).
        images: ``images[i]`` is sample ``i`` (``[C, H, W]``, ``[H, W, C]`` or ``[H, W]``), in the store's order.
        dataset: the scored dataset (items ``(x, y, ...)``), instead of ``images``: what ``curvature-train`` has.
        images_file: an ``.npy`` of ``[N, ...]`` images instead.
        class_names: names indexed by label.
        reference: a reference memorization score: Feldman & Zhang's ``.npz`` (aligned and checked against
            ``scores.csv``'s ``label``; a ``source_index`` column, or ``reference_order``, gives the rows), an
            ``.npy`` vector in the store's order, or an array.
        reference_order: for each sample its row in the reference file.
        top_k: samples in each question's grid (its recommended score's highest).
        dup_top_k: samples searched for conflicting duplicates, the highest by the duplicates question's recommended
            score (default 2 % of N, at least 50).
        dup_threshold: least cosine similarity of downsampled pixels for a duplicate pair.
        images_source: where ``images`` or ``dataset`` came from, for the report.
        images_note: without images, why (default: how to get them). ``curvature-report --rebuild-data``
            (:mod:`curvature_callback.experiments.report_cli`) rebuilds this package's own datamodules.
        issues: the run's label issues (what :func:`~curvature_callback.analysis.find_label_issues` returns);
            default: the run's ``label_issues.csv`` where it is there (the page says whether the store now gives
            another answer), else found from the store and the given labels.
        keep_images: also keep the images the page shows in the run folder (``review_images.npy`` and
            ``review_indices.npy``, :mod:`~curvature_callback.analysis.thumbnails`), so that a later
            ``curvature-report RUN_DIR`` shows them with no data at hand (``curvature-train`` asks for this).

    Raises:
        FileNotFoundError: no store or no ``scores.csv`` in ``run_dir``.
        ValueError: ``scores.csv`` and the store disagree on N, a file of the run is malformed (``label_issues.csv``
            included, or another run's), a reference does not
            align, ``class_names`` misses a label, or ``top_k``, ``dup_top_k``, ``dup_threshold`` is out of range.
        safe_paths.UnsafePathError: (a ValueError) a file of ``run_dir`` is a link that leaves it, or the output
            would be written through a link.
    """
    start = time.perf_counter()
    _check_options(top_k, dup_top_k, dup_threshold)
    run_dir = Path(run_dir)
    csv_path = scores_csv(run_dir)
    # the run's label_issues.csv, read before anything is written: a damaged one is refused with nothing written
    table = read_issues_file(run_dir) if issues is None else None
    # the output folder before the store: a refusal costs nothing yet, and nothing below writes outside it
    out = safe_paths.output_dir(Path(out_dir) if out_dir is not None else run_dir / "report",
                                root=run_dir if out_dir is None else None)
    run = read_run(run_dir, csv_path, store_dir)
    try:
        ref = None if reference is None else load_reference(reference, reference_order, run.columns, run.original,
                                                            run.filenames, n=run.n)
        if dataset is not None and images is None:
            images = dataset_images(dataset)
        found = resolve_images(images, images_file, run.n, images_source, images_note, run.directory)
        names = class_names
        _check_class_names(names, run)
        source = ""  # the caller's issues (curvature-train's own): shown as given
        if issues is None:
            issues, source = run_issues(run, table)
        shown: set[int] = set()  # every sample drawn: what keep_images keeps
        context = {
            "title": run.directory.name,
            "summary": summary(run, found),
            "review": review(run, issues, source, found, names, dup_top_k, dup_threshold, out, shown),
            "questions": questions(run.scores),
            "detection": detection(run, out),
            "tops": tops(run, found, names, top_k, out, shown),
            "classes": classes(run, names, out),
            "memorization": None if ref is None else memorization(ref[0][run.scored], ref[1], ref[2], run, out),
        }
        if keep_images and found.view is not None and not isinstance(found.view, Thumbnails):
            save_thumbnails(run.directory, found.view, sorted(shown))
        context["elapsed"] = f"{time.perf_counter() - start:.1f}"
        return safe_paths.write_text(out / "index.html", render(context))
    finally:
        run.store.close()


def _check_options(top_k: Any, dup_top_k: Any, dup_threshold: Any) -> None:
    """The report's numeric options, before anything is read (``curvature-report`` checks them as it parses)."""
    from curvature_callback.core.settings import check_int

    check_int("top_k", top_k, 1, hint=" (samples in each question's grid)")
    if dup_top_k is not None:
        check_int("dup_top_k", dup_top_k, 1, hint=" or None (2 % of N)")
    if isinstance(dup_threshold, bool) or not isinstance(dup_threshold, (int, float, np.integer, np.floating)) \
            or not -1.0 <= dup_threshold <= 1.0:
        raise ValueError(f"Expected argument `dup_threshold` to be a cosine similarity in [-1, 1] (0.95: near "
                         f"copies), got {dup_threshold!r}.")


def _check_class_names(names: Sequence[str] | None, run: Run) -> None:
    """Names for every label of the run (given and original), or none."""
    if names is None:
        return
    labels = np.concatenate([run.given, run.original])
    if len(labels) and int(labels.max()) >= len(names):
        raise ValueError(
            f"Expected `class_names` (--class-names) to name every label of the run, 0 to {int(labels.max())}, got "
            f"{len(names)} name(s): {', '.join(map(repr, names[:5]))}{' ...' if len(names) > 5 else ''}. Pass one "
            "name per class in label order, or none."
        )
