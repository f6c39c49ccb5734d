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

The app's story is :func:`run`: check the composed config (:mod:`~curvature_callback.experiments.config_checks`) and
the run folder (:mod:`~curvature_callback.experiments.run_folder`), build (the callbacks of
:mod:`~curvature_callback.experiments.callbacks` around the curvature callback), fit, then read what the run found
(:mod:`~curvature_callback.experiments.evaluation`) and write it (:mod:`~curvature_callback.experiments.outputs`,
the report). Under ``strategy=ddp`` Lightning starts this script again for each further rank
(:mod:`~curvature_callback.experiments.ddp_relaunch`). What Lightning prints that a user can do nothing about is
silenced in :mod:`~curvature_callback.experiments.quiet`.

The configs are read from ``$CURVATURE_CONF`` if set, else from the copy of ``conf/`` that the wheel ships inside
the package, else from the checkout's top-level ``conf/`` (an editable install). A value the run cannot use is a
:class:`~curvature_callback.experiments.arguments.ConfigError`: :func:`main` prints it, without a traceback, and
exits with 2.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from curvature_callback.analysis.report import write_report
from curvature_callback.core import safe_paths
from curvature_callback.core.corrections import CorrectionsError
from curvature_callback.core.store_format import StoreCorruptError, StoreMismatchError
from curvature_callback.experiments import ddp_relaunch, outputs, quiet
from curvature_callback.experiments.arguments import ConfigError
from curvature_callback.experiments.callbacks import Clock, RecordLabels
from curvature_callback.experiments.config_checks import check_config, instantiate, instantiate_group
from curvature_callback.experiments.evaluation import evaluate, predict
from curvature_callback.experiments.run_folder import check_run_dir
from curvature_callback.integration.callback import CurvatureCallback

__all__ = ["CONF_DIR", "main", "mixed_precision", "run", "sweep_value"]


def _conf_dir() -> str:
    """$CURVATURE_CONF, else the configs shipped inside the package (a wheel), else the checkout's conf/."""
    if os.environ.get("CURVATURE_CONF"):
        return os.environ["CURVATURE_CONF"]
    package = Path(__file__).resolve().parents[1]  # curvature_callback/
    packaged = package / "conf"  # pyproject.toml maps the top-level conf/ to curvature_callback/conf in the wheel
    return str(packaged if (packaged / "train.yaml").is_file() else package.parent / "conf")


#: the config folder (see :func:`_conf_dir`)
CONF_DIR = _conf_dir()


def mixed_precision() -> str:
    """``bf16-mixed`` on GPUs that support it, ``16-mixed`` on older ones, ``32-true`` without a GPU.

    The config resolver ``${mixed_precision:}`` (conf/trainer/gpu.yaml). Only training is mixed: the scoring
    pass turns autocast off (the finite differences need float32).
    """
    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


OmegaConf.register_new_resolver("mixed_precision", mixed_precision, replace=True)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, score and write the outputs of one run into ``cfg.output_dir``; returns the metrics (rank 0).

    Every rank trains and scores; only global rank 0 writes the CSV, JSON and figures (other ranks return {}).

    Raises:
        ConfigError: a value of ``cfg`` the run cannot use (:func:`check_config`), before anything is built.
        safe_paths.UnsafePathError: a link where the run writes (:func:`check_run_dir`), before anything is built.
    """
    times = {"start": time.perf_counter()}
    check_config(cfg)
    out = Path(cfg.output_dir)
    check_run_dir(out)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model, trainer, curvature, loggers = _build(cfg, out, times)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    times["fit_end"] = time.perf_counter()
    if not trainer.is_global_zero:
        return {}
    return _write(cfg, out, datamodule, model, trainer, curvature, loggers, times)


def _build(cfg: DictConfig, out: Path, times: dict[str, float]) -> tuple[Any, Any, pl.Trainer, CurvatureCallback, list]:
    """The run's datamodule, model, trainer (with the callbacks, clocks around the curvature pass) and loggers."""
    datamodule = instantiate(cfg.data, "data")
    model = instantiate(cfg.model, "model")
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_group(cfg.get("logger"), "logger")
    curvature = [cb for cb in callbacks if isinstance(cb, CurvatureCallback)]
    if len(curvature) != 1:
        raise ValueError(
            f"Expected exactly one CurvatureCallback in `callbacks`, got {len(curvature)}: keep "
            "callbacks/curvature in the defaults list (e.g. callbacks=curvature)."
        )
    at = callbacks.index(curvature[0])
    callbacks[at : at + 1] = [Clock(times, "before"), curvature[0], Clock(times, "after"),
                              RecordLabels(out, datamodule, curvature[0])]
    extra: dict[str, Any] = {"callbacks": callbacks, "logger": loggers or False}
    if getattr(datamodule, "validate", True) is False:  # Lightning skips the loop, not warning of an empty loader
        extra["limit_val_batches"] = 0
    if any(isinstance(cb, ModelCheckpoint) for cb in callbacks):
        extra["enable_checkpointing"] = True  # callbacks=[...,checkpoint] works with any trainer config
    trainer: pl.Trainer = instantiate(cfg.trainer, "trainer", **extra)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the whole composed config
    return datamodule, model, trainer, curvature[0], loggers


