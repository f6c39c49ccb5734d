"""The per-sample signals a store keeps ("channels"), one definition each.

A channel says what it means, how it is computed (from the scoring pass's forward at ``x``, or at the commit
from the store's previous state), how its epochs are reduced (the store's running mean, or the sum for event
counts) and its orientation: :meth:`Channel.suspicion` turns it into a score where **higher is more
suspicious**, the one convention of the analysis. Torch and numpy only.

Example:
    >>> [(c.name, c.orientation) for c in CHANNELS.values()][:3]
    [('curvature', 'high'), ('loss', 'high'), ('margin', 'low')]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch import Tensor

from curvature_callback.core.store_format import CLASS_MASS, CLASS_SLOT, PRIMARY

__all__ = [
    "CHANNELS", "CLASSIFICATION", "PRIMARY", "STEP_CHANNELS", "Channel", "class_evidence_channels",
    "classification_values", "forgetting_events",
]



def _mean(store: Any, name: str, which: str) -> np.ndarray:
    """The channel's running mean (or its value at the latest scored epoch) as float64."""
    get = store.channel_mean if which == "mean" else store.channel_last
    return np.array(get(name), dtype=np.float64)


def _curvature(store: Any, name: str, which: str) -> np.ndarray | None:
    """The curvature's epoch mean (or latest value); None for a store whose pass computed none (gradient, forward)."""
    if getattr(store, "pass_kind", "curvature") != "curvature":
        return None
    return _mean(store, name, which)


def _forgetting(store: Any, name: str, which: str) -> np.ndarray | None:
    """Forgetting-event counts, with samples never classified correctly ranked above all (Toneva et al. count them
    as forgotten infinitely often); NaN where never scored. Counts have no latest value: None for ``"last"``."""
    if which != "mean" or "correct" not in store.channels:
        return None
    events = np.array(store.sum_of(name), dtype=np.float64)
    never_correct = np.asarray(store.sum_of("correct")) == 0
    events[never_correct] = (events.max() if len(events) else 0.0) + 1.0
    return np.where(np.asarray(store.count) > 0, events, np.nan)


def _stepped(store: Any) -> np.ndarray | None:
    """Presentations per sample over the training steps recorded, or None where the store has none recorded."""
    if not getattr(store, "step_epochs", None):
        return None
    return np.array(store.sum_of("train_seen"), dtype=np.float64)


def _train_loss(store: Any, name: str, which: str) -> np.ndarray | None:
    """The cumulative sample loss per presentation (CSL / presentations: CSL's order when every sample is seen
    equally often, and fair when not); NaN where never seen."""
    seen = _stepped(store)
    if seen is None or which != "mean":
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen > 0, np.asarray(store.sum_of("train_loss")) / seen, np.nan)


def _learning_time(store: Any, name: str, which: str) -> np.ndarray | None:
    """One past the latest epoch with a misclassified presentation (0: right at every presentation); a sample
    wrong at the last epoch gets the highest value. NaN where never seen."""
    seen = _stepped(store)
    if seen is None or which != "mean":
        return None
    return np.where(seen > 0, np.asarray(store.channel_last("train_wrong_epoch"), dtype=np.float64) + 1.0, np.nan)


def _train_forgetting(store: Any, name: str, which: str) -> np.ndarray | None:
    """Forgetting events at every minibatch (Toneva et al.), with samples never right ranked above all."""
    seen = _stepped(store)
    if seen is None or which != "mean":
        return None
    events = np.array(store.sum_of("train_forgetting"), dtype=np.float64)
    events[np.asarray(store.sum_of("train_correct")) == 0] = (events.max() if len(events) else 0.0) + 1.0
    return np.where(seen > 0, events, np.nan)


@dataclass(frozen=True)
class Channel:
    """One per-sample signal of the store.

    Attributes:
        name: its file names in the store (``<name>_mean.npy``, ...; ``mean.npy`` for curvature).
        meaning: one line: what its suspicion score is.
        orientation: ``"high"`` if high values are suspicious, ``"low"`` if low ones are.
        source: ``"pass"``: computed from the scoring pass's forward at ``x``; ``"commit"``: from the pass's values
            and the store's previous state, when the epoch is committed; ``"steps"``: from the training steps'
            own outputs (:mod:`curvature_callback.core.steps`), every epoch, with augmentation.
        reduce: ``"mean"``: the epoch mean is the score; ``"sum"``: the count over epochs is.
        offset: added after the orientation's sign, so a fraction stays a fraction (``correct``: 1 - mean).
    """

    name: str
    meaning: str
    orientation: Literal["high", "low"]
    source: Literal["pass", "commit", "steps"] = "pass"
    reduce: Literal["mean", "sum"] = "mean"
    offset: float = 0.0
    _score: Callable[[Any, str, str], np.ndarray | None] | None = None

    def suspicion(self, store: Any, which: Literal["mean", "last"] = "mean") -> np.ndarray | None:
        """``float64 [N]``, higher = more suspicious, NaN where never scored; None where it has no such value."""
        if self._score is not None:
            return self._score(store, self.name, which)
        sign = 1.0 if self.orientation == "high" else -1.0
        return self.offset + sign * _mean(store, self.name, which)


