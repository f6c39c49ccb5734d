"""Which labels are wrong: how many, which to review first, and each sample's probability, from a run's own signals.

No ground truth is read here. The signals are those of the recommended mislabeled score
(:data:`~curvature_callback.analysis.recommend.RULES`: the training loss per presentation, CSL, and the eval-mode
loss; with neither, its fallback). Per sample ``x = mean over the signals of log10(signal)`` (the geometric mean of its
losses; the lowest 1 % clipped, so an exactly zero loss does not stretch the axis), and a two-component Gaussian
mixture is fitted to ``x`` by EM:

    x ~ (1 - pi) N(mu_0, s_0^2) + pi N(mu_1, s_1^2),   mu_1 > mu_0: component 1 holds the wrong labels

- the **probability** that a label is wrong is component 1's posterior, made non-decreasing in ``x`` (isotonic
  regression, which keeps its sum);
- the **estimated** count is the sum of the probabilities (the mixture's expected number of wrong labels);
- the **flagged** set is the samples more likely wrong than right (probability >= 1/2), most probable first, ties
  by the recommended score.

The mixture is accepted only where it finds two groups: separated (Ashman's ``D = |mu_1 - mu_0| / sqrt((s_0^2 +
s_1^2) / 2) >= 2``: a valley between them; each ``s`` at least :data:`RESOLUTION`, so losses a float32 rounding
apart are never two groups), the wrong labels a minority but a group (``0.005 <= pi < 1/2``; from
``pi = 1/3`` on, ``D >= 3``) and the more probable explanation of some sample (a posterior >= 1/2).

Where the store keeps the class evidence of the run's first epochs (``CurvatureCallback(evidence_window=W)``, before
the network memorizes), **confident learning** on it (:func:`early_disagreement`) says which samples' confident class
is another than their given label: where the mixture shows two groups, a sample's probability is the larger of its
group posterior and that disagreement (1 or 0), fitted non-decreasing in ``x``; where it shows none, the probability
is the share of disagreeing samples at each level of ``x`` (isotonic), so the count is the number that disagree. A
mixture group whose expected count is more than :data:`MAX_GROUP_OVER_EARLY` times confident learning's is taken for
clean samples split in two and not believed. A first-epochs network that gave the given labels a mean probability
under :data:`MIN_EARLY_CONFIDENCE` is too unsure for this (its confident classes are mostly hard samples): its
evidence is set aside.

Otherwise, where the losses show no separate group, the count falls back on the **run's vote** where the store holds
class evidence: a sample's given label *lost the vote* when the network's mean training probability for another
class exceeded the given label's (a given label outside the kept slots has less than every kept class). The
estimated count is the number of lost votes; each probability is the share of lost votes among the samples of the
same ``x`` (the lost-vote indicator fitted non-decreasing in ``x``, isotonic, so the probabilities sum to the count);
the flagged set is again probability >= 1/2. A network that never fits some clean samples makes them lose the vote
too: on clean data the fallback's count is not 0 (docs/DESIGN.md §8). Without class evidence, or with no lost vote:
estimated 0, nothing flagged, every probability 0, and ``method`` says so.

Suggested labels come from the run's **class evidence** (each sample's training softmax summed over its
presentations, its top classes kept in the store): the class with the most evidence other than the given label, its
mean probability as the confidence; without evidence, the eval-mode prediction where it differs from the given label.

Why confident learning on the first epochs and not on the whole run's evidence: evidence summed over a run that
memorizes favours the given label (the default digits run's flipped samples: mean probability of their true class 0.33
at the median, against class thresholds of 0.88-0.91), so the confident joint counted 0 of 180 flips; a wrong label
memorized early also wins the run's vote (Fashion-MNIST confusion noise: 89 estimated for 210).
Assumptions and figures: docs/DESIGN.md §8.

Example:
    >>> rng = np.random.default_rng(0)
    >>> loss = np.r_[10 ** rng.normal(-1.2, 0.25, 900), 10 ** rng.normal(0.1, 0.15, 100)]  # 100 wrong labels
    >>> found = estimate_label_issues({"train_loss": loss}, np.zeros(1000, dtype=np.int64))
    >>> found.estimated, len(found.flagged), int(found.flagged.min())
    (100, 100, 900)
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from curvature_callback.analysis.class_votes import _lost_votes, early_confidence, early_disagreement
from curvature_callback.analysis.recommend import rank_mean, used_signals
from curvature_callback.analysis.scores import class_evidence, suspicion_scores
from curvature_callback.core import safe_paths
from curvature_callback.core.safe_paths import read_text_lines

__all__ = ["COLUMNS", "LabelIssues", "early_disagreement", "estimate_label_issues", "find_label_issues",
           "read_label_issues_csv", "write_label_issues_csv"]

#: the columns of label_issues.csv, in order
COLUMNS = ("index", "given_label", "suggested_label", "suggestion_confidence", "score", "probability", "reasons")
#: the mixture is read as two groups only when they are this far apart (Ashman's D) ...
MIN_SEPARATION = 2.0
#: ... and the wrong labels' group holds at least this share of the samples (a handful of points is no group) ...
MIN_SHARE = 0.005
#: ... and under this one (which group is "clean" is otherwise not identifiable) ...
MAX_SHARE = 0.5
#: ... and a group of this share or more needs this separation (clean samples split in two looked so: D 2.2-2.3)
LARGE_SHARE, LARGE_SEPARATION = 1 / 3, 3.0
#: the early window's confident learning is used only where the first epochs' network gave the given labels at least
#: this mean probability (:func:`early_confidence`): below it, its confident classes are mostly hard samples. Chosen on
#: development runs apart from the reported grid (the miniature study's seed 2 and 0 % settings, docs/DESIGN.md §8):
#: CIFAR-10's 2,000-image network gave 0.28-0.33 (confident learning counted 497 on clean data, 580 for 50 wrong
#: labels), Fashion-MNIST's 0.48-0.75 (counts within 18 % on its five noisy runs)
MIN_EARLY_CONFIDENCE = 0.4
#: where the early window's confident learning is used, the mixture's group is believed only while its expected count
#: (the posterior sum) is at most this many times the samples confident learning counts: larger, the group is clean
#: samples split in two. Set after two such failures seen in the reported runs (a clean Fashion-MNIST run's group of
#: 609 for 37, and 3,153 for 1,162 at cleanlab's scale, docs/RESULTS.md), so those runs do not test it; in every other
#: run with a group the ratio was 0.34-0.91
MAX_GROUP_OVER_EARLY = 2.0
#: the least standard deviation a mixture component may have, in log10-loss units: losses closer than this are one
#: value. A float32 loss is rounded to within one ulp, at most 2**-23 of its value, i.e. log10(1 + 2**-23) = 5.2e-8
#: in log10 units whatever its magnitude; 1e-6 is about 19 such ulps (and under a float32 network's own rounding
#: noise in a loss, 1e-6 to 1e-5 relative), so two groups closer than 2e-6 (38 ulps) never reach D = 2. Real
#: losses spread far wider (the miniature runs' clean samples: sd 0.2 to 0.23), where the mixture's relative floor
#: (1e-3 of x's sd, 2e-4) is the larger one: on such data this floor changes nothing, bit for bit.
RESOLUTION = 1e-6
#: the longest line of a label_issues.csv we read, in characters: a row with its reasons is about 250 (two signals'
#: places and the evidence), class names and three signals stay under 1,000
MAX_LINE = 4096
#: the largest label_issues.csv we read: ImageNet's 1.28 million samples all flagged, at 400 bytes a row, is 0.5 GB
MAX_CSV_BYTES = 2**31
#: what each recommended signal is called in a flagged sample's reasons
_SIGNAL_WORDS = {"train_loss": "training loss per presentation (CSL)", "loss": "eval-mode loss",
                 "curvature": "input-loss curvature"}


@dataclass(frozen=True)
class LabelIssues:
    """The answer to "which labels are wrong?" for one run.

    Attributes:
        estimated: the estimated number of wrong labels.
        flagged: ``int64`` indices of the samples to review (probability >= 1/2), most probable first.
        probability: ``float64 [N]`` each sample's estimated probability that its label is wrong (NaN where the
            recommended score has no value).
        score: ``float64 [N]`` the recommended mislabeled score (higher = more suspicious).
        suggested: ``int64 [N]`` the class the evidence favours over the given label (-1: none).
        suggestion_confidence: ``float64 [N]`` the suggested class's mean training probability (0 without evidence).
        reasons: one sentence per flagged sample (in ``flagged``'s order): which signals flagged it.
        method: one sentence: how ``estimated`` was obtained.
    """

    estimated: int
    flagged: np.ndarray
    probability: np.ndarray
    score: np.ndarray
    suggested: np.ndarray
    suggestion_confidence: np.ndarray
    reasons: tuple[str, ...]
    method: str


# ------------------------------------------------------------------------------------------ checks
def _labels_array(labels: Any, n: int | None) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 1 or a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"Expected `labels` as [N] integer class indices, got {a.dtype} of shape {list(a.shape)}: "
                         "pass the given (possibly wrong) labels, e.g. np.asarray(dataset.targets).")
    if n is not None and len(a) != n:
        raise ValueError(f"Expected {n} labels (one per sample of the scores), got {len(a)}: pass the labels of the "
                         "scored dataset, in its order.")
    if len(a) and a.min() < 0:
        raise ValueError(f"Expected class indices >= 0 in `labels`, got {int(a.min())} at sample {int(np.argmin(a))} "
                         "(a store records -2**63 where it saw no label): pass labels=.")
    return a.astype(np.int64)


def _evidence_arrays(evidence: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(evidence, tuple) and len(evidence) == 2):
        raise TypeError(f"Expected `evidence` as a pair (classes [N, K] int, mean_prob [N, K] float), got "
                        f"{type(evidence).__name__}: pass class_evidence(store).")
    classes, mass = np.asarray(evidence[0]), np.asarray(evidence[1], dtype=np.float64)
    if classes.ndim != 2 or classes.shape != mass.shape or len(classes) != n:
        raise ValueError(f"Expected evidence classes and mean probabilities of one shape [{n}, K], got "
                         f"{list(classes.shape)} and {list(mass.shape)}: pass class_evidence(store) of this run.")
    if not np.issubdtype(classes.dtype, np.integer) or (classes.size and classes.min() < -1):
        raise ValueError(f"Expected evidence classes as integers >= -1 (-1: an empty slot), got {classes.dtype} "
                         f"with minimum {classes.min() if classes.size else None}: pass class_evidence(store).")
    mass = np.where(classes < 0, 0.0, mass)  # an empty slot (NaN: a sample never presented) holds no evidence
    if not np.isfinite(mass).all() or (mass.size and (mass.min() < 0 or mass.max() > 1 + 1e-6)):
        bad = np.argwhere(~(np.isfinite(mass) & (mass >= 0) & (mass <= 1 + 1e-6)))[0]
        raise ValueError(f"Expected evidence mean probabilities finite and in [0, 1], got {mass[tuple(bad)]} for "
                         f"sample {bad[0]}, slot {bad[1]}: pass class_evidence(store).")
    return classes.astype(np.int64), mass


# ------------------------------------------------------------------------------------------ the maths
# Our own small isotonic fit and two-component EM rather than scikit-learn's IsotonicRegression and GaussianMixture:
# the analysis layer needs numpy only (scikit-learn is an optional extra), and the EM here starts from fixed splits
# so that a run's flagged set never depends on a random initialisation.
def isotonic(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit to ``y`` in its given order (pool adjacent violators); keeps ``y``'s sum.

    Example:
        >>> isotonic(np.array([0.0, 1.0, 0.0, 1.0, 1.0])).tolist()
        [0.0, 0.5, 0.5, 1.0, 1.0]
    """
    values: list[float] = []
    sizes: list[int] = []
    for v in np.asarray(y, dtype=np.float64):
        values.append(float(v))
        sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            v2, s2 = values.pop(), sizes.pop()
            values[-1] = (values[-1] * sizes[-1] + v2 * s2) / (sizes[-1] + s2)
            sizes[-1] += s2
    return np.repeat(values, sizes)


def two_gaussians(x: np.ndarray, *, iterations: int = 500, resolution: float = RESOLUTION) -> dict[str, Any]:
    """Maximum-likelihood two-component Gaussian mixture of ``x`` (EM), component 1 the higher mean.

    EM starts from three splits (the top 5 %, 20 % and 50 % of ``x`` in component 1) and keeps the most likely fit:
    deterministic. Each component's standard deviation is at least ``resolution`` (:data:`RESOLUTION`, in log10-loss
    units) and ``1e-3`` of ``x``'s: values closer than rounding are one group, so ``D <= |mu_1 - mu_0| /
    resolution``. Returns ``{"posterior": [N] of component 1, "share": pi, "means", "sds", "separation": D}``.

    Example:
        >>> x = np.r_[np.zeros(90), np.ones(10)] + np.tile(np.linspace(-0.1, 0.1, 10), 10)
        >>> fit = two_gaussians(x)
        >>> round(fit["share"], 3), round(float(fit["posterior"].sum()), 1), fit["separation"] > 2
        (0.1, 10.0, True)
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    floor = max(1e-6 * (x.var() + 1e-12), resolution**2)  # no component collapses onto one value, nor
    # onto two a rounding apart (900 losses of 0.25 and 100 at float32's next value gave D = 51.8)
    best: dict[str, Any] | None = None
    order = np.argsort(-x, kind="stable")
    for fraction in (0.05, 0.2, 0.5):
        r = np.zeros(n)
        r[order[: max(2, int(fraction * n))]] = 1.0
        previous = -np.inf
        for _ in range(iterations):
            weights = np.stack([1.0 - r, r])
            mass = weights.sum(1) + 1e-300
            share = mass / n
            means = weights @ x / mass
            variances = np.maximum((weights * (x - means[:, None]) ** 2).sum(1) / mass, floor)
            log_p = (np.log(share + 1e-300)[:, None] - 0.5 * np.log(2 * np.pi * variances)[:, None]
                     - 0.5 * (x - means[:, None]) ** 2 / variances[:, None])
            top = log_p.max(0)
            total = top + np.log(np.exp(log_p - top).sum(0))
            likelihood = float(total.sum())
            r = np.exp(log_p[1] - total)
            if likelihood - previous <= 1e-10 * abs(likelihood):
                break
            previous = likelihood
        if best is None or likelihood > best["likelihood"]:
            best = {"likelihood": likelihood, "posterior": r, "share": float(share[1]), "means": means,
                    "sds": np.sqrt(variances)}
    assert best is not None
    if best["means"][1] < best["means"][0]:
        best.update(posterior=1.0 - best["posterior"], share=1.0 - best["share"], means=best["means"][::-1],
                    sds=best["sds"][::-1])
    spread = np.sqrt((best["sds"] ** 2).mean())
    best["separation"] = float((best["means"][1] - best["means"][0]) / spread)
    return best


def _log_signals(scores: Mapping[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """Per sample, the mean over ``names`` of ``log10`` of the signal (the lowest 1 % clipped); NaN where none."""
    logs = []
    for name in names:
        s = np.asarray(scores[name], dtype=np.float64)
        ok = np.isfinite(s) & (s > 0)
        low = np.percentile(s[ok], 1) if ok.any() else 1.0
        logs.append(np.where(np.isfinite(s), np.log10(np.maximum(s, low)), np.nan))
    with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as sup:
        sup.filter(RuntimeWarning)  # a sample with no signal: NaN
        return np.nanmean(np.stack(logs), axis=0)


def estimate_label_issues(
    scores: Mapping[str, np.ndarray],
    labels: Any,
    *,
    evidence: tuple[np.ndarray, np.ndarray] | None = None,
    early_evidence: tuple[np.ndarray, np.ndarray] | None = None,
    predictions: Any = None,
) -> LabelIssues:
    """The count, flagged set and probabilities from a run's suspicion scores (pure numpy; see the module).

    One concept, longer than the house aims for: the decision's four answers (a mixture group, with or without the
    early window; the early window alone; the run's vote; none) share the fit, the order in ``x`` and the method's
    words, and each writes the same probability array.

    Args:
        scores: :func:`~curvature_callback.analysis.suspicion_scores` of a store (``{name: [N]}``, higher = more
            suspicious); the mixture reads the mislabeled rule's signals (``train_loss``, ``loss``; else its fallback).
        labels: ``[N]`` the given class indices.
        evidence: ``(classes [N, K] int, -1 empty; mean_prob [N, K])``, most evidence first (``class_evidence``):
            the suggested labels, and the run's vote where there is no early evidence.
        early_evidence: the same of the run's first epochs only (``class_evidence(store, early=True)``): the early
            window's confident learning (:func:`early_disagreement`) decides the count with the mixture.
        predictions: ``[N]`` eval-mode predicted classes: the suggestion where the evidence names no other class.

    Returns:
        :class:`LabelIssues`.

    Raises:
        ValueError: scores that are not ``{name: [N]}`` with a signal the rule reads, labels that are not ``[N]``
            class indices >= 0, evidence or predictions of another shape.
    """
    if not isinstance(scores, Mapping) or not scores:
        got = type(scores).__name__ if not isinstance(scores, Mapping) else "an empty mapping"
        raise ValueError(f"Expected `scores` as a non-empty mapping {{signal: [N] array}}, got {got}: pass "
                         "suspicion_scores(store).")
    shapes = {name: np.shape(s) for name, s in scores.items()}
    n = len(next(iter(scores.values())))
    if any(shape != (n,) for shape in shapes.values()):
        raise ValueError(f"Expected every score of shape [N], got {shapes}: pass suspicion_scores(store).")
    labels = _labels_array(labels, n)
    checked = None if evidence is None else _evidence_arrays(evidence, n)
    early = None if early_evidence is None else _evidence_arrays(early_evidence, n)
    confidence_early = None if early is None else early_confidence(labels, *early)
    if confidence_early is not None and math.isnan(confidence_early):  # no sample presented within the window
        early = confidence_early = None
    unsure = None  # why the early evidence is not used, in words (None: it is, or there is none)
    if confidence_early is not None and not confidence_early >= MIN_EARLY_CONFIDENCE:
        unsure = (f"the first epochs' network gave the given labels a mean probability of {confidence_early:.2f}, "
                  f"under {MIN_EARLY_CONFIDENCE:g}: too unsure for its confident classes to tell a wrong label from a "
                  "hard one, so its class evidence is not used")
    names = used_signals(scores)["mislabeled"]
    if not names:
        raise ValueError(f"Expected a signal the mislabeled rule reads (train_loss, loss or curvature) with a value, "
                         f"got {sorted(scores)}: record the training steps or run a scoring pass.")
    score = rank_mean(scores, names)
    x = _log_signals(scores, names)
    valid = np.isfinite(score) & np.isfinite(x)
    probability = np.full(n, np.nan)
    probability[valid] = 0.0
    words = " and ".join(_SIGNAL_WORDS.get(name, name) for name in names)
    if valid.sum() >= 10:
        fit = two_gaussians(x[valid])
        found = f"separation D = {fit['separation']:.1f}, share {fit['share']:.3f}"
        order = np.argsort(x[valid], kind="stable")
        posterior = np.clip(isotonic(fit["posterior"][order]), 0.0, 1.0)  # non-decreasing in x, same sum
        lost = None if checked is None else _lost_votes(labels, *checked)[valid][order]
        disagree = None if unsure is not None or early is None else early_disagreement(labels, *early)[valid][order]
        needed = LARGE_SEPARATION if fit["share"] >= LARGE_SHARE else MIN_SEPARATION
        grouped = fit["separation"] >= needed and MIN_SHARE <= fit["share"] < MAX_SHARE and posterior[-1] >= 0.5
        split = (grouped and disagree is not None
                 and float(posterior.sum()) > MAX_GROUP_OVER_EARLY * int(disagree.sum()))
        if split:  # a group far larger than the early window counts: the clean samples split in two (module)
            grouped = False
            found += (f"; its {float(posterior.sum()):.0f} expected wrong labels are more than "
                      f"{MAX_GROUP_OVER_EARLY:g} times the {int(disagree.sum())} that confident learning on the first "
                      "epochs counts, so it is taken for clean samples split in two")
        if grouped and disagree is not None:
            # Either says wrong: the mixture's group or the early window's confident learning (see the module)
            either = np.maximum(fit["posterior"][order], disagree.astype(np.float64))
            probability[np.flatnonzero(valid)[order]] = np.clip(isotonic(either), 0.0, 1.0)
            method = (f"a two-Gaussian mixture of the mean log10 {words} found a separate high group ({found}), "
                      f"and confident learning on the first epochs' class evidence found {int(disagree.sum())} "
                      "samples whose confident class is another than their given label; each probability is the "
                      "larger of the two (the group's posterior, 1 for a sample confident learning counts), fitted "
                      f"non-decreasing in the {words} (isotonic), and the estimate is their sum")
        elif grouped:
            probability[np.flatnonzero(valid)[order]] = posterior
            method = (f"a two-Gaussian mixture of the mean log10 {words} found a separate high group ({found}); the "
                      "estimate is the sum of its posterior probabilities")
        elif disagree is not None and disagree.any():
            # The groups overlap: the early window's confident learning counts, the losses order (see the module)
            probability[np.flatnonzero(valid)[order]] = np.clip(isotonic(disagree.astype(np.float64)), 0.0, 1.0)
            method = (f"a two-Gaussian mixture of the mean log10 {words} found no separate group ({found}), so the "
                      f"count is confident learning on the first epochs' class evidence: {int(disagree.sum())} "
                      "samples whose confident class is another than their given label; each probability is the "
                      f"share of such samples among those of the same {words} (isotonic in it)")
        elif lost is not None and lost.any() and (early is None or unsure is not None):
            # The groups overlap: fall back on the run's vote (see the module): the share of lost votes at each
            # level of x, fitted non-decreasing, is the probability; its sum, the number of lost votes, the count.
            probability[np.flatnonzero(valid)[order]] = np.clip(isotonic(lost.astype(np.float64)), 0.0, 1.0)
            method = (f"a two-Gaussian mixture of the mean log10 {words} found no separate group ({found}), so the "
                      f"count is the run's vote: {int(lost.sum())} samples got less mean training probability for "
                      "their given label than for another class; each probability is the share of such samples "
                      f"among those of the same {words} (isotonic in it)")
        else:
            method = (f"a two-Gaussian mixture of the mean log10 {words} found no separate group of wrong labels "
                      f"({found}, highest posterior {posterior[-1]:.2f}; a group needs D >= {MIN_SEPARATION:g} (>= "
                      f"{LARGE_SEPARATION:g} for a share of {LARGE_SHARE:.3g} or more), a share from {MIN_SHARE:g} to "
                      f"under {MAX_SHARE:g} and a sample more likely in it than not)"
                      + ("" if early is None or unsure is not None else ", and confident learning on the first "
                         "epochs' class evidence found no sample whose confident class is another than its given label")
                      + ("" if checked is None or (early is not None and unsure is None) else
                         ", and no sample's given label lost the run's vote")
                      + ": estimated 0, review by the score instead")
    else:
        method = f"fewer than 10 samples with {words}: no mixture fitted, estimated 0"
    if unsure is not None:
        method += f" ({unsure})"
    estimated = int(round(float(np.nansum(probability))))
    candidates = np.flatnonzero(probability >= 0.5)
    flagged = candidates[np.lexsort((-score[candidates], -probability[candidates]))].astype(np.int64)
    suggested, confidence = _suggestions(labels, checked, predictions, n)
    reasons = _reasons(flagged, scores, names, labels, suggested, confidence)
    return LabelIssues(estimated=estimated, flagged=flagged, probability=probability, score=score,
                       suggested=suggested, suggestion_confidence=confidence, reasons=reasons, method=method + ".")


def _suggestions(labels: np.ndarray, evidence: tuple[np.ndarray, np.ndarray] | None, predictions: Any,
                 n: int) -> tuple[np.ndarray, np.ndarray]:
    """The class with the most evidence (checked ``(classes, mass)``) other than the given label and its mean
    probability; else the eval-mode prediction where it differs from the given label (confidence 0); else -1."""
    suggested = np.full(n, -1, dtype=np.int64)
    confidence = np.zeros(n)
    if evidence is not None:
        classes, mass = evidence
        other = (classes >= 0) & (classes != labels[:, None])
        first = np.argmax(other, axis=1)  # slots are sorted by mass: the first other class has the most
        some = other.any(1)
        suggested[some] = classes[some, first[some]]
        confidence[some] = mass[some, first[some]]
    if predictions is not None:
        pred = np.asarray(predictions)
        if pred.shape != (n,) or pred.dtype == bool or not np.issubdtype(pred.dtype, np.integer):
            raise ValueError(f"Expected `predictions` as [{n}] integer classes (the eval-mode argmax), got "
                             f"{pred.dtype} "
                             f"of shape {list(pred.shape)}.")
        fallback = (suggested < 0) & (pred != labels) & (pred >= 0)
        suggested[fallback] = pred[fallback]
    return suggested, confidence


def _reasons(flagged: np.ndarray, scores: Mapping[str, np.ndarray], names: tuple[str, ...], labels: np.ndarray,
             suggested: np.ndarray, confidence: np.ndarray) -> tuple[str, ...]:
    """Why each flagged sample is flagged, in words: its place on each recommended signal (1 = the highest; within the
    flagged count or beyond it) and the class its training evidence favours. One sort per signal, not one per sample."""
    count = len(flagged)
    places = {}
    for name in names:
        s = np.asarray(scores[name], dtype=np.float64)
        finite = np.sort(s[np.isfinite(s)])
        higher = len(finite) - np.searchsorted(finite, s[flagged], side="right")  # how many score above the sample
        places[name] = np.where(np.isfinite(s[flagged]), higher + 1, 0)
    out = []
    for row, i in enumerate(flagged):
        parts = [f"{_SIGNAL_WORDS.get(name, name)} #{place[row]} ({'within' if place[row] <= count else 'beyond'} the "
                 f"{count} flagged)" for name, place in places.items() if place[row] > 0]
        if suggested[i] >= 0 and confidence[i] > 0:
            parts.append(f"training evidence for class {suggested[i]} (mean p {confidence[i]:.2f}) over the given "
                         f"{labels[i]}")
        elif suggested[i] >= 0:
            parts.append(f"eval-mode prediction {suggested[i]}, not the given {labels[i]}")
        out.append("; ".join(parts))
    return tuple(out)


def find_label_issues(store: Any, labels: Any = None, *, predictions: Any = None) -> LabelIssues:
    """Which labels of a run are wrong, from its store alone (:func:`estimate_label_issues` on the store's signals
    and class evidence).

    Args:
        store: a :class:`~curvature_callback.CurvatureStore` (open).
        labels: ``[N]`` the given class indices; default the label keys the store recorded (the class index of every
            sample whose targets were integer classes).
        predictions: ``[N]`` eval-mode predicted classes: the suggestion where the store has no class evidence.

    Raises:
        ValueError: labels that are not ``[N]`` class indices (a store that recorded no label for some sample, or
            hashed non-integer targets, needs ``labels=``), or a store with none of the mislabeled rule's signals.

    """
    if labels is None:
        labels = getattr(store, "labels", None)
        if labels is None:
            raise ValueError(f"The store at {getattr(store, 'directory', '?')} records no labels (format 1): pass "
                             "labels= (the dataset's given labels, in its order).")
        labels = np.asarray(labels)
    return estimate_label_issues(suspicion_scores(store), labels, evidence=class_evidence(store),
                                 early_evidence=class_evidence(store, early=True), predictions=predictions)


# ------------------------------------------------------------------------------------------ label_issues.csv
def write_label_issues_csv(path: str | os.PathLike, issues: LabelIssues, labels: Any,
                           class_names: Any = None) -> None:
    """``label_issues.csv``: one row per flagged sample, most probable first, columns :data:`COLUMNS`.

    Labels are class indices (``class_names``, when given, only name the classes in ``reasons``).
    """
    labels = _labels_array(labels, len(issues.score))
    names = None if class_names is None else [str(c) for c in class_names]
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(COLUMNS)
    for i, why in zip(issues.flagged, issues.reasons, strict=True):
        reason = why
        if names is not None and 0 <= labels[i] < len(names):
            reason = f"{why} ({names[labels[i]]}" + (f" -> {names[issues.suggested[i]]})"
                                                     if 0 <= issues.suggested[i] < len(names) else ")")
        writer.writerow([int(i), int(labels[i]), int(issues.suggested[i]), f"{issues.suggestion_confidence[i]:.6g}",
                         f"{issues.score[i]:.9g}", f"{issues.probability[i]:.6g}", reason])
    safe_paths.write_text(path, table.getvalue())


def read_label_issues_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The columns of a ``label_issues.csv`` (:func:`write_label_issues_csv`), checked as data from a stranger.

    Returns ``{column: array}``: ``index``, ``given_label``, ``suggested_label`` int64 (``suggested_label`` -1: none),
    ``suggestion_confidence``, ``score``, ``probability`` float64 (finite; probability and confidence in [0, 1]),
    ``reasons`` str.

    Raises:
        ValueError: naming the file, the line or column, what was expected and what came: also for a missing file,
            a folder, a FIFO or a device (a regular file only), one over :data:`MAX_CSV_BYTES` or with a line over
            :data:`MAX_LINE` characters (nothing more is read).
    """
    where = os.fspath(path)
    fix = "remove or fix the file (curvature-train writes it)"
    lines = read_text_lines(path, what="label_issues.csv file", max_bytes=MAX_CSV_BYTES, max_line=MAX_LINE, fix=fix,
                            why="every sample of an ImageNet-sized run flagged, with 4 times room",
                            path_fix="pass the path of a run's label_issues.csv (curvature-train writes it in the run "
                            "folder)")
    try:
        rows = list(csv.reader(lines))
    except csv.Error as e:
        raise ValueError(f"Expected {where} to be CSV, got text the csv module refuses ({e}): {fix}.") from e
    if not rows or tuple(rows[0]) != COLUMNS:
        got = rows[0][:8] if rows else "an empty file"
        raise ValueError(f"Expected {where} to start with the header {', '.join(COLUMNS)}, got {got!r}: {fix}.")
    body = rows[1:]
    out: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for line, row in enumerate(body, start=2):
        if len(row) != len(COLUMNS):
            raise ValueError(f"Expected {len(COLUMNS)} fields on every line of {where}, got {len(row)} on line {line}: "
                             f"{fix}.")
        for name, value in zip(COLUMNS, row, strict=True):
            if name == "reasons":
                out[name].append(value)
                continue
            integer = name in ("index", "given_label", "suggested_label")
            try:
                number = int(value) if integer else float(value)
            except ValueError:
                kind = "an integer" if integer else "a number"
                raise ValueError(f"Expected {kind} in column `{name}` of {where}, got {value!r} on line {line}: "
                                 f"{fix}.") from None
            low = -1 if name == "suggested_label" else 0
            if integer and not low <= number < 2**63:
                raise ValueError(f"Expected column `{name}` of {where} to hold integers >= {low}, got {value!r} "
                                 f"on line "
                                 f"{line}: {fix}.")
            if not integer and not math.isfinite(number):
                raise ValueError(f"Expected finite numbers in column `{name}` of {where}, got {value!r} on line "
                                 f"{line}: {fix}.")
            if name in ("probability", "suggestion_confidence") and not 0.0 <= number <= 1.0:
                raise ValueError(f"Expected column `{name}` of {where} in [0, 1], got {value!r} on line {line}: {fix}.")
            out[name].append(number)
    index = np.array(out["index"], dtype=np.int64)
    if len(np.unique(index)) != len(index):
        values, counts = np.unique(index, return_counts=True)
        raise ValueError(f"Expected distinct indices in {where} (one row per flagged sample), got sample "
                         f"{int(values[counts > 1][0])} on {int(counts.max())} lines: {fix}.")
    arrays: dict[str, np.ndarray] = {"index": index}
    for name in ("given_label", "suggested_label"):
        arrays[name] = np.array(out[name], dtype=np.int64)
    for name in ("suggestion_confidence", "score", "probability"):
        arrays[name] = np.array(out[name], dtype=np.float64)
    arrays["reasons"] = np.array(out["reasons"], dtype=str)
    return arrays
