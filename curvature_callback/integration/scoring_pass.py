"""One scoring pass inside a Lightning ``Trainer``: this rank's block scored, every rank's block gathered in index
order.

:class:`~curvature_callback.integration.callback.CurvatureCallback` decides when a pass runs and what becomes of
its values (the store, the logs); this module runs it. The maths is
:func:`~curvature_callback.core.estimator.curvature_details`, the feeding
:class:`~curvature_callback.core.feeding.BatchFeeder`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from curvature_callback.core.channels import CHANNELS, classification_values
from curvature_callback.core.estimator import LossFn, curvature_details, forward_details
from curvature_callback.core.feeding import BatchFeeder, CachePolicy, rank_block
from curvature_callback.core.settings import ScoreSettings
from curvature_callback.core.steps import label_keys  # one key function for the pass and the steps

__all__ = ["LABEL_KEYS", "ScoringPass", "gather", "label_keys"]

#: the pass's int64 column of label keys (not a store channel: the store checks and records labels)
LABEL_KEYS = "label_keys"


def gather(trainer: pl.Trainer, values: dict[str, Tensor], *, count: int, batch_size: int,
           columns: int) -> dict[str, Tensor]:
    """All ranks' blocks of a pass of ``count`` samples, in index order: padded to one length for the collective,
    gathered ``columns`` values per call (bounded memory), unpadded after. Every rank makes the same calls.

    One matrix per dtype: the int64 label keys travel as int64 (a float64 keeps integers exact only up to
    2**53; hashed keys use 63 bits).
    """
    if trainer.world_size == 1:
        return values
    _, _, block = rank_block(count, batch_size, trainer.world_size, trainer.global_rank)
    out: dict[str, Tensor] = {}
    for dtype in sorted({v.dtype for v in values.values()}, key=str):  # the same order on every rank
        names = [k for k, v in values.items() if v.dtype == dtype]
        device = values[names[0]].device
        local = torch.zeros(len(names), block, dtype=dtype, device=device)
        for i, k in enumerate(names):
            local[i, : len(values[k])] = values[k]
        pieces = []
        step = max(1, columns // len(names))
        for lo in range(0, block, step):
            pieces.append(trainer.strategy.all_gather(local[:, lo : lo + step].contiguous()))  # [world, C, piece]
        gathered = torch.cat(pieces, dim=2)
        full = gathered.permute(1, 0, 2).reshape(len(names), -1)[:, :count]
        out.update({k: full[i] for i, k in enumerate(names)})
    return {k: out[k] for k in values}


class ScoringPass:
    """Scores the samples of a pass: this rank's contiguous block of them, then every rank's, gathered.

    Kept for the callback's life: its feeder's loader workers and device cache persist across passes.

    Args:
        dataset: the scored dataset (indices ``0..N-1``).
        to_inputs: ``batch -> (x, y)``.
        settings: what defines the score (``h``, ``n_vectors``, ``seed``, ``fast``).
        loss_fn: ``loss_fn(outputs, targets) -> [B]``, or ``None`` for cross-entropy.
        channels: the channels stored beside curvature (:data:`~curvature_callback.core.channels.CLASSIFICATION`,
            ``("loss",)`` or none); those computed at the commit are not the pass's.
        batch_size: samples per batch; each rank's block is a whole number of them.
        num_workers: loader workers (uncached data).
        cache: the feeder's device cache policy.
        chunk_size: rows per stacked forward+backward (``None``: by device).
        progress_bar: show a bar of the pass's batches (rank 0, with the Trainer's bar, on a terminal only).
    """

    def __init__(
        self,
        dataset: Dataset,
        to_inputs: Callable[[Any], tuple[Tensor, Tensor]],
        *,
        settings: ScoreSettings,
        loss_fn: LossFn | None,
        channels: tuple[str, ...],
        batch_size: int,
        num_workers: int = 0,
        cache: CachePolicy = "auto",
        chunk_size: int | None = None,
        progress_bar: bool = False,
    ) -> None:
        self.feeder = BatchFeeder(dataset, to_inputs, batch_size, num_workers, cache)
        self.settings, self.loss_fn, self.channels = settings, loss_fn, channels
        self.batch_size, self.chunk_size, self.progress_bar = batch_size, chunk_size, progress_bar

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, indices: np.ndarray, epoch: int, *,
            universe: np.ndarray | None, gather_columns: int) -> dict[str, Tensor]:
        """Every rank's values of the pass over ``indices`` (the same on every rank), in their order: curvature,
        the pass's channels and :data:`LABEL_KEYS`, on every rank."""
        shard = self.score_shard(trainer, pl_module, indices, epoch, universe=universe)
        return gather(trainer, shard, count=len(indices), batch_size=self.batch_size, columns=gather_columns)

    def score_shard(self, trainer: pl.Trainer, pl_module: pl.LightningModule, indices: np.ndarray, epoch: int, *,
                    universe: np.ndarray | None = None) -> dict[str, Tensor]:
        """Values of this rank's contiguous block of ``indices``."""
        start, stop, _ = rank_block(len(indices), self.batch_size, trainer.world_size, trainer.global_rank)
        device = pl_module.device
        batches = self.feeder.batches(indices[start:stop], device, universe=universe)
        s = self.settings
        if self.progress_bar and trainer.is_global_zero and trainer.progress_bar_callback is not None:
            # disable=None: tqdm shows the bar on a terminal only (in a log file it would be a line per batch)
            batches = tqdm(batches, desc=f"{s.pass_kind} pass (epoch {epoch})",
                           total=self.feeder.num_batches(stop - start), disable=None, leave=False, dynamic_ncols=True)
        parts: dict[str, list[Tensor]] = {}
        for idx, x, y in batches:
            if s.pass_kind == "forward":  # no backward at all
                res = forward_details(pl_module, x, y, loss_fn=self.loss_fn, indices=idx)
            else:  # n_vectors = 0 for a gradient pass: one forward+backward, no finite difference
                res = curvature_details(pl_module, x, y, loss_fn=self.loss_fn, h=s.h, n_vectors=s.n_vectors,
                                        seed=s.seed, indices=idx, chunk_size=self.chunk_size, fast=s.fast)
            out = {LABEL_KEYS: label_keys(y)}
            if s.pass_kind == "curvature":
                out["curvature"] = res.curvature.double()
            if "margin" in self.channels:  # the default loss: the classification channels
                out.update(classification_values(res.outputs, y, res.loss.double()))
            elif "loss" in self.channels:
                out["loss"] = res.loss.double()
            if "input_grad" in self.channels:
                out["input_grad"] = res.input_grad.double()
            for k, v in out.items():
                parts.setdefault(k, []).append(v)
        curvature = ("curvature",) if s.pass_kind == "curvature" else ()
        names = (*curvature, *(c for c in self.channels if CHANNELS[c].source == "pass"))  # others: at the commit
        empty = torch.empty(0, dtype=torch.float64, device=device)
        shard = {k: torch.cat(parts[k]) if k in parts else empty for k in names}
        shard[LABEL_KEYS] = torch.cat(parts[LABEL_KEYS]) if parts else empty.to(torch.int64)
        return shard

    @property
    def cached_count(self) -> int:
        """How many samples this rank's device cache holds."""
        return self.feeder.cached_count

    def close(self) -> None:
        """Stop the loader's persistent workers (a later pass starts new ones); the device cache stays."""
        self.feeder.close()
