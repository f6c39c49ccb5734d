"""``curvature-report RUN_DIR``: one static HTML page that says what a run's scores mean.

It reads a run directory as ``curvature-train`` writes it (the store in ``curvature/``, ``scores.csv``,
``metrics.json``, ``.hydra/config.yaml``) and writes ``RUN_DIR/report/index.html``: self-contained (every figure
is embedded as a PNG data URI, no script, no network), with the same PNGs beside it for reuse. The page is the
Jinja2 template ``templates/report.html.j2`` (structure and CSS); this module reads the run and computes each
section's context as plain strings and numbers, which the template escapes. Sections:

- which signal answers which question (the recommended score of :mod:`~curvature_callback.analysis.recommend`, and
  why);
- mislabel detection by the recommended score, curvature and every other signal (when labels were flipped);
- the curvature histogram per class and the grid of the most-curved samples, given and original labels;
- duplicates with conflicting labels among the most-curved samples, with thumbnails;
- the comparison with a reference memorization score, when one is given (``--reference``).

**Where the images come from.** The store holds scores, not pixels. The report takes the images from the
``images`` (or ``dataset``) argument (``curvature-train`` passes its dataset) or ``images_file`` (an ``[N, ...]``
``.npy`` in the store's order, loaded without pickle). It builds nothing itself: the console script
(:mod:`curvature_callback.experiments.report_cli`) can rebuild one of this package's own datamodules when asked
with ``--rebuild-data``. Without images the report still has every number; the sections that need pixels say
why they are empty and how to get them.

**A run folder is data from a stranger.** Nothing read from it chooses what code runs. Every file read from the run
folder must stay inside it once links are followed, and nothing is written through a link: the default output folder
``RUN_DIR/report`` must not be a link nor lead out of the run folder (``--out`` chooses another place), and a link
in it where a file goes is refused (:mod:`curvature_callback.core.safe_paths`).
"""

from __future__ import annotations

import base64
import math
import os
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.analysis import (
    SCORE_NOTES,
    detection_table,
    load_feldman_zhang,
    memorization_comparison,
    read_metrics,
    read_scores_csv,
    suspicion_scores,
)
from curvature_callback.analysis.duplicates import DuplicatePair, find_conflicting_duplicates, pixel_features
from curvature_callback.analysis.plots import (
    plot_class_histograms,
    plot_detection_curves,
    plot_histogram,
    plot_memorization,
    plot_top_k,
    save_thumbnail,
)
from curvature_callback.analysis.recommend import RULES, recommended_scores, used_signals
from curvature_callback.core import safe_paths

__all__ = ["write_report"]

#: percentages of the samples inspected in the detection table
AT_PERCENT = (1, 5, 10)
#: most duplicate pairs listed with thumbnails
MAX_PAIRS = 40
#: how to get the images when the report has none
_HOW = ("pass --images FILE.npy (an [N, ...] array in the store's order), or --rebuild-data to rebuild this "
        "package's datamodule named in the run's .hydra/config.yaml")


@dataclass
class _Images:
    """A view of the run's images in the store's order, and where it came from."""

    view: Any = None
    source: str = ""
    notes: list[str] = field(default_factory=list)


class _Inputs:
    """``view[i]`` is the input of sample ``i`` of a dataset of ``(x, y, ...)`` items."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i][0]


class _Subset:
    """``view[k]`` is ``images[indices[k]]``."""

    def __init__(self, images: Any, indices: np.ndarray) -> None:
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Any:
        return self.images[int(self.indices[k])]


def _dataset_images(dataset: Any) -> Any:
    tensors = getattr(dataset, "tensors", None)  # a TensorDataset: its first tensor, stacked already
    return tensors[0] if tensors else _Inputs(dataset)


def _resolve_images(images: Any, images_file: str | None, n: int, source: str, note: str | None) -> _Images:
    if images is not None:
        if hasattr(images, "__len__") and len(images) != n:
            raise ValueError(f"Expected `images` of {n} samples (the store's N), got {len(images)}.")
        return _Images(images, source)
    if images_file is not None:
        array = _load_npy(images_file, "an .npy of numeric [N, ...] images", mmap_mode="r")
        if not isinstance(array, np.ndarray) or array.ndim < 3:
            what = f"shape {array.shape}" if isinstance(array, np.ndarray) else f"a {type(array).__name__}"
            raise ValueError(f"Expected {images_file} to be an .npy of [N, H, W] or [N, ...] images, got {what}: "
                             "save the images with np.save.")
        if len(array) != n:
            raise ValueError(f"Expected {images_file} to hold {n} images (the store's N), got shape {array.shape}.")
        return _Images(array, images_file)
    return _Images(notes=[note or f"images unavailable: the report builds nothing from a run folder; {_HOW}"])


def _load_npy(path: str | os.PathLike, what: str, mmap_mode: str | None = None) -> Any:
    """``np.load(path)`` without pickle; a file that is missing, not an array or cut short is a ValueError that names
    it and says what was expected (``what``)."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)  # never unpickle: it runs code
    except (ValueError, EOFError, OSError) as e:  # pickled, not an .npy, empty or cut short, missing, a folder
        raise ValueError(f"Expected {os.fspath(path)} to be {what}, loadable without pickle, got one that is not "
                         f"({type(e).__name__}: {e}): save a numeric array with np.save.") from e


