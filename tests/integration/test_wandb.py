"""W&B logging of the curvature callback, read back from an offline run's files (tests/wandb_reader.py)."""

from __future__ import annotations

import glob
import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from wandb_reader import artifact_files, history

from curvature_callback import CurvatureCallback
from curvature_callback.core.numeric import top_k
from curvature_callback.experiments.data import ArrayDataModule
from curvature_callback.experiments.models import SmallCNN
from curvature_callback.experiments.module import ClassifierModule
from curvature_callback.integration.sinks import wandb_logger, wandb_offline


class RandomImages(ArrayDataModule):
    """48 random 3x8x8 uint8 images in 4 classes, 25 % flipped labels; the crop-and-flip path of CIFAR."""

    augment = "crop_flip"

    def __init__(self):
        super().__init__(noise=0.25, noise_kind="symmetric", seed=0, batch_size=16, num_workers=0, limit=None,
                         validate=False, num_classes=4, in_channels=3)

    def _arrays(self, train):
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, 48), 4


def media(rows, key):
    """Rows that logged ``key`` as a media object; the reader flattens it to ``key/<field>`` items."""
    prefix = key + "/"
    found = []
    for r in rows:
        fields = {k[len(prefix):]: v for k, v in r.items() if k.startswith(prefix)}
        if fields:
            found.append({**fields, "trainer/global_step": r.get("trainer/global_step")})
    return found


@pytest.mark.parametrize(
    ("env", "offline"),
    [({}, True), ({"WANDB_API_KEY": "x" * 40}, False), ({"WANDB_MODE": "online"}, False),
     ({"WANDB_API_KEY": "x" * 40, "WANDB_MODE": "offline"}, True)],
)
def test_offline_unless_configured(monkeypatch, env, offline):
    for key in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert wandb_offline() is offline


def test_top_k_skips_unscored_samples():
    assert top_k(np.array([np.nan, 1.0, 5.0, 1.0]), 10).tolist() == [2, 1, 3]


