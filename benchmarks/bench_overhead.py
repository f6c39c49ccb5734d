"""What the callback adds to training, side by side in one run: digits (CPU) by default.

Rows, each a full ``Trainer.fit`` of the same model from the same seed:

- training alone;
- + ``CurvatureCallback`` at the paper setting (n = 10 vectors, every epoch, float32);
- + ``CurvatureCallback`` at cheaper settings (fewer vectors, every k epochs, a rotating fraction);
- + a callback running the published scorer's loop (2n mean-reduced passes, per-vector CPU copies) at n = 10;
- the limit: the paper setting's scoring at the input-gradient forward+backward throughput / (n + 1).

For each: wall time, overhead over training alone, and the fidelity of its final scores to the paper
setting's (Spearman) with the mislabel AUROC. One markdown table.

    python benchmarks/bench_overhead.py                     # digits, 40 epochs, CPU (~10 min on 2 cores)
    python benchmarks/bench_overhead.py --epochs 10         # quicker
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from curvature_callback import CurvatureCallback
from curvature_callback.analysis import mislabel_metrics
from curvature_callback.data import DigitsDataModule
from curvature_callback.models import SmallCNN
from curvature_callback.module import ClassifierModule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_estimator import published_style  # noqa: E402


class PublishedStyle(Callback):
    """The published scorer's loop as an end-of-epoch callback, keeping a running sum per sample."""

    def __init__(self, n_vectors: int = 10, h: float = 1e-3, batch_size: int = 256):
        self.n_vectors, self.h, self.batch_size = n_vectors, h, batch_size
        self.sum: np.ndarray | None = None
        self.count = 0

    def on_train_epoch_end(self, trainer, pl_module):
        ds = trainer.datamodule.curvature_dataset()
        was = pl_module.training
        scores = []
        with torch.enable_grad(), torch.inference_mode(False):
            for lo in range(0, len(ds), self.batch_size):
                x, y = ds[lo : lo + self.batch_size]
                scores.append(published_style(pl_module, x.clone(), y.clone(), self.h, self.n_vectors))
        pl_module.train(was)
        s = torch.cat(scores).double().numpy()
        self.sum = s if self.sum is None else self.sum + s
        self.count += 1


def input_grad_seconds(model, ds, batch: int = 256) -> float:
    """Seconds for one input-gradient forward+backward over the dataset (the unit of the limit)."""
    model.eval()
    start = time.perf_counter()
    for lo in range(0, len(ds), batch):
        x, y = ds[lo : lo + batch]
        x = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x), y.clone(), reduction="none").sum(), x)
    return time.perf_counter() - start


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def fit(epochs: int, callbacks: list, root: str):
    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(noise=0.1, seed=0, batch_size=64)
    module = ClassifierModule(SmallCNN(in_channels=1, num_classes=10, width=32), optimizer="adam", lr=2e-3,
                              scheduler="cosine")
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                        callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(module, dm)
    return time.perf_counter() - start, dm, module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = tempfile.mkdtemp(prefix="bench_overhead_")
    settings = [
        ("paper: n=10, every epoch", dict(n_vectors=10)),
        ("n=2, every epoch", dict(n_vectors=2)),
        ("n=1, every epoch", dict(n_vectors=1)),
        ("n=10, every 3 epochs (default run)", dict(n_vectors=10, every_n_epochs=3)),
        ("n=2, every 2 epochs", dict(n_vectors=2, every_n_epochs=2)),
        ("n=1, fraction 1/2", dict(n_vectors=1, fraction=0.5)),
    ]
    fit(1, [], root)  # warm-up: imports, first-call costs
    base, dm, module = fit(args.epochs, [], root)
    unit = input_grad_seconds(module.net, dm.curvature_dataset())
    flipped = np.asarray(dm.flipped)
    rows, paper = [], None
    for i, (name, kw) in enumerate(settings):
        cb = CurvatureCallback(directory=f"{root}/s{i}", log_histogram=False, **kw)
        seconds, _, _ = fit(args.epochs, [cb], root)
        mean = np.array(cb.store.mean)
        paper = mean if paper is None else paper
        rows.append((name, seconds, spearman(mean, paper), mislabel_metrics(mean, flipped)["auroc"]))
    pub = PublishedStyle(n_vectors=10)
    seconds, _, _ = fit(args.epochs, [pub], root)
    pub_mean = pub.sum / pub.count
    rows.append(("published-style loop, n=10, every epoch", seconds, spearman(pub_mean, paper),
                 mislabel_metrics(pub_mean, flipped)["auroc"]))
    base = min(base, fit(args.epochs, [], root)[0])  # again at the end: the machine may have been busier at first
    limit = base + args.epochs * 11 * unit
    print(f"\nDigits (1797 images, 10 % symmetric noise), SmallCNN, {args.epochs} epochs, CPU "
          f"({torch.get_num_threads()} threads). Training alone: {base:.1f} s.\n")
    print("| setting | wall s | overhead vs training | Spearman vs paper setting | mislabel AUROC |")
    print("|---|---|---|---|---|")
    print(f"| training alone | {base:.1f} | 0 | | |")
    for name, seconds, rho, auroc in rows:
        print(f"| + {name} | {seconds:.1f} | {(seconds - base) / base:.2f}x | {rho:.4f} | {auroc:.4f} |")
    print(f"| limit: paper setting at (n+1) x input-gradient passes | {limit:.1f} | {(limit - base) / base:.2f}x "
          f"| | |")


if __name__ == "__main__":
    main()
