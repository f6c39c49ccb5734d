"""Memorization against a reference score: correlations and top-k cosine beside its chance level, and
Feldman & Zhang's published estimates loaded with an alignment check (their labels must agree with the
dataset's in our order, else the loader refuses and says why).
"""

from __future__ import annotations

import errno
import math
import os
import stat
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from curvature_callback.analysis.metrics import correlations
from curvature_callback.core import safe_paths
from curvature_callback.core.store_format import read_npy_header

__all__ = ["align_reference", "load_feldman_zhang", "load_npy", "load_reference", "memorization_comparison"]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 0 else float("nan")


def memorization_comparison(
    scores: np.ndarray,
    reference: np.ndarray,
    *,
    top_k: Sequence[int] = (),
    by: Literal["reference", "scores"] = "reference",
) -> dict[str, float]:
    """How well ``scores`` agree with a reference memorization score (e.g. Feldman & Zhang's ``tr_mem``).

    - ``pearson``, ``spearman``: correlations over all samples
      (:func:`~curvature_callback.analysis.metrics.correlations`).
    - ``cosine@k`` for each ``k``: the cosine similarity of the two score vectors restricted to the top ``k``
      samples (the paper's comparison), where ``by`` says whose top ``k``: the reference's or the scores'.
    - ``cosine_chance@k``: what the cosine would be if the scores were shuffled among those ``k`` samples,
      ``k * mean(s) * mean(r) / (||s|| ||r||)`` (exact: the expectation over permutations). **Cosine of
      non-negative scores is inflated**: two unrelated non-negative vectors already have a large cosine (uniform
      values on [0, 1]: 0.75), so read ``cosine@k`` against ``cosine_chance@k``, not against 0.

    Args:
        scores: ``[N]`` our scores (curvature), aligned with ``reference``.
        reference: ``[N]`` the reference scores, same order.
        top_k: sizes of the top sets for the cosine.
        by: ``"reference"`` or ``"scores"``: which ranking picks the top ``k``.

    Example:
        The reference's top two (0.3 and 0.2) get scores 3 and 4: in the wrong order, yet the cosine is 0.94,
        below the 0.97 that shuffling would give on average:

        >>> s, r = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.1, 0.3, 0.2])
        >>> m = memorization_comparison(s, r, top_k=[2])
        >>> round(m["spearman"], 4), round(m["cosine@2"], 6), round(m["cosine_chance@2"], 6)
        (0.8, 0.94299, 0.970725)
    """
    s, r = np.asarray(scores, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if s.ndim != 1 or s.shape != r.shape:
        raise ValueError(f"Expected `scores` and `reference` of one shape [N], got {s.shape} and {r.shape}.")
    if not (np.isfinite(s).all() and np.isfinite(r).all()):
        raise ValueError("Expected finite `scores` and `reference`: drop or fill the NaN ones first.")
    if by not in ("reference", "scores"):
        raise ValueError(f"Expected argument `by` to be 'reference' or 'scores', got {by!r}.")
    out = {**correlations(s, r), "n": float(len(s))}
    order = np.argsort(-(r if by == "reference" else s), kind="stable")
    for k in top_k:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 < k <= len(s):
            raise ValueError(f"Expected each top_k in [1, {len(s)}], got {k!r}.")
        top = order[:k]
        a, b = s[top], r[top]
        out[f"cosine@{k}"] = _cosine(a, b)
        norms = math.sqrt(float(a @ a) * float(b @ b))
        out[f"cosine_chance@{k}"] = float(k * a.mean() * b.mean() / norms) if norms > 0 else float("nan")
    return out


def align_reference(
    reference: np.ndarray,
    reference_labels: np.ndarray,
    labels: np.ndarray,
    *,
    order: np.ndarray | None = None,
    source: str = "the reference",
    hint: str = "",
) -> np.ndarray:
    """Reference scores in our sample order, after checking that the labels agree sample by sample.

    Args:
        reference: ``[M]`` reference scores in the reference's own order.
        reference_labels: ``[M]`` the reference's labels, same order.
        labels: ``[N]`` our dataset's (original, not noisy) labels, in our order.
        order: ``[N]`` for each of our samples, its row in the reference (a subset's source indices, or a
            permutation between two orderings of one dataset); default ``arange(N)``, which needs ``M == N``.
        source: the reference's name, for messages.
        hint: appended to the refusal message (how to find the right ``order``).

    Raises:
        ValueError: lengths differ, ``order`` points outside the reference, or any label disagrees; the message
            says how many disagree and shows the first ones.
    """
    reference, reference_labels = np.asarray(reference), np.asarray(reference_labels)
    labels = np.asarray(labels)
    if reference.ndim != 1 or reference.shape != reference_labels.shape:
        raise ValueError(
            f"Expected {source} scores and labels of one shape [M], got {reference.shape} and "
            f"{reference_labels.shape}."
        )
    if order is None:
        if len(reference) != len(labels):
            raise ValueError(
                f"{source} has {len(reference)} samples, the dataset {len(labels)}: pass `order` (for each of our "
                "samples, its row in the reference; e.g. a subset's source indices)." + hint
            )
        order = np.arange(len(labels))
    order = np.asarray(order)
    if order.shape != labels.shape or not np.issubdtype(order.dtype, np.integer):
        raise ValueError(f"Expected `order` as integers of shape {labels.shape}, got {order.dtype}{order.shape}.")
    if len(order) and (order.min() < 0 or order.max() >= len(reference)):
        raise ValueError(f"`order` points outside {source} (rows 0..{len(reference) - 1}): got {order.min()}..."
                         f"{order.max()}.")
    theirs = reference_labels[order]
    wrong = np.flatnonzero(theirs != labels)
    if len(wrong):
        shown = ", ".join(f"sample {i}: {labels[i]} here, {theirs[i]} in {source}" for i in wrong[:3])
        raise ValueError(
            f"Refusing to align {source}: its labels disagree with the dataset's at {len(wrong)} of {len(labels)} "
            f"samples ({shown}). The two are in different orders (or are different data), so the scores would be "
            "compared with other samples' memorization." + hint
        )
    return reference[order].astype(np.float64)


_FZ_CIFAR_HINT = (
    " Feldman & Zhang computed their CIFAR-100 scores in TensorFlow Datasets' order, which is not torchvision's: "
    "pass `order` mapping each of our samples to its row in the file."
)
_FZ_IMAGENET_HINT = " Check that the dataset's class indices follow the sorted WordNet ids, as the file's do."


def _npz_arrays(path: str | os.PathLike, allow_pickle: bool) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No file at {os.fspath(path)}: pass the downloaded .npz (cifar100_infl_matrix.npz).")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"Cannot read {os.fspath(path)} as an .npz archive (np.savez writes a zip): is it whole?")
    try:
        with np.load(path, allow_pickle=allow_pickle) as f:
            return {k: f[k] for k in f.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(
                f"{os.fspath(path)} stores an array as pickled Python objects, which np.load refuses by default "
                "(unpickling runs code). Pass allow_pickle=True only for a file from a source you trust."
            ) from e
        raise
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"Cannot read {os.fspath(path)} as an .npz archive: {e}") from e


def load_feldman_zhang(
    path: str | os.PathLike,
    labels: np.ndarray,
    *,
    order: np.ndarray | None = None,
    filenames: Sequence[str] | None = None,
    allow_pickle: bool = False,
) -> np.ndarray:
    """Feldman & Zhang's published memorization estimates (``tr_mem``), aligned with our dataset.

    Two formats (https://pluskid.github.io/influence-memorization/):

    - CIFAR-100, ``cifar100_infl_matrix.npz``: ``tr_mem [50000]``, ``tr_labels [50000]`` in the file's order;
      pass ``order`` when ours differs (TensorFlow Datasets' order is not torchvision's).
    - ImageNet, ``imagenet_index.npz``: ``tr_filenames``, ``tr_labels``, ``tr_mem``; pass ``filenames`` (ours, in
      our order; matched by base name, e.g. ``n01440764_10026.JPEG``).

    Either way every label must agree with ``labels`` (ours, original, in our order), else it refuses.
    File names stored as bytes or unicode arrays load without pickle; an object array needs ``allow_pickle``.

    Args:
        path: the ``.npz`` file.
        labels: ``[N]`` our original labels in our order.
        order: ``[N]`` for each of our samples its row in the file (CIFAR-100 format).
        filenames: ``[N]`` our file names (ImageNet format); overrides ``order``.
        allow_pickle: let ``np.load`` unpickle object arrays (only for trusted files).

    Returns:
        ``float64 [N]`` memorization estimates in our order.

    Raises:
        ValueError: a key is missing, a file name is not in the file, or the labels disagree.
    """
    arrays = _npz_arrays(path, allow_pickle)
    name = os.path.basename(os.fspath(path))
    missing = [k for k in ("tr_mem", "tr_labels") if k not in arrays]
    if missing:
        raise ValueError(
            f"{name} lacks {missing} (it has {sorted(arrays)}): expected Feldman & Zhang's "
            "cifar100_infl_matrix.npz or imagenet_index.npz."
        )
    mem, their_labels = arrays["tr_mem"], arrays["tr_labels"]
    labels = np.asarray(labels)
    if filenames is not None:
        if "tr_filenames" not in arrays:
            raise ValueError(f"{name} has no tr_filenames to match `filenames` against: pass `order` instead.")
        theirs = [_base(f) for f in arrays["tr_filenames"].tolist()]
        row = {f: i for i, f in enumerate(theirs)}
        ours = [_base(f) for f in filenames]
        absent = [f for f in ours if f not in row]
        if absent:
            raise ValueError(
                f"Refusing to align {name}: {len(absent)} of {len(ours)} file names are not in it (e.g. "
                f"{absent[:3]}). Pass the training images' file names, in the dataset's order."
            )
        order = np.array([row[f] for f in ours], dtype=np.int64)
        hint = _FZ_IMAGENET_HINT
    else:
        hint = _FZ_CIFAR_HINT
    return align_reference(mem, their_labels, labels, order=order, source=name, hint=hint)


def _base(name: Any) -> str:
    if isinstance(name, bytes):
        name = name.decode()
    return str(name).replace("\\", "/").rsplit("/", 1)[-1]


def load_npy(path: str | os.PathLike, what: str, mmap_mode: str | None = None,
             fix: str = "save a numeric array with np.save") -> Any:
    """``np.load(path)`` without pickle, of a regular file whose data is as large as its header says.

    A file from a stranger: a named pipe or a device is refused before it is read (a FIFO with no writer would block
    forever), and a header that announces more bytes than the file holds is refused before anything is allocated
    (a few bytes claiming a terabyte array). An archive (``.npz``) is returned as ``np.load`` gives it.

    Raises:
        ValueError: a file that is missing, no regular file, not an array, cut short or smaller than its header
            says; naming it and saying what was expected (``what``) and ``fix``.
    """
    where = os.fspath(path)

    def refuse(got: str | BaseException) -> ValueError:
        if isinstance(got, BaseException):
            got = f"loadable without pickle, got one that is not ({type(got).__name__}: {got})"
        return ValueError(f"Expected {where} to be {what}, {got}: {fix}.")

    try:
        fd, opened = safe_paths.open_without_waiting(path)
    except OSError as e:  # missing, no permission
        raise refuse(e) from e
    if not stat.S_ISREG(opened.st_mode):
        os.close(fd)
        if stat.S_ISDIR(opened.st_mode):  # as np.load says it
            raise refuse(IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), where))
        raise refuse(f"a regular file, got {safe_paths.not_regular(where, opened)}")
    with os.fdopen(fd, "rb") as f:
        try:
            shape, fortran_order, dtype = read_npy_header(f)
        except ValueError:  # not an .npy (an archive, an empty file, garbage): np.load says which below
            shape = None
        if shape is not None:
            count = math.prod(shape)
            data = opened.st_size - f.tell()
            if not dtype.hasobject and count * dtype.itemsize > data:
                raise refuse(f"got a header announcing {dtype} {list(shape)} ({count * dtype.itemsize} bytes) in a "
                             f"file holding {data} bytes after it (a damaged or cut-short file; nothing was loaded)")
            if mmap_mode is not None and count and not dtype.hasobject:  # mapped from the file we checked
                return np.memmap(f, dtype=dtype, mode=mmap_mode, offset=f.tell(), shape=shape,
                                 order="F" if fortran_order else "C")
        f.seek(0)
        try:
            loaded = np.load(f, allow_pickle=False)  # never unpickle: it runs code
            if isinstance(loaded, np.lib.npyio.NpzFile):  # reads lazily from f, closed below: from the path instead
                loaded.close()
                loaded = np.load(where, allow_pickle=False)
            return loaded
        except (ValueError, EOFError, OSError) as e:  # pickled, not an .npy, empty or cut short
            raise refuse(e) from e


