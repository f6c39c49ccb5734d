"""What the scores say: mislabel detection beside baselines, memorization against a reference, the run's table.

Every detection score here follows one convention: **higher = more suspicious**. Curvature and loss are used as
they are; margin and confidence are negated (a low margin is suspicious); :func:`suspicion_scores` builds them
all from a store. Memorization references (Feldman & Zhang's published estimates) load with an alignment check:
their labels must agree with the dataset's in our order, else the loader refuses and says why.
"""

from __future__ import annotations

import csv
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision
from torchmetrics.functional.retrieval import retrieval_precision, retrieval_recall

__all__ = [
    "align_reference",
    "detection_table",
    "epoch_average",
    "load_feldman_zhang",
    "memorization_comparison",
    "mislabel_metrics",
    "ranks",
    "read_scores_csv",
    "suspicion_scores",
    "write_scores_csv",
]

#: how each baseline channel of the store becomes a "higher = more suspicious" score
SCORE_NOTES = {
    "curvature": "epoch-mean input-loss curvature",
    "loss": "epoch-mean cross-entropy with the given label",
    "margin": "negated epoch-mean margin (given-label logit minus the largest other; AUM-style)",
    "confidence": "negated epoch-mean softmax probability of the given label",
    "correct": "fraction of scored epochs misclassified",
    "forgetting": "forgetting events (correct, then wrong at the next scored epoch); never learned ranks highest",
}


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks scaled to ``(0, 1]``: the same order as ``values``, ties kept as ties.

    torchmetrics reads scores outside ``[0, 1]`` as logits and applies a sigmoid, which in float32 rounds
    every score above ~17 to 1.0 and so merges them into one tie. Ranks carry the whole ordering, and
    AUROC and average precision depend on nothing else.

    Example:
        >>> ranks(np.array([30.0, 10.0, 20.0, 20.0])).tolist()
        [1.0, 0.25, 0.625, 0.625]
    """
    values = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # 1-based rank of the last member of each group of equal values
    return ((last - (counts - 1) / 2) / len(values))[inverse]


def _inspected(percent: float, n: int) -> int:
    """Samples inspected at ``percent`` % of ``n``: rounded, at least one."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 < percent <= 100:
        raise ValueError(f"Expected a percentage of samples inspected in (0, 100], got {percent!r}.")
    return max(1, min(n, round(percent * n / 100)))


def mislabel_metrics(
    scores: np.ndarray, flipped: np.ndarray, *, at_percent: Sequence[float] = ()
) -> dict[str, float]:
    """How well ``scores`` (higher = more suspicious) find the flipped labels.

    Args:
        scores: ``[N]`` finite scores; for a score where lower is suspicious (margin), pass its negative.
        flipped: ``[N]`` bool, True for the mislabeled samples.
        at_percent: percentages of the samples inspected, highest scores first: for each ``p`` the result has
            ``precision@p%`` (flipped among the ``k = round(p N / 100)`` inspected, at least one) and
            ``recall@p%`` (fraction of all flipped samples among them). Ties at the cut are broken arbitrarily.

    Returns:
        ``{"auroc": ..., "ap": ..., ...}``: area under the ROC curve (0.5 = chance, 1 = every flipped sample ranks
        above every clean one) and average precision (chance = the flipped fraction), via torchmetrics.

    Example:
        Flipped samples score 0.35 and 0.8, clean ones 0.1 and 0.4: 3 of the 4 (flipped, clean) pairs are
        ordered right, and the precision is 1/1 at the first flipped sample, 2/3 at the second. Inspecting
        half of the samples (0.8 and 0.4) finds one of the two flipped ones:

        >>> m = mislabel_metrics(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]),
        ...                      at_percent=[50])
        >>> {k: round(v, 6) for k, v in m.items()}
        {'auroc': 0.75, 'ap': 0.833333, 'precision@50%': 0.5, 'recall@50%': 0.5}
    """
    scores, flipped = np.asarray(scores, dtype=np.float64), np.asarray(flipped)
    if scores.ndim != 1 or scores.shape != flipped.shape:
        raise ValueError(
            f"Expected `scores` and `flipped` of one shape [N], got {scores.shape} and {flipped.shape}."
        )
    if flipped.dtype != bool:
        raise TypeError(
            f"Expected `flipped` as a bool mask, got dtype {flipped.dtype}: pass e.g. `given != original`."
        )
    if not np.isfinite(scores).all():
        raise ValueError(
            f"Expected finite scores, got {int((~np.isfinite(scores)).sum())} NaN or infinite ones (a sample "
            "never scored has a NaN mean): score every sample at least once."
        )
    if flipped.all() or not flipped.any():
        raise ValueError(
            f"AUROC needs both flipped and clean samples, got {int(flipped.sum())} flipped of {len(flipped)}."
        )
    preds = torch.as_tensor(ranks(scores))  # in (0, 1]: no sigmoid, and retrieval_* drop scores <= 0
    target = torch.as_tensor(flipped.astype(np.int64))
    out = {
        "auroc": float(binary_auroc(preds, target)),
        "ap": float(binary_average_precision(preds, target)),
    }
    for p in at_percent:
        k = _inspected(p, len(scores))
        found = retrieval_recall(preds, target.bool(), top_k=k)
        out[f"precision@{p:g}%"] = float(retrieval_precision(preds, target.bool(), top_k=k))
        out[f"recall@{p:g}%"] = float(found)
    return out


