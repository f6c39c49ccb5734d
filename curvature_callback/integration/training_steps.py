"""What a LightningModule's ``training_step`` returns for the callback to record training-time signals (CSL,
learning time, forgetting) at no extra cost: the contract, a helper that meets it, and the check.

The contract: ``training_step`` returns a dict with, beside ``"loss"``,

- ``"sample_loss"``: ``[B]`` each sample's training loss (``reduction="none"``; detached or not);
- ``"sample_index"``: ``[B]`` each sample's index in the scored dataset (``0..N-1``; the training dataset wrapped in
  :class:`~curvature_callback.core.feeding.WithIndex` yields it as a third item);
- ``"sample_correct"``: ``[B]`` whether the sample was classified as its given label, or ``"logits"``: ``[B, C]``
  (then correct = ``argmax == target``, the target taken from the batch by ``batch_to_inputs``).

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

from torch import Tensor

__all__ = ["CONTRACT", "read_step_outputs", "sample_outputs"]

#: how to meet the contract, for messages
CONTRACT = (
    "To record them, wrap the training dataset in curvature_callback.WithIndex (items become (x, y, index)) and "
    "return from training_step `curvature_callback.sample_outputs(losses, index, logits=logits, targets=y)` with "
    "`losses = F.cross_entropy(logits, y, reduction='none')`: a dict with 'loss' (the mean), 'sample_loss' [B], "
    "'sample_index' [B] and 'sample_correct' [B]. Or pass CurvatureCallback(record_training=False) to silence this."
)


def sample_outputs(losses: Tensor, index: Tensor, *, logits: Tensor | None = None, targets: Tensor | None = None,
                   correct: Tensor | None = None) -> dict[str, Tensor]:
    """``training_step``'s return value that meets the contract: ``{"loss": losses.mean(), "sample_loss",
    "sample_index", "sample_correct"}``.

    Args:
        losses: ``[B]`` per-sample training losses (with gradients: ``"loss"`` is their mean, the optimized value).
        index: ``[B]`` the samples' dataset indices.
        logits: ``[B, C]`` with ``targets`` ``[B]``: correct = ``argmax == targets``.
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
    return {"loss": losses.mean(), "sample_loss": losses.detach(), "sample_index": index,
            "sample_correct": correct.detach()}


def read_step_outputs(outputs: Any, batch: Any,
                      batch_to_inputs: Callable[[Any], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor] | str:
    """``(index, loss, correct)`` from a training step's outputs, or a sentence saying what is missing.

    Only shapes and keys are looked at (no value is read: no wait for the device)."""
    if not isinstance(outputs, Mapping):
        return f"training_step returned {type(outputs).__name__}, not a dict"
    missing = [k for k in ("sample_loss", "sample_index") if not isinstance(outputs.get(k), Tensor)]
    if missing:
        return f"training_step returned a dict with keys {sorted(map(str, outputs))}, without {missing}"
    loss, index = outputs["sample_loss"], outputs["sample_index"]
    correct = outputs.get("sample_correct")
    if not isinstance(correct, Tensor):
        logits = outputs.get("logits")
        if not isinstance(logits, Tensor):
            return "training_step returned neither 'sample_correct' nor 'logits'"
        target = batch_to_inputs(batch)[1]
        if logits.dim() != 2 or not isinstance(target, Tensor) or target.shape != logits.shape[:1]:
            return (f"'logits' of shape {list(logits.shape)} with targets {getattr(target, 'shape', target)!s} "
                    "(expected [B, C] and [B]; return 'sample_correct' instead)")
        correct = logits.detach().argmax(1) == target
    shapes = {k: list(v.shape) for k, v in (("sample_loss", loss), ("sample_index", index),
                                            ("sample_correct", correct))}
    b = loss.numel()
    if loss.dim() != 1 or any(v.numel() != b for v in (index, correct)) or index.is_floating_point():
        return f"expected [B] per-sample values and integer indices, got shapes {shapes} and index {index.dtype}"
    return index, loss, correct
