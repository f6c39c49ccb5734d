"""ClassifierModule: the LightningModule the experiments train (cross-entropy on the given labels)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from curvature_callback.experiments.arguments import OneOf, Real, Rule, check_arguments
from curvature_callback.integration.training_steps import sample_outputs

__all__ = ["ClassifierModule"]


class ClassifierModule(pl.LightningModule):
    """A classifier trained with cross-entropy; ``forward(x)`` returns the logits of ``net``.

    Logs ``train/loss`` and ``train/acc`` (accuracy on the given, possibly noisy, labels) per epoch, and
    ``val/loss``, ``val/acc`` when the datamodule has a validation set.

    Args:
        net: the network, inputs to logits.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"`` (AdamW: decoupled decay; Adam when it is 0).
        lr: learning rate.
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 penalty (SGD) or decoupled decay (AdamW).
        scheduler: ``"cosine"`` anneals the learning rate to 0 over ``trainer.max_epochs``; ``"multistep"``
            multiplies it by ``gamma`` at each of ``milestones`` (the paper: x0.1 at epochs 120 and 160 of 200);
            both step per epoch. ``None`` keeps it constant.
        milestones: epochs of the ``"multistep"`` decays.
        gamma: factor of each ``"multistep"`` decay.

    ``ARGUMENTS`` says what each numeric or enumerated argument must be: checked here on construction, and by
    ``curvature-train`` on the composed ``model`` config before anything is built.
    """

    ARGUMENTS: dict[str, Rule] = {
        "optimizer": Rule(OneOf(("sgd", "adam")), "SGD with momentum, or AdamW", "adam"),
        "lr": Rule(Real(0.0, low_open=True), "the learning rate", 0.002),
        "momentum": Rule(Real(0.0, 1.0, high_open=True), "SGD momentum", 0.9),
        "weight_decay": Rule(Real(0.0), "L2 penalty or decoupled decay", 0.0),
        "scheduler": Rule(OneOf(("cosine", "multistep", None)), "how the learning rate moves per epoch", "cosine"),
        "gamma": Rule(Real(0.0, 1.0, low_open=True), "the factor of each multistep decay", 0.1),
    }

    def __init__(
        self,
        net: nn.Module,
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        scheduler: Literal["cosine", "multistep"] | None = None,
        milestones: Sequence[int] = (120, 160),
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        check_arguments(self.ARGUMENTS, {"optimizer": optimizer, "lr": lr, "momentum": momentum,
                                         "weight_decay": weight_decay, "scheduler": scheduler, "gamma": gamma})
        self.save_hyperparameters(ignore=["net"])
        self.net = net

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: Any, stage: str) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample losses, logits and targets; logs the epoch's loss and accuracy."""
        x, y = batch[0], batch[1]
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        acc = (logits.argmax(1) == y).float().mean()
        self.log_dict({f"{stage}/loss": losses.mean(), f"{stage}/acc": acc}, on_step=False, on_epoch=True,
                      prog_bar=True, batch_size=len(x), sync_dist=True)  # epoch means over all ranks
        return losses, logits, y

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | dict[str, Tensor]:
        """The mean loss; with batches ``(x, y, index)`` (the datamodules' ``WithIndex``), also each sample's loss,
        index and correctness, from which the curvature callback records CSL, learning time and forgetting."""
        losses, logits, y = self._step(batch, "train")
        if isinstance(batch, (tuple, list)) and len(batch) >= 3:
            return sample_outputs(losses, batch[2], logits=logits, targets=y)
        return losses.mean()

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "val")[0].mean()

    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler is None:
            return opt
        if hp.scheduler == "multistep":
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.milestones), gamma=hp.gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        epochs = self.trainer.max_epochs
        if epochs is None or epochs < 1:
            raise ValueError(
                f"The cosine schedule anneals over trainer.max_epochs, got max_epochs={epochs}: set "
                "max_epochs, or scheduler=null."
            )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
