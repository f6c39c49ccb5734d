"""``curvature-train``: the Hydra entry point of the experiments (docs/DESIGN.md §6, docs/EXPERIMENTS.md).

Trains the configured classifier with :class:`~curvature_callback.CurvatureCallback` and writes, in the
run directory (``output_dir``): the store (``curvature/``, with ``filenames.txt`` for folder datasets),
``labels.npz`` (original and given labels, flipped mask; written before training), ``scores.csv``,
``label_issues.csv`` (the flagged labels, :mod:`curvature_callback.analysis.label_issues`), ``corrections.csv``
(the flagged labels pre-filled for a person to correct, :mod:`curvature_callback.core.corrections`), the report with
``review_images.npy`` and ``review_indices.npy`` (the images it shows),
``metrics.json`` (detection metrics and the time split), ``histogram.png`` and ``top_k.png``. With no
arguments it runs the embedded default (``conf/train.yaml``)::

    curvature-train                                   # digits, 10 % label noise, CPU, about a minute
    curvature-train experiment=cifar10_noise10 data=cifar10_offline
    curvature-train experiment=cifar10_noise10 trainer=ddp trainer.devices=4
    curvature-train -m experiment=cifar10_mislabeled sweep=noise_seed

Under ``strategy=ddp`` Lightning starts this script again for each further rank; :func:`main` makes that
command repeat exactly this job in this run directory, also inside a ``-m`` sweep.

The configs are read from ``$CURVATURE_CONF`` if set, else from the copy of ``conf/`` that the wheel ships inside
the package, else from the checkout's top-level ``conf/`` (an editable install).

**Before anything is built** :func:`check_config` checks the composed config's values (the datamodule's own
``ARGUMENTS``, the trainer's counts, the top-level keys), and :func:`check_run_dir` refuses a symbolic link where the
run writes (:data:`RUN_FILES`, :data:`RUN_FOLDERS`); :class:`RefuseLinks`, a Hydra callback in ``conf/train.yaml``,
does so before Hydra writes ``.hydra/`` and its log. Every file this module writes goes through
:mod:`curvature_callback.core.safe_paths` (never through a link). A value the run cannot use is a
:class:`~curvature_callback.experiments.arguments.ConfigError`: :func:`main` prints it, without a traceback, and
exits with 2.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import OmegaConfBaseException
from torch.utils.data import DataLoader, Dataset

from curvature_callback.analysis import mislabel_metrics, suspicion_scores, write_scores_csv
from curvature_callback.analysis.label_issues import LabelIssues, find_label_issues, write_label_issues_csv
from curvature_callback.analysis.plots import plot_histogram, plot_top_k
from curvature_callback.analysis.recommend import recommended_scores, used_signals
from curvature_callback.analysis.report import write_report
from curvature_callback.core import safe_paths
from curvature_callback.core.corrections import CorrectionsError, corrections_rows, write_corrections
from curvature_callback.core.numeric import labels_digest
from curvature_callback.core.store_format import StoreCorruptError, StoreMismatchError
from curvature_callback.experiments.arguments import AnyOf, ConfigError, Integer, OneOf, Real, Rule, check_arguments
from curvature_callback.integration.callback import CurvatureCallback, default_batch_to_inputs
from curvature_callback.integration.sinks import log_review_table

__all__ = ["CONF_DIR", "REVIEW_FILES", "RUN_FILES", "RUN_FOLDERS", "RefuseLinks", "check_config", "check_run_dir",
           "main", "run", "sweep_value"]


def _conf_dir() -> str:
    """$CURVATURE_CONF, else the configs shipped inside the package (a wheel), else the checkout's conf/."""
    if os.environ.get("CURVATURE_CONF"):
        return os.environ["CURVATURE_CONF"]
    package = Path(__file__).resolve().parents[1]  # curvature_callback/
    packaged = package / "conf"  # pyproject.toml maps the top-level conf/ to curvature_callback/conf in the wheel
    return str(packaged if (packaged / "train.yaml").is_file() else package.parent / "conf")


#: the config folder (see :func:`_conf_dir`)
CONF_DIR = _conf_dir()
#: what Lightning's DDP launcher sets in its own environment; a sweep's next job must not inherit it
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_ENV_AT_START = {k: os.environ.get(k) for k in _DDP_ENV}


