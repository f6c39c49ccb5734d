"""``curvature-report RUN_DIR``: one static HTML page that says what a run's scores mean.

It reads a run directory as ``curvature-train`` writes it (the store in ``curvature/``, ``scores.csv``,
``metrics.json``, ``.hydra/config.yaml``) and writes ``RUN_DIR/report/index.html``: self-contained (every figure
is embedded as a PNG data URI, no script, no network), with the same PNGs beside it for reuse. Sections:

- mislabel detection by curvature beside every baseline of the same scoring pass (when labels were flipped);
- the curvature histogram per class and the grid of the most-curved samples, given and original labels;
- duplicates with conflicting labels among the most-curved samples, with thumbnails;
- the comparison with a reference memorization score, when one is given (``--reference``).

**Where the images come from.** The store holds scores, not pixels. The report takes the images from, in this
order: the ``images`` (or ``dataset``) argument (``curvature-train`` passes its dataset), ``--images FILE.npy``
(an ``[N, ...]`` array in the store's order, loaded without pickle), or, only when asked with
``--rebuild-data``, one of this package's own datamodules (:data:`REBUILDABLE`) named by the run's
``.hydra/config.yaml``, rebuilt and checked against the labels in ``scores.csv``. Without images the report
still has every number; the sections that need pixels say why they are empty and how to get them.

**A run folder is data from a stranger.** Nothing read from it chooses what code runs: the config is read as
plain YAML, never instantiated; ``--rebuild-data`` builds a datamodule only when ``data._target_`` is exactly
one of :data:`REBUILDABLE`, with plain keyword arguments (a nested ``_target_``, a list, a mapping or an
interpolation other than ``${oc.env:CURVATURE_...}`` is refused, with the reason in the report), and never
downloads. Every file read from the run folder must stay inside it once links are followed, and nothing is
written through a link: the default output folder ``RUN_DIR/report`` must not be a link nor lead out of the run
folder (``--out`` chooses another place), and a link in it where a file goes is refused
(:mod:`curvature_callback.safe_paths`).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import re
import sys
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
from curvature_callback.duplicates import DuplicatePair, find_conflicting_duplicates, pixel_features
from curvature_callback.plots import (
    plot_class_histograms,
    plot_detection_curves,
    plot_histogram,
    plot_memorization,
    plot_top_k,
    save_thumbnail,
)

__all__ = ["REBUILDABLE", "main", "write_report"]

#: percentages of the samples inspected in the detection table
AT_PERCENT = (1, 5, 10)
#: most duplicate pairs listed with thumbnails
MAX_PAIRS = 40
#: the datamodules ``--rebuild-data`` may build, by the ``_target_`` that ``conf/data/*.yaml`` gives them: this
#: package's own, and nothing else (a run folder's config is data, and must not choose the code that runs)
REBUILDABLE = (
    "curvature_callback.data.DigitsDataModule",
    "curvature_callback.image_data.CIFARDataModule",
    "curvature_callback.image_data.FashionMNISTDataModule",
    "curvature_callback.image_data.ImageFolderDataModule",
)
#: the only interpolation resolved in a rebuilt datamodule's arguments: this package's own environment variables
#: (``root: ${oc.env:CURVATURE_DATA_ROOT,data}``); any other would let the folder read the environment
_ENV = re.compile(r"^\$\{oc\.env:(CURVATURE_[A-Za-z0-9_]*)(?:,([^${}\\]*))?\}$")
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


def _datamodule_class(target: str) -> type:
    """The class of one of :data:`REBUILDABLE`, imported by this package's own name for it."""
    from curvature_callback import data, image_data

    module = data if target.startswith("curvature_callback.data.") else image_data
    return getattr(module, target.rsplit(".", 1)[1])


