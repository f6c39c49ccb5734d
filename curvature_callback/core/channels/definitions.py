"""The per-sample signals a store keeps ("channels"), one definition each, and which of them a store records.

A channel says what it means, how it is computed (from the scoring pass's forward at ``x``, at the commit from the
store's previous state, or from the training steps), which pass kinds record it, how its epochs are reduced (the
store's running mean, or the sum for event counts) and its orientation: :meth:`Channel.suspicion` turns it into a
score where **higher is more suspicious**, the one convention of the analysis. Numpy only (torch is not imported:
the store reads these names).

Example:
    >>> [(c.name, c.orientation) for c in CHANNELS.values()][:3]
    [('curvature', 'high'), ('loss', 'high'), ('margin', 'low')]
    >>> pass_channels("forward")
    ('loss', 'margin', 'confidence', 'correct', 'forgetting')
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from curvature_callback.core.settings import PASS_KINDS
from curvature_callback.core.store_format import PRIMARY, StoreCorruptError, read_meta

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "CHANNELS", "CLASSIFICATION", "CLASS_MASS", "CLASS_SLOT", "EARLY_MASS", "EARLY_SEEN", "EARLY_SLOT", "PRIMARY",
    "STEP_CHANNELS", "Channel", "check_class_slot_names", "class_evidence_channels", "class_slots", "class_slots_at",
    "classification_values", "early_evidence_channels", "evidence_names_problem", "evidence_window_at",
    "pass_channels", "step_channels",
]

#: the training-time channels of the class evidence (:func:`~curvature_callback.core.steps.merge_evidence`), slot ``j``
#: of ``K``: each sample's ``j``-th most favoured class (a whole number, -1 for an empty slot) and its softmax mass
#: summed over the sample's presentations, both as latest values (``_last.npy``), slots by mass descending
CLASS_SLOT, CLASS_MASS = "train_class_{}", "train_class_mass_{}"
#: a class-evidence channel's name: group 1 says a mass, group 2 is the slot
SLOT = re.compile(r"train_class_(mass_)?(\d+)")
#: the early window's class evidence (``evidence_window=W``): the same slots summed over the presentations of the
#: first ``W`` epochs only, then frozen (:func:`~curvature_callback.core.channels.merge.merge_step_values`), and
#: ``train_early_seen``, the presentations within the window
EARLY_SLOT, EARLY_MASS, EARLY_SEEN = "train_early_class_{}", "train_early_class_mass_{}", "train_early_seen"
#: an early class-evidence slot's name, grouped as :data:`SLOT`
EARLY = re.compile(r"train_early_class_(mass_)?(\d+)")


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
        passes: the pass kinds whose store records it (:func:`pass_channels`); none for the training-time channels,
            which the training steps record whatever the pass.
        classification: whether it needs logits ``[B, C]`` and integer labels (:func:`classification_values`), so
            that a pass with a per-sample loss of one's own does not record it.
    """

    name: str
    meaning: str
    orientation: Literal["high", "low"]
    source: Literal["pass", "commit", "steps"] = "pass"
    reduce: Literal["mean", "sum"] = "mean"
    offset: float = 0.0
    passes: tuple[str, ...] = PASS_KINDS
    classification: bool = False
    _score: Callable[[Any, str, str], np.ndarray | None] | None = None

    def suspicion(self, store: Any, which: Literal["mean", "last"] = "mean") -> np.ndarray | None:
        """``float64 [N]``, higher = more suspicious, NaN where never scored; None where it has no such value."""
        if self._score is not None:
            return self._score(store, self.name, which)
        sign = 1.0 if self.orientation == "high" else -1.0
        return self.offset + sign * _mean(store, self.name, which)