#: every channel a store may hold, in the order reports list them
CHANNELS: Mapping[str, Channel] = {c.name: c for c in (
    Channel(PRIMARY, "epoch-mean input-loss curvature", "high", _score=_curvature),
    Channel("loss", "epoch-mean loss with the given label", "high"),
    Channel("margin", "negated epoch-mean margin (given-label logit minus the largest other; AUM-style)", "low"),
    Channel("confidence", "negated epoch-mean softmax probability of the given label", "low"),
    Channel("correct", "fraction of scored epochs misclassified", "low", offset=1.0),
    Channel("input_grad", "epoch-mean input-gradient norm ||grad_x l(x)|| in eval mode (the sample gradient; its sum "
            "over epochs is CSG, Ravikumar et al., ICLR 2026)", "high"),
    Channel("forgetting", "forgetting events (correct, then wrong at the next scored epoch); never learned ranks "
            "highest", "high", source="commit", reduce="sum", _score=_forgetting),
    Channel("train_loss", "cumulative training loss (CSL) per presentation: every training step's loss of the sample "
            "(with augmentation), summed, over its presentations", "high", source="steps", reduce="sum",
            _score=_train_loss),
    Channel("learning_time", "learning time: one past the last epoch in which a training step misclassified the "
            "sample", "high", source="steps", _score=_learning_time),
    Channel("train_forgetting", "forgetting events at every minibatch (Toneva et al.; right, then wrong at the "
            "next presentation); never right ranks highest", "high", source="steps", reduce="sum",
            _score=_train_forgetting),
)}
#: what a store keeps of the training steps (:func:`~curvature_callback.core.steps.epoch_step_values`); the scores
#: above with ``source="steps"`` read them
STEP_CHANNELS = ("train_seen", "train_loss", "train_correct", "train_forgetting", "train_last_correct",
                 "train_wrong_epoch")


def class_evidence_channels(k: int) -> tuple[str, ...]:
    """The training-time channels of ``K`` class-evidence slots (:func:`~curvature_callback.core.steps.
    epoch_class_values`): ``train_class_j`` (the ``j``-th most favoured class, -1 empty) then ``train_class_mass_j``
    (its softmax mass over the sample's presentations), latest values; the store adds them after :data:`STEP_CHANNELS`.

    Example:
        >>> class_evidence_channels(2)
        ('train_class_0', 'train_class_1', 'train_class_mass_0', 'train_class_mass_1')
    """
    return (*(CLASS_SLOT.format(j) for j in range(k)), *(CLASS_MASS.format(j) for j in range(k)))


#: the channels scored beside curvature with the default (cross-entropy) loss
CLASSIFICATION = ("loss", "margin", "confidence", "correct", "input_grad", "forgetting")


def classification_values(outputs: Tensor, targets: Tensor, loss: Tensor) -> dict[str, Tensor]:
    """The pass's channels at ``x``: loss, margin (given-label logit minus the largest other), confidence (softmax
    probability of the given label) and correctness, in ``loss``'s dtype.

    Example:
        >>> import torch
        >>> v = classification_values(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]),
        ...                           torch.tensor([0.1, 1.3]))
        >>> v["margin"].tolist(), v["correct"].tolist()
        ([2.0, -1.0], [1.0, 0.0])
    """
    if outputs.dim() != 2 or targets.dim() != 1 or targets.is_floating_point():
        raise ValueError(
            f"Expected logits [B, classes] and integer labels [B] to record margin and confidence, got outputs of "
            f"shape {list(outputs.shape)} and targets {targets.dtype}{list(targets.shape)}. Pass "
            "record_outputs=False, or a per-sample `loss_fn`."
        )
    logits = outputs.to(loss.dtype)
    given = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], float("-inf")).amax(1)
    return {
        "loss": loss,
        "margin": given - others,
        "confidence": logits.softmax(1).gather(1, targets[:, None]).squeeze(1),
        "correct": (logits.argmax(1) == targets).to(loss.dtype),
    }


def forgetting_events(correct_before: np.ndarray, correct_now: np.ndarray) -> np.ndarray:
    """1.0 where a sample correct at its previous scored epoch is wrong now (a forgetting event), else 0.0.

    Example:
        >>> forgetting_events(np.array([1.0, 1.0, 0.0, np.nan]), np.array([0.0, 1.0, 0.0, 0.0])).tolist()
        [1.0, 0.0, 0.0, 0.0]
    """
    return ((np.asarray(correct_before) == 1) & (np.asarray(correct_now) == 0)).astype(np.float64)
