"""CurvatureCallback: when to score, what to score, the store commit, logging, checkpoint state.

The maths lives in :mod:`curvature_callback.core.estimator`, the files in :mod:`curvature_callback.core.store`, the
pass itself (this rank's block, the DDP gather, errors raised on every rank) in
:mod:`curvature_callback.integration.scoring_pass`; this module decides when they run inside a Lightning ``Trainer``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from curvature_callback.core.channels import (
    STEP_CHANNELS,
    class_evidence_channels,
    class_slots_at,
    merge_pass_values,
    merge_step_values,
    pass_channels,
)
from curvature_callback.core.estimator import LossFn, loss_identity
from curvature_callback.core.feeding import (
    CachePolicy,
    check_cache,
    pass_indices,
    period_of,
    random_states_kept,
    rank_universe,
    reads_differ,
)
from curvature_callback.core.numeric import dataset_labels, labels_digest, log10_floor
from curvature_callback.core.settings import PASS_KINDS, ScoreSettings, check_bool, check_callable, check_int
from curvature_callback.core.steps import (
    StepRecorder,
    label_conflicts,
    loss_jump,
    repeated_indices,
)
from curvature_callback.core.store import CurvatureStore
from curvature_callback.integration.scoring_pass import LABEL_KEYS, ScoringPass, raise_together
from curvature_callback.integration.training_steps import CONTRACT, read_step_outputs

__all__ = ["CurvatureCallback"]

BatchToInputs = Callable[[Any], tuple[Tensor, Tensor]]
PassKind = Literal["curvature", "gradient", "forward"]

def default_batch_to_inputs(batch: Any) -> tuple[Tensor, Tensor]:
    """``(x, y, ...)`` tuples and lists, or dicts with ``x``/``y``, ``input``/``target`` or ``image``/``label``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        for a, b in (("x", "y"), ("input", "target"), ("inputs", "targets"), ("image", "label"), ("images", "labels")):
            if a in batch and b in batch:
                return batch[a], batch[b]
    raise TypeError(
        f"Cannot take (inputs, targets) from a batch of type {type(batch).__name__}: expected a tuple (x, y, ...) or "
        "a dict with keys x/y. Pass `batch_to_inputs=fn` with fn(batch) -> (x, y), a named function so it pickles."
    )


def _pass_of(pass_kind: object, n_vectors: object) -> tuple[str, object]:
    """``(pass kind, n_vectors)`` from the callback's arguments: ``n_vectors=0`` alone is a gradient pass; a gradient
    or forward pass draws no vectors; a curvature pass draws ``n_vectors`` (None: the paper's 10).

    Example:
        >>> _pass_of(None, None), _pass_of(None, 0), _pass_of("forward", None), _pass_of(None, 3)
        (('curvature', 10), ('gradient', 0), ('forward', 0), ('curvature', 3))
    """
    if pass_kind is not None and pass_kind not in PASS_KINDS:
        raise ValueError(f"Expected argument `pass_kind` to be one of {list(PASS_KINDS)} or None, got {pass_kind!r}.")
    zero = n_vectors is not None and not isinstance(n_vectors, bool) and n_vectors == 0
    kind = pass_kind or ("gradient" if zero else "curvature")
    if kind == "curvature":
        if zero:
            raise ValueError("Expected n_vectors >= 1 for pass_kind='curvature' (a curvature needs vectors), got 0. "
                             "Drop pass_kind for a gradient pass (n_vectors=0), or set n_vectors (the paper: 10).")
        return kind, 10 if n_vectors is None else n_vectors
    if not (n_vectors is None or zero):
        raise ValueError(f"Expected n_vectors=0 or None with pass_kind={kind!r} (it draws no vectors), got "
                         f"{n_vectors!r}. Drop n_vectors, or use pass_kind='curvature'.")
    return kind, 0


