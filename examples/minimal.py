"""CurvatureCallback on your own LightningModule and LightningDataModule: which samples were memorized?

Four gaussian blobs with 5 % of the labels flipped: the flipped samples should rank highest, by curvature and by
the recommended score (here: the training loss summed over training, CSL, and the eval-mode loss, recorded for free
from what training_step returns). Seconds on CPU.
"""

import logging
import tempfile

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from curvature_callback import CurvatureCallback, WithIndex, sample_outputs
from curvature_callback.analysis import mislabel_metrics, suspicion_scores
from curvature_callback.analysis.recommend import recommended_scores


class Blobs(L.LightningDataModule):
    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(0)
        y = torch.arange(400) % 4
        x = 3 * torch.randn(4, 10, generator=g)[y] + torch.randn(400, 10, generator=g)
        self.flipped = torch.randperm(400, generator=g)[:20]
        y[self.flipped] = (y[self.flipped] + torch.randint(1, 4, (20,), generator=g)) % 4  # another label
        self.train_set = TensorDataset(x, y)

    def train_dataloader(self) -> DataLoader:
        # items (x, y, index): the training step tells the callback which samples it saw
        return DataLoader(WithIndex(self.train_set), batch_size=32, shuffle=True)


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        # smooth activations: with ReLU, kinks dominate the finite difference of small models (docs/DESIGN.md §1)
        self.net = nn.Sequential(nn.Linear(10, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the callback scores self(x): logits
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> dict[str, torch.Tensor]:
        x, y, index = batch
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        return sample_outputs(losses, index, logits=logits, targets=y)  # "loss" is losses.mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


if __name__ == "__main__":
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner
    L.seed_everything(0, verbose=False)
    blobs = Blobs()
    with tempfile.TemporaryDirectory() as tmp:
        callback = CurvatureCallback(directory=f"{tmp}/curvature")  # scores the train set after each epoch
        trainer = L.Trainer(max_epochs=10, callbacks=[callback], enable_progress_bar=False, logger=False,
                            enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp)
        trainer.fit(Classifier(), blobs)
        count, mean = np.array(callback.store.count), np.array(callback.store.mean)
        recommended = recommended_scores(suspicion_scores(callback.store))["mislabeled"]

    flipped = np.zeros(len(mean), dtype=bool)
    flipped[blobs.flipped.numpy()] = True
    percentile = mean.argsort().argsort() / (len(mean) - 1)  # 0 = flattest sample, 1 = most curved
    print(f"every sample scored {count.min()} times; mean curvature of the flipped samples "
          f"{mean[flipped].mean():.3g}, of the others {mean[~flipped].mean():.3g}; "
          f"mean percentile of the flipped samples {percentile[flipped].mean():.2f}")
    found = {"curvature": mislabel_metrics(mean, flipped)["auroc"],
             "recommended": mislabel_metrics(recommended, flipped)["auroc"]}
    print("mislabel AUROC: " + ", ".join(f"{k} {v:.3f}" for k, v in found.items()))
    assert (count == 10).all(), "every sample should be scored once per epoch"
    assert percentile[flipped].mean() > 0.8, "flipped labels should rank high"
    assert found["recommended"] > 0.9, "the recommended score should find the flipped labels"