def _check_options(top_k: Any, dup_top_k: Any, dup_threshold: Any) -> None:
    """The report's numeric options, before anything is read (``curvature-report`` checks them as it parses)."""
    from curvature_callback.core.settings import check_int

    check_int("top_k", top_k, 1, hint=" (samples in the grid of the most curved)")
    if dup_top_k is not None:
        check_int("dup_top_k", dup_top_k, 1, hint=" or None (2 % of N)")
    if isinstance(dup_threshold, bool) or not isinstance(dup_threshold, (int, float, np.integer, np.floating)) \
            or not -1.0 <= dup_threshold <= 1.0:
        raise ValueError(f"Expected argument `dup_threshold` to be a cosine similarity in [-1, 1] (0.95: near "
                         f"copies), got {dup_threshold!r}.")


def _check_class_names(names: Sequence[str] | None, run: _Run) -> None:
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


# ------------------------------------------------------------------------------------------ the report
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
        top_k: samples in the grid of the most-curved.
        dup_top_k: most-curved samples searched for conflicting duplicates (default 2 % of N, at least 50).
        dup_threshold: least cosine similarity of downsampled pixels for a duplicate pair.
        images_source: where ``images`` or ``dataset`` came from, for the report.
        images_note: without images, why (default: how to get them). ``curvature-report --rebuild-data``
            (:mod:`curvature_callback.experiments.report_cli`) rebuilds this package's own datamodules.

    Raises:
        FileNotFoundError: no store or no ``scores.csv`` in ``run_dir``.
        ValueError: ``scores.csv`` and the store disagree on N, a file of the run is malformed, a reference does not
            align, ``class_names`` misses a label, or ``top_k``, ``dup_top_k``, ``dup_threshold`` is out of range.
        safe_paths.UnsafePathError: (a ValueError) a file of ``run_dir`` is a link that leaves it, or the output
            would be written through a link.
    """
    start = time.perf_counter()
    _check_options(top_k, dup_top_k, dup_threshold)
    run_dir = Path(run_dir)
    csv_path = _scores_csv(run_dir)
    # the output folder before the store: a refusal costs nothing yet, and nothing below writes outside it
    out = safe_paths.output_dir(Path(out_dir) if out_dir is not None else run_dir / "report",
                                root=run_dir if out_dir is None else None)
    run = _read_run(run_dir, csv_path, store_dir)
    try:
        ref = None
        if reference is not None:
            ref = _load_reference(reference, reference_order, run.columns, run.original, run.filenames)
            if ref[0].shape != run.curvature.shape:
                raise ValueError(f"Expected a reference of {run.n} samples (the store's N), got shape "
                                 f"{ref[0].shape}: pass the reference of the dataset this run scored.")
        if dataset is not None and images is None:
            images = _dataset_images(dataset)
        found = _resolve_images(images, images_file, run.n, images_source, images_note)
        names = class_names
        _check_class_names(names, run)
        recommended = recommended_scores(run.scores)
        signals = {**({"recommended": recommended["mislabeled"]} if "mislabeled" in recommended else {}), **run.scores}
        scored = run.scored
        # one table over one set of samples: a signal without a value for some scored sample (a training-time signal
        # of a run stopped within its first epoch) is left out of it
        signals = {k: v for k, v in signals.items() if np.isfinite(v[scored]).all()}
        context = {
            "title": run.directory.name,
            "summary": _summary(run, found),
            "questions": _questions(run.scores),
            "detection": _detection({k: v[scored] for k, v in signals.items()}, run.flipped[scored], out),
            "classes": _classes(run, names, out),
            "top_k": _most_curved(run, found, names, top_k, out),
            "duplicates": _duplicates(run, found, names, dup_top_k, dup_threshold, out),
            "memorization": None if ref is None else _memorization(ref[0][scored], ref[1], ref[2],
                                                                   run.curvature[scored], out),
        }
        context["elapsed"] = f"{time.perf_counter() - start:.1f}"
        return safe_paths.write_text(out / "index.html", _render(context))
    finally:
        run.store.close()


def _render(context: Mapping[str, Any]) -> str:
    """The page: ``templates/report.html.j2`` filled with ``context``, every value escaped as HTML.

    The context holds plain strings, numbers, lists and mappings (figures as ``{"src": data URI, "alt": text}``);
    the template holds the page's structure and CSS. Loaded through the package (not a path beside this file) so
    that it is found inside an installed wheel too.
    """
    import jinja2  # only the report needs it: the experiments extra brings it

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("curvature_callback.analysis", "templates"),
        autoescape=True,  # every template here is HTML, and every value in it comes from a run folder
        undefined=jinja2.StrictUndefined,  # a key missing from the context is a bug here, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template("report.html.j2").render(context)


# ------------------------------------------------------------------------------------------ reading the run
@dataclass
class _Run:
    """What the report reads from a run folder: the store's scores beside ``scores.csv``'s labels.

    ``order`` lists the scored samples, most curved first; a run with ``fraction < 1`` may end before every
    sample had its turn, and its unscored samples (NaN) are left out of every section.
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
    def curvature(self) -> np.ndarray:
        return self.scores["curvature"]

    @cached_property
    def scored(self) -> np.ndarray:
        return np.isfinite(self.curvature)

    @cached_property
    def order(self) -> np.ndarray:
        ranking = np.where(self.scored, self.curvature, -np.inf)
        return np.argsort(-ranking, kind="stable")[: int(self.scored.sum())]