def _resolve_loss(loss_fn: LossFn | None, loss_id: str | None) -> str:
    """What a store records as the loss: ``loss_id`` if given, else :func:`loss_identity`; a loss whose
    identity cannot be known needs a ``loss_id``."""
    if loss_id is not None:
        if not isinstance(loss_id, str) or not loss_id.strip():
            raise ValueError(f"Expected `loss_id` to be a non-empty string such as 'my_loss_v1', got {loss_id!r}.")
        return loss_id
    identity = loss_identity(loss_fn)
    if identity is None:
        qualname = getattr(loss_fn, "__qualname__", "")
        kind = ("a lambda" if "<lambda>" in qualname else
                "a closure" if "<locals>" in qualname or getattr(loss_fn, "__closure__", None) is not None else
                "a bound method" if inspect.ismethod(loss_fn) else
                f"an object of type {type(loss_fn).__qualname__} whose state cannot be written down deterministically")
        raise ValueError(
            f"Cannot tell from `loss_fn` ({kind}) which loss it computes: its values can change while its name "
            "stays, so a resumed store could average two different losses. Pass `loss_id=\"my_loss_v1\"` (a name "
            "that changes whenever the loss's values would change), or use a named module-level function or a "
            "functools.partial of one, e.g. `functools.partial(F.cross_entropy, reduction=\"none\", "
            "label_smoothing=0.1)`."
        )
    return identity


def _labels_digest(dataset: Any) -> str | None:
    """sha1 of the dataset's labels when it exposes them (:func:`~curvature_callback.core.numeric.dataset_labels`:
    a TensorDataset's second tensor, else ``targets``) and they are integers; else None."""
    try:
        labels = dataset_labels(dataset)
        return None if labels is None else labels_digest(labels)
    except (TypeError, ValueError):  # labels that are not int64-like (strings, ragged): no digest, the keys check
        return None


#: the class-evidence slots of a new store when ``class_evidence`` is not given
DEFAULT_CLASS_EVIDENCE = 3


