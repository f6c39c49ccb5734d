"""What a run's class evidence says about each given label (numpy only; used by
:func:`~curvature_callback.analysis.label_issues.estimate_label_issues`):

- :func:`early_disagreement`: confident learning on the first epochs' evidence (the store's early window), before the
  network memorizes: the sample's confident class is another than its given label;
- :func:`early_confidence`: how sure the first epochs' network was of the given labels (below
  ``label_issues.MIN_EARLY_CONFIDENCE`` its confident classes are mostly hard samples);
- ``_lost_votes``: the run's vote, the given label below another class in the whole run's evidence.

Evidence arrays are ``(classes [N, K] int, -1 an empty slot; mean_prob [N, K])``, most favoured first, as
:func:`~curvature_callback.analysis.class_evidence` returns them (checked by the caller: 0 in empty slots).
"""

from __future__ import annotations

import numpy as np

__all__ = ["early_confidence", "early_disagreement"]


def early_disagreement(labels: np.ndarray, classes: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """``bool [N]``: confident learning (Northcutt et al., 2021) on the class evidence of the run's first epochs,
    before the network memorizes: the sample's *confident class* is not its given label.

    Each class ``c`` has a threshold, its self-confidence ``t_c``: the mean early probability of ``c`` over the
    samples labelled ``c`` (0 for a sample whose kept slots do not hold ``c``; samples without early evidence left
    out). A sample's confident class is its kept class of the highest mean probability among those at or above their
    own class's threshold; a sample with none, or without evidence, disagrees with nothing. Sparse in the ``K`` kept
    slots: no ``[N, C]`` array (ImageNet's would be 10 GB).

    Args:
        labels: ``[N]`` the given classes.
        classes, mass: ``[N, K]`` the early evidence (``class_evidence(store, early=True)``, checked: -1 and 0 in
            empty slots).

    Example:
        >>> labels = np.array([0, 0, 0, 1, 1, 1])
        >>> classes = np.array([[0, 1], [0, 1], [1, 0], [1, 0], [1, 0], [0, 1]])
        >>> mass = np.array([[.9, .1], [.8, .2], [.8, .2], [.9, .1], [.8, .2], [.7, .3]])
        >>> early_disagreement(labels, classes, mass).tolist()   # t_0 = (.9 + .8 + .2) / 3, t_1 = (.9 + .8 + .3) / 3
        [False, False, True, False, False, True]
    """
    has = (classes >= 0).any(1)
    if not has.any():
        return np.zeros(len(labels), dtype=bool)
    c = max(int(labels.max()), int(classes.max())) + 1
    given = np.where(classes == labels[:, None], mass, 0.0).max(1)
    counts = np.bincount(labels[has], minlength=c)
    with np.errstate(invalid="ignore", divide="ignore"):
        threshold = np.where(counts > 0, np.bincount(labels[has], weights=given[has], minlength=c) / counts, np.inf)
    kept = classes >= 0
    above = kept & (mass >= threshold[np.where(kept, classes, 0)])
    confident = np.argmax(np.where(above, mass, -1.0), axis=1)
    chosen = classes[np.arange(len(labels)), confident]
    return above.any(1) & (chosen != labels)


def early_confidence(labels: np.ndarray, classes: np.ndarray, mass: np.ndarray) -> float:
    """The first epochs' mean probability of the given labels (0 where a sample's kept slots lack its label) over the
    samples with early evidence; NaN without any. Under ``label_issues.MIN_EARLY_CONFIDENCE`` the early network is
    too unsure for confident learning: its confident classes count hard samples as wrong labels.

    Example:
        >>> early_confidence(np.array([0, 1]), np.array([[0, 1], [0, -1]]), np.array([[.9, .1], [1., 0.]]))
        0.45
    """
    has = (classes >= 0).any(1)
    if not has.any():
        return float("nan")
    return float(np.where(classes == labels[:, None], mass, 0.0).max(1)[has].mean())


def _lost_votes(labels: np.ndarray, classes: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """``bool [N]``: the given label got less mean training probability than another class (the label lost the run's
    vote). A given label outside the kept slots has less than every kept class; a sample never presented loses none.

    Example:
        >>> mass = np.array([[.6, .3], [.5, .4], [.7, .2]])
        >>> _lost_votes(np.array([0, 0, 1]), np.array([[0, 2], [2, 0], [0, 2]]), mass)
        array([False,  True,  True])
    """
    given = np.where(classes == labels[:, None], mass, 0.0).max(1)
    other = np.where((classes >= 0) & (classes != labels[:, None]), mass, 0.0).max(1)
    return other > given