def mixed_precision() -> str:
    """``bf16-mixed`` on GPUs that support it, ``16-mixed`` on older ones, ``32-true`` without a GPU.

    The config resolver ``${mixed_precision:}`` (conf/trainer/gpu.yaml). Only training is mixed: the scoring
    pass turns autocast off (the finite differences need float32).
    """
    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


OmegaConf.register_new_resolver("mixed_precision", mixed_precision, replace=True)


# ------------------------------------------------------------------------------------------ what a run may be given
#: what the top-level keys of conf/train.yaml must be
TOP_LEVEL = {
    "seed": Rule(Integer(0, 2**32 - 1), "the seed of weights and batch order", 0),
    "threads": Rule(Integer(1, null=True), "torch CPU threads; null for torch's default", 1),
    "top_k": Rule(Integer(1), "samples shown in top_k.png", 25),
    "report": Rule(OneOf((True, False)), "also write report/index.html", "true"),
}
_BATCHES = Rule(AnyOf((Integer(0, null=True), Real(0.0, 1.0))), "a number of batches, or a fraction of them", 1.0)
#: what the trainer's commonly typed keys must be (Lightning's Trainer checks the rest when it is built)
TRAINER = {
    "max_epochs": Rule(Integer(-1, null=True), "-1: no limit", 40),
    "min_epochs": Rule(Integer(0, null=True), "", 1),
    "max_steps": Rule(Integer(-1), "-1: no limit", -1),
    "min_steps": Rule(Integer(0, null=True), "", 0),
    "num_nodes": Rule(Integer(1), "machines", 1),
    "log_every_n_steps": Rule(Integer(0, null=True), "0: never", 10),
    "check_val_every_n_epoch": Rule(Integer(1, null=True), "", 1),
    "accumulate_grad_batches": Rule(Integer(1), "", 1),
    "num_sanity_val_steps": Rule(Integer(-1, null=True), "-1: all", 2),
    "gradient_clip_val": Rule(Real(0.0, null=True), "", 1.0),
    **{f"limit_{split}_batches": _BATCHES for split in ("train", "val", "test", "predict")},
}


def _value(cfg: DictConfig, key: str) -> Any:
    """``cfg[key]``, resolved; a missing (``???``) or unresolvable value is a :class:`ConfigError` naming it."""
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"Expected {key} to have a value, got one that cannot be read ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]}): set it on the command line ({key}=...).") from e


def _check_group(cfg: DictConfig, group: str, rules: Mapping[str, Rule]) -> None:
    """Check the keys of ``cfg.<group>`` (the top level for ``""``) that ``rules`` knows, named as typed."""
    node = cfg if not group else _value(cfg, group)
    if not isinstance(node, DictConfig):
        return
    prefix = f"{group}." if group else ""
    values = {key: _value(cfg, prefix + key) for key in rules if key in node}

    def fix(key: str, rule: Rule) -> str:
        example = f" ({prefix}{key}={rule.example}, say)" if rule.example is not None else ""
        return f"Fix it on the command line{example} or in the config that sets it."

    check_arguments(rules, values, name=lambda key: prefix + key, fix=fix)


def check_config(cfg: DictConfig) -> None:
    """Check the composed config before anything is built: the top-level keys (:data:`TOP_LEVEL`), the data and
    the model (the datamodule's and the module's own ``ARGUMENTS``, when their ``_target_`` has them) and the
    trainer (:data:`TRAINER`).

    Raises:
        ConfigError: naming the key as typed on the command line (``data.noise``), the value, what is expected
            and how to fix it.
    """
    _check_group(cfg, "", TOP_LEVEL)
    for group, what, choices in (("data", "a datamodule", "data=digits, data=cifar10"),
                                 ("model", "a LightningModule", "model=small_cnn, model=resnet18")):
        target = _value(cfg, f"{group}._target_") if group in cfg else None
        if not isinstance(target, str):
            continue
        try:
            cls = get_class(target)
        except Exception as e:  # Hydra wraps whatever the import raised
            raise ConfigError(f"Expected {group}._target_ to name {what} class, got {target!r}, which cannot be "
                              f"imported ({' '.join(str(e).split())}): choose one with {choices}, ...") from e
        _check_group(cfg, group, getattr(cls, "ARGUMENTS", {}))
    if "trainer" in cfg:
        _check_group(cfg, "trainer", TRAINER)