def _scores_csv(run_dir: Path) -> Path:
    """``RUN_DIR/scores.csv``, resolved: it must exist and stay inside the run folder once links are followed."""
    csv_path = run_dir / "scores.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"No scores.csv in {run_dir}: pass the directory a curvature-train run wrote (it holds scores.csv, "
            "metrics.json and curvature/)."
        )
    return safe_paths.inside(csv_path, run_dir)


def _read_run(run_dir: Path, csv_path: Path, store_dir: str | os.PathLike | None) -> _Run:
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
        if "curvature" not in scores:  # a gradient or forward pass (pass_kind), or training-time signals only
            raise ValueError(
                f"The store at {store.directory} holds no curvature (pass_kind={store.meta.get('pass_kind')!r}, "
                f"signals: {', '.join(scores) or 'none'}): this report ranks by curvature. Read the run's scores.csv "
                "and metrics.json (the recommended score), or score curvature (pass_kind='curvature')."
            )
        if not np.isfinite(scores["curvature"]).any():
            raise ValueError(f"No sample of the store at {store.directory} was scored: nothing to report. Run "
                             "curvature-train until at least one scored epoch is committed.")
        filenames = _run_filenames(columns, store.directory)
    except BaseException:
        store.close()
        raise
    return _Run(run_dir.resolve(), store, columns, metrics, given, original, flipped, scores, filenames)


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


def _load_reference(
    reference: Any, order: np.ndarray | None, columns: Mapping[str, np.ndarray], original: np.ndarray,
    filenames: Sequence[str] | None,
) -> tuple[np.ndarray, str, str]:
    """The reference in the store's order, its name, and how its alignment was checked (plain text)."""
    if isinstance(reference, (str, os.PathLike)):
        path = Path(reference)
        if path.suffix == ".npz":
            if zipfile.is_zipfile(path):
                with np.load(path, allow_pickle=False) as f:
                    by_name = "tr_filenames" in f.files
            else:
                by_name = False  # load_feldman_zhang says what is wrong with the file
            if by_name and filenames is None:
                raise ValueError(
                    f"{path.name} lists file names (ImageNet format), but the run has none: expected a 'file' "
                    "column in scores.csv or filenames.txt beside the store."
                )
            if order is None and "source_index" in columns:
                order = columns["source_index"]  # a subset run: its samples' rows in the full dataset
            ref = load_feldman_zhang(path, original, order=order, filenames=filenames if by_name else None)
            how = "file names matched, then labels" if by_name else "labels"
            return ref, path.name, f"{path.name}: {how} checked against scores.csv, sample by sample."
        loaded = _load_npy(path, "an .npy vector of reference scores (or a Feldman & Zhang .npz named *.npz)")
        if not isinstance(loaded, np.ndarray):  # an .npz under another name
            loaded.close()
            raise ValueError(f"Expected {path} to be an .npy vector (or a Feldman & Zhang .npz named *.npz), got an "
                             "archive of arrays: rename it to .npz, or save the vector with np.save.")
        ref = loaded.astype(np.float64)
        if order is not None:
            ref = ref[order]
        return ref, path.name, f"{path.name}: a plain vector; its alignment with the store cannot be checked."
    return np.asarray(reference, dtype=np.float64), "reference", "an array; its alignment cannot be checked."


