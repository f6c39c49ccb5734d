"""Training-time signals: each sample's loss and correctness at every training step it is seen, summed per epoch on
the training device (torch only; the Lightning glue is :mod:`curvature_callback.integration.callback`).

Per epoch and sample the recorder keeps (in one ``[5, N]`` float32 tensor, so that a fold costs one ``index_add_``
and DDP one ``all_reduce``):

- ``seen``: presentations (1 per epoch with a plain sampler);
- ``loss``: the sum of the training losses (with augmentation, in ``train()`` mode: what the optimizer saw);
- ``correct``: presentations classified as the given label;
- ``forgetting``: forgetting events as Toneva et al. count them, at every minibatch: a presentation that is wrong
  when the sample's previous presentation (in this epoch or an earlier one) was right;
- ``last_correct``: whether the latest presentation was right (the state the next epoch's events start from).

Summed over epochs these give the cumulative sample loss (CSL; Ravikumar et al., ICML 2025), the learning time
(the first epoch after which a sample is never misclassified again) and the forgetting count; the store keeps the
sums (:mod:`curvature_callback.core.channels` defines the scores).

Beside the sums, the recorder keeps the label key (:func:`label_keys`) each sample was presented with this epoch, as
the largest and the negated smallest key seen (``[2, N]`` int64: DDP combines ranks with one ``all_reduce`` MAX): a
sample presented under two labels in one epoch is told apart (:func:`label_conflicts`), and the store checks the keys
against the labels it recorded before it adds anything.

With ``classes=K`` the recorder also keeps each sample's **class evidence** this epoch: ``K`` slots of (class, mass),
the softmax probabilities of the ``min(K, C)`` most probable classes of every presentation that came with logits,
summed per class (:func:`merge_evidence`; ``[N, K]`` int32 and float32, the most favoured first). A class that enters
full slots evicts the one with the least mass (it and its mass are dropped): a slot's mass is the exact sum over the
presentations since its class last entered, so the evidence is exact when ``K >= C`` (every class always has a slot)
or when no class ever leaves the top ``K``, and otherwise a lower bound per class. The store keeps the running slots
over all epochs, merged at each commit (:func:`~curvature_callback.core.channels.merge.epoch_class_values`).

A step costs a list append: the presentations are folded into the sums every :attr:`StepRecorder.FLUSH_STEPS` steps
and at the epoch's end (where boolean masks wait for the device once); indices out of range and non-finite losses are
left out and counted, and the count is checked once per epoch (:meth:`StepRecorder.bad`). Correctness given as
integers must be 0 or 1: checked in the fold, where the device is waited for anyway.

Example:
    >>> import torch
    >>> r = StepRecorder(4, torch.device("cpu"))
    >>> r.add(torch.tensor([0, 2]), torch.tensor([0.5, 2.0]), torch.tensor([True, False]))
    >>> r.add(torch.tensor([0]), torch.tensor([0.25]), torch.tensor([False]))
    >>> r.epoch_sums()[:, 0].tolist()   # sample 0: seen twice, loss 0.75, right once, forgotten once, last wrong
    [2.0, 0.75, 1.0, 1.0, 0.0]
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from curvature_callback.core.store_format import LABEL_UNKNOWN

__all__ = [
    "LOSS_JUMP", "ROWS", "StepRecorder", "label_conflicts", "label_keys", "loss_jump", "merge_evidence",
    "repeated_indices",
]

#: the rows of :attr:`StepRecorder.buffers`
ROWS = ("seen", "loss", "correct", "forgetting", "last_correct")


def label_keys(targets: Tensor) -> Tensor:
    """``[B]`` int64 keys of the given labels, compared with the ones a store recorded.

    Integer class labels (``[B]``) are their own key; any other target (soft labels, masks, regression values)
    gets a 63-bit key from blake2b of its bytes, dtype and shape, so a changed target changes the key. The scoring
    pass and the training steps key labels with this one function, so that the store compares like with like.

    Example:
        >>> label_keys(torch.tensor([3, 0])).tolist()
        [3, 0]
    """
    if targets.dim() == 1 and not (targets.is_floating_point() or targets.is_complex()):
        return targets.to(torch.int64)
    rows = targets.detach().cpu().contiguous()
    shape = f"|{rows.dtype}|{tuple(rows.shape[1:])}".encode()
    keys = [int.from_bytes(hashlib.blake2b(row.reshape(-1).view(torch.uint8).numpy().tobytes() + shape,
                                           digest_size=8).digest(), "little") >> 1 for row in rows]
    return torch.tensor(keys, dtype=torch.int64, device=targets.device)


def merge_evidence(classes: Tensor, mass: Tensor, more_classes: Tensor, more_mass: Tensor,
                   k: int) -> tuple[Tensor, Tensor]:
    """Class evidence ``(classes, mass)`` with more evidence added, kept in ``k`` slots per row.

    The classes of both (``-1``: an empty slot, mass 0) are united, the masses of a class in both added, and the
    ``k`` with the most mass kept, the most first (ties: the smaller class first; empty slots last). A class that does
    not make it into the ``k`` slots is dropped with its mass (the slot with the least mass is evicted): exact when
    the classes of both fit (``K >= C``), else each kept mass is at most the class's true sum. Each row's classes must
    be distinct within each argument.

    Args:
        classes, mass: ``[M, Ka]`` int class ids and their masses.
        more_classes, more_mass: ``[M, Kb]`` the same, to add.
        k: the slots kept.

    Returns:
        ``[M, k]`` classes (``classes``' dtype) and masses (``mass``' dtype).

    Example:
        >>> c, m = merge_evidence(torch.tensor([[2, 0]]), torch.tensor([[0.5, 0.25]]), torch.tensor([[0, 1]]),
        ...                       torch.tensor([[0.5, 0.375]]), 2)
        >>> c.tolist(), m.tolist()  # class 0: 0.25 + 0.5; class 1 (0.375) has less mass than class 2 (0.5): dropped
        ([[0, 2]], [[0.75, 0.5]])
    """
    more_mass = more_mass.to(mass.dtype)
    match = (more_classes[:, :, None] == classes[:, None, :]) & (more_classes[:, :, None] >= 0)  # [M, Kb, Ka]
    mass = mass + (match.to(mass.dtype) * more_mass[:, :, None]).sum(1)  # one term at most: exact
    taken = match.any(2)
    cls = torch.cat((classes, torch.where(taken, -1, more_classes).to(classes.dtype)), 1)
    mass = torch.cat((mass, torch.where(taken, 0, more_mass)), 1)
    if cls.shape[1] < k:  # fewer classes than slots: the rest stay empty
        pad = k - cls.shape[1]
        cls = torch.cat((cls, cls.new_full((len(cls), pad), -1)), 1)
        mass = torch.cat((mass, mass.new_zeros((len(mass), pad))), 1)
    return _by_mass(cls, mass, k)


def _by_mass(cls: Tensor, mass: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` slots with the most mass per row, the most first; ties: the smaller class first; empty slots last."""
    order = torch.argsort(cls, dim=1, stable=True)
    cls, mass = cls.gather(1, order), mass.gather(1, order)
    order = torch.argsort(torch.where(cls < 0, float("inf"), -mass), dim=1, stable=True)[:, :k]
    cls, mass = cls.gather(1, order), mass.gather(1, order)
    return cls, torch.where(cls < 0, 0, mass)


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
        classes: ``K``, the class-evidence slots per sample (0: none kept); see the module's docstring.
    """

    #: steps kept before they are folded into the sums (bounds the memory the kept tensors take)
    FLUSH_STEPS = 256
    #: bytes of kept logits that fold early (ImageNet's 1,000 classes in float32, batch 256: every 64 steps)
    FLUSH_BYTES = 64 << 20

    def __init__(self, n: int, device: torch.device, previous: np.ndarray | None = None, classes: int = 0) -> None:
        self.n = n
        self.k = classes
        # this epoch's class evidence: the K most favoured classes (-1: empty) and their summed probabilities
        self.evidence = (torch.full((n, classes), -1, dtype=torch.int32, device=device),
                         torch.zeros(n, classes, dtype=torch.float32, device=device))
        self._kept_bytes = 0
        self.device = device
        self.buffers = torch.zeros(len(ROWS), n, dtype=torch.float32, device=device)
        # the latest presentation's correctness: -1 never seen, 0 wrong, 1 right (int8: 1 byte per sample)
        state = np.full(n, -1, dtype=np.int8) if previous is None else np.where(
            np.isnan(previous), -1, np.asarray(previous) > 0.5).astype(np.int8)
        self.state = torch.as_tensor(state, device=device)
        self._bad = torch.zeros((), dtype=torch.int64, device=device)  # presentations left out (index, loss)
        # this epoch's label keys per sample: the largest and the negated smallest seen (LABEL_UNKNOWN: none known)
        self.keys = torch.full((2, n), LABEL_UNKNOWN, dtype=torch.int64, device=device)
        self._kept: list[tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]] = []

    def add(self, index: Tensor, loss: Tensor, correct: Tensor, target: Tensor | None = None,
            logits: Tensor | None = None) -> None:
        """Record one minibatch: ``[B]`` dataset indices, per-sample training losses, correctness (bool, or integer 0
        and 1), when known the targets the step was given (``[B, ...]``, keyed by :func:`label_keys`) and the
        logits (``[B, C]``: class evidence, when the recorder keeps it)."""
        logits = None if logits is None or not self.k else logits.detach()
        self._kept.append((index.detach(), loss.detach(), correct.detach(),
                           None if target is None else target.detach(), logits))
        if logits is not None:
            self._kept_bytes += logits.numel() * logits.element_size()
        if len(self._kept) >= self.FLUSH_STEPS or self._kept_bytes >= self.FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        """Fold the kept steps into the sums, the state and the label keys."""
        if not self._kept:
            return
        kept, self._kept, self._kept_bytes = self._kept, [], 0
        idx = torch.cat([k[0].reshape(-1) for k in kept]).to(device=self.device, dtype=torch.int64)
        loss = torch.cat([k[1].reshape(-1) for k in kept]).to(device=self.device, dtype=torch.float32)
        right = torch.cat([k[2].reshape(-1).to(self.device) for k in kept])
        if right.dtype != torch.bool:  # an integer dtype (read_step_outputs refuses others): 0 and 1 only
            odd = (right != 0) & (right != 1)
            if bool(odd.any()):
                raise ValueError(
                    f"Expected 'sample_correct' to be 0 or 1 (whether each sample was classified as its given label), "
                    f"got {right.dtype} values {right[odd].unique()[:5].tolist()}: return a bool tensor, e.g. "
                    "`logits.argmax(1) == y`, or pass `logits=` and `targets=` to sample_outputs."
                )
            right = right.to(torch.bool)
        keys = self._keys([k[3] for k in kept], [k[0].numel() for k in kept])
        ok = (idx >= 0) & (idx < self.n) & torch.isfinite(loss)
        self._bad += (~ok).sum()
        evidence = self._top_classes(kept) if any(k[4] is not None for k in kept) else None
        idx, loss, right, keys = idx[ok], loss[ok], right[ok], keys[ok]
        known = keys != LABEL_UNKNOWN  # an unknown key is the smallest int64: a no-op for the max, not negated
        self.keys[0].scatter_reduce_(0, idx, keys, "amax")
        self.keys[1].scatter_reduce_(0, idx, torch.where(known, -keys, keys), "amax")
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
        if evidence is not None:
            self._fold_evidence(idx, new, evidence[0][ok][order], evidence[1][ok][order])

    def _top_classes(self, kept: list) -> tuple[Tensor, Tensor]:
        """``[P, K]`` the kept presentations' ``min(K, C)`` most probable classes (int32, the rest -1) and their softmax
        probabilities (float32, the rest 0): the top ``K`` logits, ``exp(logit - logsumexp)`` (no ``[P, C]``
        probabilities are made). A presentation without logits, or with logits that are not finite, has none."""
        sizes = [k[0].numel() for k in kept]
        logits = torch.cat([k[4].to(self.device) for k in kept if k[4] is not None]).to(torch.float32)
        top, cls = logits.topk(min(self.k, logits.shape[1]), dim=1)  # the most probable first
        total = torch.logsumexp(logits, 1, keepdim=True)
        mass = (top - total).exp()
        bad = ~(torch.isfinite(total) & torch.isfinite(mass).all(1, keepdim=True)).expand_as(mass)  # NaN or +inf logits
        cls, mass = cls.to(torch.int32).masked_fill(bad, -1), mass.masked_fill(bad, 0.0)
        if self.k > cls.shape[1] or len(cls) < sum(sizes):  # fewer classes than slots, or steps without logits
            out = (torch.full((sum(sizes), self.k), -1, dtype=torch.int32, device=self.device),
                   torch.zeros(sum(sizes), self.k, dtype=torch.float32, device=self.device))
            rows = torch.cat([torch.full((size,), k[4] is not None, dtype=torch.bool, device=self.device)
                              for k, size in zip(kept, sizes, strict=True)])
            out[0][rows, :cls.shape[1]], out[1][rows, :cls.shape[1]] = cls, mass
            cls, mass = out
        return cls, mass

    def _fold_evidence(self, idx: Tensor, first: Tensor, cls: Tensor, mass: Tensor) -> None:
        """Add the presentations' top classes (:meth:`_top_classes`, sorted like ``idx``: by sample, in time order;
        ``first`` marks each sample's first here) to the epoch's evidence, in rounds: the ``r``-th presentation of
        every sample in round ``r`` (one round unless a sample comes twice between two folds). A sample's first
        evidence of the epoch is its presentation's top ``K`` (what merging into empty slots gives, without it)."""
        if not len(idx):
            return
        at = torch.arange(len(idx), device=idx.device)
        rank = at - torch.cummax(torch.where(first, at, 0), 0).values  # which presentation of its sample, in the fold
        slots, masses = self.evidence
        for r in range(int(rank.max()) + 1):
            now = first if r == 0 else rank == r
            i = idx[now]
            if r == 0 and bool((slots[i, 0] < 0).all()):  # no evidence yet this epoch (the usual first fold)
                slots[i], masses[i] = _by_mass(cls[now], mass[now], self.k)
            else:
                slots[i], masses[i] = merge_evidence(slots[i], masses[i], cls[now], mass[now], self.k)

    def _keys(self, targets: list[Tensor | None], sizes: list[int]) -> Tensor:
        """The label keys of the kept steps' presentations (:data:`LABEL_UNKNOWN` for a step without targets): class
        labels, the usual case, in one cast of their concatenation; other targets hashed step by step."""
        if all(t is None for t in targets):
            return torch.full((sum(sizes),), LABEL_UNKNOWN, dtype=torch.int64, device=self.device)
        if all(t is not None and t.dim() == 1 and not (t.is_floating_point() or t.is_complex()) for t in targets):
            return torch.cat(targets).to(device=self.device, dtype=torch.int64)  # type: ignore[arg-type]
        return torch.cat([torch.full((size,), LABEL_UNKNOWN, dtype=torch.int64, device=self.device) if t is None
                          else label_keys(t).to(self.device) for t, size in zip(targets, sizes, strict=True)])

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

    def epoch_keys(self) -> Tensor:
        """``[2, n]`` int64: the largest and the negated smallest label key of each sample's presentations this
        epoch (:data:`LABEL_UNKNOWN` where none is known), ready for an ``all_reduce`` MAX over ranks."""
        self._flush()
        return self.keys.clone()

    def epoch_evidence(self) -> Tensor:
        """``[n, 2K + 1]`` float32: this epoch's evidence, ``class + 1`` (0: empty) and mass per slot, and 1 where this
        rank has evidence for the sample, ready to be summed over ranks (:meth:`combine_evidence` undoes it; class
        ids below 2**24, exact in float32)."""
        self._flush()
        slots, masses = self.evidence
        return torch.cat(((slots + 1).to(torch.float32), masses, (slots[:, :1] >= 0).to(torch.float32)), 1)

    def combine_evidence(self, reduced: Tensor, all_gather: Any = None) -> tuple[Tensor, Tensor]:
        """The epoch's evidence over every rank, from :meth:`epoch_evidence` summed over ranks: ``[n, K]`` int64
        classes (-1: empty) and float32 masses.

        A sample with evidence on one rank (the rule: a sample is on one rank per epoch) reads the sum as it is; one
        with evidence on several (``DistributedSampler``'s padding presents a few samples twice) has every rank's
        slots gathered and merged in rank order (:func:`merge_evidence`). Collectives: every rank calls it with the
        same ``reduced``; ``all_gather(tensor) -> [world, ...]`` runs only where some sample has several ranks.
        """
        k = self.k
        classes = reduced[:, :k].round().to(torch.int64) - 1
        mass = reduced[:, k:2 * k].clone()
        several = torch.nonzero(reduced[:, 2 * k] > 1.5).reshape(-1)
        if len(several):
            slots, masses = self.evidence
            mine = torch.cat((slots[several].to(torch.float32), masses[several]), 1)
            every = all_gather(mine).reshape(-1, len(several), 2 * k)
            c, m = every[0, :, :k].to(torch.int64), every[0, :, k:]
            for rank in every[1:]:
                c, m = merge_evidence(c, m, rank[:, :k].to(torch.int64), rank[:, k:], k)
            classes[several], mass[several] = c.to(classes.device), m.to(mass.device)
        return classes, mass

    def next_epoch(self, reduced: Tensor) -> None:
        """Start the next epoch from the sums of every rank: the state becomes the global latest correctness."""
        seen = reduced[0] > 0
        self.state = torch.where(seen, (reduced[4] > 0).to(torch.int8), self.state)
        self.buffers.zero_()
        self._bad.zero_()
        self.keys.fill_(LABEL_UNKNOWN)
        self.evidence[0].fill_(-1)
        self.evidence[1].zero_()


