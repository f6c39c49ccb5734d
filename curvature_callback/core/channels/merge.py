"""How an epoch's raw values become what a commit adds: the channels computed at the commit from what the store
holds, and the training steps' sums merged with the store's running values.

- :func:`merge_pass_values`: a pass's values plus ``forgetting``, from the store's latest ``correct``
  (:func:`forgetting_events`);
- :func:`merge_step_values`: the training steps' summed rows as the store's training-time values
  (:func:`epoch_step_values`, the latest wrong epoch continuing the store's) and the epoch's class evidence merged
  with the store's running evidence (:func:`epoch_class_values`): the whole run's, and, in a store with an early
  window, the window's (merged the same way during its epochs, carried unchanged after).

Both read the store through its public readers, so that a user of
:class:`~curvature_callback.core.store.CurvatureStore` without the callback commits what the callback commits.
Numpy only, but for the class-evidence merge (torch's, the one the training steps use, imported when it runs).

Example:
    >>> import tempfile
    >>> from curvature_callback.core.channels import pass_channels
    >>> from curvature_callback.core.store import CurvatureStore
    >>> settings = {"pass_kind": "forward", "h": 1e-3, "n_vectors": 0, "seed": 0, "loss": "ce", "fast": False}
    >>> s = CurvatureStore.create(tempfile.mkdtemp(), 2, settings=settings, channels=pass_channels("forward"))
    >>> for epoch, correct in enumerate(([1.0, 1.0], [0.0, 1.0])):
    ...     raw = {c: np.array(correct) for c in ("loss", "margin", "confidence", "correct")}
    ...     _ = s.commit_epoch(epoch, merge_pass_values(s, raw))
    >>> s.sum_of("forgetting").tolist()   # sample 0 was right, then wrong
    [1.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from curvature_callback.core.channels.definitions import (
    EARLY_SEEN,
    class_evidence_channels,
    class_slots,
    early_evidence_channels,
)

__all__ = ["epoch_class_values", "epoch_step_values", "forgetting_events", "merge_pass_values", "merge_step_values"]


def forgetting_events(correct_before: np.ndarray, correct_now: np.ndarray) -> np.ndarray:
    """1.0 where a sample correct at its previous scored epoch is wrong now (a forgetting event), else 0.0.

    Example:
        >>> forgetting_events(np.array([1.0, 1.0, 0.0, np.nan]), np.array([0.0, 1.0, 0.0, 0.0])).tolist()
        [1.0, 0.0, 0.0, 0.0]
    """
    return ((np.asarray(correct_before) == 1) & (np.asarray(correct_now) == 0)).astype(np.float64)


def merge_pass_values(store: Any, values: Mapping[str, np.ndarray],
                      indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A pass's values with the channels the commit computes from the store's previous state: ``forgetting`` (where
    the store holds it) from the store's latest ``correct`` at ``indices`` and the pass's ``correct``.

    Args:
        store: the store the values go to (read: its channels and ``channel_last("correct")``).
        values: ``[M]`` per channel the pass computed (``correct`` among them where the store holds forgetting).
        indices: ``[M]`` the samples (default: all ``N`` in order), as given to ``commit_epoch``.

    Returns:
        ``values`` with ``forgetting`` added, ready for ``store.commit_epoch(epoch, ..., indices=indices)``.
    """
    out = dict(values)
    if "forgetting" in store.channels:
        idx = np.arange(store.n) if indices is None else np.asarray(indices)
        out["forgetting"] = forgetting_events(np.asarray(store.channel_last("correct"))[idx], out["correct"])
    return out


