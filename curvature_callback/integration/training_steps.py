"""What a LightningModule's ``training_step`` returns for the callback to record training-time signals (CSL,
learning time, forgetting) at no extra cost: the contract, a helper that meets it, and the check.

The contract: ``training_step`` returns a dict with, beside ``"loss"``,

- ``"sample_loss"``: ``[B]`` each sample's training loss (``reduction="none"``; detached or not);
- ``"sample_index"``: ``[B]`` each sample's index in the scored dataset (``0..N-1``; the training dataset wrapped in
  :class:`~curvature_callback.core.feeding.WithIndex` yields it as a third item);
- ``"sample_correct"``: ``[B]`` whether the sample was classified as its given label (bool, or integers 0 and 1),
  or ``"logits"``: ``[B, C]`` (then correct = ``argmax == target``, the target taken from the batch by
  ``batch_to_inputs``);
- optionally ``"sample_target"``: ``[B, ...]`` the targets the step was given, whose label keys the store checks
  against the labels it recorded (a resumed run whose labels changed is refused). Without it, the batch's targets
  (``batch_to_inputs(batch)[1]``) are checked when they are a ``[B]`` integer tensor.
- optionally ``"logits"``: ``[B, C]`` (floating): beside correctness, the class evidence the callback keeps
  (``CurvatureCallback(class_evidence=K)``: each sample's ``K`` most probable classes, their softmax summed over its
  presentations). Logits of another shape are not read for it.

Indices and correctness of another dtype (a bool index credits every presentation to samples 0 and 1; float
probabilities are not a count) raise a ``ValueError``: what they would add is silently wrong.

:func:`sample_outputs` builds that dict::

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        return sample_outputs(losses, index, logits=logits, targets=y)   # {"loss": losses.mean(), ...}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["CONTRACT", "read_step_outputs", "sample_outputs"]

#: the dtypes an index may have (and correctness beside bool)
_INTEGERS = frozenset((torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64))

#: how to meet the contract, for messages
CONTRACT = (
    "To record them, wrap the training dataset in curvature_callback.WithIndex (items become (x, y, index)) and "
    "return from training_step `curvature_callback.sample_outputs(losses, index, logits=logits, targets=y)` with "
    "`losses = F.cross_entropy(logits, y, reduction='none')`: a dict with 'loss' (the mean), 'sample_loss' [B], "
    "'sample_index' [B], 'sample_correct' [B] and 'sample_target' [B]. Or pass "
    "CurvatureCallback(record_training=False) to silence this."
)


def sample_outputs(losses: Tensor, index: Tensor, *, logits: Tensor | None = None, targets: Tensor | None = None,
                   correct: Tensor | None = None) -> dict[str, Tensor]:
    """``training_step``'s return value that meets the contract: ``{"loss": losses.mean(), "sample_loss",
    "sample_index", "sample_correct"}``, ``"sample_target"`` when ``targets`` are given and ``"logits"`` (detached:
    the class evidence) when ``logits`` are.

    Args:
        losses: ``[B]`` per-sample training losses (with gradients: ``"loss"`` is their mean, the optimized value).
        index: ``[B]`` the samples' dataset indices (integers).
        logits: ``[B, C]`` with ``targets`` ``[B]``: correct = ``argmax == targets``.
        targets: ``[B, ...]`` the targets the step was given: with ``logits``, what correct is measured against;
            with or without, what the store checks against the labels it recorded for these samples.
        correct: ``[B]`` booleans instead of ``logits`` and ``targets``.

    Example:
        >>> import torch
        >>> out = sample_outputs(torch.tensor([0.1, 2.0]), torch.tensor([7, 3]), logits=torch.tensor([[2.0, 0.0],
        ...                      [2.0, 0.0]]), targets=torch.tensor([0, 1]))
        >>> round(out["loss"].item(), 4), out["sample_correct"].tolist()
        (1.05, [True, False])
    """
    if losses.dim() != 1:
        raise ValueError(f"Expected per-sample losses of shape [B] (reduction='none'), got {list(losses.shape)}.")
    if correct is None:
        if logits is None or targets is None:
            raise ValueError("Expected `logits` and `targets`, or `correct`, to tell which samples were right.")
        correct = logits.detach().argmax(1) == targets
    out = {"loss": losses.mean(), "sample_loss": losses.detach(), "sample_index": index,
           "sample_correct": correct.detach()}
    if targets is not None:
        out["sample_target"] = targets.detach()
    if logits is not None:
        out["logits"] = logits.detach()  # a reference: the softmax is taken in the callback's fold
    return out


def _batch_targets(batch: Any, batch_to_inputs: Callable[[Any], tuple[Tensor, Tensor]]) -> Tensor | None:
    """The batch's targets when they are ``[B]`` integers (class labels), else None: nothing to check them by."""
    try:
        target = batch_to_inputs(batch)[1]
    except (TypeError, KeyError, IndexError, ValueError):  # a batch the function was not written for: no labels
        return None
    if isinstance(target, Tensor) and target.dim() == 1 and not (target.is_floating_point() or target.is_complex()):
        return target
    return None