def test_offline_run_holds_histograms_grids_and_the_table(tmp_path, monkeypatch):
    for key in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))  # where the table's artifact is staged
    logger = wandb_logger(project="curvature-test", save_dir=str(tmp_path))
    assert logger._offline
    # the history gives the running mean each grid was drawn from
    cb = CurvatureCallback(n_vectors=1, batch_size=16, directory=tmp_path / "store", keep_history=True)
    dm = RandomImages()
    torch.manual_seed(0)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=logger, callbacks=[cb], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(ClassifierModule(SmallCNN(3, 4, width=4), optimizer="adam", lr=0.01), datamodule=dm)
    logger.experiment.finish()

    rows = history(str(tmp_path))  # waits for the run's exit record
    (files,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files"))
    histograms = media(rows, "curvature/log10_histogram")
    assert len(histograms) == 2  # one per scoring epoch
    for h, step in zip(histograms, (3, 6)):  # 48 samples / 16 per batch: 3 steps per epoch
        assert h["_type"] == "histogram" and len(h["bins"]) == len(h["values"]) + 1 <= 513
        assert sum(h["values"]) == 48
        assert h["trainer/global_step"] == step
    stats = [r for r in rows if "curvature/median" in r]
    assert [r["trainer/global_step"] for r in stats] == [3, 6] and all(r["curvature/p99"] > 0 for r in stats)
    # W&B's own step counts up: no row is dropped for going back
    steps = [r.get("_step") for r in rows]
    assert steps == sorted(steps)

    # one grid per scoring epoch (log_image logs a list: here of one image), captioned index:given label:score
    grids = media(rows, "curvature/top_k")
    assert [g["trainer/global_step"] for g in grids] == [3, 6]
    scores = np.asarray(cb.store.history, dtype=np.float64)
    for epoch, grid in enumerate(grids):
        assert grid["_type"] == "images/separated" and grid["count"] == 1
        assert grid["height"] == grid["width"] == 5 * 8 + 6 * 2  # 25 8x8 images, 5 a row, 2 px apart
        (caption,) = grid["captions"]
        head, _, shown = caption.partition(": ")
        assert head == "highest curvature first (index:given label:curvature)"
        shown = [item.split(":") for item in shown.split(" ")]
        running = scores[: epoch + 1].mean(axis=0)
        indices = [int(i) for i, _, _ in shown]
        assert indices == np.argsort(-running, kind="stable")[:25].tolist()
        assert [int(y) for _, y, _ in shown] == dm.given_labels[indices].tolist()
        np.testing.assert_allclose([float(c) for _, _, c in shown], running[indices], rtol=5e-3)  # 3 digits
        (png,) = grid["filenames"]
        pixels = np.asarray(Image.open(f"{files}/{png}"))
        assert pixels.shape == (52, 52, 3) and pixels.max() > 1  # 0..255, not [0, 1] cast to black

    (table,) = media(rows, "curvature/top_k_table")
    assert table["_type"] == "table-file" and table["nrows"] == 25 and table["ncols"] == 7
    assert table["trainer/global_step"] == 6
    # the table as W&B shows it, images in its cells: in the run's run_table artifact
    (staged,) = [files for name, files in artifact_files(str(tmp_path)).items() if "top_k_table" in name]
    assert all(local.startswith(str(tmp_path)) for local in staged.values())
    data = json.loads(open(staged["curvature/top_k_table.table.json"]).read())
    assert data["columns"] == ["rank", "index", "given_label", "label", "curvature", "loss", "image"]
    mean = np.asarray(cb.store.mean)
    shown = [row[1] for row in data["data"]]
    assert [row[0] for row in data["data"]] == list(range(25))
    assert shown == np.argsort(-mean, kind="stable")[:25].tolist()
    assert [row[2] for row in data["data"]] == dm.given_labels[shown].tolist()
    assert [row[3] for row in data["data"]] == dm.original_labels[shown].tolist()
    np.testing.assert_allclose([row[4] for row in data["data"]], mean[shown], rtol=1e-6)
    np.testing.assert_allclose([row[5] for row in data["data"]], np.asarray(cb.store.channel_mean("loss"))[shown],
                               rtol=1e-6)
    for row in data["data"]:
        assert row[6]["_type"] == "image-file" and row[6]["height"] == row[6]["width"] == 8
        pixels = np.asarray(Image.open(staged[row[6]["path"]]))
        assert pixels.shape == (8, 8, 3) and pixels.max() > 1


def test_the_review_table_carries_the_flagged_rows_with_their_images(tmp_path, monkeypatch):
    """log_review_table: the report's samples to review, most probable first, each with its image."""
    from curvature_callback.integration.callback import default_batch_to_inputs
    from curvature_callback.integration.sinks import log_review_table

    for key in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))
    dm = RandomImages()
    dm.setup()
    dataset = dm.curvature_dataset()
    rng = np.random.default_rng(1)
    flagged = np.array([7, 3, 40, 12])
    suggested, probability, confidence = rng.integers(-1, 4, 48), rng.random(48), rng.random(48)
    suggested[3] = -1  # no suggestion
    names = ["cat", "dog", "ship", "frog"]
    logger = wandb_logger(project="curvature-test", save_dir=str(tmp_path))
    rows = log_review_table(logger, dataset, flagged, dm.given_labels, suggested, probability, confidence,
                            ["high loss", "b", "c", "d"], default_batch_to_inputs, class_names=names, step=5)
    logger.experiment.finish()
    history(str(tmp_path))
    (staged,) = [files for name, files in artifact_files(str(tmp_path)).items() if "review" in name]
    data = json.loads(open(staged["label_issues/review.table.json"]).read())
    assert data["columns"] == ["rank", "index", "given_label", "suggested_label", "probability",
                               "suggestion_confidence", "reason", "given_class", "suggested_class", "image"]
    assert [r[1] for r in data["data"]] == flagged.tolist() and [r[0] for r in data["data"]] == [0, 1, 2, 3]
    assert [r[2] for r in data["data"]] == dm.given_labels[flagged].tolist()
    assert [r[3] for r in data["data"]] == suggested[flagged].tolist() and data["data"][1][8] == ""
    np.testing.assert_allclose([r[4] for r in data["data"]], probability[flagged])
    assert data["data"][0][6] == "high loss" and data["data"][0][7] == names[dm.given_labels[7]]
    assert [r[:9] for r in data["data"]] == [r for r in rows]
    for row in data["data"]:
        assert row[9]["_type"] == "image-file" and row[9]["height"] == row[9]["width"] == 8
        pixels = np.asarray(Image.open(staged[row[9]["path"]]))
        assert pixels.shape == (8, 8, 3) and pixels.max() > 1
