"""``curvature-report RUN_DIR``: the report of a run (:func:`curvature_callback.analysis.report.write_report`),
with its images from ``--images FILE.npy`` or, only when asked with ``--rebuild-data``, from one of this
package's own datamodules named by the run's ``.hydra/config.yaml``.

**A run folder is data from a stranger.** The config is read as plain YAML, never instantiated: ``--rebuild-data``
builds a datamodule only when ``data._target_`` is exactly one of :data:`REBUILDABLE`, with plain keyword
arguments (a nested ``_target_``, a list, a mapping or an interpolation other than ``${oc.env:CURVATURE_...}``
is refused, with the reason in the report), checks its labels against ``scores.csv``, and never downloads. This
lives in the experiment app because building datamodules is the app's business, not the analysis's.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.analysis.report import write_report
from curvature_callback.analysis.scores import read_scores_csv
from curvature_callback.core import safe_paths
from curvature_callback.core.numeric import dataset_labels

__all__ = ["REBUILDABLE", "main", "rebuild_images", "report_run"]

#: the datamodules ``--rebuild-data`` may build, by the ``_target_`` that ``conf/data/*.yaml`` gives them: this
#: package's own, and nothing else (a run folder's config is data, and must not choose the code that runs)
REBUILDABLE = (
    "curvature_callback.experiments.data.digits.DigitsDataModule",
    "curvature_callback.experiments.data.images.CIFARDataModule",
    "curvature_callback.experiments.data.images.FashionMNISTDataModule",
    "curvature_callback.experiments.data.images.ImageFolderDataModule",
)
#: the only interpolation resolved in a rebuilt datamodule's arguments: this package's own environment variables
#: (``root: ${oc.env:CURVATURE_DATA_ROOT,data}``); any other would let the folder read the environment
_ENV = re.compile(r"^\$\{oc\.env:(CURVATURE_[A-Za-z0-9_]*)(?:,([^${}\\]*))?\}$")


def _datamodule_class(target: str) -> type:
    """The class of one of :data:`REBUILDABLE`, imported by this package's own name for it."""
    import importlib

    module, name = target.rsplit(".", 1)  # one of REBUILDABLE: checked by the caller
    return getattr(importlib.import_module(module), name)


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
    try:
        text = safe_paths.inside(config, run_dir).read_text(encoding="utf-8")
        cfg = yaml.safe_load(text)  # plain YAML: no tags, no objects; interpolations stay strings
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{config} is not valid YAML in UTF-8 ({e}): pass --images FILE.npy") from e
    except RecursionError as e:  # PyYAML builds nested collections recursively: `[[[[...` runs out of stack
        raise ValueError(f"{config} nests collections too deep to read: pass --images FILE.npy") from e
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


def rebuild_images(run_dir: str | os.PathLike) -> tuple[Any, str, Sequence[str] | None]:
    """The scored dataset of a run, rebuilt from its ``.hydra/config.yaml`` (one of :data:`REBUILDABLE`, plain
    arguments) and checked against ``scores.csv``: ``(dataset, where it came from, class names)``.

    Raises:
        ValueError: why it was not rebuilt (the refusal or the failure); nothing of the config was run.
    """
    run_dir = Path(run_dir)
    config = run_dir / ".hydra" / "config.yaml"
    target, cls, kwargs, adjusted = _datamodule_from_config(run_dir)
    how = f" ({'; '.join(adjusted)})" if adjusted else ""
    try:
        datamodule = cls(**kwargs)
        dataset = datamodule.curvature_dataset()
    except Exception as e:  # any failure to rebuild the data only costs the pictures: say why
        raise ValueError(f"rebuilding {target} from {config}{how} failed ({type(e).__name__}: {e}); pass --images "
                         "FILE.npy") from e
    columns = read_scores_csv(safe_paths.inside(run_dir / "scores.csv", run_dir))
    given = columns.get("given_label", columns.get("label"))
    if len(dataset) != len(columns["index"]):
        raise ValueError(f"the rebuilt dataset has {len(dataset)} samples, scores.csv {len(columns['index'])}; "
                         "pass --images FILE.npy")
    labels = dataset_labels(dataset)  # the precedence the callback's label fingerprint uses
    if labels is not None and given is not None and not np.array_equal(labels.astype(np.int64), given):
        raise ValueError("the rebuilt dataset's labels differ from scores.csv's given labels; pass --images FILE.npy")
    names = getattr(datamodule, "classes", None) or getattr(dataset, "classes", None)
    return dataset, f"{target} rebuilt from {config} (--rebuild-data){how}", names