def merge_step_values(store: Any, epoch: int, sums: np.ndarray, evidence: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The store's training-time values for one epoch: the training steps' summed rows (:func:`epoch_step_values`)
    and, with the store's class-evidence slots, the epoch's evidence merged with the running evidence the store
    holds (its latest values; :func:`epoch_class_values`).

    A store with an early window ``W`` (``store.evidence_window``, its ``train_early_*`` channels) also merges the
    epoch's evidence into the window's running evidence, the same way, when ``epoch < W`` (``train_early_seen``: the
    epoch's presentations); from epoch ``W`` on, the window's latest values are carried unchanged (``train_early_seen``
    0), so they stay frozen. A sample first seen after the window gets empty slots (-1, mass 0).

    Args:
        store: the store the values go to (read: ``step_channels``, ``evidence_window`` and their latest values).
        epoch: the epoch.
        sums: ``[5, N]`` the summed rows of :data:`~curvature_callback.core.steps.ROWS` over every rank.
        evidence: ``[N, K]`` the epoch's classes and masses
            (:meth:`~curvature_callback.core.steps.StepRecorder.combine_evidence`), ``K`` the store's slots; None
            for a store without class evidence.

    Returns:
        The samples seen this epoch and their values, ready for ``store.commit_epoch(epoch, ..., steps=values,
        step_indices=indices)``.

    Raises:
        ValueError: class evidence in another number of slots than the store's.
    """
    indices, values = epoch_step_values(sums, epoch, store.channel_last("train_wrong_epoch"))
    if evidence is not None:  # merged with the running evidence the store holds (its latest values)
        k = class_slots(store.step_channels)
        if np.ndim(evidence[0]) != 2 or np.shape(evidence[0])[1] != k:
            raise ValueError(f"Expected class evidence in the store's {k} slot(s) per sample ([N, {k}] classes and "
                             f"masses), got classes of shape {np.shape(evidence[0])}.")
        now = (evidence[0][indices], evidence[1][indices])
        values.update(epoch_class_values(*_latest(store, class_evidence_channels(k), indices), *now))
        if EARLY_SEEN in store.step_channels:  # the early window: merged within it, carried after it
            names = early_evidence_channels(k)[1:]
            before = _latest(store, names, indices)
            inside = epoch < store.evidence_window
            values.update(epoch_class_values(*before, *now, names=names) if inside else _carried(*before, names))
            values[EARLY_SEEN] = values["train_seen"].copy() if inside else np.zeros(len(indices))
    return indices, values


def _latest(store: Any, names: tuple[str, ...], indices: np.ndarray) -> list[np.ndarray]:
    """``[M, K]`` the store's latest classes and masses of the slots ``names`` (classes then masses) at ``indices``."""
    k = len(names) // 2
    return [np.stack([np.asarray(store.channel_last(c))[indices] for c in part], 1) for part in (names[:k], names[k:])]


def _carried(classes: np.ndarray, mass: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The slots ``names`` as they are (their latest values), empty (-1, mass 0) where the store holds none yet."""
    known = ~np.isnan(classes)
    c, m = np.where(known, classes, -1.0), np.where(known, mass, 0.0)
    k = len(names) // 2
    return {**{names[j]: c[:, j] for j in range(k)}, **{names[k + j]: m[:, j] for j in range(k)}}


def epoch_step_values(reduced: np.ndarray, epoch: int, wrong_before: np.ndarray) -> tuple[np.ndarray, dict]:
    """The store's training-time values for one epoch, from the ranks' summed rows.

    Args:
        reduced: ``[5, N]`` summed :data:`~curvature_callback.core.steps.ROWS`.
        epoch: the epoch.
        wrong_before: ``[N]`` the latest epoch each sample was misclassified at a presentation, -1 if never, NaN if
            never seen (the store's ``train_wrong_epoch`` latest value).

    Returns:
        The indices seen this epoch and, for them, ``train_seen``, ``train_loss``, ``train_correct``,
        ``train_forgetting``, ``train_last_correct`` and ``train_wrong_epoch`` (this epoch if a presentation was
        wrong, else the earlier value, -1 where none).

    Example:
        >>> rows = np.array([[1, 0, 2], [0.5, 0, 1.0], [1, 0, 1], [0, 0, 1], [1, 0, 0]], dtype=float)
        >>> idx, v = epoch_step_values(rows, 3, np.array([np.nan, 1.0, 0.0]))
        >>> idx.tolist(), v["train_wrong_epoch"].tolist()
        ([0, 2], [-1.0, 3.0])
    """
    seen = reduced[0] > 0
    idx = np.flatnonzero(seen)
    r = reduced[:, idx].astype(np.float64)
    before = np.asarray(wrong_before, dtype=np.float64)[idx]
    wrong = np.where(r[2] < r[0], float(epoch), np.where(np.isnan(before), -1.0, before))
    return idx, {"train_seen": r[0], "train_loss": r[1], "train_correct": r[2], "train_forgetting": r[3],
                 "train_last_correct": np.minimum(r[4], 1.0), "train_wrong_epoch": wrong}


def epoch_class_values(before_classes: np.ndarray, before_mass: np.ndarray, classes: np.ndarray,
                       mass: np.ndarray, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The store's class-evidence values for one epoch's samples: the running evidence before the epoch (the store's
    latest values) merged with the epoch's (:func:`~curvature_callback.core.steps.merge_evidence`, in float64).

    Args:
        before_classes, before_mass: ``[M, K]`` the store's latest ``train_class_j`` and ``train_class_mass_j`` of
            the epoch's samples (NaN where never seen: no evidence yet).
        classes, mass: ``[M, K]`` the epoch's evidence (:meth:`~curvature_callback.core.steps.StepRecorder.
            combine_evidence`).
        names: the ``2K`` channels the slots go to, classes then masses (default: the whole run's,
            :func:`~curvature_callback.core.channels.class_evidence_channels`; the early window's are
            ``early_evidence_channels(K)[1:]``).

    Returns:
        ``train_class_j`` (class ids as floats, -1 empty) and ``train_class_mass_j`` for every slot ``j`` (or the
        ``names`` given), ``[M]`` each.

    Example:
        >>> v = epoch_class_values(np.array([[1.0, np.nan]]), np.array([[0.5, np.nan]]), np.array([[2, 1]]),
        ...                        np.array([[0.75, 0.125]]))
        >>> [v[f"train_class_{j}"].tolist() for j in (0, 1)], v["train_class_mass_0"].tolist()
        ([[2.0], [1.0]], [0.75])
    """
    import torch  # the merge the training steps use on the device; the store itself needs no torch

    from curvature_callback.core.steps import merge_evidence

    k = classes.shape[1]
    names = class_evidence_channels(k) if names is None else names
    known = ~np.isnan(before_classes)
    c, m = merge_evidence(torch.as_tensor(np.where(known, before_classes, -1).astype(np.int64)),
                          torch.as_tensor(np.where(known, before_mass, 0.0).astype(np.float64)),
                          torch.as_tensor(np.asarray(classes, dtype=np.int64)),
                          torch.as_tensor(np.asarray(mass, dtype=np.float64)), k)
    c, m = c.numpy().astype(np.float64), m.numpy()
    return {**{names[j]: c[:, j] for j in range(k)}, **{names[k + j]: m[:, j] for j in range(k)}}