#: every channel a store may hold, in the order reports list them
CHANNELS: Mapping[str, Channel] = {c.name: c for c in (
    Channel(PRIMARY, "epoch-mean input-loss curvature", "high", passes=("curvature",), _score=_curvature),
    Channel("loss", "epoch-mean loss with the given label", "high"),
    Channel("margin", "negated epoch-mean margin (given-label logit minus the largest other; AUM-style)", "low",
            classification=True),
    Channel("confidence", "negated epoch-mean softmax probability of the given label", "low", classification=True),
    Channel("correct", "fraction of scored epochs misclassified", "low", offset=1.0, classification=True),
    Channel("input_grad", "epoch-mean input-gradient norm ||grad_x l(x)|| in eval mode (the sample gradient; its sum "
            "over epochs is CSG, Ravikumar et al., ICLR 2026)", "high", passes=("curvature", "gradient")),
    Channel("forgetting", "forgetting events (correct, then wrong at the next scored epoch); never learned ranks "
            "highest", "high", source="commit", reduce="sum", classification=True, _score=_forgetting),
    Channel("train_loss", "cumulative training loss (CSL) per presentation: every training step's loss of the sample "
            "(with augmentation), summed, over its presentations", "high", source="steps", reduce="sum", passes=(),
            _score=_train_loss),
    Channel("learning_time", "learning time: one past the last epoch in which a training step misclassified the "
            "sample", "high", source="steps", passes=(), _score=_learning_time),
    Channel("train_forgetting", "forgetting events at every minibatch (Toneva et al.; right, then wrong at the "
            "next presentation); never right ranks highest", "high", source="steps", reduce="sum", passes=(),
            _score=_train_forgetting),
)}
#: what a store keeps of the training steps (:func:`~curvature_callback.core.steps.epoch_step_values`); the scores
#: above with ``source="steps"`` read them
STEP_CHANNELS = ("train_seen", "train_loss", "train_correct", "train_forgetting", "train_last_correct",
                 "train_wrong_epoch")


def class_evidence_channels(k: int) -> tuple[str, ...]:
    """The training-time channels of ``K`` class-evidence slots (:func:`~curvature_callback.core.channels.merge.
    epoch_class_values`): ``train_class_j`` (the ``j``-th most favoured class, -1 empty) then ``train_class_mass_j``
    (its softmax mass over the sample's presentations), latest values; the store adds them after :data:`STEP_CHANNELS`.

    Example:
        >>> class_evidence_channels(2)
        ('train_class_0', 'train_class_1', 'train_class_mass_0', 'train_class_mass_1')
    """
    return (*(CLASS_SLOT.format(j) for j in range(k)), *(CLASS_MASS.format(j) for j in range(k)))


def early_evidence_channels(k: int) -> tuple[str, ...]:
    """The training-time channels of the early window's ``K`` class-evidence slots: ``train_early_seen`` (the
    presentations within the window), then ``train_early_class_j`` and ``train_early_class_mass_j`` as in
    :func:`class_evidence_channels`; the store adds them after the whole run's slots.

    Example:
        >>> early_evidence_channels(1)
        ('train_early_seen', 'train_early_class_0', 'train_early_class_mass_0')
    """
    return (EARLY_SEEN, *(EARLY_SLOT.format(j) for j in range(k)), *(EARLY_MASS.format(j) for j in range(k)))


def class_slots(step_channels: list[str]) -> int:
    """The number of class-evidence slots ``K`` among a store's training-time channels (0: none recorded).

    Example:
        >>> class_slots(["train_seen", "train_class_0", "train_class_1", "train_class_mass_0", "train_class_mass_1"])
        2
    """
    return sum(1 for c in step_channels if (m := SLOT.fullmatch(c)) and not m.group(1))


def evidence_names_problem(step_channels: list[str], window: int) -> str | None:
    """What is wrong with a store's class-evidence channel names for its early window ``window`` (meta.json's
    ``evidence_window``), or None: ``train_class_j`` and ``train_class_mass_j`` for every slot ``j = 0..K-1``, and
    :func:`early_evidence_channels` of the same ``K >= 1`` exactly when the window is ``> 0``.

    Example:
        >>> evidence_names_problem(["train_class_0", "train_class_mass_0", *early_evidence_channels(1)], 8) is None
        True
    """
    slots = [c for c in step_channels if SLOT.fullmatch(c)]
    k = class_slots(slots)
    if sorted(slots) != sorted(class_evidence_channels(k)):
        return (f"expected class-evidence 'step_channels' {CLASS_SLOT.format('j')!r} and {CLASS_MASS.format('j')!r} "
                f"for every slot j = 0..K-1, got {slots!r}")
    early = [c for c in step_channels if c == EARLY_SEEN or EARLY.fullmatch(c)]
    want = list(early_evidence_channels(k)) if window > 0 else []
    if sorted(early) != sorted(want) or (window > 0 and not k):
        return (f"expected the early window's 'step_channels' {want!r} (evidence_window={window}"
                f"{', with class-evidence slots' if window > 0 and not k else ''}), got {early!r}")
    return None


