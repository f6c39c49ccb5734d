"""CurvatureCallback: when to score, what to score, the store commit, checkpoint state; its hooks tell an epoch.

The maths lives in :mod:`curvature_callback.core.estimator`, the files in :mod:`curvature_callback.core.store`; beside
this module, in :mod:`curvature_callback.integration`: the arguments and their checks (``callback_arguments``), the
scored dataset and the store's folder (``scored_dataset``), the pass itself (``scoring_pass``: this rank's block, the
DDP gather), the training-time signals (``training_signals``), the rule "rank 0 does it, every rank raises the same
error" (``collectives``) and the logging (``sinks``). This module decides when they run inside a Lightning
``Trainer``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from curvature_callback.core.channels import (
    class_slots_at,
    evidence_window_at,
    merge_pass_values,
    merge_step_values,
    pass_channels,
    step_channels,
)
from curvature_callback.core.estimator import LossFn
from curvature_callback.core.feeding import (
    CachePolicy,
    check_cache,
    pass_indices,
    period_of,
    random_states_kept,
    rank_universe,
)
from curvature_callback.core.settings import check_bool, check_int
from curvature_callback.core.store import CurvatureStore
from curvature_callback.core.store_format import meta_identity
from curvature_callback.integration.callback_arguments import (  # default_batch_to_inputs: imported from here too
    BatchToInputs,
    PassKind,
    check_evidence_window,
    check_objects,
    check_recording,
    default_batch_to_inputs,
    score_settings,
)
from curvature_callback.integration.collectives import on_rank_zero
from curvature_callback.integration.scored_dataset import check_not_empty, fingerprint, resolve_dataset, resolve_path
from curvature_callback.integration.scoring_pass import LABEL_KEYS, ScoringPass
from curvature_callback.integration.training_signals import TrainingSignals

__all__ = ["CurvatureCallback"]

#: the class-evidence slots of a new store when ``class_evidence`` is not given
DEFAULT_CLASS_EVIDENCE = 3
#: the early class-evidence window (first epochs) of a new store with class evidence when ``evidence_window`` is not
#: given (provisional: to be set from the miniature study's saved probabilities)
DEFAULT_EVIDENCE_WINDOW = 8


def _store_class_slots(directory: Path) -> int | None:
    """The class-evidence slots ``K`` of the store being resumed at ``directory`` (0: made without them), or None
    where there is no readable store with training-time channels (``open_or_create`` then says what it finds)."""
    return class_slots_at(directory)


# One concept, when to score and what to commit over an epoch's hooks; ~110 of its lines are the arguments'
# docstring (the early window's among them).
class CurvatureCallback(Callback):
    r"""Scores every training sample by the curvature of its loss in input space, averaged over epochs.

    At the end of each scoring epoch (:meth:`should_score`) the callback puts the model in ``eval()`` mode,
    computes :func:`~curvature_callback.input_curvature` for every sample of ``dataset`` in its own unshuffled
    loader, and adds the scores to a memory-mapped :class:`~curvature_callback.CurvatureStore`; samples with a
    high running mean are the ones the network memorized (mislabeled, conflicting, atypical).

    .. math:: \mathrm{curv}(x) = \frac{1}{n}\sum_k \lVert \nabla_x l(x + h v_k) - \nabla_x l(x) \rVert^2

    Under DDP every rank scores a contiguous block of the indices; rank 0 gathers and writes. A resumed run
    continues the same store; an epoch is never added twice.

    Nothing is scored during the sanity check or under ``Trainer(fast_dev_run=...)`` (as ``ModelCheckpoint``
    saves nothing there): a debug run neither creates nor writes the store, so it leaves no half store behind.

    Args:
        dataset: what to score, indexed ``0..N-1``, without augmentation. Default: the datamodule's
            ``curvature_dataset()`` if it has one, else the training dataset (with a warning if reading its first
            item twice gives different values: a random transform).
        h: finite-difference step (paper: 1e-3).
        n_vectors: Rademacher vectors per sample and epoch (None: the paper's 10). ``0`` is a gradient pass.
        pass_kind: what the pass computes, and costs, per scored sample (recorded in the store: a resume never
            mixes kinds). ``"curvature"`` (the default unless ``n_vectors=0``): ``n_vectors + 1`` forward+backward,
            curvature, the input-gradient norm (``input_grad``: CSG's sample gradient) and the eval-mode baselines.
            ``"gradient"`` (or ``n_vectors=0``): one forward+backward, the input-gradient norm and the baselines,
            no curvature. ``"forward"``: one forward under ``torch.inference_mode``, no backward at all: the
            baselines (loss, margin, confidence, correctness) only. Without curvature ``store.mean`` stays NaN.
        batch_size: samples per scoring batch (each becomes ``batch_size * n_vectors`` rows, in chunks; a forward
            pass keeps nothing for a backward, so its batches may be as large as the training loader's or larger).
        every_n_epochs: score every this many epochs, counted from ``start_epoch``.
        start_epoch: first epoch to score (0-based). Curvature is largest before the network has memorized a
            sample and falls by orders of magnitude after, so skipping early epochs loses most of the signal.
        directory: the store's folder; a relative path goes under the trainer's log dir.
        keep_history: also keep each epoch's scores (``epochs x N`` float32 on disk).
        seed: seed of the Rademacher vectors.
        loss_fn: ``loss_fn(outputs, targets) -> [B]`` per-sample losses (default: cross-entropy). Must pickle
            for ``ddp_spawn``: a named function or a ``functools.partial`` of one, not a lambda. A store
            resumes only with the same loss, compared by name and arguments
            (:func:`~curvature_callback.core.loss_identity.loss_identity`).
        batch_to_inputs: ``fn(batch) -> (x, y)`` for batches that are not ``(x, y, ...)``.
        fast: allow TF32 in the finite differences (faster on Ampere and newer; ~5 % per-value error).
        log_histogram: log a histogram of the pass's signal (``log10``: curvature, ``input_grad`` or the loss, as
            :attr:`signal` says) to the loggers that take one; only a curvature pass adds the W&B top-k views.
        num_workers: workers of the scoring loader (uncached data); they start at the first pass and persist
            until the fit ends, memory pinned on CUDA.
        chunk_size: rows per stacked forward+backward (default by device).
        record_outputs: also store the per-sample loss (and, with the default loss, margin, confidence,
            correctness and forgetting events) from the pass's forward at ``x``: baselines at almost no cost.
            Forgetting events are counted between scored epochs, in eval mode (not per minibatch as Toneva et
            al. count them): with ``every_n_epochs > 1`` they were near chance in our CIFAR-10 study.
        fraction: score ``1/P`` of the samples per scoring epoch, rotating (``index % P == pass % P``): every
            sample is scored once every ``P`` passes and its mean stays exact (the store counts per sample).
        cache: keep the scored samples' tensors on the model's device after the first pass (``"auto"``: when
            they take at most 2 GiB, e.g. CIFAR), instead of reloading them each pass. Under DDP each rank keeps
            only the samples it scores (about ``1/world_size`` of them).
        loss_id: a name that changes whenever the loss's values would change; required for lambdas and
            closures (whose values cannot be known from their name), and recorded instead of the loss's
            identity when given.
        progress_bar: show a bar of the pass's batches under Lightning's own (off by default: Lightning's bar
            already shows the run). When on, it shows on rank 0, only with the Trainer's progress bar enabled and
            only on a terminal (in a log file it would be a line per batch).
        record_training: record each sample's training loss and correctness at every training step, from what
            ``training_step`` returns (no extra forward pass): the store then holds the cumulative sample loss
            (CSL), the learning time and the forgetting events of every epoch (``train_loss``, ``learning_time``,
            ``train_forgetting`` in :func:`~curvature_callback.analysis.suspicion_scores`). It needs
            ``training_step`` to return ``sample_loss``, ``sample_index`` and ``sample_correct`` (or ``logits``):
            see :func:`~curvature_callback.sample_outputs`. A module that returns less gets one warning saying how,
            and the curvature pass works as before. Under DDP each rank records its own samples, summed at the
            epoch's end; with gradient accumulation every micro-batch counts. The labels the steps saw
            (``sample_target``, else the batch's ``[B]`` integer targets) must match the store's, as the pass's do,
            and one sample's within an epoch; a changed mean training loss on resume and indices that look duplicated
            (``index // 2``) are warned about once per fit (docs/DESIGN.md §7).
        score_curvature: run the curvature pass (on :meth:`should_score` epochs). ``False`` keeps only the
            training-time signals: no pass, no extra forward or backward; the whole digits fit took 1.11x
            training alone (docs/PERFORMANCE.md); the recommended score for mislabels then rests on the
            training loss (CSL) alone, which our studies found as good as the best signal at every noise level
            (docs/RESULTS.md).

        class_evidence: ``K``, the classes kept per sample as training-time class evidence (0: none): with
            ``record_training``, from the ``"logits"`` ``[B, C]`` that ``training_step`` returns (``sample_outputs``
            adds them), the softmax probabilities of each presentation's ``min(K, C)`` most probable classes, summed
            per sample over every training presentation of every epoch, in ``K`` slots that hold a sample's most
            favoured classes (a class entering full slots evicts the one with the least mass: exact when ``K >= C``).
            Stored as ``train_class_j`` and ``train_class_mass_j`` (``2K`` floats per sample on disk); read with
            :func:`~curvature_callback.analysis.class_evidence` (a suggested label: the most favoured class other
            than the given one). A store resumes only with the same ``K``. None (the default): the ``K`` of the
            store being resumed (0 for one made before class evidence existed), else
            :data:`DEFAULT_CLASS_EVIDENCE`; resolved at the start of training.
        evidence_window: ``W``, the first training epochs (``0..W-1`` by ``trainer.current_epoch``, so a resume
            continues it) whose class evidence is also kept apart, frozen after the window: evidence summed over a
            run that memorizes favours the given label, the early window's before the network memorizes it. The
            same slots as ``class_evidence``, merged the same way (exact on resume and under DDP), stored as
            ``train_early_seen``, ``train_early_class_j`` and ``train_early_class_mass_j`` (``2K + 1`` more floats
            per sample on disk, no extra work on the device); read with ``class_evidence(store, early=True)``. 0: none;
            a window needs ``class_evidence`` and ``record_training``. A store resumes only with the same ``W``.
            None (the default): the ``W`` of the store being resumed (0 for one made before the window existed),
            else :data:`DEFAULT_EVIDENCE_WINDOW` where class evidence is kept (0 where not).

    Example::

        cb = CurvatureCallback(pass_kind="forward", every_n_epochs=4, batch_size=128)  # the recommended configuration
        trainer = L.Trainer(max_epochs=20, callbacks=[cb])
        trainer.fit(model, datamodule)
        rank = recommended_scores(suspicion_scores(cb.store))["mislabeled"]  # analysis.recommend, analysis.scores
        top = np.argsort(-rank)[:100]            # the 100 most suspect labels
        issues = find_label_issues(cb.store)     # the flagged set, its count and suggested labels

        # the paper's curvature instead: CurvatureCallback(n_vectors=10), then np.argsort(-cb.store.mean)
    """

    def __init__(
        self,
        dataset: Dataset | None = None,
        *,
        h: float = 1e-3,
        n_vectors: int | None = None,
        pass_kind: PassKind | None = None,
        batch_size: int = 256,
        every_n_epochs: int = 1,
        start_epoch: int = 0,
        directory: str | os.PathLike = "curvature",
        keep_history: bool = False,
        seed: int = 0,
        loss_fn: LossFn | None = None,
        batch_to_inputs: BatchToInputs | None = None,
        fast: bool = False,
        log_histogram: bool = True,
        num_workers: int = 0,
        chunk_size: int | None = None,
        record_outputs: bool = True,
        fraction: float = 1.0,
        cache: CachePolicy = "auto",
        loss_id: str | None = None,
        progress_bar: bool = False,
        record_training: bool = True,
        score_curvature: bool = True,
        class_evidence: int | None = None,
        evidence_window: int | None = None,
    ) -> None:
        check_objects(dataset, directory, loss_fn, batch_to_inputs)
        self._settings = score_settings(h=h, n_vectors=n_vectors, pass_kind=pass_kind, seed=seed, loss_fn=loss_fn,
                                        loss_id=loss_id, fast=fast, fraction=fraction)
        self.dataset, self.directory = dataset, os.fspath(directory)
        self.loss_fn, self.loss_id, self.batch_to_inputs = loss_fn, loss_id, batch_to_inputs
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, 1)
        self.start_epoch = check_int("start_epoch", start_epoch, 0)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size, 1)
        self.keep_history = check_bool("keep_history", keep_history)
        self.log_histogram = check_bool("log_histogram", log_histogram)
        self.record_outputs = check_bool("record_outputs", record_outputs)
        self.progress_bar = check_bool("progress_bar", progress_bar)
        self.record_training = check_bool("record_training", record_training)
        self.score_curvature = check_bool("score_curvature", score_curvature)
        self.class_evidence = None if class_evidence is None else check_int("class_evidence", class_evidence, 0)
        self.evidence_window = check_evidence_window(evidence_window, self.class_evidence, self.record_training)
        check_recording(self.pass_kind, self.record_outputs, self.record_training, self.score_curvature)
        self.cache = check_cache(cache)
        self._period = period_of(self.fraction)
        self._scoring: ScoringPass | None = None  # made at the first pass; its loader workers and cache persist
        self._universe: np.ndarray | None = None  # the indices this rank scores over a rotation (set per fit)
        self._store: CurvatureStore | None = None  # the writer, on global rank 0 during fit
        self._path: Path | None = None  # the resolved store folder
        self._epochs_done: list[int] = []  # same on every rank
        self._restored: dict[str, Any] | None = None
        self._scored_dataset: Dataset | None = None
        self._dataset_source = ""  # where the scored dataset came from, for messages
        self._reader: tuple[tuple[int, ...] | None, CurvatureStore] | None = None  # (meta.json's identity, reader)
        self._signals: TrainingSignals | None = None  # this fit's training-time signals (with record_training)

    # ----------------------------------------------------------------------------- settings
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(directory=self.directory, h=self.h, n_vectors=self.n_vectors, seed=self.seed)

    @property
    def channels(self) -> tuple[str, ...]:
        """Channels stored beside curvature (a forward pass has no input gradient)."""
        return pass_channels(self.pass_kind, classification=self.loss_fn is None, record_outputs=self.record_outputs)

    @property
    def pass_kind(self) -> str:
        """What the pass computes: ``"curvature"``, ``"gradient"`` or ``"forward"`` (see the class's arguments)."""
        return self._settings.pass_kind

    @property
    def signal(self) -> str:
        """The channel the pass is named for and logs: curvature, the input-gradient norm, or the loss."""
        return {"curvature": "curvature", "gradient": "input_grad", "forward": "loss"}[self.pass_kind]

    # the score's settings, read-only: one frozen ScoreSettings holds and checks them
    h = property(lambda self: self._settings.h, doc="Finite-difference step.")
    n_vectors = property(lambda self: self._settings.n_vectors, doc="Rademacher vectors per sample and epoch.")
    seed = property(lambda self: self._settings.seed, doc="Seed of the vectors.")
    fast = property(lambda self: self._settings.fast, doc="TF32 allowed in the finite differences.")
    fraction = property(lambda self: self._settings.fraction, doc="Share of the samples scored per pass.")

    def settings(self) -> dict[str, Any]:
        """What goes into the store's metadata (:class:`~curvature_callback.core.settings.ScoreSettings`); the
        meaning settings must match to resume."""
        return self._settings.to_dict()

    def should_score(self, epoch: int) -> bool:
        """Whether to score at the end of ``epoch`` (0-based). Override for other schedules.

        Example:
            >>> cb = CurvatureCallback(every_n_epochs=3, start_epoch=2)
            >>> [e for e in range(10) if cb.should_score(e)]
            [2, 5, 8]
        """
        return epoch >= self.start_epoch and (epoch - self.start_epoch) % self.every_n_epochs == 0

    @staticmethod
    def _should_skip_scoring(trainer: pl.Trainer) -> bool:
        """Whether this run scores nothing at all, as ``ModelCheckpoint._should_skip_saving_checkpoint`` decides
        for checkpoints: a ``fast_dev_run`` (a debug run: no store is created, none is written) or the sanity
        check. The same on every rank, so no collective is left waiting."""
        return bool(trainer.fast_dev_run) or trainer.sanity_checking

    @property
    def store(self) -> CurvatureStore:
        """The store: the open writer during ``fit`` on rank 0, else the folder opened read-only (opened again once
        a commit has replaced its ``meta.json``)."""
        if self._store is not None:
            return self._store
        path = self._path if self._path is not None else Path(self.directory)
        if not path.is_absolute() and self._path is None:
            raise RuntimeError(
                f"The store's folder is not known yet: directory={self.directory!r} is relative to the trainer's log "
                "dir, which is resolved during fit (with ddp_spawn, only in the worker processes). Use an absolute "
                "`directory`, or CurvatureStore.open(<log dir>/<directory>)."
            )
        try:  # the store's own identity of meta.json, which every commit replaces: a new one, a new snapshot
            identity: tuple[int, ...] | None = meta_identity(os.stat(path / "meta.json"))
        except FileNotFoundError:
            identity = None  # no store there: open says so
        if self._reader is None or self._reader[0] != identity or self._reader[1].directory != path:
            self._reader = (identity, CurvatureStore.open(path))
        return self._reader[1]

    # ----------------------------------------------------------------------------- checkpoint state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"directory": None if self._path is None else str(self._path), "epochs_done": list(self._epochs_done),
                **self.settings()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key, theirs, mine in self._settings.differences(state_dict):  # what the store is held to, too
            raise ValueError(
                f"The checkpoint's CurvatureCallback used {key}={theirs!r}, this one has {key}={mine!r}: resume with "
                "the same setting, or use another `directory`."
            )
        self._restored = dict(state_dict)

    # ----------------------------------------------------------------------------- hooks
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip_scoring(trainer):
            return
        dataset, self._dataset_source = resolve_dataset(trainer, self.dataset)
        self._path = resolve_path(trainer, self.directory, self._restored)
        check_not_empty(dataset, self._dataset_source)  # every rank raises here, before any collective
        evidence = on_rank_zero(trainer, self._open_store, trainer, dataset)  # an error: raised on every rank
        self._share_store_state(trainer, evidence)
        self._scored_dataset = dataset
        self._signals = (TrainingSignals.start(trainer, self._store, len(dataset), self.class_evidence)
                         if self.record_training else None)
        # what this rank's device cache needs over a rotation of `fraction`: fixed for the fit
        self._universe = rank_universe(len(dataset), self._period, self.batch_size, trainer.world_size,
                                       trainer.global_rank)

    def _open_store(self, trainer: pl.Trainer, dataset: Dataset) -> tuple[int, int]:
        """Open (or create) the store on rank 0; returns its class-evidence slots ``K`` and early window ``W``."""
        k, w = self.class_evidence, self.evidence_window
        if k is None:  # follow the store being resumed, so that a default never refuses it
            k = _store_class_slots(self._path)
            k = DEFAULT_CLASS_EVIDENCE if k is None else k
        if w is None:  # the same: a store made before the window existed has none (0)
            w = evidence_window_at(self._path)
            w = (DEFAULT_EVIDENCE_WINDOW if k and self.record_training else 0) if w is None else w
        # the store compares the window asked with its own first (a store without class evidence has none)
        steps = step_channels(k, w if k else 0) if self.record_training else ()
        self._store = CurvatureStore.open_or_create(
            self._path, len(dataset), settings={**self.settings(), "evidence_window": w},
            keep_history=self.keep_history, channels=self.channels, fingerprint=fingerprint(dataset),
            history_capacity=max(1, min(int(trainer.max_epochs or 16), 1000)), step_channels=steps,
        )
        return k, w

    def _share_store_state(self, trainer: pl.Trainer, evidence: tuple[int, int] | None) -> None:
        """Every rank takes rank 0's store's epochs, class-evidence slots and early window (one broadcast); warns
        where the checkpoint's scored epochs are missing from the store."""
        epochs, evidence = trainer.strategy.broadcast(
            (self._store.epochs if self._store is not None else [], evidence), src=0)
        k, w = evidence if evidence is not None else (DEFAULT_CLASS_EVIDENCE, 0)
        self.class_evidence, self.evidence_window = int(k), int(w)
        self._epochs_done = list(epochs)
        missing = sorted(set((self._restored or {}).get("epochs_done", [])) - set(epochs))
        if missing:
            rank_zero_warn(f"The checkpoint says epochs {missing} were scored, but the store at {self._path} lacks "
                           "them: their scores are not in the mean.")

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._signals is None or outputs is None or self._should_skip_scoring(trainer):
            return  # outputs None: training_step skipped the batch; no signals: record_training=False
        self._signals.record(outputs, batch, self._to_inputs)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip_scoring(trainer):
            return
        epoch = trainer.current_epoch
        # the training steps' sums over every rank; raises on every rank for labels that change within the epoch
        steps = self._signals.end_epoch(trainer, pl_module) if self._signals is not None else None
        score = self.score_curvature and self.should_score(epoch) and epoch not in self._epochs_done
        if not score and steps is None:
            return
        values = self._run_pass(trainer, pl_module, epoch) if score else None  # None: the steps' sums alone
        # a refused commit (other labels) stops every rank, not only this one
        arrays = on_rank_zero(trainer, self._commit_gathered, epoch, values, steps)
        if score:
            if trainer.is_global_zero:
                self._log(trainer, arrays[self.signal])
            self._epochs_done.append(epoch)
        trainer.strategy.barrier("curvature_commit")

    def _run_pass(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> dict[str, Tensor]:
        """This epoch's pass: this rank's block of :meth:`_pass_indices` scored, every rank's gathered."""
        assert self._scored_dataset is not None  # set by on_train_start
        if self._scoring is None:  # made at the first pass: its loader workers and device cache persist
            self._scoring = ScoringPass(
                self._scored_dataset, self._to_inputs, settings=self._settings, loss_fn=self.loss_fn,
                channels=self.channels, batch_size=self.batch_size, num_workers=self.num_workers, cache=self.cache,
                chunk_size=self.chunk_size, progress_bar=self.progress_bar,
            )
        with random_states_kept():  # the pass's loader draws a seed: training must draw what it would without us
            return self._scoring.run(trainer, pl_module, self._pass_indices(), epoch, universe=self._universe,
                                     gather_columns=self.GATHER_COLUMNS)

    def _commit_gathered(self, epoch: int, values: dict[str, Tensor] | None,
                         steps: tuple[Any, ...] | None) -> dict[str, np.ndarray] | None:
        """:meth:`_commit` of the pass's gathered tensors, as numpy arrays (on rank 0)."""
        return self._commit(epoch, None if values is None else {k: v.cpu().numpy() for k, v in values.items()}, steps)

    def _commit(self, epoch: int, arrays: dict[str, np.ndarray] | None,
                steps: tuple[Any, ...] | None) -> dict[str, np.ndarray] | None:
        """Add the pass's gathered values (and its label keys) and the epoch's training-step sums (and the label keys
        the steps saw) to the store in one commit, on rank 0; returns the pass's channels."""
        assert self._store is not None
        step_indices = step_values = step_labels = None
        if steps is not None:  # the epoch's sums, and its class evidence merged with the store's running evidence
            assert self._signals is not None  # the steps are its sums
            sums, keys, evidence = steps
            step_indices, step_values = merge_step_values(self._store, epoch, sums, evidence)
            step_labels = keys[step_indices]
            self._signals.check_loss(self._store, epoch, step_values, self._path)
            also = None if arrays is None else (self._pass_indices(), arrays[LABEL_KEYS])
            # out-of-range indices first, then labels: shifted indices are named as such
            self._signals.check_shifted(self._store, epoch, step_indices, step_labels, also)
        if arrays is None:
            self._store.commit_epoch(epoch, None, steps=step_values, step_indices=step_indices,
                                     step_labels=step_labels)
            return None
        labels = arrays.pop(LABEL_KEYS)
        indices = self._pass_indices()
        arrays = merge_pass_values(self._store, arrays, indices)  # forgetting, from the store's latest correctness
        # the store refuses labels that differ from the ones it recorded (by sample), and records new ones
        self._store.commit_epoch(epoch, arrays, indices=indices, labels=labels, steps=step_values,
                                 step_indices=step_indices, step_labels=step_labels)
        return arrays

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_end(trainer)
        self._close()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()

    def _close(self) -> None:
        if self._scoring is not None:
            self._scoring.close()  # the scoring loader's persistent workers; its device cache stays
        if self._store is not None:
            self._store.close()
            self._store = None

    # ----------------------------------------------------------------------------- what is scored, and where
    @property
    def _to_inputs(self) -> BatchToInputs:
        """``batch -> (x, y)``: the given ``batch_to_inputs``, else :func:`default_batch_to_inputs`."""
        return self.batch_to_inputs or default_batch_to_inputs

    def _pass_indices(self) -> np.ndarray:
        """The global indices this pass scores (the same on every rank)."""
        assert self._scored_dataset is not None
        return pass_indices(len(self._scored_dataset), len(self._epochs_done), self._period)

    #: values per collective in the DDP gather: bounds its memory at ImageNet scale (8 MB of float64 per rank)
    GATHER_COLUMNS = 1 << 20

    # ----------------------------------------------------------------------------- logging
    def _log(self, trainer: pl.Trainer, scores: np.ndarray) -> None:
        """The pass's logs (:func:`~curvature_callback.integration.sinks.log_pass`), on rank 0."""
        if not trainer.loggers:
            return
        # loaded only with a logger (tests/integration/test_extras.py)
        from curvature_callback.integration.sinks import log_pass

        log_pass(trainer.loggers, self.signal, scores, trainer.global_step, histogram=self.log_histogram,
                 dataset=self._scored_dataset, store=self._store, to_inputs=self._to_inputs)

    def _log_end(self, trainer: pl.Trainer) -> None:
        """At the end of fit, on rank 0: the table of the most-curved samples
        (:func:`~curvature_callback.integration.sinks.log_fit_end`)."""
        if not (trainer.is_global_zero and trainer.loggers and self.log_histogram and self._store is not None
                and self._store.epochs and self.signal == "curvature"):
            return
        from curvature_callback.integration.sinks import log_fit_end  # loaded only with a logger

        log_fit_end(trainer.loggers, self._scored_dataset, self._store, self._to_inputs,
                    datamodule=trainer.datamodule, with_loss="loss" in self.channels, step=trainer.global_step)