def read_step_outputs(outputs: Any, batch: Any, batch_to_inputs: Callable[[Any], tuple[Tensor, Tensor]],
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None] | str:
    """``(index, loss, correct, target or None, logits or None)`` from a training step's outputs, or a sentence saying
    what is missing. Logits are returned when they are ``[B, C]`` floating (the class evidence), else None.

    Only shapes, dtypes and keys are looked at (no value is read: no wait for the device); correctness given as
    integers is checked to be 0 or 1 where the device is waited for anyway (:class:`~curvature_callback.core.steps.
    StepRecorder`'s fold).

    Raises:
        ValueError: ``sample_index`` is not integers, ``sample_correct`` is neither bool nor integers, or
            ``sample_target`` is not ``[B, ...]``: recorded, they would credit the wrong samples or counts.
    """
    if not isinstance(outputs, Mapping):
        return f"training_step returned {type(outputs).__name__}, not a dict"
    missing = [k for k in ("sample_loss", "sample_index") if not isinstance(outputs.get(k), Tensor)]
    if missing:
        return f"training_step returned a dict with keys {sorted(map(str, outputs))}, without {missing}"
    loss, index = outputs["sample_loss"], outputs["sample_index"]
    correct, target = outputs.get("sample_correct"), None
    if not isinstance(correct, Tensor):
        logits = outputs.get("logits")
        if not isinstance(logits, Tensor):
            return "training_step returned neither 'sample_correct' nor 'logits'"
        target = batch_to_inputs(batch)[1]
        if logits.dim() != 2 or not isinstance(target, Tensor) or target.shape != logits.shape[:1]:
            return (f"'logits' of shape {list(logits.shape)} with targets {getattr(target, 'shape', target)!s} "
                    "(expected [B, C] and [B]; return 'sample_correct' instead)")
        correct = logits.detach().argmax(1) == target
    b = loss.numel()
    if loss.dim() != 1 or index.numel() != b or correct.numel() != b:
        shapes = {k: list(v.shape) for k, v in (("sample_loss", loss), ("sample_index", index),
                                                ("sample_correct", correct))}
        return f"expected [B] per-sample values, got shapes {shapes}"
    if index.dtype not in _INTEGERS:  # one set lookup per step: the values are read in the fold, never here
        harm = ("would credit every presentation to samples 0 and 1" if index.dtype == torch.bool else
                "does not name a sample")
        raise ValueError(
            f"Expected 'sample_index' to hold integer dataset indices (0..N-1), got dtype {index.dtype}, which {harm}. "
            "Return the index the batch carries (WithIndex's third item: `x, y, index = batch`), as an integer tensor."
        )
    if correct.dtype is not torch.bool and correct.dtype not in _INTEGERS:
        raise ValueError(
            f"Expected 'sample_correct' to be bool (or integers 0 and 1): whether each sample was classified as its "
            f"given label, got dtype {correct.dtype} (probabilities or scores would be counted as right whenever they "
            "are not 0). Return `logits.argmax(1) == y` (no .float()), or pass `logits=` and `targets=` to "
            "sample_outputs."
        )
    given = outputs.get("sample_target")
    if given is not None:
        if not isinstance(given, Tensor) or given.dim() < 1 or given.shape[0] != b:
            raise ValueError(
                f"Expected 'sample_target' to be a [B, ...] tensor of the step's targets (B = {b}), got "
                f"{list(given.shape) if isinstance(given, Tensor) else type(given).__name__}. Return the targets "
                "the loss was computed with (`targets=y` in sample_outputs), or leave the key out."
            )
        target = given
    elif target is None:  # not read for the logits: the batch's, when they are [B] integers
        target = _batch_targets(batch, batch_to_inputs)
        target = target if target is not None and target.shape == (b,) else None
    logits = outputs.get("logits")
    if not (isinstance(logits, Tensor) and logits.dim() == 2 and logits.shape[0] == b and logits.is_floating_point()):
        logits = None
    return index, loss, correct, target, logits