def _plain_argument(key: str, value: Any, config: Path) -> Any:
    """``value`` when it is a plain scalar (``${oc.env:CURVATURE_...}`` resolved); raises ValueError otherwise."""
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise ValueError(
            f"data.{key} in {config} is a {type(value).__name__}, expected a plain value (a string, number, boolean "
            f"or null): nested objects and lists are never built. Pass --images FILE.npy instead"
        )
    if isinstance(value, str) and "${" in value:
        match = _ENV.match(value)
        if match is None:
            raise ValueError(
                f"data.{key} in {config} is {value!r}, expected a plain value or ${{oc.env:CURVATURE_...}}: no other "
                "interpolation or resolver is run. Pass --images FILE.npy instead"
            )
        default = match.group(2)
        found = os.environ.get(match.group(1), None if default is None else default.strip())
        if found is None:
            raise ValueError(f"data.{key} in {config} needs ${match.group(1)}, which is not set: set it, or pass "
                             "--images FILE.npy")
        return None if found == "null" else found
    return value


def _datamodule_from_config(run_dir: Path) -> tuple[str, type, dict[str, Any], list[str]]:
    """``(target, class, keyword arguments, notes)`` of the run's datamodule, checked against :data:`REBUILDABLE`.

    Raises:
        ValueError: the config is missing, unreadable, leaves the run folder, or names anything else.
    """
    import yaml

    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        raise ValueError(f"{config} is missing, so there is no datamodule to rebuild: pass --images FILE.npy")
    text = safe_paths.inside(config, run_dir).read_text(encoding="utf-8")
    try:
        cfg = yaml.safe_load(text)  # plain YAML: no tags, no objects; interpolations stay strings
    except yaml.YAMLError as e:
        raise ValueError(f"{config} is not valid YAML ({e}): pass --images FILE.npy") from e
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if not isinstance(data, dict):
        raise ValueError(f"{config} has no `data` mapping to rebuild the datamodule from: pass --images FILE.npy")
    target = data.get("_target_")
    if target not in REBUILDABLE:
        raise ValueError(
            f"data._target_ in {config} is {target!r}, expected one of this package's datamodules "
            f"({', '.join(REBUILDABLE)}); it was not run. Pass --images FILE.npy instead"
        )
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "_target_":
            continue
        if not isinstance(key, str) or key.startswith("_"):
            raise ValueError(
                f"data.{key} in {config}: expected the datamodule's own arguments only, got a special key (Hydra's "
                "_args_, _partial_, ... are not honoured here). Pass --images FILE.npy instead"
            )
        kwargs[key] = _plain_argument(key, value, config)
    cls = _datamodule_class(target)
    notes = []
    # the report only reads what is there: no download (to a folder the config chose), no decode cache written
    # where the config says
    if kwargs.get("download"):
        kwargs["download"] = False
        notes.append("download=false (the report never downloads)")
    if kwargs.get("cache_dir") is not None:
        notes.append(f"cache_dir={kwargs['cache_dir']!r} ignored (the default cache is used)")
        kwargs["cache_dir"] = None
    return target, cls, kwargs, notes


def _images_from_config(run_dir: Path, n: int, given: np.ndarray, rebuild: bool) -> _Images:
    """With ``rebuild``, rebuild the run's datamodule (one of :data:`REBUILDABLE`) and take its scored images."""
    if not rebuild:
        return _Images(notes=[f"images unavailable: the report does not rebuild data from a run folder unless asked; "
                              f"{_HOW}"])
    config = run_dir / ".hydra" / "config.yaml"
    try:
        target, cls, kwargs, adjusted = _datamodule_from_config(run_dir)
    except ValueError as e:  # safe_paths.UnsafePathError included: a refusal only costs the pictures
        return _Images(notes=[f"images unavailable: {e}"])
    try:
        datamodule = cls(**kwargs)
        dataset = datamodule.curvature_dataset()
    except Exception as e:  # any failure to rebuild the data only costs the pictures, so say why and go on
        how = f", with {'; '.join(adjusted)}" if adjusted else ""
        return _Images(notes=[f"images unavailable: rebuilding {target} from {config}{how} failed "
                              f"({type(e).__name__}: {e}); pass --images FILE.npy"])
    if len(dataset) != n:
        return _Images(notes=[f"images unavailable: the rebuilt dataset has {len(dataset)} samples, the store {n}; "
                              "pass --images FILE.npy"])
    labels = _dataset_labels(dataset)
    if labels is not None and not np.array_equal(labels.astype(np.int64), given):
        return _Images(notes=["images unavailable: the rebuilt dataset's labels differ from scores.csv's given "
                              "labels; pass --images FILE.npy"])
    names = getattr(datamodule, "classes", None) or getattr(dataset, "classes", None)
    how = f" ({'; '.join(adjusted)})" if adjusted else ""
    return _Images(_dataset_images(dataset), f"{target} rebuilt from {config} (--rebuild-data){how}", names)


