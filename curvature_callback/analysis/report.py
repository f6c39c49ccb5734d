"""``curvature-report RUN_DIR``: one static HTML page that says what a run's scores mean.

It reads a run directory as ``curvature-train`` writes it (the store in ``curvature/``, ``scores.csv``,
``metrics.json``, ``.hydra/config.yaml``) and writes ``RUN_DIR/report/index.html``: self-contained (every figure
is embedded as a PNG data URI, no script, no network), with the same PNGs beside it for reuse. The page is the
Jinja2 template ``templates/report.html.j2`` (structure and CSS); this module reads the run and computes each
section's context as plain strings and numbers, which the template escapes. Sections:

- **samples to review**: the samples whose labels look wrong (:func:`~curvature_callback.analysis.find_label_issues`,
  most probable first), as thumbnails with the given and suggested label, the probability and the reason, how many
  were estimated and how; past :data:`REVIEW_GRID` the rest in a table (up to :data:`REVIEW_TABLE` rows, all of
  them in ``label_issues.csv``); then the duplicates with conflicting labels, as pairs;
- which signal answers which question (the recommended score of :mod:`~curvature_callback.analysis.recommend`, and
  why);
- mislabel detection by the recommended score, curvature and every other signal (when labels were flipped);
- for each question, the samples its recommended score ranks highest, with every signal as a column (curvature one
  of them);
- the curvature histogram per class (when the run scored curvature);
- the comparison with a reference memorization score, when one is given (``--reference``).

A run without curvature (a gradient or forward pass, ``callbacks=recommended``) has every section but the curvature
histograms: the lists follow the recommended scores, never curvature alone.

**Where the images come from.** The store holds scores, not pixels. The report takes the images from the
``images`` (or ``dataset``) argument (``curvature-train`` passes its dataset), ``images_file`` (an ``[N, ...]``
``.npy`` in the store's order, loaded without pickle), or else the run folder's own ``review_images.npy`` (the
images of the samples the report shows, which ``curvature-train`` keeps: :mod:`~curvature_callback.analysis.thumbnails`,
``keep_images``). It builds nothing itself: the console script (:mod:`curvature_callback.experiments.report_cli`)
can rebuild one of this package's own datamodules when asked with ``--rebuild-data``. Without images the report
still has every number; the sections that need pixels say why they are empty and how to get them.

**A run folder is data from a stranger.** Nothing read from it chooses what code runs. Every file read from the run
folder must stay inside it once links are followed, and nothing is written through a link: the default output folder
``RUN_DIR/report`` must not be a link nor lead out of the run folder (``--out`` chooses another place), and a link
in it where a file goes is refused (:mod:`curvature_callback.core.safe_paths`).
"""

from __future__ import annotations

import base64
import io
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
from curvature_callback.analysis.label_issues import find_label_issues
from curvature_callback.analysis.plots import (
    plot_class_histograms,
    plot_detection_curves,
    plot_histogram,
    plot_memorization,
    save_thumbnail,
)
from curvature_callback.analysis.recommend import RULES, recommended_scores, used_signals
from curvature_callback.analysis.thumbnails import Thumbnails, load_thumbnails, save_thumbnails
from curvature_callback.core import safe_paths

__all__ = ["REVIEW_GRID", "REVIEW_TABLE", "write_report"]

#: percentages of the samples inspected in the detection table
AT_PERCENT = (1, 5, 10)
#: most duplicate pairs listed with thumbnails
MAX_PAIRS = 40
#: flagged samples shown as thumbnails; the next ones are table rows
REVIEW_GRID = 100
#: flagged samples listed on the page at most (the rest: label_issues.csv); keeps a page of ImageNet's flags light
REVIEW_TABLE = 1000
#: columns of the tables of samples, when the run has them (curvature one among the others)
SIGNAL_COLUMNS = ("curvature", "loss", "train_loss", "input_grad", "margin", "confidence", "learning_time")
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


def _resolve_images(images: Any, images_file: str | None, n: int, source: str, note: str | None,
                    run_dir: Path) -> _Images:
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
    kept = load_thumbnails(run_dir, n)  # the run's own: only the samples its report shows
    if kept is not None:
        return _Images(kept, kept.source)
    return _Images(notes=[note or "images unavailable: the run folder keeps none (review_images.npy), and the report "
                                  f"builds nothing from a run folder; {_HOW}"])