def load_reference(
    reference: str | os.PathLike | np.ndarray, order: np.ndarray | None, columns: Mapping[str, np.ndarray],
    original: np.ndarray, filenames: Sequence[str] | None, *, n: int,
) -> tuple[np.ndarray, str, str]:
    """A run's reference memorization score in its store's order, its name, and how its alignment was checked (plain
    text, for the report).

    Args:
        reference: Feldman & Zhang's ``.npz`` (aligned by :func:`load_feldman_zhang` and checked against the run's
            labels; by file name when it lists them), an ``.npy`` vector in the store's order, or an array.
        order: for each sample its row in the reference file; default: ``columns``' ``source_index`` (a subset run).
        columns: the run's ``scores.csv`` columns.
        original: the run's original labels, which the reference's must match.
        filenames: the run's samples' file names (ImageNet), or None.
        n: the store's N.

    Raises:
        ValueError: the file is malformed, does not align, or holds another count than ``n``.
    """
    ref = _in_store_order(reference, order, columns, original, filenames)
    if ref[0].shape != (n,):
        raise ValueError(f"Expected a reference of {n} samples (the store's N), got shape "
                         f"{ref[0].shape}: pass the reference of the dataset this run scored.")
    return ref


def _in_store_order(
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
        loaded = load_npy(path, "an .npy vector of reference scores (or a Feldman & Zhang .npz named *.npz)")
        if not isinstance(loaded, np.ndarray):  # an .npz under another name
            loaded.close()
            raise ValueError(f"Expected {path} to be an .npy vector (or a Feldman & Zhang .npz named *.npz), got an "
                             "archive of arrays: rename it to .npz, or save the vector with np.save.")
        ref = loaded.astype(np.float64)
        if order is not None:
            ref = ref[order]
        return ref, path.name, f"{path.name}: a plain vector; its alignment with the store cannot be checked."
    return np.asarray(reference, dtype=np.float64), "reference", "an array; its alignment cannot be checked."