def _resolve_images(
    run_dir: Path, images: Any, images_file: str | None, n: int, given: np.ndarray, rebuild: bool
) -> _Images:
    if images is not None:
        if hasattr(images, "__len__") and len(images) != n:
            raise ValueError(f"Expected `images` of {n} samples (the store's N), got {len(images)}.")
        return _Images(images, "the caller")
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
    return _images_from_config(run_dir, n, given, rebuild)


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
    rebuild_data: bool = False,
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
        rebuild_data: without ``images``, ``dataset`` or ``images_file``, rebuild the run's datamodule from
            ``.hydra/config.yaml`` when it is one of :data:`REBUILDABLE` with plain arguments (never anything
            else; a refusal is explained in the report). False: no images, and the report says how to get them.

    Raises:
        FileNotFoundError: no store or no ``scores.csv`` in ``run_dir``.
        ValueError: ``scores.csv`` and the store disagree on N, or a reference does not align.
        safe_paths.UnsafePathError: (a ValueError) a file of ``run_dir`` is a link that leaves it, or the output
            would be written through a link.
    """
    from curvature_callback.store import CurvatureStore

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
    found = _resolve_images(run_dir, images, images_file, n, given, rebuild_data)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``curvature-report RUN_DIR [options]``."""
    parser = argparse.ArgumentParser(
        prog="curvature-report", description="Write RUN_DIR/report/index.html for a curvature-train run.",
        epilog="A run folder is treated as data from a stranger: its config is never instantiated (see "
        "--rebuild-data), files that link out of it are not read, and no output is written through a link.",
    )
    parser.add_argument("run_dir", help="the run directory (scores.csv, metrics.json, curvature/)")
    parser.add_argument("--out", help="output folder (default RUN_DIR/report, which must not be a link out of "
                        "RUN_DIR; a folder given here may be anywhere)")
    parser.add_argument("--store", help="the store folder, if not RUN_DIR/curvature")
    parser.add_argument("--images", help=".npy of [N, ...] images in the store's order, loaded without pickle "
                        "(default: none, unless --rebuild-data)")
    parser.add_argument("--rebuild-data", action="store_true",
                        help="without --images, rebuild the images from the datamodule named in "
                        "RUN_DIR/.hydra/config.yaml, only if it is one of this package's own ("
                        + ", ".join(t.rsplit(".", 1)[1] for t in REBUILDABLE)
                        + ") with plain arguments; nothing else in the config is built or run, and nothing is "
                        "downloaded. Off by default: only for a run folder you trust")
    parser.add_argument("--reference", help="reference memorization: Feldman & Zhang .npz, or an .npy vector")
    parser.add_argument("--reference-order", help=".npy of int rows: for each sample, its row in the reference")
    parser.add_argument("--class-names", help="comma-separated names indexed by label (default: the datamodule's)")
    parser.add_argument("--top-k", type=int, default=25, help="samples in the grid of the most-curved (25)")
    parser.add_argument("--dup-top-k", type=int, help="most-curved samples searched for duplicates (2 %% of N)")
    parser.add_argument("--dup-threshold", type=float, default=0.95, help="least cosine similarity (0.95)")
    args = parser.parse_args(argv)
    try:
        order = np.load(args.reference_order, allow_pickle=False) if args.reference_order else None
        index = write_report(
            args.run_dir, out_dir=args.out, store_dir=args.store, images_file=args.images, reference=args.reference,
            class_names=args.class_names.split(",") if args.class_names else None,
            reference_order=order, top_k=args.top_k, dup_top_k=args.dup_top_k, dup_threshold=args.dup_threshold,
            rebuild_data=args.rebuild_data,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"curvature-report: {e}", file=sys.stderr)
        return 2
    print(f"curvature-report: wrote {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