# ------------------------------------------------------------------------------------------ scores from a store
def _forgetting_score(events: np.ndarray, ever_correct: np.ndarray) -> np.ndarray:
    """Forgetting-event counts, with samples never classified correctly ranked above all (Toneva et al.)."""
    events = np.asarray(events, dtype=np.float64).copy()
    events[~ever_correct] = (events.max() if len(events) else 0.0) + 1.0
    return events


def suspicion_scores(store: Any, *, which: Literal["mean", "last"] = "mean") -> dict[str, np.ndarray]:
    """Curvature and every baseline channel of a store as ``[N]`` scores where higher is more suspicious.

    ``curvature`` and ``loss`` as stored; ``margin`` and ``confidence`` negated; ``correct`` becomes the fraction
    of scored epochs misclassified; ``forgetting`` the forgetting-event count, with samples that were never
    correct at a scored epoch ranked highest (Toneva et al. count them as forgotten infinitely often). A sample
    never scored is NaN in every score (``fraction < 1`` runs: mask with ``np.isfinite``). Channels the
    store lacks (``record_outputs=False``, a custom loss) are left out. See ``SCORE_NOTES`` for one line on each.

    Args:
        store: a :class:`~curvature_callback.CurvatureStore` (or anything with ``mean``, ``channels``,
            ``channel_mean``, ``channel_last`` and ``sum_of``).
        which: ``"mean"`` over the scored epochs (the paper's score), or ``"last"``: the latest scored epoch only
            (forgetting has no last value and is left out).
    """
    if which not in ("mean", "last"):
        raise ValueError(f"Expected argument `which` to be 'mean' or 'last', got {which!r}.")
    value = store.channel_mean if which == "mean" else store.channel_last
    out = {"curvature": np.array(store.mean if which == "mean" else store.channel_last(), dtype=np.float64)}
    channels = set(store.channels)
    if "loss" in channels:
        out["loss"] = np.array(value("loss"), dtype=np.float64)
    for name in ("margin", "confidence"):
        if name in channels:
            out[name] = -np.array(value(name), dtype=np.float64)
    if "correct" in channels:
        out["correct"] = 1.0 - np.array(value("correct"), dtype=np.float64)
    if "forgetting" in channels and "correct" in channels and which == "mean":
        ever = np.asarray(store.sum_of("correct")) > 0
        forgetting = _forgetting_score(np.asarray(store.sum_of("forgetting")), ever)
        out["forgetting"] = np.where(np.asarray(store.count) > 0, forgetting, np.nan)  # NaN like the other means
    return out


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
        h = np.log10(np.maximum(h, np.finfo(np.float32).tiny))
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


def detection_table(
    scores: Mapping[str, np.ndarray], flipped: np.ndarray, *, at_percent: Sequence[float] = (1, 5, 10)
) -> dict[str, dict[str, float]]:
    """:func:`mislabel_metrics` of each score, in the mapping's order: ``{name: {"auroc": ..., ...}}``."""
    return {name: mislabel_metrics(s, flipped, at_percent=at_percent) for name, s in scores.items()}


# ------------------------------------------------------------------------------------------ memorization
def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 0 else float("nan")


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

    - ``pearson``: linear correlation over all samples; ``spearman``: Pearson of the average ranks.
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
        >>> round(m["spearman"], 6), round(m["cosine@2"], 6), round(m["cosine_chance@2"], 6)
        (0.8, 0.94299, 0.970725)
    """
    s, r = np.asarray(scores, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if s.ndim != 1 or s.shape != r.shape:
        raise ValueError(f"Expected `scores` and `reference` of one shape [N], got {s.shape} and {r.shape}.")
    if not (np.isfinite(s).all() and np.isfinite(r).all()):
        raise ValueError("Expected finite `scores` and `reference`: drop or fill the NaN ones first.")
    if by not in ("reference", "scores"):
        raise ValueError(f"Expected argument `by` to be 'reference' or 'scores', got {by!r}.")
    out = {"pearson": _pearson(s, r), "spearman": _pearson(ranks(s), ranks(r)), "n": float(len(s))}
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


# ------------------------------------------------------------------------------------------ the run's table
def write_scores_csv(path: str | os.PathLike, columns: Mapping[str, np.ndarray]) -> None:
    """One row per sample: ``index`` first (0..N-1, the store's order), then ``columns`` in their order.

    Floats are written with 9 significant digits (float32 round-trips; the store keeps float64), booleans as
    0/1.

    Args:
        path: the CSV file to write.
        columns: name to ``[N]`` array; every array of the same length.
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
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", *arrays])
        for i in range(n):
            writer.writerow([i, *(fmt(a[i]) for fmt, a in zip(formats, arrays.values(), strict=True))])


def read_scores_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The columns of a ``scores.csv`` (:func:`write_scores_csv`) as arrays: ``int64`` where every value is an
    integer, ``float64`` where every value is a number, else strings (a ``file`` column); ``index`` included."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{os.fspath(path)} is empty: expected a header row (index, label, ...).")
        rows = list(reader)
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        values = [r[j] for r in rows]
        for kind in (np.int64, np.float64):
            try:
                out[name] = np.array([kind(v) for v in values], dtype=kind)
                break
            except ValueError:
                continue
        else:
            out[name] = np.array(values, dtype=str)
    return out
