"""One fit's training-time signals inside a Lightning ``Trainer``: each sample's training loss and correctness read
from what ``training_step`` returns at every step, summed over the ranks at each epoch's end, checked (one label per
sample), and doubted once per fit (indices that look repeated, a training loss that changed on resume).

:class:`~curvature_callback.integration.callback.CurvatureCallback` decides when; the sums themselves are
:class:`~curvature_callback.core.steps.StepRecorder`'s, the contract of the step's outputs
:mod:`~curvature_callback.integration.training_steps`'.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from curvature_callback.core import store_checks
from curvature_callback.core.steps import StepRecorder, label_conflicts, loss_jump, repeated_indices
from curvature_callback.core.store import CurvatureStore, StoreMismatchError
from curvature_callback.integration.training_steps import CONTRACT, read_step_outputs

__all__ = ["TrainingSignals"]


class TrainingSignals:
    """The training-time signals of one fit: made at its start (:meth:`start`), fed at every training step
    (:meth:`record`), summed at every epoch's end (:meth:`end_epoch`).

    Args:
        n: samples in the scored dataset (the indices ``sample_index`` may take).
        class_evidence: ``K``, the class-evidence slots (0: none).
        previous_correct: each sample's latest correctness before this fit (a resumed store's), or None.
    """

    def __init__(self, n: int, class_evidence: int, previous_correct: np.ndarray | None = None) -> None:
        self.n = n
        self.class_evidence = class_evidence
        self._previous_correct = previous_correct  # where the forgetting events of this fit start from
        self._steps: StepRecorder | None = None  # this epoch's training-step sums, on the model's device
        self._off = False  # the training step does not return what the recording needs (warned once)
        self._doubts: set[str] = set()  # what this fit has warned about already (once per fit each)
        self.left_out = 0  # presentations the last epoch left out (an index out of range, a non-finite loss)

    @classmethod
    def start(cls, trainer: pl.Trainer, store: CurvatureStore | None, n: int, class_evidence: int) -> TrainingSignals:
        """This fit's signals, continuing the store's forgetting events (rank 0's store: a collective, every rank)."""
        last = np.array(store.channel_last("train_last_correct")) if store is not None and store.step_epochs else None
        return cls(n, class_evidence, trainer.strategy.broadcast(last, src=0))

    def record(self, outputs: Any, batch: Any, batch_to_inputs: Callable[[Any], tuple[Tensor, Tensor]]) -> None:
        """Add one training step's per-sample values (once they are found missing, warn once and record no more)."""
        if self._off:
            return
        found = read_step_outputs(outputs, batch, batch_to_inputs)
        if isinstance(found, str):
            self._off = True
            rank_zero_warn(
                f"CurvatureCallback records training-time signals (each sample's training loss at every step: CSL, "
                f"learning time, forgetting) from what training_step returns, but {found}: none are recorded in "
                f"this fit; the curvature pass is not affected. {CONTRACT}"
            )
            return
        if self._steps is None:
            self._steps = StepRecorder(self.n, found[1].device, self._previous_correct, self.class_evidence)
        self._steps.add(*found)

    def end_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[Any, ...] | None:
        """The epoch's training-step sums over every rank (``[5, N]``), each sample's label key (``[N]``,
        :data:`~curvature_callback.core.store_format.LABEL_UNKNOWN` where not known) and the epoch's class evidence
        (``[N, K]`` classes and masses; None without), on every rank; None where no rank recorded any.
        Collectives: every rank calls it at every epoch's end, and raises the same error."""
        if not trainer.strategy.reduce_boolean_decision(self._steps is not None, all=False):
            return None
        if self._steps is None:  # this rank saw no batch (or no usable one): it adds zeros
            self._steps = StepRecorder(self.n, pl_module.device, self._previous_correct, self.class_evidence)
        sums, keys, classes, bad = self._reduce(trainer)
        epoch = trainer.current_epoch
        if bad:
            rank_zero_warn(
                f"CurvatureCallback left out {bad} training presentation(s) of epoch {epoch}: a "
                f"'sample_index' outside [0, {self.n}) (the scored dataset's indices) or a non-finite "
                "'sample_loss'. Check that the index is the sample's position in the scored dataset."
            )
        self.left_out = bad  # the commit's label check then blames the indices (check_shifted)
        key = self._one_label_per_sample(epoch, keys)
        self._doubt_repeated(epoch, sums)
        return sums, key, classes

    def _reduce(self, trainer: pl.Trainer) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...] | None, int]:
        """This epoch's sums, label keys and class evidence over every rank, and the presentations left out; starts
        the next epoch. Collectives: one sum, one max, and the class evidence's gather."""
        assert self._steps is not None
        rows = self._steps.epoch_sums()
        evidence = self._steps.epoch_evidence() if self.class_evidence else rows.new_zeros(0)
        packed = torch.cat((rows.reshape(-1), evidence.reshape(-1), self._steps.bad().to(torch.float32).reshape(1)))
        packed = trainer.strategy.reduce(packed, reduce_op="sum")  # one all_reduce: a sample is on one rank
        keys = trainer.strategy.reduce(self._steps.epoch_keys(), reduce_op="max")  # [largest, -smallest] over ranks
        reduced = packed[:rows.numel()].reshape(rows.shape)
        classes = None
        if self.class_evidence:  # before next_epoch clears this rank's evidence (padded samples gather it)
            classes = self._steps.combine_evidence(packed[rows.numel():-1].reshape(evidence.shape),
                                                   trainer.strategy.all_gather)
            classes = (classes[0].cpu().numpy(), classes[1].cpu().numpy())
        self._steps.next_epoch(reduced)
        bad = int(packed[-1])  # the epoch's one wait for the device
        return reduced.cpu().numpy(), keys.cpu().numpy(), classes, bad

    @staticmethod
    def _one_label_per_sample(epoch: int, keys: np.ndarray) -> np.ndarray:
        """Each sample's label key, refusing a sample presented under two labels in the epoch (every rank holds
        the same keys: all raise, before anything is committed)."""
        key, conflicts = label_conflicts(keys)
        if len(conflicts):
            i = conflicts[0]
            raise ValueError(
                f"CurvatureCallback: in epoch {epoch} the training steps presented sample(s) {conflicts[:10].tolist()} "
                f"({len(conflicts)} in all) under different labels (e.g. sample {i}: label keys {-keys[1, i]} and "
                f"{key[i]}), expected one label per sample. Either "
                "'sample_index' does not identify the sample (it must be the index in the scored dataset, e.g. "
                "WithIndex's third item, not a position in the batch or `index // 2`) or the labels are random (a "
                "random target_transform). Nothing of this epoch was added to the store."
            )
        return key

    def _doubt_repeated(self, epoch: int, sums: np.ndarray) -> None:
        """Warn (once per fit) when the presentations look like several samples share one index."""
        if "repeated" not in self._doubts and (why := repeated_indices(sums[0])) is not None:
            self._doubts.add("repeated")
            rank_zero_warn(
                f"CurvatureCallback: in epoch {epoch}, {why}: 'sample_index' looks like it gives several samples "
                "one index (e.g. `index // 2`, or a position in the batch instead of in the dataset), so their "
                "training-time signals are summed into one sample and the others get none. Check that the index is "
                "WithIndex's third item (the sample's position in the scored dataset). If the sampler repeats samples "
                "on purpose while skipping others (with replacement or by weights, repeated augmentation such as "
                "DeiT's RASampler), this is expected: the signals then count every presentation. Warned once per fit."
            )

    def check_shifted(self, store: CurvatureStore, epoch: int, indices: np.ndarray, keys: np.ndarray,
                      also: tuple[np.ndarray, Any] | None) -> None:
        """Before the commit (rank 0): when this epoch left presentations out and the steps' label keys disagree with
        the store's, the indices are shifted (``index + k``, ``index - 1``), not the labels changed: say that."""
        if not self.left_out:
            return
        try:
            store_checks.check_labels(store.directory, store.labels, indices, keys, unknown_ok=True, also=also)
        except StoreMismatchError as e:
            raise ValueError(
                f"CurvatureCallback: in epoch {epoch} the training steps gave {self.left_out} presentation(s) a "
                f"'sample_index' outside [0, {self.n}) (or a non-finite 'sample_loss'), and the samples at the other "
                "indices came with other labels than recorded for them: the indices look shifted (e.g. `index + 1` "
                "or `index - 1`), not the labels changed. Expected 'sample_index' to be the sample's position in the "
                "scored dataset (WithIndex's third item), in [0, N). Nothing of this epoch was added to the store."
            ) from e

    def check_loss(self, store: CurvatureStore, epoch: int, values: dict[str, np.ndarray], path: Path | None) -> None:
        """Warn (once per fit, on rank 0) when the first epoch this fit adds to a store that has training-time epochs
        already has a mean training loss that one epoch of training does not explain: the training step's loss is
        no part of the store's identity, so another loss (label smoothing, a weighting, focal) would go unnoticed."""
        if "loss" in self._doubts or epoch in store.step_epochs:
            return
        self._doubts.add("loss")  # the first epoch this fit adds: the one that continues the store
        if not store.step_epochs:
            return
        jump = loss_jump(np.asarray(store.channel_last("train_loss")), np.asarray(store.channel_last("train_seen")),
                         values["train_loss"], values["train_seen"])
        if jump is not None:
            rank_zero_warn(
                f"CurvatureCallback: the mean training loss per presentation went from {jump[0]:.4g} (the store's "
                f"latest epoch, {max(store.step_epochs)}) to {jump[1]:.4g} in epoch {epoch}, more than one "
                "epoch of training explains: does the training step compute the same loss as the run that made the "
                f"store at {path} (label smoothing, class weights, reduction, temperature)? The store does not "
                "know the training loss, and sums under two losses do not compare. If the loss changed, use another "
                "`directory`; if it did not (a learning-rate jump, a new schedule), ignore this. Warned once per fit."
            )