def label_conflicts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's label key this epoch and the samples presented under two keys, from :meth:`StepRecorder.epoch_keys`
    (combined over ranks by MAX).

    Returns:
        ``[n]`` int64 keys (:data:`LABEL_UNKNOWN` where none is known), and the indices of the samples whose
        presentations this epoch carried different keys.

    Example:
        >>> u = LABEL_UNKNOWN
        >>> key, conflicts = label_conflicts(np.array([[2, u, 5], [-2, u, -1]]))
        >>> key.tolist()[::2], conflicts.tolist()
        ([2, 5], [2])
    """
    largest, smallest = keys[0], keys[1]
    known = largest != LABEL_UNKNOWN
    return largest, np.flatnonzero(known & (largest != -np.where(known, smallest, 0)))


def repeated_indices(seen: np.ndarray) -> str | None:
    """A sentence saying why an epoch's presentations look like several samples sharing one index, or None.

    The sign: many samples never presented (at least 5 %) while the presented ones were nearly all presented more
    than once (the samples presented once carry under 1 % of the presentations), as ``index // 2`` or a position in
    the batch (``arange(B)``) make them. What is legitimate stays quiet: ``DistributedSampler``'s padding (a few
    samples twice, none unseen), a subset or ``drop_last`` (unseen samples, the others once), a sampler with
    replacement (Poisson counts: as many presentations of samples seen once as there are unseen samples, in
    proportion) and repeated augmentation over the whole set (every sample ``k`` times, none unseen).

    Example:
        >>> repeated_indices(np.array([2, 2, 0, 0])) is not None, repeated_indices(np.array([1, 1, 0, 0]))
        (True, None)
    """
    seen = np.asarray(seen)
    n, presentations = len(seen), float(seen.sum())
    unseen, once, repeated = int((seen == 0).sum()), int((seen == 1).sum()), int((seen > 1).sum())
    if not presentations or unseen < 0.05 * n or once >= 0.01 * presentations:
        return None
    return (f"{unseen} of {n} samples were never presented while {repeated} were presented "
            f"{(presentations - once) / max(repeated, 1):.3g} times each on average (and {once} once)")


#: how far the mean training loss per presentation may move across a resume before it looks like another loss: up
#: by this factor, down by its square (one epoch of training lowers it, by ~5x after a learning-rate decay)
LOSS_JUMP = 4.0


def loss_jump(last_loss: np.ndarray, last_seen: np.ndarray, loss: np.ndarray,
              seen: np.ndarray) -> tuple[float, float] | None:
    """``(before, now)``: the mean training loss per presentation of a store's latest epoch and of the epoch about to
    be added, when they differ by more than one epoch of training explains (up :data:`LOSS_JUMP` times, down its
    square); else None. Losses that are not positive (a loss of one's own) are not compared.

    Args:
        last_loss, last_seen: ``[N]`` the store's latest ``train_loss`` and ``train_seen`` (NaN: never seen).
        loss, seen: ``[K]`` the epoch's ``train_loss`` and ``train_seen``.

    Example:
        >>> loss_jump(np.array([0.5, np.nan]), np.array([1.0, np.nan]), np.array([9.0]), np.array([1.0]))
        (0.5, 9.0)
        >>> loss_jump(np.array([0.5]), np.array([1.0]), np.array([0.2]), np.array([1.0])) is None
        True
    """
    known = np.isfinite(last_loss) & np.isfinite(last_seen)
    before_seen, now_seen = float(np.sum(last_seen[known])), float(np.sum(seen))
    if not (before_seen and now_seen):
        return None
    before, now = float(np.sum(last_loss[known])) / before_seen, float(np.sum(loss)) / now_seen
    if not (before > 0 and now > 0 and np.isfinite(before) and np.isfinite(now)):
        return None
    return (before, now) if now > LOSS_JUMP * before or now < before / LOSS_JUMP**2 else None