def _write(cfg: DictConfig, out: Path, datamodule: Any, model: pl.LightningModule, trainer: pl.Trainer,
           curvature: CurvatureCallback, loggers: list, times: Mapping[str, float]) -> dict[str, Any]:
    """On rank 0 after fit: what the run found, written into ``out``; returns the metrics."""
    store = curvature.store  # the folder the callback wrote, opened read-only
    if not store.epochs and not store.step_epochs:
        raise RuntimeError(
            f"No epoch was scored: the run trained {trainer.current_epoch} epoch(s) and the callback starts "
            f"at epoch {curvature.start_epoch}. Lower callbacks.curvature.start_epoch, or raise "
            "trainer.max_epochs."
        )
    dataset = datamodule.curvature_dataset()
    predictions = predict(model, dataset, curvature, trainer.strategy.root_device)
    found = evaluate(store, datamodule, predictions, epochs=trainer.current_epoch)
    store.close()

    top_k, class_names = int(cfg.get("top_k", 25)), getattr(datamodule, "classes", None)
    outputs.write_tables(out, found)
    outputs.write_figures(out, found, dataset, top_k=top_k, class_names=class_names)
    metrics = found.metrics
    metrics.update(_time_split(times, end=time.perf_counter()))
    outputs.write_metrics(out, metrics)
    if cfg.get("report", True):  # report/index.html, and the images it shows kept in the run folder
        write_report(out, dataset=dataset, class_names=class_names, top_k=top_k, keep_images=True,
                     issues=found.issues)
    outputs.log_to_wandb(loggers, found, dataset, curvature, class_names=class_names, step=trainer.global_step)
    outputs.print_summary(metrics, out)
    return metrics


def _time_split(times: Mapping[str, float], end: float) -> dict[str, Any]:
    """``wall_time_s`` and ``time_s``: where the wall time went (rank 0)."""
    start, fit_end = times["start"], times["fit_end"]
    train_start = times.get("train_start", start)
    scoring = times.get("scoring", 0.0)
    return {"wall_time_s": round(end - start, 2), "time_s": {
        "setup": round(train_start - start, 2),  # data (download, decode), model, DDP start, store
        "train": round(fit_end - train_start - scoring, 2),  # training and validation epochs
        "scoring": round(scoring, 2),  # the curvature passes, gather and commit included
        "report": round(end - fit_end, 2),  # predictions, scores.csv, figures
    }}


def sweep_value(metrics: Mapping[str, Any]) -> float:
    """The value a sweep optimizes: the recommended score's mislabel AUROC (``auroc_recommended``), which every
    configuration has (curvature's is NaN under ``callbacks=recommended``); NaN without flipped labels or off rank 0."""
    auroc = metrics.get("auroc_recommended")
    return float("nan") if auroc is None else float(auroc)


#: the errors :func:`main` prints without a traceback: a config value, a link where the run writes, a store folder
#: that holds another run's scores or a damaged one (a rerun into an old folder), a corrections file that cannot apply
_SAID_IN_FULL = (ConfigError, safe_paths.UnsafePathError, StoreMismatchError, StoreCorruptError, CorrectionsError)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Console script ``curvature-train``; returns :func:`sweep_value` (the value a sweep optimizes)."""
    quiet.silence_what_users_cannot_act_on()
    cfg.output_dir = HydraConfig.get().runtime.output_dir  # also when a config set it otherwise
    ddp_relaunch.children_repeat_this_job(cfg.output_dir)
    try:
        metrics = run(cfg)
    except ValueError as e:  # ours, each said in full with its fix; anything else keeps its trace
        if not isinstance(e, _SAID_IN_FULL) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"curvature-train: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        ddp_relaunch.forget_ddp()
        if "wandb" in sys.modules:  # one W&B run per job of a sweep
            sys.modules["wandb"].finish()
    return sweep_value(metrics)


if __name__ == "__main__":
    main()