def _has_image(found: _Images, i: int) -> bool:
    """Whether the report has the picture of sample ``i`` (the run's kept images hold only some)."""
    return found.view is not None and (not isinstance(found.view, Thumbnails) or i in found.view)


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

    check_int("top_k", top_k, 1, hint=" (samples in each question's grid)")
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
            default: found from the store and the given labels.
        keep_images: also keep the images the page shows in the run folder (``review_images.npy`` and
            ``review_indices.npy``, :mod:`~curvature_callback.analysis.thumbnails`), so that a later
            ``curvature-report RUN_DIR`` shows them with no data at hand (``curvature-train`` asks for this).

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
            if ref[0].shape != (run.n,):
                raise ValueError(f"Expected a reference of {run.n} samples (the store's N), got shape "
                                 f"{ref[0].shape}: pass the reference of the dataset this run scored.")
        if dataset is not None and images is None:
            images = _dataset_images(dataset)
        found = _resolve_images(images, images_file, run.n, images_source, images_note, run.directory)
        names = class_names
        _check_class_names(names, run)
        recommended = run.recommended
        signals = {**({"recommended": recommended["mislabeled"]} if "mislabeled" in recommended else {}), **run.scores}
        scored = run.scored
        # one table over one set of samples: a signal without a value for some scored sample (a training-time signal
        # of a run stopped within its first epoch) is left out of it
        signals = {k: v for k, v in signals.items() if np.isfinite(v[scored]).all()}
        if issues is None:
            issues = _find_issues(run)
        shown: set[int] = set()  # every sample drawn: what keep_images keeps
        context = {
            "title": run.directory.name,
            "summary": _summary(run, found),
            "review": _review(run, issues, found, names, dup_top_k, dup_threshold, out, shown),
            "questions": _questions(run.scores),
            "detection": _detection({k: v[scored] for k, v in signals.items()}, run.flipped[scored], out),
            "tops": _tops(run, found, names, top_k, out, shown),
            "classes": _classes(run, names, out),
            "memorization": None if ref is None else _memorization(ref[0][scored], ref[1], ref[2], run, out),
        }
        if keep_images and found.view is not None and not isinstance(found.view, Thumbnails):
            save_thumbnails(run.directory, found.view, sorted(shown))
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
        if not any(np.isfinite(v).any() for v in scores.values()):
            raise ValueError(f"No sample of the store at {store.directory} was scored: nothing to report. Run "
                             "curvature-train until at least one epoch is committed.")
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


def _find_issues(run: _Run) -> Any | str:
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


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return "; ".join(str(v) for v in value)
    return str(value)


class _Drawn:
    """Thumbnails of the samples the page shows, as data URIs, each written once to ``out/thumbnails/I.png`` (never
    read back from a file that was there: it may be a link); ``shown`` collects every sample drawn."""

    def __init__(self, found: _Images, out: Path, shown: set[int]) -> None:
        self.found, self.out, self.shown = found, out, shown
        self._uri: dict[int, dict[str, str]] = {}

    def __call__(self, i: int) -> dict[str, str] | None:
        i = int(i)
        if not _has_image(self.found, i):
            return None
        if i not in self._uri:
            buffer = io.BytesIO()
            save_thumbnail(self.found.view[i], buffer)
            data = buffer.getvalue()
            safe_paths.write_bytes(safe_paths.subdir(self.out, "thumbnails") / f"{i}.png", data)
            self._uri[i] = {"src": "data:image/png;base64," + base64.b64encode(data).decode(), "alt": f"sample {i}"}
            self.shown.add(i)
        return self._uri[i]


def _review(
    run: _Run, issues: Any, found: _Images, names: Sequence[str] | None, dup_top_k: int | None, threshold: float,
    out: Path, shown: set[int],
) -> dict[str, Any]:
    """The samples to review: the flagged ones (grid, then table), how many were estimated and how, and the
    conflicting duplicate pairs."""
    draw = _Drawn(found, out, shown)
    section: dict[str, Any] = {"unavailable": "; ".join(found.notes), "duplicates": _duplicates(
        run, found, names, dup_top_k, threshold, draw)}
    if isinstance(issues, str):
        section.update(found=False, note=issues)
        return section
    flagged = np.asarray(issues.flagged, dtype=np.int64)
    k = len(flagged)
    reasons = issues.reasons  # one per flagged sample, in its order; the rest are one value per sample

    def entry(position: int, i: int) -> dict[str, Any]:
        s = int(issues.suggested[i])
        return {
            "index": i, "given": _label(run.given[i], names),
            "suggested": _label(s, names) if s >= 0 else "none",
            "differs": s >= 0 and s != int(run.given[i]),
            "probability": _num(float(issues.probability[i]), 2),
            "confidence": _num(float(issues.suggestion_confidence[i]), 2),
            "reason": _text(reasons[position]) if position < len(reasons) else "",
        }

    grid = []
    for position, i in enumerate(flagged[:REVIEW_GRID]):
        row = entry(position, int(i))
        row["image"] = draw(int(i))
        grid.append(row)
    rows = [entry(position, int(i)) for position, i in enumerate(flagged[:REVIEW_TABLE]) if position >= REVIEW_GRID]
    section.update(
        found=True, flagged=k, estimated=str(issues.estimated), method=_text(issues.method), grid=grid, rows=rows,
        more=max(0, k - REVIEW_TABLE),
        with_images=any(g["image"] is not None for g in grid),
    )
    return section


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