def report_run(run_dir: str | os.PathLike, *, rebuild_data: bool = False, **kwargs: Any) -> Path:
    """:func:`~curvature_callback.analysis.report.write_report`, with the images rebuilt from the run's own
    datamodule when ``rebuild_data`` and none are given (a refusal is explained in the report)."""
    if rebuild_data and not any(kwargs.get(k) is not None for k in ("images", "dataset", "images_file")):
        try:
            dataset, source, names = rebuild_images(run_dir)
        except ValueError as e:  # safe_paths.UnsafePathError included: a refusal only costs the pictures
            kwargs["images_note"] = f"images unavailable: {e}"
        else:
            kwargs.update(dataset=dataset, images_source=source)
            kwargs.setdefault("class_names", None)
            kwargs["class_names"] = kwargs["class_names"] or names
    return write_report(run_dir, **kwargs)


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a count of samples)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 (a number of samples), got {text!r}")
    return value


def _similarity(text: str) -> float:
    """An argparse type: a cosine similarity in [-1, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not -1.0 <= value <= 1.0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a cosine similarity in [-1, 1] (0.95: near copies), got {text!r}")
    return value


def _reference_order(path: str | None) -> np.ndarray | None:
    """``--reference-order``: an .npy of integer rows, loaded without pickle."""
    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:  # pickled, not an .npy, empty or cut short, missing, a folder
        raise ValueError(f"Expected --reference-order {path} to be an .npy of integer rows, loadable without pickle, "
                         f"got one that is not ({type(e).__name__}: {e}): save it with np.save.") from e


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
                        "(default: the run's own review_images.npy, else none unless --rebuild-data)")
    parser.add_argument("--rebuild-data", action="store_true",
                        help="without --images, rebuild the images from the datamodule named in "
                        "RUN_DIR/.hydra/config.yaml, only if it is one of this package's own ("
                        + ", ".join(t.rsplit(".", 1)[1] for t in REBUILDABLE)
                        + ") with plain arguments; nothing else in the config is built or run, and nothing is "
                        "downloaded. Off by default: only for a run folder you trust")
    parser.add_argument("--reference", help="reference memorization: Feldman & Zhang .npz, or an .npy vector")
    parser.add_argument("--reference-order", help=".npy of int rows: for each sample, its row in the reference")
    parser.add_argument("--class-names", help="comma-separated names indexed by label (default: the datamodule's)")
    parser.add_argument("--top-k", type=_positive_int, default=25,
                        help="samples in each question's grid, the highest by its recommended score (25)")
    parser.add_argument("--dup-top-k", type=_positive_int,
                        help="samples searched for duplicates, the highest by the duplicates question's recommended "
                        "score (2 %% of N)")
    parser.add_argument("--dup-threshold", type=_similarity, default=0.95,
                        help="least cosine similarity, in [-1, 1] (0.95)")
    args = parser.parse_args(argv)
    try:
        order = _reference_order(args.reference_order)
        index = report_run(
            args.run_dir, out_dir=args.out, store_dir=args.store, images_file=args.images, reference=args.reference,
            class_names=args.class_names.split(",") if args.class_names else None,
            reference_order=order, top_k=args.top_k, dup_top_k=args.dup_top_k, dup_threshold=args.dup_threshold,
            rebuild_data=args.rebuild_data,
        )
    except ValueError as e:  # a malformed file, a link refused, an option that does not fit the run
        print(f"curvature-report: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that is missing or cannot be read or written: the system says which and why
        print(f"curvature-report: {e}" if isinstance(e, FileNotFoundError) and not e.filename else
              f"curvature-report: cannot read or write {e.filename or 'a file'} ({e.strerror or e}): check the path "
              "and its permissions.", file=sys.stderr)
        return 2
    print(f"curvature-report: wrote {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
