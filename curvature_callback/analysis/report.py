"""``curvature-report RUN_DIR``: one static HTML page that says what a run's scores mean.

It reads a run directory as ``curvature-train`` writes it (the store in ``curvature/``, ``scores.csv``,
``metrics.json``, ``.hydra/config.yaml``) and writes ``RUN_DIR/report/index.html``: self-contained (every figure
is embedded as a PNG data URI, no script, no network), with the same PNGs beside it for reuse. Sections:

- mislabel detection by curvature beside every baseline of the same scoring pass (when labels were flipped);
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
import html
import json
import math
import os
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback import safe_paths
from curvature_callback.analysis import (
    SCORE_NOTES,
    detection_table,
    load_feldman_zhang,
    memorization_comparison,
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
    class_names: Sequence[str] | None = None
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


def _dataset_labels(dataset: Any) -> np.ndarray | None:
    tensors = getattr(dataset, "tensors", None)
    if tensors and len(tensors) > 1:
        return np.asarray(tensors[1])
    targets = getattr(dataset, "targets", None)
    return None if targets is None else np.asarray(targets)


def _resolve_images(images: Any, images_file: str | None, n: int, source: str, note: str | None) -> _Images:
    if images is not None:
        if hasattr(images, "__len__") and len(images) != n:
            raise ValueError(f"Expected `images` of {n} samples (the store's N), got {len(images)}.")
        return _Images(images, source)
    if images_file is not None:
        try:
            array = np.load(images_file, mmap_mode="r", allow_pickle=False)  # never unpickle: it runs code
        except ValueError as e:  # an object array (pickled), or not an .npy at all
            raise ValueError(f"Expected {images_file} to be an .npy of numeric [N, ...] images, loadable without "
                             f"pickle, got one that is not ({e}): save a numeric array with np.save.") from e
        if not isinstance(array, np.ndarray) or array.ndim < 3:
            what = f"shape {array.shape}" if isinstance(array, np.ndarray) else f"a {type(array).__name__}"
            raise ValueError(f"Expected {images_file} to be an .npy of [N, H, W] or [N, ...] images, got {what}: "
                             "save the images with np.save.")
        if len(array) != n:
            raise ValueError(f"Expected {images_file} to hold {n} images (the store's N), got shape {array.shape}.")
        return _Images(array, images_file)
    return _Images(notes=[note or f"images unavailable: the report builds nothing from a run folder; {_HOW}"])


# ------------------------------------------------------------------------------------------ html pieces
def _png(fig_path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(fig_path.read_bytes()).decode()


def _img(fig_path: Path, alt: str, width: int | None = None, cls: str = "") -> str:
    size = f' width="{width}"' if width else ""
    klass = f' class="{cls}"' if cls else ""
    return f'<img src="{_png(fig_path)}" alt="{html.escape(alt)}"{size}{klass}>'


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return html.escape(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "", row_cls: Sequence[str] = ()) -> str:
    """An HTML table; cells are HTML already; ``row_cls[r]`` is row ``r``'s class."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    classes = list(row_cls) + [""] * (len(rows) - len(row_cls))
    body = "".join(
        (f'<tr class="{c}">' if c else "<tr>") + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
        for c, row in zip(classes, rows)
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
tr.curvature td { background: #fff3f0; }
img.thumb { image-rendering: pixelated; border: 1px solid #999; }
.note { color: #555; font-size: 0.9em; } .figure img { max-width: 100%; }
"""


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
        ValueError: ``scores.csv`` and the store disagree on N, or a reference does not align.
        safe_paths.UnsafePathError: (a ValueError) a file of ``run_dir`` is a link that leaves it, or the output
            would be written through a link.
    """
    from curvature_callback.core.store import CurvatureStore

    start = time.perf_counter()
    run_dir = Path(run_dir)
    csv_path = run_dir / "scores.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"No scores.csv in {run_dir}: pass the directory a curvature-train run wrote (it holds scores.csv, "
            "metrics.json and curvature/)."
        )
    csv_path = safe_paths.inside(csv_path, run_dir)
    # the output folder first: a refusal costs nothing yet, and nothing below writes outside it
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out = safe_paths.output_dir(out, root=run_dir if out_dir is None else None)
    if store_dir is None:
        store_dir = run_dir / "curvature"
        if store_dir.exists() or store_dir.is_symlink():
            safe_paths.check_tree(store_dir, run_dir)  # the store's files (and filenames.txt) stay in the run
    store = CurvatureStore.open(store_dir)
    columns = read_scores_csv(csv_path)
    n = store.n
    if len(columns["index"]) != n:
        raise ValueError(f"scores.csv has {len(columns['index'])} rows, the store {n} samples: not the same run.")
    metrics_path = run_dir / "metrics.json"
    metrics = _read_metrics(safe_paths.inside(metrics_path, run_dir)) if metrics_path.is_file() else {}
    given = columns.get("given_label", columns.get("label"))
    original = columns.get("label", given)
    if given is None:
        raise ValueError(f"scores.csv lacks a label column (has {sorted(columns)}): expected label, given_label.")
    flipped = columns["flipped"].astype(bool) if "flipped" in columns else given != original
    scores = suspicion_scores(store)
    curvature = scores["curvature"]
    scored = np.isfinite(curvature)  # a run with fraction < 1 may end before every sample had its turn
    if not scored.any():
        raise ValueError(f"No sample of the store at {store.directory} was scored: nothing to report.")
    filenames = _run_filenames(columns, store.directory)
    ref = None if reference is None else _load_reference(reference, reference_order, columns, original, filenames)
    if ref is not None and ref[0].shape != curvature.shape:
        raise ValueError(f"Expected a reference of {n} samples (the store's N), got shape {ref[0].shape}.")
    ranking = np.where(scored, curvature, -np.inf)
    if dataset is not None and images is None:
        images = _dataset_images(dataset)
    found = _resolve_images(images, images_file, n, images_source, images_note)
    names = class_names or found.class_names
    order = np.argsort(-ranking, kind="stable")[: int(scored.sum())]  # scored samples, most curved first
    parts: list[str] = []

    # summary
    meta = store.meta
    summary = [
        ("run directory", html.escape(str(run_dir.resolve()))),
        ("samples", n if scored.all() else f"{n}, of which {int(scored.sum())} scored (the rest: NaN, left out)"),
        ("classes", len(np.unique(given))),
        ("flipped labels", f"{int(flipped.sum())} ({flipped.mean():.1%})"),
        ("scored epochs", html.escape(str(store.epochs))),
        ("h, vectors, seed", f"{meta.get('h')}, {meta.get('n_vectors')}, {meta.get('seed')}"),
    ]
    for key, label in (("train_acc", "train accuracy on the given labels"),
                       ("train_acc_original", "train accuracy on the original labels"),
                       ("flipped_memorized", "flipped samples fit (memorized)")):
        if metrics.get(key) is not None:
            summary.append((label, f"{metrics[key]:.3f}"))
    summary.append(("images", html.escape(found.source or "; ".join(found.notes))))
    parts.append(_table(["", ""], [(html.escape(k), v) for k, v in summary], "summary"))

    parts.append("<h2>Mislabel detection: curvature beside the baselines</h2>")
    parts.append(_detection_html({k: v[scored] for k, v in scores.items()}, flipped[scored], out))

    # curvature per class
    parts.append("<h2>Curvature per class</h2>")
    plot_class_histograms(curvature[scored], given[scored], flipped[scored], out / "class_histograms.png",
                          class_names=names)
    plot_histogram(curvature[scored], flipped[scored], out / "histogram.png")
    parts.append(f'<div class="figure">{_img(out / "class_histograms.png", "curvature per class")}</div>')
    parts.append(f'<div class="figure">{_img(out / "histogram.png", "curvature histogram")}</div>')

    # most-curved samples
    parts.append(f"<h2>The {min(top_k, len(order))} most-curved samples</h2>")
    if found.view is not None:
        plot_top_k(found.view, given, original, ranking, out / "top_k.png", k=min(top_k, len(order)),
                   class_names=names)
        parts.append(f'<div class="figure">{_img(out / "top_k.png", "most-curved samples")}</div>')
        parts.append('<p class="note">Title: index: given / original label; red where they differ.</p>')
    else:
        parts.append(f'<p class="note">{html.escape("; ".join(found.notes))}</p>')
    rows = [(int(i), _label(given[i], names), _label(original[i], names), f"{curvature[i]:.4g}")
            for i in order[:top_k]]
    parts.append(_table(["index", "given", "original", "curvature"], rows, "topk"))

    # duplicates
    k_dup = min(len(order), dup_top_k if dup_top_k is not None else max(50, math.ceil(0.02 * n)))
    parts.append(f"<h2>Duplicates with conflicting labels among the {k_dup} most-curved samples</h2>")
    if found.view is not None:
        candidates = np.sort(order[:k_dup])  # pairs within the candidates: only their pixels are read
        feats = pixel_features(_Subset(found.view, candidates))
        local = find_conflicting_duplicates(feats, given[candidates], np.arange(k_dup), threshold=dup_threshold)
        pairs = [DuplicatePair(int(candidates[p.i]), int(candidates[p.j]), p.similarity, p.label_i, p.label_j)
                 for p in local]
        parts.append(_duplicates_html(pairs, found.view, given, original, curvature, names, out))
        parts.append(
            f'<p class="note">Pairs whose 8x8 average-pooled pixels, centred and scaled per image, have cosine '
            f"similarity of at least {dup_threshold}, and whose given labels differ. Both members are among the "
            f"{k_dup} most-curved samples. {len(pairs)} pair(s) found.</p>"
        )
    else:
        parts.append(f'<p class="note">{html.escape("; ".join(found.notes))}</p>')

    # memorization
    if ref is not None:
        parts.append("<h2>Curvature against a reference memorization score</h2>")
        parts.append(_memorization_html(ref[0][scored], ref[1], ref[2], curvature[scored], out))

    elapsed = time.perf_counter() - start
    page = (
        f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Curvature report: "
        f"{html.escape(run_dir.resolve().name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Curvature report: {html.escape(run_dir.resolve().name)}</h1>"
        + "".join(parts)
        + f'<p class="note">Written by curvature-report in {elapsed:.1f} s. Scores: Garg, Ravikumar &amp; Roy, '
        "ICML 2024 (input-loss curvature, mean over the scored epochs).</p></body></html>\n"
    )
    index = safe_paths.write_text(out / "index.html", page)
    store.close()
    return index


def _read_metrics(path: Path) -> dict[str, Any]:
    """``metrics.json`` as a mapping; only its numbers are shown."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"Expected {path} to hold JSON (curvature-train's metrics), got unreadable text ({e}): "
                         "remove or fix the file.") from e
    if not isinstance(metrics, dict):
        raise ValueError(f"Expected {path} to hold a JSON object, got a {type(metrics).__name__}: remove or fix it.")
    return metrics


def _run_filenames(columns: Mapping[str, np.ndarray], store_dir: Path) -> list[str] | None:
    """The samples' file names: scores.csv's ``file`` column, else ``filenames.txt`` beside the store."""
    if "file" in columns:
        return [str(f) for f in columns["file"]]
    listed = store_dir / "filenames.txt"
    if listed.is_file():  # the store was checked: its links, if any, stay in the run folder
        return listed.read_text(encoding="utf-8").splitlines()
    return None


def _detection_html(scores: Mapping[str, np.ndarray], flipped: np.ndarray, out: Path) -> str:
    """The table of every score's detection metrics (best per column in bold) and the detection curves."""
    if not 0 < flipped.sum() < len(flipped):
        return (
            '<p class="note">No known label noise in this run (scores.csv flags no flipped sample): detection '
            "metrics need injected noise (e.g. <code>data.noise=0.05</code>).</p>"
        )
    rate = 100 * flipped.mean()
    table = detection_table(scores, flipped, at_percent=(*AT_PERCENT, rate))
    keys = ["auroc", "ap"] + [f"{w}@{p:g}%" for p in AT_PERCENT for w in ("precision", "recall")]
    keys.append(f"precision@{rate:g}%")
    best = {k: max(row[k] for row in table.values()) for k in keys}
    rows = [
        [html.escape(name)] + [f"<b>{_fmt(row[k])}</b>" if row[k] == best[k] else _fmt(row[k]) for k in keys]
        for name, row in table.items()
    ]
    header = ["score", "AUROC", "AP"] + [f"{w} @{p}%" for p in AT_PERCENT for w in ("precision", "recall")]
    header.append("precision @ noise rate")
    notes = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(SCORE_NOTES[k])}</li>" for k in scores)
    plot_detection_curves(scores, flipped, out / "detection.png")
    return (
        _table(header, rows, "detection", list(table))
        + '<p class="note">Every score is oriented so that higher is more suspicious; bold: the best per column. '
        "Precision and recall at p % inspect the p % highest-scoring samples. Chance: AUROC 0.5, "
        f'AP {flipped.mean():.3f}.</p><ul class="note">{notes}</ul>'
        + f'<div class="figure">{_img(out / "detection.png", "detection curves")}</div>'
    )


def _label(c: Any, names: Sequence[str] | None) -> str:
    return html.escape(f"{c} ({names[int(c)]})" if names is not None else str(c))


def _duplicates_html(
    pairs: list[DuplicatePair], view: Any, given: np.ndarray, original: np.ndarray, curvature: np.ndarray,
    names: Sequence[str] | None, out: Path,
) -> str:
    if not pairs:
        return '<p class="note">None found.</p>'
    rank = np.empty(len(curvature), dtype=np.int64)
    rank[np.argsort(-np.nan_to_num(curvature, nan=-np.inf), kind="stable")] = np.arange(1, len(curvature) + 1)
    thumbs = safe_paths.subdir(out, "thumbnails")
    rows = []
    written: set[int] = set()  # a sample in two pairs is drawn once; a file already there (maybe a link) never read
    for p in pairs[:MAX_PAIRS]:
        cells = []
        for i in (p.i, p.j):
            path = thumbs / f"{i}.png"
            if i not in written:
                save_thumbnail(view[i], path)
                written.add(i)
            cells.append(_img(path, f"sample {i}", width=72, cls="thumb"))
        rows.append([
            cells[0], cells[1], f"#{p.i}, #{p.j}", f"{_label(given[p.i], names)} / {_label(given[p.j], names)}",
            f"{_label(original[p.i], names)} / {_label(original[p.j], names)}", f"{p.similarity:.4f}",
            f"{rank[p.i]} / {rank[p.j]}",
        ])
    more = f'<p class="note">{len(pairs) - MAX_PAIRS} more not shown.</p>' if len(pairs) > MAX_PAIRS else ""
    header = ["first", "second", "indices", "given labels", "original labels", "similarity", "curvature ranks"]
    return _table(header, rows, "duplicates") + more


def _load_reference(
    reference: Any, order: np.ndarray | None, columns: Mapping[str, np.ndarray], original: np.ndarray,
    filenames: Sequence[str] | None,
) -> tuple[np.ndarray, str, str]:
    """The reference in the store's order, its name, and how its alignment was checked."""
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
            return ref, path.name, f"{html.escape(path.name)}: {how} checked against scores.csv, sample by sample."
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.ndarray):  # an .npz under another name
            loaded.close()
            raise ValueError(f"Expected {path} to be an .npy vector (or a Feldman & Zhang .npz named *.npz), got an "
                             "archive of arrays: rename it to .npz, or save the vector with np.save.")
        ref = loaded.astype(np.float64)
        if order is not None:
            ref = ref[order]
        note = f"{html.escape(path.name)}: a plain vector; its alignment with the store cannot be checked."
        return ref, path.name, note
    return np.asarray(reference, dtype=np.float64), "reference", "an array; its alignment cannot be checked."


def _memorization_html(ref: np.ndarray, name: str, note: str, curvature: np.ndarray, out: Path) -> str:
    if ref.shape != curvature.shape:
        raise ValueError(f"Expected a reference of shape {curvature.shape}, got {ref.shape}.")
    n = len(curvature)
    ks = sorted({k for k in (100, 500, 1000, 5000, n // 10, n) if 0 < k <= n})
    rows = []
    for by in ("reference", "scores"):
        m = memorization_comparison(curvature, ref, top_k=ks, by=by)
        for k in ks:
            rows.append([f"top {k} by {by}", _fmt(m[f"cosine@{k}"]), _fmt(m[f"cosine_chance@{k}"])])
    plot_memorization(curvature, ref, out / "memorization.png", name=name)
    return (
        f'<p class="note">Reference: {note}</p>'
        + _table(["", "value"], [("Pearson", _fmt(m["pearson"])), ("Spearman", _fmt(m["spearman"]))], "mem")
        + _table(["cosine similarity over", "cosine", "chance (scores shuffled)"], rows, "cosine")
        + '<p class="note">Cosine similarity of non-negative scores is inflated: unrelated non-negative vectors '
        "already score high. Read it against the chance column.</p>"
        + f'<div class="figure">{_img(out / "memorization.png", "curvature against memorization")}</div>'
    )
