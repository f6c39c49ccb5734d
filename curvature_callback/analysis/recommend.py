"""The recommended score for each question a user asks, as one fixed rule per question.

The rules were chosen from our studies (docs/RESULTS.md: the CPU miniature of the paper's regime, the CIFAR-10
validation and Feldman & Zhang's memorization estimate on digits) and from the lab's own full-size figures; they
are never fitted to the run being scored (no ground truth is read here). Each rule names its signals in order: the
score is the mean of their within-run ranks (every signal weighs the same, whatever its scale), over the signals
the run has; with none of them, the question falls back to the next rule's signals, then to curvature.

Which signal answers which question, and where curvature adds nothing, is in :data:`RULES`' ``evidence``.

Example:
    >>> import numpy as np
    >>> s = recommended_scores({"train_loss": np.array([0.1, 3.0, 0.2]), "loss": np.array([0.0, 2.0, 0.5]),
    ...                         "curvature": np.array([5.0, 1.0, 9.0])})
    >>> s["mislabeled"].tolist(), used_signals({"train_loss": np.ones(3), "loss": np.full(3, np.nan)})["mislabeled"]
    ([0.3333333333333333, 1.0, 0.6666666666666666], ('train_loss',))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from curvature_callback.analysis.metrics import ranks

__all__ = ["QUESTIONS", "RULES", "Rule", "rank_mean", "recommended_scores", "used_signals"]


@dataclass(frozen=True)
class Rule:
    """One question's recommended score.

    Attributes:
        question: the key in :func:`recommended_scores` (``"mislabeled"``, ``"memorized"``, ``"duplicates"``).
        asks: the question in words.
        signals: the suspicion scores (:func:`~curvature_callback.analysis.suspicion_scores`) whose ranks are
            averaged, in order of preference.
        fallback: used when the run has none of ``signals`` (a module that returns no per-sample outputs).
        evidence: why, with the figures (docs/RESULTS.md).
    """

    question: str
    asks: str
    signals: tuple[str, ...]
    fallback: tuple[str, ...]
    evidence: str


#: one fixed rule per question
RULES: Mapping[str, Rule] = {r.question: r for r in (
    Rule("mislabeled", "Which labels are wrong?", ("train_loss", "loss"), ("loss", "curvature"),
         "the training loss summed over training (CSL, free) and the eval-mode loss rank flipped labels best in "
         "every study of ours and in the lab's full-size runs (CSL 0.985-0.987 vs curvature 0.972-0.982 AUROC); "
         "the mean of their ranks was within 0.0034 of the best single signal in all 19 augmented miniature "
         "settings (CIFAR-10 and Fashion-MNIST, 1-10 % noise, 2 seeds; curvature 0.05-0.13 below) and the best of 27 "
         "candidate rules on the 8 held-out settings of the miniature that memorizes (mean AUROC 0.893, CSG 0.827, "
         "curvature 0.780). Curvature and CSG add nothing here."),
    Rule("memorized", "Which samples did the network memorize (atypical, long-tailed)?", ("train_loss",),
         ("loss", "curvature"),
         "against Feldman & Zhang's memorization estimate on digits (100 models) the training loss (CSL) agrees "
         "best on the clean samples (Pearson 0.71, Spearman 0.61; AUROC 0.987 for the 37 memorized clean ones), "
         "ahead of the eval-mode loss (0.69, 0.60; 0.978), CSG (0.52, 0.55; 0.925) and curvature (0.34, 0.50; "
         "0.899); the lab reports CSL above curvature and CSG too."),
    Rule("duplicates", "Which samples are duplicates with conflicting labels?", ("loss", "confidence", "learning_time"),
         ("train_loss", "curvature"),
         "a copy whose twin carries another label splits the network's confidence between the two, and once the "
         "rest is memorized it is the one thing left unlearned: the eval-mode loss and confidence find the planted "
         "copies best before memorization, learning time after it. Their mean of ranks was the best of 30 candidate "
         "rules on 23 settings (19 augmented miniature settings and the 4 seed-0 memorizing ones: worst shortfall "
         "0.0058 to the best single signal, 22 of 23 within 0.005; loss + confidence alone 0.0066, 19 of 23) and, "
         "held out, on the 4 seed-1 memorizing settings 0.0168 at worst (loss + confidence 0.0340; CSG with learning "
         "time 0.0005, but CSG needs a backward pass and was never recorded before memorization). Curvature is 0.06-"
         "0.16 below. They come from the scoring pass and the training steps; without a pass the training loss "
         "answers. The pixel search (curvature-report's duplicate pairs) then names the pair."),
)}
#: the questions, in the order reports list them
QUESTIONS = tuple(RULES)


def rank_mean(scores: Mapping[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """The mean over ``names`` of each score's ranks in ``(0, 1]`` (among its finite values); a sample's mean is over
    the scores finite for it, NaN where none is."""
    stacked = []
    for name in names:
        s = np.asarray(scores[name], dtype=np.float64)
        r = np.full(s.shape, np.nan)
        finite = np.isfinite(s)
        if finite.any():
            r[finite] = ranks(s[finite])
        stacked.append(r)
    with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as sup:
        sup.filter(RuntimeWarning)  # all-NaN columns: NaN, as documented
        return np.nanmean(np.stack(stacked), axis=0)


def used_signals(scores: Mapping[str, np.ndarray]) -> dict[str, tuple[str, ...]]:
    """For each question, the signals its recommended score averages: those of its rule that the run has (a value
    for at least one sample), else its fallback's, else curvature."""
    has = {name for name, s in scores.items() if np.isfinite(np.asarray(s, dtype=np.float64)).any()}
    out = {}
    for q, rule in RULES.items():
        for chain in (rule.signals, rule.fallback, ("curvature",)):
            found = tuple(s for s in chain if s in has)
            if found:
                out[q] = found
                break
        else:
            out[q] = ()
    return out


def recommended_scores(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{question: float64 [N]}``, higher = more suspicious, for every question some signal of ``scores``
    answers (``scores``: :func:`~curvature_callback.analysis.suspicion_scores` of a store)."""
    return {q: rank_mean(scores, names) for q, names in used_signals(scores).items() if names}