# ------------------------------------------------------------------------------------------ each section's context
def _figure(path: Path, alt: str) -> dict[str, str]:
    """A PNG the report just wrote, as an ``<img>``'s source (a data URI: the page needs no file beside it)."""
    return {"src": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode(), "alt": alt}


def _fmt(v: Any) -> str:
    """A metric for a table cell: three decimals, ``nan``, or ``n/a`` when there is none."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def _label(c: Any, names: Sequence[str] | None) -> str:
    """A label, with its class name when there are names."""
    return f"{c} ({names[int(c)]})" if names is not None else str(c)


def _summary(run: _Run, found: _Images) -> list[tuple[str, str]]:
    """The first table: the run, its settings, the train accuracies of ``metrics.json``, where the images are."""
    n, n_scored, flipped = run.n, int(run.scored.sum()), run.flipped
    meta = run.store.meta
    rows = [
        ("run directory", str(run.directory)),
        ("samples", str(n) if n_scored == n else f"{n}, of which {n_scored} scored (the rest: NaN, left out)"),
        ("classes", str(len(np.unique(run.given)))),
        ("flipped labels", f"{int(flipped.sum())} ({flipped.mean():.1%})"),
        ("scored epochs", str(run.store.epochs)),
        ("h, vectors, seed", f"{meta.get('h')}, {meta.get('n_vectors')}, {meta.get('seed')}"),
    ]
    for key, label in (("train_acc", "train accuracy on the given labels"),
                       ("train_acc_original", "train accuracy on the original labels"),
                       ("flipped_memorized", "flipped samples fit (memorized)")):
        value = run.metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # a stranger's file: numbers only
            rows.append((label, f"{value:.3f}"))
    rows.append(("images", found.source or "; ".join(found.notes)))
    return rows


def _questions(scores: Mapping[str, np.ndarray]) -> list[dict[str, str]]:
    """For each question: the signals its recommended score averages in this run, and the evidence for the rule."""
    used = used_signals(scores)
    return [{"asks": rule.asks, "signals": " + ".join(used[q]) or "none recorded", "evidence": rule.evidence,
             "rule": " + ".join(rule.signals)} for q, rule in RULES.items()]


def _detection(scores: Mapping[str, np.ndarray], flipped: np.ndarray, out: Path) -> dict[str, Any] | None:
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
        "rows": [{"name": name, "cells": [{"text": _fmt(row[k]), "best": row[k] == best[k]} for k in keys]}
                 for name, row in table.items()],
        "chance_ap": f"{flipped.mean():.3f}",
        "notes": [{"name": k, "text": SCORE_NOTES.get(k, "the mean of the ranks of the signals above it recommends "
                                                         "for this question")} for k in scores],
        "figure": _figure(out / "detection.png", "detection curves"),
    }


def _classes(run: _Run, names: Sequence[str] | None, out: Path) -> dict[str, Any]:
    """The curvature histogram per class and over all samples. Writes ``class_histograms.png``, ``histogram.png``."""
    scored = run.scored
    curvature, flipped = run.curvature[scored], run.flipped[scored]
    plot_class_histograms(curvature, run.given[scored], flipped, out / "class_histograms.png", class_names=names)
    plot_histogram(curvature, flipped, out / "histogram.png")
    return {"per_class": _figure(out / "class_histograms.png", "curvature per class"),
            "overall": _figure(out / "histogram.png", "curvature histogram")}


def _most_curved(run: _Run, found: _Images, names: Sequence[str] | None, top_k: int, out: Path) -> dict[str, Any]:
    """The table of the ``top_k`` most-curved samples, and their grid when there are images (``top_k.png``)."""
    order = run.order
    k = min(top_k, len(order))
    figure = None
    if found.view is not None:
        ranking = np.where(run.scored, run.curvature, -np.inf)
        plot_top_k(found.view, run.given, run.original, ranking, out / "top_k.png", k=k, class_names=names)
        figure = _figure(out / "top_k.png", "most-curved samples")
    rows = [(str(int(i)), _label(run.given[i], names), _label(run.original[i], names), f"{run.curvature[i]:.4g}")
            for i in order[:k]]
    return {"k": k, "figure": figure, "unavailable": "; ".join(found.notes), "rows": rows}


def _duplicates(
    run: _Run, found: _Images, names: Sequence[str] | None, dup_top_k: int | None, threshold: float, out: Path,
) -> dict[str, Any]:
    """Conflicting duplicates among the most-curved samples, with thumbnails (``thumbnails/I.png``).

    Without images, only why they are unavailable.
    """
    order = run.order
    k = min(len(order), dup_top_k if dup_top_k is not None else max(50, math.ceil(0.02 * run.n)))
    section: dict[str, Any] = {"k": k, "threshold": threshold, "unavailable": "; ".join(found.notes)}
    if found.view is None:
        return section
    pairs = _conflicting_pairs(found.view, order[:k], run.given, threshold)
    section.update(unavailable="", found=len(pairs), more=max(0, len(pairs) - MAX_PAIRS),
                   pairs=_pair_rows(pairs[:MAX_PAIRS], found.view, run, names, out))
    return section


def _conflicting_pairs(view: Any, candidates: np.ndarray, given: np.ndarray, threshold: float) -> list[DuplicatePair]:
    """Pairs among ``candidates`` (sample indices) with near-identical pixels and different given labels."""
    candidates = np.sort(candidates)  # only the candidates' pixels are read, in the store's order
    feats = pixel_features(_Subset(view, candidates))
    local = find_conflicting_duplicates(feats, given[candidates], np.arange(len(candidates)), threshold=threshold)
    return [DuplicatePair(int(candidates[p.i]), int(candidates[p.j]), p.similarity, p.label_i, p.label_j)
            for p in local]


def _pair_rows(
    pairs: Sequence[DuplicatePair], view: Any, run: _Run, names: Sequence[str] | None, out: Path,
) -> list[dict[str, Any]]:
    """One row per pair: both thumbnails, labels, similarity and curvature ranks (1: the most curved)."""
    rank = np.empty(run.n, dtype=np.int64)
    rank[np.argsort(-np.nan_to_num(run.curvature, nan=-np.inf), kind="stable")] = np.arange(1, run.n + 1)
    thumbs = safe_paths.subdir(out, "thumbnails")
    written: set[int] = set()  # a sample in two pairs is drawn once; a file already there (maybe a link) never read
    rows = []
    for p in pairs:
        for i in (p.i, p.j):
            if i not in written:
                save_thumbnail(view[i], thumbs / f"{i}.png")
                written.add(i)
        rows.append({
            "first": _figure(thumbs / f"{p.i}.png", f"sample {p.i}"),
            "second": _figure(thumbs / f"{p.j}.png", f"sample {p.j}"),
            "i": p.i, "j": p.j,
            "given": f"{_label(run.given[p.i], names)} / {_label(run.given[p.j], names)}",
            "original": f"{_label(run.original[p.i], names)} / {_label(run.original[p.j], names)}",
            "similarity": f"{p.similarity:.4f}",
            "ranks": f"{rank[p.i]} / {rank[p.j]}",
        })
    return rows


def _memorization(ref: np.ndarray, name: str, note: str, curvature: np.ndarray, out: Path) -> dict[str, Any]:
    """Correlations and top-k cosine similarities with a reference score (scored samples only); ``memorization.png``.

    ``ref`` is the reference at the scored samples; ``note`` says how its alignment was checked.
    """
    if ref.shape != curvature.shape:
        raise ValueError(f"Expected a reference of shape {curvature.shape}, got {ref.shape}.")
    n = len(curvature)
    ks = sorted({k for k in (100, 500, 1000, 5000, n // 10, n) if 0 < k <= n})
    cosine = []
    for by in ("reference", "scores"):
        m = memorization_comparison(curvature, ref, top_k=ks, by=by)
        for k in ks:
            cosine.append((f"top {k} by {by}", _fmt(m[f"cosine@{k}"]), _fmt(m[f"cosine_chance@{k}"])))
    plot_memorization(curvature, ref, out / "memorization.png", name=name)
    return {
        "note": note,
        "correlations": [("Pearson", _fmt(m["pearson"])), ("Spearman", _fmt(m["spearman"]))],
        "cosine": cosine,
        "figure": _figure(out / "memorization.png", "curvature against memorization"),
    }
