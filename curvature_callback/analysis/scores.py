"""A run's per-sample scores: every channel of a store as a suspicion score, epoch averages of a history, and
the run's table (``scores.csv``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from curvature_callback.analysis.metrics import ranks
from curvature_callback.core import safe_paths
from curvature_callback.core.channels import (
    CHANNELS,
    EARLY_SEEN,
    class_evidence_channels,
    class_slots,
    early_evidence_channels,
)
from curvature_callback.core.numeric import log10_floor

__all__ = [
    "SCORE_NOTES", "class_evidence", "epoch_average", "read_metrics", "read_scores_csv", "suspicion_scores",
    "write_scores_csv",
]

#: one line on each score of :func:`suspicion_scores`
SCORE_NOTES = {name: channel.meaning for name, channel in CHANNELS.items()}


def suspicion_scores(store: Any, *, which: Literal["mean", "last"] = "mean") -> dict[str, np.ndarray]:
    """Curvature and every baseline channel of a store as ``[N]`` scores where higher is more suspicious.

    Each channel's own definition (:data:`~curvature_callback.core.channels.CHANNELS`) orients it: ``curvature``
    and ``loss`` as stored; ``margin`` and ``confidence`` negated; ``correct`` becomes the fraction of scored
    epochs misclassified; ``forgetting`` the forgetting-event count, with samples that were never correct at a
    scored epoch ranked highest. Where the store recorded the training steps (``store.step_epochs``), also
    ``train_loss`` (CSL per presentation), ``learning_time`` and ``train_forgetting`` (per minibatch). A sample
    never scored is NaN in every score (``fraction < 1`` runs: mask with
    ``np.isfinite``). Channels the store lacks (``record_outputs=False``, a custom loss) are left out. See
    ``SCORE_NOTES`` for one line on each.

    Args:
        store: a :class:`~curvature_callback.CurvatureStore` (or anything with ``mean``, ``channels``,
            ``channel_mean``, ``channel_last`` and ``sum_of``).
        which: ``"mean"`` over the scored epochs (the paper's score), or ``"last"``: the latest scored epoch only
            (forgetting has no last value and is left out).
    """
    if which not in ("mean", "last"):
        raise ValueError(f"Expected argument `which` to be 'mean' or 'last', got {which!r}.")
    out = {}
    for name in store.channels:
        channel = CHANNELS.get(name)
        score = None if channel is None else channel.suspicion(store, which)
        if score is not None:
            out[name] = score
    for name, channel in CHANNELS.items():  # the training-time scores, where the store recorded training steps
        if channel.source == "steps" and getattr(store, "step_channels", None):
            score = channel.suspicion(store, which)
            if score is not None:
                out[name] = score
    return out


def class_evidence(store: Any, *, early: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """Each sample's class evidence from its training steps: its most favoured classes and their mean softmax
    probability per presentation, the most favoured first.

    Recorded by ``CurvatureCallback(class_evidence=K)`` (``K`` slots per sample: exact when ``K >= C``, else a class
    that left the slots lost the mass it had; :mod:`curvature_callback.core.steps`). A suggested label is the first
    class other than the given one, with its mean probability as the confidence.

    Args:
        store: a :class:`~curvature_callback.CurvatureStore` (or anything with ``step_channels``, ``step_epochs``,
            ``sum_of`` and ``channel_last``).
        early: the evidence of the early window alone (``CurvatureCallback(evidence_window=W)``: the presentations of
            epochs ``0..W-1``, before the network memorizes), instead of the whole run's.

    Returns:
        ``(classes, mean_prob)``: ``int64 [N, K]`` class ids (-1: an empty slot, or a sample never presented) and
        ``float64 [N, K]`` each class's softmax mass over the sample's presentations divided by the presentations
        (0 in an empty slot, NaN for a sample never presented: with ``early``, never presented within the window),
        in descending order; None when the store holds no class evidence (``class_evidence=0``,
        ``record_training=False``, or no training epoch yet; with ``early``, also a store without a window:
        ``evidence_window=0``, or made before it existed).

    Example:
        >>> import tempfile
        >>> from curvature_callback import CurvatureStore
        >>> from curvature_callback.core.channels import STEP_CHANNELS, class_evidence_channels
        >>> settings = {"pass_kind": "forward", "h": 1e-3, "n_vectors": 0, "seed": 0, "loss": "ce", "fast": False}
        >>> s = CurvatureStore.create(tempfile.mkdtemp(), 2, settings=settings,
        ...                           step_channels=(*STEP_CHANNELS, *class_evidence_channels(2)))
        >>> steps = {c: np.zeros(1) for c in STEP_CHANNELS} | {"train_seen": np.array([4.0]),
        ...          "train_wrong_epoch": np.array([-1.0]), "train_class_0": np.array([2.0]),
        ...          "train_class_1": np.array([0.0]), "train_class_mass_0": np.array([3.0]),
        ...          "train_class_mass_1": np.array([1.0])}
        >>> s.commit_epoch(0, None, steps=steps, step_indices=np.array([1]))
        True
        >>> classes, mean_prob = class_evidence(s)
        >>> classes.tolist(), mean_prob[1].tolist()   # sample 0 never presented
        ([[-1, -1], [2, 0]], [0.75, 0.25])
    """
    steps = list(getattr(store, "step_channels", []))
    k = class_slots(steps)
    if not k or not store.step_epochs or (early and EARLY_SEEN not in steps):
        return None
    names = early_evidence_channels(k)[1:] if early else class_evidence_channels(k)
    classes = np.stack([np.asarray(store.channel_last(c), dtype=np.float64) for c in names[:k]], 1)
    mass = np.stack([np.asarray(store.channel_last(c), dtype=np.float64) for c in names[k:]], 1)
    seen = np.asarray(store.sum_of(EARLY_SEEN if early else "train_seen"), dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.where(seen > 0, mass / seen, np.nan)
    return np.where(np.isnan(classes), -1, classes).astype(np.int64), mean_prob


def epoch_average(
    history: np.ndarray,
    rows: slice | Sequence[int] | np.ndarray | None = None,
    transform: Literal["identity", "sqrt", "log", "rank"] = "identity",
) -> np.ndarray:
    """Average per-epoch scores over chosen epochs, after a per-epoch transform.

    The store's running mean is ``epoch_average(history)``. Transforms change how epochs are weighed against
    each other, not the order within one epoch:

    - ``"identity"``: the plain mean; epochs with large scores (early training, for curvature) dominate.
    - ``"sqrt"``: mean of square roots. The estimator returns the mean over vectors of the *squared* norm
      ``||grad(x + h v) - grad(x)||^2``; its square root is the RMS norm, the closest an unsquared variant gets
      without another run.
    - ``"log"``: mean of ``log10`` (a geometric mean); zeros are put at the smallest positive float32.
    - ``"rank"``: mean of the within-epoch rank in ``(0, 1]``: every epoch weighs the same.

    Args:
        history: ``[epochs, N]`` per-epoch scores (``store.channel_history(name)``); NaN where not scored.
        rows: which epochs (rows of ``history``) to average; default all.
        transform: see above.

    Returns:
        ``float64 [N]``, NaN where no chosen epoch scored the sample.

    Example:
        >>> h = np.array([[100.0, 1.0], [1.0, 4.0]])  # epoch 0 says sample 0, epoch 1 says sample 1
        >>> epoch_average(h).tolist(), epoch_average(h, transform="rank").tolist()
        ([50.5, 2.5], [0.75, 0.75])
        >>> epoch_average(h, rows=[1]).tolist()
        [1.0, 4.0]
    """
    h = np.asarray(history, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"Expected `history` as [epochs, N], got shape {h.shape}: pass store.channel_history(name).")
    if rows is not None:
        h = h[rows] if isinstance(rows, slice) else h[np.asarray(rows, dtype=np.int64)]
    if len(h) == 0:
        raise ValueError("Expected at least one epoch to average, got none: check `rows`.")
    if transform == "sqrt":
        h = np.sqrt(np.maximum(h, 0.0))
    elif transform == "log":
        h = log10_floor(h)
    elif transform == "rank":
        out = np.full_like(h, np.nan)
        for r, line in enumerate(h):
            ok = np.isfinite(line)
            if ok.any():
                out[r, ok] = ranks(line[ok])
        h = out
    elif transform != "identity":
        raise ValueError(f"Expected `transform` 'identity', 'sqrt', 'log' or 'rank', got {transform!r}.")
    count = np.isfinite(h).sum(0)
    total = np.where(np.isfinite(h), h, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def write_scores_csv(path: str | os.PathLike, columns: Mapping[str, np.ndarray]) -> None:
    """One row per sample: ``index`` first (0..N-1, the store's order), then ``columns`` in their order.

    Floats are written with 9 significant digits (float32 round-trips; the store keeps float64), booleans as
    0/1.

    Args:
        path: the CSV file to write; never through a link (:func:`~curvature_callback.core.safe_paths.write_text`).
        columns: name to ``[N]`` array; every array of the same length.

    Raises:
        curvature_callback.core.safe_paths.UnsafePathError: ``path`` is a symbolic link (it and its target are
            left as they are).
    """
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    lengths = {name: a.shape for name, a in arrays.items()}
    n = len(next(iter(arrays.values()))) if arrays else 0
    if any(shape != (n,) for shape in lengths.values()):
        raise ValueError(f"Expected every column of shape [N], got {lengths}.")
    if "index" in arrays:
        raise ValueError("`index` is written first by write_scores_csv: do not pass it as a column.")
    formats = []
    for a in arrays.values():
        if a.dtype == bool:
            formats.append(lambda v: str(int(v)))
        elif np.issubdtype(a.dtype, np.floating):
            formats.append(lambda v: f"{v:.9g}")
        else:
            formats.append(str)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["index", *arrays])
    for i in range(n):
        writer.writerow([i, *(fmt(a[i]) for fmt, a in zip(formats, arrays.values(), strict=True))])
    safe_paths.write_text(path, table.getvalue())


#: the columns of scores.csv that hold counts, labels or positions: integers >= 0 (``flipped``: 0 or 1)
INTEGER_COLUMNS = ("index", "label", "given_label", "flipped", "source_index", "count", "pred")
_INTEGER = re.compile(r"[0-9]{1,18}")  # below 2**63: an int64


def _column(values: list[str]) -> np.ndarray:
    """``int64`` where every value is an integer that fits, ``float64`` where every value is a number, else str."""
    if all(_INTEGER.fullmatch(v) or (v[:1] == "-" and _INTEGER.fullmatch(v[1:])) for v in values):
        return np.array([int(v) for v in values], dtype=np.int64)
    try:
        return np.array([float(v) for v in values], dtype=np.float64)  # "nan" included: an unscored sample
    except ValueError:
        return np.array(values, dtype=str)


def read_scores_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The columns of a ``scores.csv`` (:func:`write_scores_csv`) as arrays: ``int64`` where every value is an
    integer, ``float64`` where every value is a number, else strings (a ``file`` column); ``index`` included.

    A run folder is data from a stranger: the file must be the table :func:`write_scores_csv` writes, checked
    before anything reads it: UTF-8 CSV, one header of distinct names with ``index`` first, every row as long as
    the header, ``index`` counting 0, 1, ..., N-1, and the :data:`INTEGER_COLUMNS` integers >= 0 (``flipped``
    0 or 1).

    Raises:
        ValueError: naming the file, the line or column, what was expected and what was found.
    """
    where = os.fspath(path)
    fix = "remove or fix the file (curvature-train writes it)"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{where} is empty: expected a header row (index, label, ...); {fix}.")
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise ValueError(f"Expected {where} to be UTF-8 CSV text, got bytes that are not ({e}): {fix}.") from e
    except csv.Error as e:
        raise ValueError(f"Expected {where} to be CSV, got text the csv module refuses ({e}): {fix}.") from e
    if header[:1] != ["index"] or len(set(header)) != len(header):
        raise ValueError(f"Expected {where} to start with a header of distinct column names, `index` first, got "
                         f"{header[:8]!r}{' ...' if len(header) > 8 else ''}: {fix}.")
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(f"Expected {len(header)} fields on every line of {where} (one per header column), got "
                             f"{len(row)} on line {line}: {fix}.")
    out = {name: _column([r[j] for r in rows]) for j, name in enumerate(header)}
    for j, name in enumerate(header):
        if name not in INTEGER_COLUMNS:
            continue
        high = 1 if name == "flipped" else 10**18 - 1
        values = out[name]
        if values.dtype == np.int64 and ((values >= 0) & (values <= high)).all():
            continue
        first = next(i for i, r in enumerate(rows) if not (_INTEGER.fullmatch(r[j]) and int(r[j]) <= high))
        span = "0 or 1" if name == "flipped" else "integers >= 0 (at most 18 digits)"
        raise ValueError(f"Expected column `{name}` of {where} to hold {span}, got {rows[first][j]!r} on line "
                         f"{first + 2}: {fix}.")
    if not np.array_equal(out["index"], np.arange(len(rows))):
        first = int(np.flatnonzero(out["index"] != np.arange(len(rows)))[0])
        raise ValueError(f"Expected column `index` of {where} to count 0, 1, 2, ... (the store's order), got "
                         f"{rows[first][0]!r} on line {first + 2}: {fix}.")
    return out


#: deepest nesting of JSON arrays and objects read from a run folder: curvature-train's metrics nest two deep
MAX_JSON_DEPTH = 32


def _depth(text: str) -> int:
    """How deep the arrays and objects of JSON ``text`` nest, counted without parsing (strings skipped)."""
    depth = deepest = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        c = token.group()
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """A run's ``metrics.json`` as a mapping.

    Raises:
        ValueError: the file is not UTF-8 JSON, nests deeper than :data:`MAX_JSON_DEPTH`, or is not a JSON
            object (a run folder is data from a stranger).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"Expected {path} to hold curvature-train's JSON metrics, got bytes that are not UTF-8 text "
                         f"({e}): remove or fix the file.") from e
    if _depth(text) > MAX_JSON_DEPTH:
        raise ValueError(f"Expected {path} to hold curvature-train's JSON metrics (values nested at most "
                         f"{MAX_JSON_DEPTH} deep), got arrays or objects nested {_depth(text)} deep: remove or fix the "
                         "file.")
    try:
        metrics = json.loads(text)
    except ValueError as e:  # json.JSONDecodeError, or a number too long to convert
        raise ValueError(f"Expected {path} to hold curvature-train's JSON metrics, got unreadable text ({e}): "
                         "remove or fix the file.") from e
    if not isinstance(metrics, dict):
        raise ValueError(f"Expected {path} to hold a JSON object, got a {type(metrics).__name__}: remove or fix it.")
    return metrics