def _store_class_slots(directory: Path) -> int | None:
    """The class-evidence slots ``K`` of the store being resumed at ``directory`` (0: made without them), or None
    where there is no readable store with training-time channels (``open_or_create`` then says what it finds)."""
    return class_slots_at(directory)


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
            (:func:`~curvature_callback.core.estimator.loss_identity`).
        batch_to_inputs: ``fn(batch) -> (x, y)`` for batches that are not ``(x, y, ...)``.
        fast: allow TF32 in the finite differences (faster on Ampere and newer; ~5 % per-value error).
        log_histogram: log a histogram of ``log10`` curvature to the loggers that take one.
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
            training-time signals: no pass, no extra forward or backward, at about 1 % of a training step
            (``benchmarks/bench_overhead.py --capture``); the recommended score for mislabels then rests on the
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

    Example::

        cb = CurvatureCallback(n_vectors=10)
        trainer = L.Trainer(max_epochs=20, callbacks=[cb])
        trainer.fit(model, datamodule)
        top = np.argsort(-cb.store.mean)[:100]   # the 100 most-curved samples
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
    ) -> None:
        check_callable("loss_fn", loss_fn, "Pass a function loss_fn(outputs, targets) -> [B] per-sample losses (e.g. "
                       "functools.partial(F.cross_entropy, reduction='none', label_smoothing=0.1)), or None for "
                       "cross-entropy.")
        check_callable("batch_to_inputs", batch_to_inputs, "Pass a named function fn(batch) -> (x, y), or None for "
                       "batches (x, y, ...) and dicts with x/y.")
        if dataset is not None and not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(
                f"Expected argument `dataset` to be a map-style dataset (len() and dataset[i], indexed 0..N-1), got "
                f"{type(dataset).__name__} {dataset!r:.80}. Pass a torch.utils.data.Dataset (e.g. the training set "
                "with the evaluation transform), or None to score the training loader's dataset."
            )
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(
                f"Expected argument `directory` to be a folder path (str or os.PathLike), got "
                f"{type(directory).__name__} {directory!r:.80}. Pass e.g. directory=\"curvature\" (under the trainer's "
                "log dir) or an absolute path."
            )
        # what defines the score, validated once (numpy numbers become Python ones: they go to JSON and checkpoints)
        kind, vectors = _pass_of(pass_kind, n_vectors)
        self._settings = ScoreSettings(h=h, n_vectors=vectors, seed=seed, loss=_resolve_loss(loss_fn, loss_id),
                                       fast=fast, fraction=fraction, pass_kind=kind)
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
        if kind != "curvature" and not self.record_outputs:
            raise ValueError(f"Expected record_outputs=True with pass_kind={kind!r}: a {kind} pass computes nothing "
                             "but the channels record_outputs stores. Keep record_outputs=True, or pass "
                             "score_curvature=False for no pass at all.")
        if not (self.record_training or self.score_curvature):
            raise ValueError("Expected record_training=True or score_curvature=True, got both False: the callback "
                             "would record nothing. Keep one (the training-time signals cost about 1 % of a step).")
        self.dataset = dataset
        self.directory = os.fspath(directory)
        self.loss_fn = loss_fn
        self.loss_id = loss_id
        self.batch_to_inputs = batch_to_inputs
        self._period = period_of(self.fraction)
        self.cache = check_cache(cache)
        self._scoring: ScoringPass | None = None  # made at the first pass; its loader workers and cache persist
        self._universe: np.ndarray | None = None  # the indices this rank scores over a rotation (set per fit)
        self._store: CurvatureStore | None = None  # the writer, on global rank 0 during fit
        self._path: Path | None = None  # the resolved store folder
        self._epochs_done: list[int] = []  # same on every rank
        self._restored: dict[str, Any] | None = None
        self._scored_dataset: Dataset | None = None
        self._dataset_source = ""  # where the scored dataset came from, for messages
        self._reader: tuple[tuple[int, ...], CurvatureStore] | None = None  # (meta.json's identity, read-only store)
        self._steps: StepRecorder | None = None  # this epoch's training-step sums, on the model's device
        self._steps_off = False  # the training step does not return what the recording needs (warned once)
        self._previous_correct: np.ndarray | None = None  # each sample's latest correctness before this fit
        self._doubts: set[str] = set()  # what this fit has warned about already (once per fit each)

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
        """The store: the open writer during ``fit`` on rank 0, else the folder opened read-only."""
        if self._store is not None:
            return self._store
        path = self._path if self._path is not None else Path(self.directory)
        if not path.is_absolute() and self._path is None:
            raise RuntimeError(
                f"The store's folder is not known yet: directory={self.directory!r} is relative to the trainer's log "
                "dir, which is resolved during fit (with ddp_spawn, only in the worker processes). Use an absolute "
                "`directory`, or CurvatureStore.open(<log dir>/<directory>)."
            )
        try:  # meta.json is replaced at every commit: a new inode, a new snapshot
            st = (path / "meta.json").stat()
            stamp: tuple[int, ...] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = ()
        if self._reader is None or self._reader[0] != stamp or self._reader[1].directory != path:
            self._reader = (stamp, CurvatureStore.open(path))
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
        dataset, self._dataset_source = self._resolve_dataset(trainer)
        self._path = self._resolve_path(trainer)
        n = len(dataset)
        if n == 0:  # every rank sees the same dataset: all raise here, before any collective
            raise ValueError(
                f"Expected a dataset with at least one sample to score, got an empty {type(dataset).__name__} "
                f"(from {self._dataset_source}). Check how it is built (paths, split, filters), or pass another "
                "`dataset=`."
            )
        caught: BaseException | None = None
        k = self.class_evidence
        if trainer.is_global_zero:
            try:
                if k is None:  # follow the store being resumed, so that a default never refuses it
                    k = _store_class_slots(self._path)
                    k = DEFAULT_CLASS_EVIDENCE if k is None else k
                self._store = CurvatureStore.open_or_create(
                    self._path, n, settings=self.settings(), keep_history=self.keep_history, channels=self.channels,
                    fingerprint=self._fingerprint(dataset),
                    history_capacity=max(1, min(int(trainer.max_epochs or 16), 1000)),
                    step_channels=(*STEP_CHANNELS, *class_evidence_channels(k))
                    if self.record_training else (),
                )
            except Exception as e:  # raised on every rank below: one rank alone raising would hang the others
                caught = e
        raise_together(trainer, caught)
        epochs, k = trainer.strategy.broadcast((self._store.epochs if self._store is not None else [], k), src=0)
        self.class_evidence = int(k if k is not None else DEFAULT_CLASS_EVIDENCE)
        self._epochs_done = list(epochs)
        missing = sorted(set((self._restored or {}).get("epochs_done", [])) - set(epochs))
        if missing:
            rank_zero_warn(f"The checkpoint says epochs {missing} were scored, but the store at {self._path} lacks "
                           "them: their scores are not in the mean.")
        self._scored_dataset = dataset
        self._steps, self._steps_off, self._doubts = None, False, set()
        if self.record_training:  # where the forgetting events of this fit start from (a resumed run: the store's)
            last = (np.array(self._store.channel_last("train_last_correct"))
                    if self._store is not None and self._store.step_epochs else None)
            self._previous_correct = trainer.strategy.broadcast(last, src=0)
        # what this rank's device cache needs over a rotation of `fraction`: fixed for the fit
        self._universe = rank_universe(n, self._period, self.batch_size, trainer.world_size, trainer.global_rank)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.record_training or self._steps_off or outputs is None or self._should_skip_scoring(trainer):
            return  # outputs None: training_step skipped the batch
        found = read_step_outputs(outputs, batch, self.batch_to_inputs or default_batch_to_inputs)
        if isinstance(found, str):
            self._steps_off = True
            rank_zero_warn(
                f"CurvatureCallback records training-time signals (each sample's training loss at every step: CSL, "
                f"learning time, forgetting) from what training_step returns, but {found}: none are recorded in "
                f"this fit; the curvature pass is not affected. {CONTRACT}"
            )
            return
        if self._steps is None:
            assert self._scored_dataset is not None  # set by on_train_start
            self._steps = StepRecorder(len(self._scored_dataset), found[1].device, self._previous_correct,
                                       self.class_evidence)
        self._steps.add(*found)

    def _end_steps(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[Any, ...] | None:
        """The epoch's training-step sums over every rank (``[5, N]``), each sample's label key (``[N]``,
        :data:`~curvature_callback.core.store_format.LABEL_UNKNOWN` where not known) and the epoch's class evidence
        (``[N, K]`` classes and masses; None without), on every rank; None where no
        rank recorded any. Collectives: every rank calls it at every epoch's end, and raises the same error."""
        if not self.record_training or not trainer.strategy.reduce_boolean_decision(self._steps is not None,
                                                                                      all=False):
            return None
        if self._steps is None:  # this rank saw no batch (or no usable one): it adds zeros
            assert self._scored_dataset is not None
            self._steps = StepRecorder(len(self._scored_dataset), pl_module.device, self._previous_correct,
                                       self.class_evidence)
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
        epoch, n = trainer.current_epoch, self._steps.n
        if bad:
            rank_zero_warn(
                f"CurvatureCallback left out {bad} training presentation(s) of epoch {epoch}: a "
                f"'sample_index' outside [0, {n}) (the scored dataset's indices) or a non-finite "
                "'sample_loss'. Check that the index is the sample's position in the scored dataset."
            )
        sums = reduced.cpu().numpy()
        keys = keys.cpu().numpy()
        key, conflicts = label_conflicts(keys)
        if len(conflicts):  # every rank holds the same keys: all raise, before anything is committed
            i = conflicts[0]
            raise ValueError(
                f"CurvatureCallback: in epoch {epoch} the training steps presented sample(s) {conflicts[:10].tolist()} "
                f"({len(conflicts)} in all) under different labels (e.g. sample {i}: label keys {-keys[1, i]} and "
                f"{key[i]}), expected one label per sample. Either "
                "'sample_index' does not identify the sample (it must be the index in the scored dataset, e.g. "
                "WithIndex's third item, not a position in the batch or `index // 2`) or the labels are random (a "
                "random target_transform). Nothing of this epoch was added to the store."
            )
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
        return sums, key, classes

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self._should_skip_scoring(trainer):
            return
        steps = self._end_steps(trainer, pl_module)  # raises on every rank for labels that change within the epoch
        score = self.score_curvature and self.should_score(epoch) and epoch not in self._epochs_done
        if not score and steps is None:
            return
        assert self._scored_dataset is not None  # set by on_train_start
        values = None  # an epoch without a pass commits its training-time sums alone
        if score:
            if self._scoring is None:
                self._scoring = ScoringPass(
                    self._scored_dataset, self.batch_to_inputs or default_batch_to_inputs, settings=self._settings,
                    loss_fn=self.loss_fn, channels=self.channels, batch_size=self.batch_size,
                    num_workers=self.num_workers, cache=self.cache, chunk_size=self.chunk_size,
                    progress_bar=self.progress_bar,
                )
            with random_states_kept():  # the pass's loader draws a seed: training must draw what it would without us
                values = self._scoring.run(trainer, pl_module, self._pass_indices(), epoch, universe=self._universe,
                                           gather_columns=self.GATHER_COLUMNS)
        caught: BaseException | None = None
        if trainer.is_global_zero:
            try:
                arrays = self._commit(epoch, None if values is None else {k: v.cpu().numpy() for k, v in
                                                                          values.items()}, steps)
            except Exception as e:  # a refused commit (other labels) stops every rank, not only this one
                caught = e
        raise_together(trainer, caught)
        if score:
            if trainer.is_global_zero:
                self._log(trainer, arrays[self.signal])
            self._epochs_done.append(epoch)
        trainer.strategy.barrier("curvature_commit")

    def _commit(self, epoch: int, arrays: dict[str, np.ndarray] | None,
                steps: tuple[Any, ...] | None) -> dict[str, np.ndarray] | None:
        """Add the pass's gathered values (and its label keys) and the epoch's training-step sums (and the label keys
        the steps saw) to the store in one commit, on rank 0; returns the pass's channels."""
        assert self._store is not None
        step_indices = step_values = step_labels = None
        if steps is not None:  # the epoch's sums, and its class evidence merged with the store's running evidence
            sums, keys, evidence = steps
            step_indices, step_values = merge_step_values(self._store, epoch, sums, evidence)
            step_labels = keys[step_indices]
            self._check_loss(epoch, step_values)
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

    def _check_loss(self, epoch: int, values: dict[str, np.ndarray]) -> None:
        """Warn (once per fit, on rank 0) when the first epoch this fit adds to a store that has training-time epochs
        already has a mean training loss that one epoch of training does not explain: the training step's loss is
        no part of the store's identity, so another loss (label smoothing, a weighting, focal) would go unnoticed."""
        assert self._store is not None
        if "loss" in self._doubts or epoch in self._store.step_epochs:
            return
        self._doubts.add("loss")  # the first epoch this fit adds: the one that continues the store
        if not self._store.step_epochs:
            return
        jump = loss_jump(np.asarray(self._store.channel_last("train_loss")),
                         np.asarray(self._store.channel_last("train_seen")), values["train_loss"],
                         values["train_seen"])
        if jump is not None:
            rank_zero_warn(
                f"CurvatureCallback: the mean training loss per presentation went from {jump[0]:.4g} (the store's "
                f"latest epoch, {max(self._store.step_epochs)}) to {jump[1]:.4g} in epoch {epoch}, more than one "
                "epoch of training explains: does the training step compute the same loss as the run that made the "
                f"store at {self._path} (label smoothing, class weights, reduction, temperature)? The store does not "
                "know the training loss, and sums under two losses do not compare. If the loss changed, use another "
                "`directory`; if it did not (a learning-rate jump, a new schedule), ignore this. Warned once per fit."
            )

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
    def _resolve_dataset(self, trainer: pl.Trainer) -> tuple[Dataset, str]:
        """The dataset to score and where it came from (for messages)."""
        if self.dataset is not None:
            return self.dataset, "`CurvatureCallback(dataset=...)`"
        dm = trainer.datamodule
        if dm is not None and callable(getattr(dm, "curvature_dataset", None)):
            return dm.curvature_dataset(), f"`{type(dm).__name__}.curvature_dataset()`"
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            raise ValueError(
                f"Cannot find the training dataset to score (train_dataloader is {type(loader).__name__}). Pass "
                "`CurvatureCallback(dataset=...)`, or define `curvature_dataset()` on the datamodule."
            )
        # read on rank 0 only, the one that warns; an empty dataset is refused with its own message after
        if trainer.is_global_zero and len(dataset) and reads_differ(dataset, 0):
            rank_zero_warn(
                "CurvatureCallback scores the training dataset, whose items look random (reading item 0 twice gave "
                "different values, e.g. a random crop or flip): scores then include augmentation noise. Pass "
                "`dataset=` with the evaluation transform, or define `curvature_dataset()` on the datamodule."
            )
        return dataset, "the training loader's dataset (`trainer.train_dataloader.dataset`)"

    @staticmethod
    def _fingerprint(dataset: Dataset) -> dict[str, Any]:
        """What identifies the scored data: a store made for other labels is refused."""
        fingerprint: dict[str, Any] = {"n": len(dataset), "dataset": type(dataset).__name__}
        digest = _labels_digest(dataset)
        if digest is not None:
            fingerprint["labels_sha1"] = digest
        return fingerprint

    def _resolve_path(self, trainer: pl.Trainer) -> Path:
        if self._restored and self._restored.get("directory"):
            return Path(self._restored["directory"])  # a resumed run may have a new log dir: keep its store
        path = Path(self.directory)
        if not path.is_absolute():
            root = trainer.log_dir or trainer.default_root_dir  # log_dir broadcasts: every rank calls it
            path = Path(root) / path
        return path.resolve()

    def _pass_indices(self) -> np.ndarray:
        """The global indices this pass scores (the same on every rank)."""
        assert self._scored_dataset is not None
        return pass_indices(len(self._scored_dataset), len(self._epochs_done), self._period)

    #: values per collective in the DDP gather: bounds its memory at ImageNet scale (8 MB of float64 per rank)
    GATHER_COLUMNS = 1 << 20

    # ----------------------------------------------------------------------------- logging
    def _log(self, trainer: pl.Trainer, scores: np.ndarray) -> None:
        """Summary statistics of the pass's signal (:attr:`signal`: curvature, unless the pass computes none) to every
        logger; a histogram of its log10 values to those that take one."""
        if not trainer.loggers:
            return
        name = self.signal
        p50, p90, p99 = np.percentile(scores, [50, 90, 99])
        stats = {f"{name}/mean": float(scores.mean()), f"{name}/median": float(p50),
                 f"{name}/p90": float(p90), f"{name}/p99": float(p99)}
        step = trainer.global_step
        log10 = log10_floor(scores)
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=step)
            if not self.log_histogram:
                continue
            kind = type(logger).__name__
            if kind == "TensorBoardLogger":
                logger.experiment.add_histogram(f"{name}/log10_histogram", log10, global_step=step)
            elif kind == "WandbLogger":
                import wandb

                logger.log_metrics({f"{name}/log10_histogram": wandb.Histogram(log10, num_bins=64)}, step=step)
                if name != "curvature":  # the top-k views are of curvature
                    continue
                from curvature_callback.integration.sinks import log_top_k_grid

                log_top_k_grid(logger, self._scored_dataset, np.asarray(self._store.mean), step,  # the running mean
                               self.batch_to_inputs or default_batch_to_inputs)

    def _log_end(self, trainer: pl.Trainer) -> None:
        """At the end of fit, on rank 0: a table of the most-curved samples to the W&B loggers."""
        wandb_loggers = [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]
        if not (trainer.is_global_zero and wandb_loggers and self.log_histogram and self._store is not None
                and self._store.epochs and self.signal == "curvature"):
            return
        from curvature_callback.integration.sinks import log_top_k_table

        dm = trainer.datamodule  # labels before noise and file names, when the datamodule keeps them
        original, filenames = getattr(dm, "original_labels", None), getattr(dm, "filenames", None)
        loss = np.asarray(self._store.channel_mean("loss")) if "loss" in self.channels else None
        for logger in wandb_loggers:
            log_top_k_table(logger, self._scored_dataset, np.asarray(self._store.mean),
                            self.batch_to_inputs or default_batch_to_inputs, original_labels=original, loss=loss,
                            filenames=filenames, step=trainer.global_step)