def check_class_slot_names(path: Path, step_channels: list[str], window: int = 0) -> None:
    """Refuse a ``meta.json`` (at ``path``) whose class-evidence channels do not fit (:func:`evidence_names_problem`).

    Raises:
        StoreCorruptError: naming meta.json and the slots it lists.
    """
    problem = evidence_names_problem(step_channels, window)
    if problem is not None:
        raise StoreCorruptError(
            f"{path} is damaged: {problem}. Restore meta.json from a backup or use another `directory`; a damaged "
            "store is refused, not repaired."
        )


def _step_meta(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The ``meta.json`` of the store at ``directory`` where it is readable, its evidence names fit and it has
    training-time channels; else None (opening it then says what it finds)."""
    path = Path(directory) / "meta.json"
    if not path.is_file():
        return None
    try:
        meta, _ = read_meta(Path(directory))
        check_class_slot_names(path, meta["step_channels"], meta.get("evidence_window", 0))
    except (StoreCorruptError, OSError, ValueError):
        return None
    return meta if meta.get("step_channels") else None


def class_slots_at(directory: str | os.PathLike) -> int | None:
    """The class-evidence slots ``K`` of the store at ``directory`` (0: made without them), or None where there is no
    readable store with training-time channels (opening it then says what it finds): what a resumed run follows.
    """
    meta = _step_meta(directory)
    return None if meta is None else class_slots(list(meta["step_channels"]))


def evidence_window_at(directory: str | os.PathLike) -> int | None:
    """The early class-evidence window ``W`` of the store at ``directory`` (0: none, as in a store made before the
    window existed), or None where there is no readable store with training-time channels: what a resumed run
    follows."""
    meta = _step_meta(directory)
    return None if meta is None else int(meta.get("evidence_window", 0))


def pass_channels(pass_kind: str = "curvature", *, classification: bool = True,
                  record_outputs: bool = True) -> tuple[str, ...]:
    """The channels a pass of ``pass_kind`` stores beside curvature (a store's ``channels``), from each channel's
    ``passes`` and ``classification``: what the callback records, for a store made without it.

    Args:
        pass_kind: ``"curvature"``, ``"gradient"`` or ``"forward"`` (a forward pass has no input gradient).
        classification: whether the pass sees logits ``[B, C]`` and integer labels (the default cross-entropy
            loss); False (a per-sample loss of one's own) keeps the loss and the input-gradient norm alone.
        record_outputs: False: none (the pass stores curvature alone).

    Example:
        >>> pass_channels("curvature"), pass_channels("gradient", classification=False)
        (('loss', 'margin', 'confidence', 'correct', 'input_grad', 'forgetting'), ('loss', 'input_grad'))
    """
    if pass_kind not in PASS_KINDS:
        raise ValueError(f"Expected `pass_kind` one of {list(PASS_KINDS)}, got {pass_kind!r}.")
    if not record_outputs:
        return ()
    return tuple(c.name for c in CHANNELS.values() if c.name != PRIMARY and pass_kind in c.passes
                 and (classification or not c.classification))


def step_channels(class_evidence: int = 0, evidence_window: int = 0) -> tuple[str, ...]:
    """The training-time channels a store keeps of the training steps: :data:`STEP_CHANNELS`, then the ``K``
    class-evidence slots (:func:`class_evidence_channels`; 0: none), then, with an early window ``W > 0``, the
    window's own slots (:func:`early_evidence_channels`).

    Raises:
        ValueError: a window without class-evidence slots (nothing to keep apart).

    Example:
        >>> step_channels(1)[-3:]
        ('train_wrong_epoch', 'train_class_0', 'train_class_mass_0')
        >>> step_channels(1, 8)[-3:]
        ('train_early_seen', 'train_early_class_0', 'train_early_class_mass_0')
    """
    if evidence_window and not class_evidence:
        raise ValueError(f"Expected class_evidence >= 1 with evidence_window={evidence_window} (the window keeps "
                         "the class evidence of its first epochs apart), got class_evidence=0: set class_evidence, or "
                         "evidence_window=0.")
    early = early_evidence_channels(class_evidence) if evidence_window else ()
    return (*STEP_CHANNELS, *class_evidence_channels(class_evidence), *early)


#: the channels scored beside curvature with the default (cross-entropy) loss
CLASSIFICATION = pass_channels("curvature")


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