def _instantiate(node: Any, key: str, **kwargs: Any) -> Any:
    """``instantiate(node)``; what its class refuses is a :class:`ConfigError` that names the config key."""
    try:
        return instantiate(node, **kwargs)
    except (InstantiationException, OmegaConfBaseException) as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ is not None else e
        found = re.search(r"full_key: (\S+)", str(e))  # Hydra names the entry that failed: model.net, data.root
        where = found.group(1) if found else key
        reason = (str(cause).splitlines() or [""])[0].rstrip(".")
        raise ConfigError(
            f"Could not build {where} from the config: {type(cause).__name__}: {reason}. Fix {where} on the command "
            "line or in the config that sets it."
        ) from e


def _instantiate_group(group: Mapping | None, key: str) -> list[Any]:
    """Instantiate each named entry of a callbacks/logger group that has a ``_target_``."""
    if not group:
        return []
    return [_instantiate(e, f"{key}.{name}") for name, e in group.items() if isinstance(e, Mapping) and "_target_" in e]


# ------------------------------------------------------------------------------------------ where a run writes
#: what a run writes directly in its folder: never through a link there (``*.log``: Hydra's log, one per rank)
RUN_FILES = ("scores.csv", "label_issues.csv", "metrics.json", "labels.npz", "histogram.png", "top_k.png", "*.log",
             "csv", "tensorboard", "wandb", "lightning_logs")
#: the folders a run writes into: no link anywhere under them (the store, Hydra's, the report's, checkpoints)
RUN_FOLDERS = (".hydra", "curvature", "report", "checkpoints")
#: what the review loop writes in the run folder: the images its report shows, the corrections a person edits
REVIEW_FILES = ("review_images.npy", "review_indices.npy", "corrections.csv")


def check_run_dir(run_dir: str | os.PathLike) -> None:
    """Refuse a run folder with a symbolic link where the run writes (:data:`RUN_FILES`, :data:`REVIEW_FILES`,
    :data:`RUN_FOLDERS`).

    The folder itself may be a link (the user named it), and so may other entries of it (a linked dataset).

    Raises:
        safe_paths.UnsafePathError: naming the link, where it leads and the fix; nothing was written.
        ConfigError: ``run_dir`` is there but is no folder.
    """
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"Expected the run folder {run_dir} to be a folder, or nothing there, but it is a file: "
                          "choose another one (hydra.run.dir=...), or move the file away.")
    safe_paths.refuse_links(run_dir, RUN_FILES + REVIEW_FILES, RUN_FOLDERS, fix=(
        "Remove the link, or run in a fresh folder (hydra.run.dir=...); a run writes its outputs only as files of "
        "its own folder."))


class RefuseLinks(HydraCallback):
    """Hydra callback (``hydra.callbacks`` in conf/train.yaml): :func:`check_run_dir` before Hydra writes ``.hydra/``
    and its log into the run folder (for ``-m``: ``multirun.yaml`` and the job folders already there).

    A refusal is printed and ends the program with exit status 2: Hydra would print a traceback.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(lambda: check_run_dir(Path(str(config.hydra.run.dir))))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        def check() -> None:
            sweep = Path(str(config.hydra.sweep.dir))
            safe_paths.refuse_links(sweep, ("multirun.yaml",), fix="Remove the link, or sweep into a fresh folder "
                                    "(hydra.sweep.dir=...).")
            for job in sorted(sweep.iterdir()) if sweep.is_dir() else ():
                if job.is_dir() and not job.is_symlink():
                    check_run_dir(job)

        self._check(check)

    @staticmethod
    def _check(check: Any) -> None:
        try:
            check()
        except ValueError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"curvature-train: {e}", file=sys.stderr)
            raise SystemExit(2) from None


class _Inputs:
    """``view[i]`` is the input of sample ``i``: reads only the images a figure shows."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i][0]


@torch.no_grad()
def _predict(
    model: pl.LightningModule, dataset: Dataset, callback: CurvatureCallback, device: torch.device
) -> np.ndarray:
    """Predicted class of every sample of ``dataset`` by the final model, in eval mode, on ``device`` (Lightning
    moves the model back to the CPU after fit; a GPU run predicts on its GPU)."""
    was_training = model.training
    model.eval().to(device)
    to_inputs = callback.batch_to_inputs or default_batch_to_inputs
    loader = DataLoader(dataset, batch_size=callback.batch_size, num_workers=callback.num_workers,
                        pin_memory=device.type == "cuda")
    preds = [model(to_inputs(batch)[0].to(device, non_blocking=True)).argmax(1).cpu() for batch in loader]
    model.train(was_training)
    return torch.cat(preds).numpy()