def _tops(
    run: _Run, found: _Images, names: Sequence[str] | None, top_k: int, out: Path, shown: set[int],
) -> list[dict[str, Any]]:
    """For each question, the ``top_k`` samples its recommended score ranks highest: thumbnails and a table with
    every signal of :data:`SIGNAL_COLUMNS` the run has (curvature one column among them)."""
    draw = _Drawn(found, out, shown)
    used = used_signals(run.scores)
    columns = [c for c in SIGNAL_COLUMNS if c in run.scores and np.isfinite(run.scores[c]).any()]
    tops = []
    for q, score in run.recommended.items():
        top = run.order(score)[:top_k]
        tiles = [{"index": int(i), "given": _label(run.given[i], names), "original": _label(run.original[i], names),
                  "differs": bool(run.given[i] != run.original[i]), "image": draw(int(i))} for i in top]
        rows = [[str(int(i)), _label(run.given[i], names), _label(run.original[i], names), f"{score[i]:.3f}",
                 *(_num(run.scores[c][i]) for c in columns)] for i in top]
        tops.append({"question": q, "asks": RULES[q].asks, "signals": " + ".join(used[q]), "k": len(top),
                     "tiles": tiles, "with_images": any(t["image"] is not None for t in tiles),
                     "header": ["index", "given", "original", "recommended", *columns], "rows": rows})
    return tops


def _num(v: float, decimals: int | None = None) -> str:
    """A value for a table cell: ``n/a`` where there is none, else 4 significant digits (or ``decimals``)."""
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.4g}" if decimals is None else f"{v:.{decimals}f}"


def _classes(run: _Run, names: Sequence[str] | None, out: Path) -> dict[str, Any] | None:
    """The curvature histogram per class and over all samples (``class_histograms.png``, ``histogram.png``); None
    for a run without curvature."""
    if run.curvature is None:
        return None
    scored = run.scored
    curvature, flipped = run.curvature[scored], run.flipped[scored]
    plot_class_histograms(curvature, run.given[scored], flipped, out / "class_histograms.png", class_names=names)
    plot_histogram(curvature, flipped, out / "histogram.png")
    return {"per_class": _figure(out / "class_histograms.png", "curvature per class"),
            "overall": _figure(out / "histogram.png", "curvature histogram")}


def _duplicates(
    run: _Run, found: _Images, names: Sequence[str] | None, dup_top_k: int | None, threshold: float, draw: _Drawn,
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
    feats = pixel_features(_Subset(view, candidates))
    local = find_conflicting_duplicates(feats, given[candidates], np.arange(len(candidates)), threshold=threshold)
    return [DuplicatePair(int(candidates[p.i]), int(candidates[p.j]), p.similarity, p.label_i, p.label_j)
            for p in local]


def _pair_row(p: DuplicatePair, run: _Run, names: Sequence[str] | None, rank: np.ndarray,
              draw: _Drawn) -> dict[str, Any]:
    """One pair: both thumbnails, labels, similarity and ranks by the duplicates score (1: the highest)."""
    return {
        "first": draw(p.i), "second": draw(p.j), "i": p.i, "j": p.j,
        "given": f"{_label(run.given[p.i], names)} / {_label(run.given[p.j], names)}",
        "original": f"{_label(run.original[p.i], names)} / {_label(run.original[p.j], names)}",
        "similarity": f"{p.similarity:.4f}",
        "ranks": f"{rank[p.i]} / {rank[p.j]}",
    }


def _memorization(ref: np.ndarray, name: str, note: str, run: _Run, out: Path) -> dict[str, Any]:
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
        correlations[0].append(_fmt(full["pearson"]))
        correlations[1].append(_fmt(full["spearman"]))
        for by in ("reference", "scores"):
            m = memorization_comparison(values[has], ref[has], top_k=[k for k in ks if k <= has.sum()], by=by)
            for k in ks:
                if f"cosine@{k}" in m:
                    cosine.append((f"top {k} by {'the reference' if by == 'reference' else signal}", signal,
                                   _fmt(m[f"cosine@{k}"]), _fmt(m[f"cosine_chance@{k}"])))
    figure = None
    if run.curvature is not None:
        plot_memorization(run.curvature[scored], ref, out / "memorization.png", name=name)
        figure = _figure(out / "memorization.png", "curvature against memorization")
    return {"note": note, "header": ["", *signals], "correlations": correlations, "cosine": cosine, "figure": figure}
