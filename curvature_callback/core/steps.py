"""Training-time signals: each sample's loss and correctness at every training step it is seen, summed per epoch on
the training device (torch only; the Lightning glue is :mod:`curvature_callback.integration.callback`).

Per epoch and sample the recorder keeps (in one ``[5, N]`` float32 tensor, so that a step costs one
``index_add_`` and DDP one ``all_reduce``):

- ``seen``: presentations (1 per epoch with a plain sampler);
- ``loss``: the sum of the training losses (with augmentation, in ``train()`` mode: what the optimizer saw);
- ``correct``: presentations classified as the given label;
- ``forgetting``: forgetting events as Toneva et al. count them, at every minibatch: a presentation that is wrong
  when the sample's previous presentation (in this epoch or an earlier one) was right;
- ``last_correct``: whether the latest presentation was right (the state the next epoch's events start from).

Summed over epochs these give the cumulative sample loss (CSL; Ravikumar et al., ICML 2025), the learning time
(the first epoch after which a sample is never misclassified again) and the forgetting count; the store keeps the
sums (:mod:`curvature_callback.core.channels` defines the scores).

A step costs a list append: the presentations are folded into the sums every :attr:`StepRecorder.FLUSH_STEPS` steps
and at the epoch's end (where boolean masks wait for the device once); indices out of range and non-finite losses are
left out and counted, and the count is checked once per epoch (:meth:`StepRecorder.bad`).

Example:
    >>> import torch
    >>> r = StepRecorder(4, torch.device("cpu"))
    >>> r.add(torch.tensor([0, 2]), torch.tensor([0.5, 2.0]), torch.tensor([True, False]))
    >>> r.add(torch.tensor([0]), torch.tensor([0.25]), torch.tensor([False]))
    >>> r.epoch_sums()[:, 0].tolist()   # sample 0: seen twice, loss 0.75, right once, forgotten once, last wrong
    [2.0, 0.75, 1.0, 1.0, 0.0]
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["ROWS", "StepRecorder", "epoch_step_values"]

#: the rows of :attr:`StepRecorder.buffers`
ROWS = ("seen", "loss", "correct", "forgetting", "last_correct")


class StepRecorder:
    """One epoch's per-sample sums of the training steps, kept on the training device.

    A step only keeps references to its three ``[B]`` tensors (no kernel, no copy: the cost of a step is a list
    append); every :attr:`FLUSH_STEPS` steps, and at the epoch's end, the kept presentations are folded into the sums
    at once, in time order per sample (a stable sort by index), so that forgetting events between two presentations
    of a sample, in one chunk or across chunks and epochs, are counted as they happened.

    Args:
        n: the number of samples (indices ``0..n-1``).
        device: where the sums live (the model's device: a step then copies nothing).
        previous: ``[n]`` whether each sample's latest presentation before this epoch was right (1), wrong (0),
            or never seen (NaN); None: none seen.
    """

    #: steps kept before they are folded into the sums (bounds the memory the kept tensors take)
    FLUSH_STEPS = 256

    def __init__(self, n: int, device: torch.device, previous: np.ndarray | None = None) -> None:
        self.n = n
        self.device = device
        self.buffers = torch.zeros(len(ROWS), n, dtype=torch.float32, device=device)
        # the latest presentation's correctness: -1 never seen, 0 wrong, 1 right (int8: 1 byte per sample)
        state = np.full(n, -1, dtype=np.int8) if previous is None else np.where(
            np.isnan(previous), -1, np.asarray(previous) > 0.5).astype(np.int8)
        self.state = torch.as_tensor(state, device=device)
        self._bad = torch.zeros((), dtype=torch.int64, device=device)  # presentations left out (index, loss)
        self._kept: list[tuple[Tensor, Tensor, Tensor]] = []

    def add(self, index: Tensor, loss: Tensor, correct: Tensor) -> None:
        """Record one minibatch: ``[B]`` dataset indices, per-sample training losses and correctness."""
        self._kept.append((index.detach(), loss.detach(), correct.detach()))
        if len(self._kept) >= self.FLUSH_STEPS:
            self._flush()

    def _flush(self) -> None:
        """Fold the kept steps into the sums and the state."""
        if not self._kept:
            return
        idx = torch.cat([k[0].reshape(-1) for k in self._kept]).to(device=self.device, dtype=torch.int64)
        loss = torch.cat([k[1].reshape(-1) for k in self._kept]).to(device=self.device, dtype=torch.float32)
        right = torch.cat([k[2].reshape(-1) for k in self._kept]).to(device=self.device).to(torch.bool)
        self._kept = []
        ok = (idx >= 0) & (idx < self.n) & torch.isfinite(loss)
        self._bad += (~ok).sum()
        idx, loss, right = idx[ok], loss[ok], right[ok]
        order = torch.argsort(idx, stable=True)  # each sample's presentations together, in time order
        idx, loss, right = idx[order], loss[order], right[order]
        new = torch.ones_like(right)  # the first of its sample's presentations here
        new[1:] = idx[1:] != idx[:-1]
        before = torch.where(new, self.state[idx], torch.roll(right, 1).to(torch.int8))  # the previous presentation
        forgotten = (before == 1) & ~right
        rightf = right.to(torch.float32)
        self.buffers[:4].index_add_(1, idx, torch.stack((torch.ones_like(loss), loss, rightf,
                                                         forgotten.to(torch.float32))))
        last = torch.ones_like(right)  # the latest of its sample's presentations here
        last[:-1] = idx[:-1] != idx[1:]
        self.state[idx[last]] = right[last].to(torch.int8)

    def bad(self) -> Tensor:
        """Presentations left out so far this epoch (an index outside ``[0, n)`` or a non-finite loss): 0-d."""
        self._flush()
        return self._bad

    def epoch_sums(self) -> Tensor:
        """``[5, n]``: this recorder's rows (:data:`ROWS`), ``last_correct`` filled in, ready to be summed over
        ranks (a sample is seen on one rank per epoch; ranks that did not see it add zeros)."""
        self._flush()
        out = self.buffers.clone()
        out[4] = ((self.state == 1) & (out[0] > 0)).to(torch.float32)
        return out

    def next_epoch(self, reduced: Tensor) -> None:
        """Start the next epoch from the sums of every rank: the state becomes the global latest correctness."""
        seen = reduced[0] > 0
        self.state = torch.where(seen, (reduced[4] > 0).to(torch.int8), self.state)
        self.buffers.zero_()
        self._bad.zero_()


def epoch_step_values(reduced: np.ndarray, epoch: int, wrong_before: np.ndarray) -> tuple[np.ndarray, dict]:
    """The store's training-time values for one epoch, from the ranks' summed rows.

    Args:
        reduced: ``[5, N]`` summed :data:`ROWS`.
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
