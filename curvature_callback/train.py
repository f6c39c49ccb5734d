"""``curvature-train``: the Hydra entry point of the experiments (DESIGN §6).

Trains the configured classifier with :class:`~curvature_callback.CurvatureCallback` and writes, in the
run directory (``output_dir``): the store (``curvature/``), ``scores.csv``, ``metrics.json``,
``histogram.png`` and ``top_k.png``. With no arguments it runs the embedded default (``conf/train.yaml``)::

    curvature-train                                   # digits, 10 % label noise, CPU, about a minute
    python -m curvature_callback.train trainer.max_epochs=60 data.noise=0.2

The configs are read from the repository's ``conf/`` folder, or from ``$CURVATURE_CONF``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from curvature_callback.analysis import mislabel_metrics, write_scores_csv
from curvature_callback.callback import CurvatureCallback, default_batch_to_inputs
from curvature_callback.plots import plot_histogram, plot_top_k

__all__ = ["CONF_DIR", "main", "run"]

#: the config folder: $CURVATURE_CONF, else conf/ beside the package (an editable install or a checkout)
CONF_DIR = os.environ.get("CURVATURE_CONF") or str(Path(__file__).resolve().parent.parent / "conf")


def _instantiate_group(group: Mapping | None) -> list[Any]:
    """Instantiate each named entry of a callbacks/logger group that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(e) for e in group.values() if isinstance(e, Mapping) and "_target_" in e]


class _Inputs:
    """``view[i]`` is the input of sample ``i``: reads only the images a figure shows."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i][0]


@torch.no_grad()
def _predict(model: pl.LightningModule, dataset: Dataset, callback: CurvatureCallback) -> np.ndarray:
    """Predicted class of every sample of ``dataset`` by the final model, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    to_inputs = callback.batch_to_inputs or default_batch_to_inputs
    loader = DataLoader(dataset, batch_size=callback.batch_size)
    preds = [model(to_inputs(batch)[0].to(device)).argmax(1).cpu() for batch in loader]
    model.train(was_training)
    return torch.cat(preds).numpy()


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


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, score and write the outputs of one run into ``cfg.output_dir``; returns the metrics (rank 0).

    Every rank trains and scores; only global rank 0 writes the CSV, JSON and figures (other ranks return {}).
    """
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    curvature = [cb for cb in callbacks if isinstance(cb, CurvatureCallback)]
    if len(curvature) != 1:
        raise ValueError(
            f"Expected exactly one CurvatureCallback in `callbacks`, got {len(curvature)}: keep "
            "callbacks/curvature in the defaults list (e.g. callbacks=curvature)."
        )
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.fit(model, datamodule=datamodule)
    if not trainer.is_global_zero:
        return {}

    store = curvature[0].store  # the folder the callback wrote, opened read-only
    if not store.epochs:
        raise RuntimeError(
            f"No epoch was scored: the run trained {trainer.current_epoch} epoch(s) and the callback starts "
            f"at epoch {curvature[0].start_epoch}. Lower callbacks.curvature.start_epoch, or raise "
            "trainer.max_epochs."
        )
    dataset = datamodule.curvature_dataset()
    original, given, flipped = _labels(datamodule)
    curv = np.array(store.mean)
    pred = _predict(model, dataset, curvature[0])
    columns: dict[str, np.ndarray] = {
        "label": original, "given_label": given, "flipped": flipped, "curvature": curv,
    }
    for channel in store.channels[1:]:  # loss, margin, confidence, correct: means over the same epochs
        columns[channel] = np.array(store.channel_mean(channel))
    columns.update(count=np.array(store.count), pred=pred)
    scored_epochs = store.epochs
    store.close()
    source = getattr(datamodule, "source_indices", None)
    if source is not None:
        columns["source_index"] = np.asarray(source)

    metrics: dict[str, Any] = {}
    noisy = 0 < flipped.sum() < len(flipped)  # detection needs both kinds; without noise these are null
    for score in ("curvature", "loss"):  # higher = more suspicious for both
        if score in columns:
            found = mislabel_metrics(columns[score], flipped) if noisy else {"auroc": None, "ap": None}
            metrics.update({f"{name}_{score}": value for name, value in found.items()})
    metrics.update(
        train_acc=float((pred == given).mean()),  # on the labels it trained on: memorization reaches 1.0
        train_acc_original=float((pred == original).mean()),
        flipped_memorized=float((pred == given)[flipped].mean()) if noisy else None,
        n_samples=len(curv),
        n_flipped=int(flipped.sum()),
        epochs=int(trainer.current_epoch),
        scored_epochs=scored_epochs,
    )

    write_scores_csv(out / "scores.csv", columns)
    plot_histogram(curv, flipped, out / "histogram.png")
    plot_top_k(_Inputs(dataset), given, original, curv, out / "top_k.png", k=int(cfg.get("top_k", 25)))
    metrics["wall_time_s"] = round(time.perf_counter() - start, 2)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    aurocs = ", ".join(f"{s} {metrics[f'auroc_{s}']:.3f}" for s in ("curvature", "loss")
                       if metrics.get(f"auroc_{s}") is not None)
    print(
        f"curvature-train: mislabel AUROC {aurocs or 'n/a (no flipped labels)'} | train acc "
        f"{metrics['train_acc']:.3f} on given labels | {metrics['wall_time_s']:.0f} s\n  outputs: {out}"
    )
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Console script ``curvature-train``; returns the curvature AUROC (the value a sweep optimizes)."""
    cfg.output_dir = HydraConfig.get().runtime.output_dir  # also when a config set it otherwise
    auroc = run(cfg).get("auroc_curvature")
    return float("nan") if auroc is None else auroc


if __name__ == "__main__":
    main()