class _Clock(Callback):
    """Wall-clock marks of a run: when training starts and how long the scoring passes take.

    Two instances bracket the curvature callback (``"before"`` runs its ``on_train_epoch_end`` just before the
    callback's, ``"after"`` just after), so their difference is the scoring pass, gather and commit included.
    """

    def __init__(self, times: dict[str, float], where: str) -> None:
        self.times, self.where = times, where

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.times.setdefault("train_start", time.perf_counter())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        if self.where == "before":
            self.times["mark"] = now
        else:
            self.times["scoring"] = self.times.get("scoring", 0.0) + now - self.times.pop("mark", now)


class _RecordLabels(Callback):
    """Before training, on rank 0: ``labels.npz`` in the run directory (original and given labels, the flipped
    mask, the source indices; with ``data.corrections``, the labels before them and the kept mask) and, for folder
    datasets, ``filenames.txt`` in the store folder.

    ``filenames.txt`` is plain UTF-8, line ``i`` the path of sample ``i`` relative to the training folder: it
    names each score's image (published ImageNet memorization scores are keyed by file name) with no pickle.
    It runs after the curvature callback's ``on_train_start``, which opens the store.
    """

    def __init__(self, out: Path, datamodule: pl.LightningDataModule, curvature: CurvatureCallback) -> None:
        self.out, self.datamodule, self.curvature = out, datamodule, curvature

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        given = getattr(self.datamodule, "given_labels", None)
        if hasattr(given, "cpu"):  # a tensor: labels_digest is numpy-only
            given = given.detach().cpu().numpy()
        digest = "" if given is None else labels_digest(given)
        if trainer.world_size > 1 and trainer.strategy.broadcast(digest, src=0) != digest:  # same call on all ranks
            raise RuntimeError(
                f"Rank {trainer.global_rank} trains on other labels than rank 0: it composed another config. A "
                "process started by hand (torchrun, SLURM) must get the same overrides as rank 0."
            )
        if not trainer.is_global_zero:
            return
        arrays = {name: np.asarray(getattr(self.datamodule, name)) for name in
                  ("original_labels", "given_labels", "flipped", "source_indices", "noisy_labels", "kept")
                  if getattr(self.datamodule, name, None) is not None}
        self.out.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # np.load(..., allow_pickle=False) reads it
        safe_paths.write_bytes(self.out / "labels.npz", buffer.getvalue())
        names = getattr(self.datamodule, "filenames", None)
        if names is not None:
            store = self.curvature.store
            if len(names) != store.n:
                raise RuntimeError(f"{len(names)} file names for a store of {store.n} samples.")
            if any("\n" in name for name in names):
                raise ValueError("A file name holds a line break: filenames.txt has one name per line.")
            safe_paths.write_text(store.directory / "filenames.txt", "".join(f"{name}\n" for name in names))


def _labels(datamodule: pl.LightningDataModule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(original, given, flipped)`` of the scored samples, from the datamodule's noise bookkeeping."""
    names = ("original_labels", "given_labels", "flipped")
    values = [getattr(datamodule, name, None) for name in names]
    missing = [name for name, value in zip(names, values, strict=True) if value is None]
    if missing:
        raise AttributeError(
            f"curvature-train reads {', '.join(names)} from the datamodule to measure mislabel detection, "
            f"but {type(datamodule).__name__} lacks {missing}: set them in setup()."
        )
    return tuple(np.asarray(v) for v in values)


def _build(cfg: DictConfig, out: Path, times: dict[str, float]) -> tuple[Any, Any, pl.Trainer, CurvatureCallback, list]:
    """The run's datamodule, model, trainer (with the callbacks, clocks around the curvature pass) and loggers."""
    datamodule = _instantiate(cfg.data, "data")
    model = _instantiate(cfg.model, "model")
    callbacks = _instantiate_group(cfg.get("callbacks"), "callbacks")
    loggers = _instantiate_group(cfg.get("logger"), "logger")
    curvature = [cb for cb in callbacks if isinstance(cb, CurvatureCallback)]
    if len(curvature) != 1:
        raise ValueError(
            f"Expected exactly one CurvatureCallback in `callbacks`, got {len(curvature)}: keep "
            "callbacks/curvature in the defaults list (e.g. callbacks=curvature)."
        )
    at = callbacks.index(curvature[0])
    callbacks[at : at + 1] = [_Clock(times, "before"), curvature[0], _Clock(times, "after"),
                              _RecordLabels(out, datamodule, curvature[0])]
    extra: dict[str, Any] = {"callbacks": callbacks, "logger": loggers or False}
    if any(isinstance(cb, ModelCheckpoint) for cb in callbacks):
        extra["enable_checkpointing"] = True  # callbacks=[...,checkpoint] works with any trainer config
    trainer: pl.Trainer = _instantiate(cfg.trainer, "trainer", **extra)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the whole composed config
    return datamodule, model, trainer, curvature[0], loggers


def _columns(store: Any, datamodule: Any, pred: np.ndarray,
             suspicion: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The columns of scores.csv: labels, the recommended score (which labels are wrong), every channel's mean over
    the scored epochs, the training-time signals, counts, predictions."""
    original, given, flipped = _labels(datamodule)
    columns: dict[str, np.ndarray] = {"label": original, "given_label": given, "flipped": flipped}
    recommended = recommended_scores(suspicion)
    if "mislabeled" in recommended:
        columns["recommended"] = recommended["mislabeled"]
    columns["curvature"] = np.array(store.mean)
    for channel in store.channels[1:]:  # loss, margin, confidence, correct: means over the same epochs
        columns[channel] = np.array(store.channel_mean(channel))
    if "train_loss" in suspicion:  # recorded from the training steps: CSL (the sum), learning time, forgetting
        columns["csl"] = np.array(store.sum_of("train_loss"))
        columns["learning_time"] = suspicion["learning_time"]
        columns["train_forgetting"] = np.array(store.sum_of("train_forgetting"))
    columns.update(count=np.array(store.count), pred=pred)
    source = getattr(datamodule, "source_indices", None)
    if source is not None:
        columns["source_index"] = np.asarray(source)
    filenames = getattr(datamodule, "filenames", None)
    if filenames is not None:
        columns["file"] = np.asarray(filenames, dtype=object)
    return columns


def _detection_metrics(columns: Mapping[str, np.ndarray], suspicion: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """AUROC and AP of the recommended score, curvature and every other signal for the flipped labels, each over the
    scored samples it has a value for (null without noise), and the training accuracies."""
    flipped, given, original, pred = columns["flipped"], columns["given_label"], columns["label"], columns["pred"]
    # with fraction < 1 a short run may leave samples unscored; without curvature, the samples trained on
    scored = np.isfinite(columns["curvature"])
    if not scored.any():
        scored = np.isfinite(columns["recommended"])
    noisy = 0 < flipped[scored].sum() < scored.sum()  # detection needs both kinds; without noise these are null
    metrics: dict[str, Any] = {"recommended_signals": list(used_signals(suspicion)["mislabeled"])}
    scores = {"recommended": recommended_scores(suspicion)["mislabeled"], **suspicion}  # higher = more suspicious
    for name, score in scores.items():
        has = scored & np.isfinite(score)  # a training-time signal: the samples trained on (all, after an epoch)
        found = (mislabel_metrics(score[has], flipped[has]) if noisy and 0 < flipped[has].sum() < has.sum()
                 else {"auroc": None, "ap": None})
        metrics.update({f"{metric}_{name}": value for metric, value in found.items()})
    metrics.update(
        train_acc=float((pred == given).mean()),  # on the labels it trained on: memorization reaches 1.0
        train_acc_original=float((pred == original).mean()),
        flipped_memorized=float((pred == given)[flipped].mean()) if noisy else None,
        n_samples=len(flipped),
        n_scored=int(scored.sum()),
        n_flipped=int(flipped.sum()),
    )
    return metrics


def _label_issue_metrics(issues: LabelIssues, columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The flagged set against the planted flips: precision, recall, and among the flagged flips the share whose
    suggested label is the original (null where undefined: nothing flagged, no flips)."""
    flipped, original = columns["flipped"], columns["label"]
    hit = flipped[issues.flagged]
    found = issues.flagged[hit]
    return {
        "estimated_label_issues": issues.estimated,
        "flagged": len(issues.flagged),
        "label_issues_method": issues.method,
        "flagged_precision": float(hit.mean()) if len(hit) else None,
        "flagged_recall": float(hit.sum() / flipped.sum()) if flipped.any() else None,
        "suggested_label_accuracy": float((issues.suggested[found] == original[found]).mean()) if len(found) else None,
    }


def _write_corrections(out: Path, issues: LabelIssues, given: np.ndarray) -> None:
    """``corrections.csv``: a row per flagged sample for a person to edit (relabel to a confident suggestion, else
    keep). A file already there is a person's work (a rerun or a resume into this folder): left as it is."""
    path = out / "corrections.csv"
    if path.exists():  # a link was refused before the run (check_run_dir)
        print(f"curvature-train: {path} is there already: left as it is (a person's corrections)")
        return
    flagged = issues.flagged
    write_corrections(path, corrections_rows(flagged, given[flagged], issues.suggested[flagged],
                                             issues.suggestion_confidence[flagged]))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, score and write the outputs of one run into ``cfg.output_dir``; returns the metrics (rank 0).

    Every rank trains and scores; only global rank 0 writes the CSV, JSON and figures (other ranks return {}).

    Raises:
        ConfigError: a value of ``cfg`` the run cannot use (:func:`check_config`), before anything is built.
        safe_paths.UnsafePathError: a link where the run writes (:func:`check_run_dir`), before anything is built.
    """
    start = time.perf_counter()
    check_config(cfg)
    out = Path(cfg.output_dir)
    check_run_dir(out)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    times: dict[str, float] = {}
    datamodule, model, trainer, curvature, loggers = _build(cfg, out, times)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_end = time.perf_counter()
    if not trainer.is_global_zero:
        return {}

    store = curvature.store  # the folder the callback wrote, opened read-only
    if not store.epochs and not store.step_epochs:
        raise RuntimeError(
            f"No epoch was scored: the run trained {trainer.current_epoch} epoch(s) and the callback starts "
            f"at epoch {curvature.start_epoch}. Lower callbacks.curvature.start_epoch, or raise "
            "trainer.max_epochs."
        )
    dataset = datamodule.curvature_dataset()
    suspicion = suspicion_scores(store)  # every signal: higher = more suspicious
    columns = _columns(store, datamodule, _predict(model, dataset, curvature, trainer.strategy.root_device), suspicion)
    metrics = _detection_metrics(columns, suspicion)
    metrics.update(epochs=int(trainer.current_epoch), scored_epochs=store.epochs)
    issues = find_label_issues(store, columns["given_label"], predictions=columns["pred"])  # no ground truth read
    metrics.update(_label_issue_metrics(issues, columns))
    # False: training-time signals only (score_curvature=False), or a gradient or forward pass (no curvature score)
    with_curvature = "curvature" in suspicion and bool(np.isfinite(suspicion["curvature"]).any())
    store.close()

    write_scores_csv(out / "scores.csv", columns)
    write_label_issues_csv(out / "label_issues.csv", issues, columns["given_label"])
    _write_corrections(out, issues, columns["given_label"])
    if with_curvature:  # the curvature histogram; the top-k grid ranks by the recommended score (which labels?)
        curved = np.isfinite(columns["curvature"])
        plot_histogram(columns["curvature"][curved], columns["flipped"][curved], out / "histogram.png")
    rank = columns["recommended"]
    plot_top_k(_Inputs(dataset), columns["given_label"], columns["label"], np.where(np.isfinite(rank), rank, -np.inf),
               out / "top_k.png", k=int(cfg.get("top_k", 25)), class_names=getattr(datamodule, "classes", None),
               ranked_by="recommended score (which labels are wrong?)")
    end = time.perf_counter()
    train_start = times.get("train_start", start)
    scoring = times.get("scoring", 0.0)
    metrics["wall_time_s"] = round(end - start, 2)
    metrics["time_s"] = {  # where the wall time went (rank 0)
        "setup": round(train_start - start, 2),  # data (download, decode), model, DDP start, store
        "train": round(fit_end - train_start - scoring, 2),  # training and validation epochs
        "scoring": round(scoring, 2),  # the curvature passes, gather and commit included
        "report": round(end - fit_end, 2),  # predictions, scores.csv, figures
    }
    safe_paths.write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    if cfg.get("report", True):  # report/index.html, and the images it shows kept in the run folder
        write_report(out, dataset=dataset, class_names=getattr(datamodule, "classes", None),
                     top_k=int(cfg.get("top_k", 25)), keep_images=True, issues=issues)
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            log_review_table(logger, dataset, issues.flagged, columns["given_label"], issues.suggested,
                             issues.probability, issues.suggestion_confidence, issues.reasons,
                             curvature.batch_to_inputs or default_batch_to_inputs,
                             class_names=getattr(datamodule, "classes", None), step=trainer.global_step)
    _print_summary(metrics, out)
    return metrics


def _print_summary(metrics: Mapping[str, Any], out: Path) -> None:
    aurocs = ", ".join(f"{s} {metrics[f'auroc_{s}']:.3f}" for s in ("recommended", "train_loss", "loss", "curvature")
                       if metrics.get(f"auroc_{s}") is not None)
    split = ", ".join(f"{k} {v:.0f} s" for k, v in metrics["time_s"].items())
    print(
        f"curvature-train: mislabel AUROC {aurocs or 'n/a (no flipped labels)'} | train acc "
        f"{metrics['train_acc']:.3f} on given labels | {metrics['wall_time_s']:.0f} s ({split})\n  label issues: "
        f"{metrics['estimated_label_issues']} estimated, {metrics['flagged']} flagged (label_issues.csv)\n"
        f"  outputs: {out}"
    )


def _ddp_children_repeat_this_job(output_dir: str) -> None:
    """Make Lightning's DDP relaunch (``sys.argv`` plus ``hydra.run.dir=<hydra.run.dir>``) rerun this very job.

    ``hydra.run.dir`` may hold ``${now:...}``, which a child resolves later, to another folder: pin it to this
    job's resolved directory. In a ``-m`` sweep the argv holds the whole sweep: replace it with this job's own
    overrides, so each child runs one job (in run mode) rather than the sweep.
    """
    run_cfg = HydraConfig.instance().cfg.hydra.run
    with read_write(run_cfg):
        run_cfg.dir = output_dir
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    keep, args = [sys.argv[0]], iter(sys.argv[1:])
    for arg in args:  # keep where the configs come from; drop -m and the sweep's override lists
        name = arg.split("=", 1)[0]
        if name in ("-cp", "-cn", "-cd", "--config-path", "--config-name", "--config-dir"):
            keep += [arg] if "=" in arg else [arg, next(args, "")]
    sys.argv = keep + list(HydraConfig.get().overrides.task)


def _forget_ddp() -> None:
    """After a job: drop the process group and the launcher's environment, so that the next job of a sweep
    (same process) starts its own ranks instead of believing it was launched by them."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key, value in _ENV_AT_START.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


#: the errors :func:`main` prints without a traceback: a config value, a link where the run writes, a store folder
#: that holds another run's scores or a damaged one (a rerun into an old folder), a corrections file that cannot apply
_SAID_IN_FULL = (ConfigError, safe_paths.UnsafePathError, StoreMismatchError, StoreCorruptError, CorrectionsError)


def sweep_value(metrics: Mapping[str, Any]) -> float:
    """The value a sweep optimizes: the recommended score's mislabel AUROC (``auroc_recommended``), which every
    configuration has (curvature's is NaN under ``callbacks=recommended``); NaN without flipped labels or off rank 0."""
    auroc = metrics.get("auroc_recommended")
    return float("nan") if auroc is None else float(auroc)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Console script ``curvature-train``; returns :func:`sweep_value` (the value a sweep optimizes)."""
    cfg.output_dir = HydraConfig.get().runtime.output_dir  # also when a config set it otherwise
    _ddp_children_repeat_this_job(cfg.output_dir)
    try:
        metrics = run(cfg)
    except ValueError as e:  # ours, each said in full with its fix; anything else keeps its trace
        if not isinstance(e, _SAID_IN_FULL) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"curvature-train: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        _forget_ddp()
        if "wandb" in sys.modules:  # one W&B run per job of a sweep
            sys.modules["wandb"].finish()
    return sweep_value(metrics)


if __name__ == "__main__":
    main()
