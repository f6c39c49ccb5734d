"""Validation study on real CIFAR-10: does curvature find flipped labels and conflicting duplicates, and does it beat
the baselines of the same scoring pass? (docs/RESULTS.md has the numbers and the findings.)

The paper's mislabel protocol (symmetric noise, train to memorization, average the score over training, AUROC of
the flipped samples) at CPU size: the first ``--n`` images of the offline copy in standard order, a small
stride-2 CNN that fits every flipped label within ``--epochs``, curvature with ``--n-vectors`` Rademacher vectors
every ``--every`` epochs, history kept so that other epoch windows and transforms can be studied afterwards.
Then planted duplicates: ``--duplicates`` images copied over others with a different label, no other noise; the
duplicate finder inspects the top k % by curvature (and, as a baseline, by loss).

    python benchmarks/validate_cifar10.py                         # the study: 1/2/5/10 % noise + duplicates
    python benchmarks/validate_cifar10.py --noise 5 --no-duplicates --weight-decay 5e-4 --optimizer sgd --lr 0.05
    python benchmarks/validate_cifar10.py --n 1000 --epochs 4 --noise 5 --duplicates 10   # a two-minute smoke run
    python benchmarks/validate_cifar10.py --finder-only          # the duplicate finder alone, seconds

Prints one table per question and writes every number to ``--out``/results.json. CPU, one thread by default
(``--threads``): on 2 shared cores the default study takes about 30 minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from curvature_callback import CurvatureCallback, CurvatureStore
from curvature_callback.analysis import epoch_average, mislabel_metrics, suspicion_scores
from curvature_callback.analysis.duplicates import find_conflicting_duplicates, pair_precision_recall, pixel_features
from curvature_callback.experiments.data import cifar10_offline_arrays, inject_label_noise
from curvature_callback.experiments.module import ClassifierModule

#: table names of the scores of analysis.suspicion_scores (each oriented: higher = more suspicious)
DISPLAY = {"curvature": "curvature (mean of all scored epochs)", "loss": "loss (mean)",
           "margin": "margin (mean, negated; AUM-style)", "confidence": "confidence (mean, negated)",
           "correct": "misclassified fraction of epochs", "forgetting": "forgetting events (never learned first)"}
#: share of the samples inspected in the duplicates table
DUP_PERCENT = (1, 2, 5, 10)


class StrideNet(nn.Module):
    """Two stride-2 3x3 convolutions (32, 64 channels) and a 4096-256-10 head: 1.07 M weights, 0.57 ms per
    training sample on one CPU core; it fits 4,000 CIFAR images with 10 % flipped labels in about 20 epochs."""

    def __init__(self, act: str = "relu") -> None:
        super().__init__()
        make = {"relu": nn.ReLU, "gelu": nn.GELU}[act]
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), make(), nn.Conv2d(32, 64, 3, stride=2, padding=1), make(),
            nn.Flatten(), nn.Linear(64 * 8 * 8, 256), make(), nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Augmented(Dataset):
    """Random 32x32 crops of the 4-pixel zero-padded images and horizontal flips: the paper's training transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.padded, self.y = nn.functional.pad(x, (4, 4, 4, 4)), y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        a, b = torch.randint(0, 9, (2,)).tolist()
        img = self.padded[i, :, a : a + 32, b : b + 32]
        return (img.flip(-1) if torch.rand(()) < 0.5 else img), self.y[i]


class Data(pl.LightningDataModule):
    def __init__(self, x: torch.Tensor, y: np.ndarray, batch_size: int, augment: bool) -> None:
        super().__init__()
        self.scored = TensorDataset(x, torch.as_tensor(y))
        self.train = Augmented(x, torch.as_tensor(y)) if augment else self.scored
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def curvature_dataset(self) -> TensorDataset:
        return self.scored  # unaugmented, given labels, standard order


def normalized(images: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    return (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)


def train(x: torch.Tensor, given: np.ndarray, args: argparse.Namespace, directory: Path) -> CurvatureStore:
    """One training run with the callback; returns the store (history kept)."""
    pl.seed_everything(args.seed, verbose=False)
    module = ClassifierModule(StrideNet(args.act), optimizer=args.optimizer, lr=args.lr,
                              weight_decay=args.weight_decay, scheduler="cosine")
    callback = CurvatureCallback(directory=directory, n_vectors=args.n_vectors, every_n_epochs=args.every,
                                 start_epoch=args.every - 1, keep_history=True, log_histogram=False)
    trainer = pl.Trainer(max_epochs=args.epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, Data(x, given, args.batch_size, args.augment))
    return CurvatureStore.open(directory)


def score_variants(store: CurvatureStore) -> dict[str, np.ndarray]:
    """Curvature averaged over other epoch windows and transforms, and the last-epoch loss (higher = suspicious)."""
    h = np.asarray(store.history)
    half = len(h) // 2
    return {
        "curvature, first half of training": epoch_average(h, slice(0, max(1, half))),
        "curvature, second half of training": epoch_average(h, slice(half, None)),
        "curvature, last scored epoch": h[-1].astype(np.float64),
        "curvature, mean of sqrt (RMS norm)": epoch_average(h, transform="sqrt"),
        "curvature, mean of log10": epoch_average(h, transform="log"),
        "curvature, mean within-epoch rank": epoch_average(h, transform="rank"),
        "loss, second half of training": epoch_average(store.channel_history("loss"), slice(half, None)),
        "loss, last scored epoch": np.asarray(store.channel_last("loss"), dtype=np.float64),
    }


def mislabel_run(images: np.ndarray, labels: np.ndarray, noise: float, args: argparse.Namespace) -> dict:
    """Train on labels with ``noise`` flipped; AUROC/AP of every score, per-epoch AUROCs, fit statistics."""
    given, flipped = inject_label_noise(labels, 10, noise, seed=args.seed)
    start = time.perf_counter()
    store = train(normalized(images), given, args, args.out / f"noise{noise:g}")
    scores = {DISPLAY.get(k, k): v for k, v in suspicion_scores(store).items()}
    scores.update(score_variants(store))
    correct = np.asarray(store.channel_history("correct"))
    curv_h, loss_h = np.asarray(store.history), np.asarray(store.channel_history("loss"))
    per_epoch = [
        {"epoch": int(e), "train_acc": float(correct[r].mean()), "flipped_fit": float(correct[r][flipped].mean()),
         "auroc_curvature": mislabel_metrics(curv_h[r], flipped)["auroc"],
         "auroc_loss": mislabel_metrics(loss_h[r], flipped)["auroc"]}
        for r, e in enumerate(store.epochs)
    ]
    at = (100 * noise,)
    return {
        "noise": noise, "n_flipped": int(flipped.sum()), "seconds": round(time.perf_counter() - start, 1),
        "train_acc": per_epoch[-1]["train_acc"], "flipped_fit": per_epoch[-1]["flipped_fit"],
        "scores": {k: mislabel_metrics(v, flipped, at_percent=at) for k, v in scores.items()},
        "per_epoch": per_epoch,
    }


def plant_duplicates(images: np.ndarray, labels: np.ndarray, m: int, seed: int):
    """Copy ``m`` images over ``m`` others and give each copy a label other than its source's; half the copies
    get a brightness shift and mild noise (a re-encoded duplicate). Returns images, labels, planted pairs."""
    rng = np.random.default_rng((seed, 7))
    images, labels = images.copy(), labels.copy()
    pairs = []
    for k, (a, b) in enumerate(rng.choice(len(labels), size=(m, 2), replace=False)):
        copy = images[a].astype(np.int16)
        if k % 2:
            copy = copy + rng.integers(-10, 11) + rng.integers(-3, 4, copy.shape)
        images[b] = np.clip(copy, 0, 255).astype(np.uint8)
        labels[b] = (labels[a] + rng.integers(1, 10)) % 10
        pairs.append((int(a), int(b)))
    return images, labels, pairs


def duplicates_run(images: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> dict:
    """Train on data with planted conflicting duplicates; precision and recall of the finder on the top k %."""
    images, given, planted = plant_duplicates(images, labels, args.duplicates, args.seed)
    start = time.perf_counter()
    store = train(normalized(images), given, args, args.out / "duplicates")
    feats = pixel_features(images)
    everything = find_conflicting_duplicates(feats, given, np.arange(len(given)), threshold=args.dup_threshold)
    rows = {"finder alone (every sample inspected)": pair_precision_recall([p[:2] for p in everything], planted)}
    members = {i for pair in planted for i in pair}
    for name, score in (("curvature", np.array(store.mean)), ("loss", np.array(store.channel_mean("loss")))):
        order = np.argsort(-score, kind="stable")
        for p in DUP_PERCENT:
            top = order[: max(1, round(p * len(order) / 100))]
            found = find_conflicting_duplicates(feats, given, top, threshold=args.dup_threshold)
            row = pair_precision_recall([q[:2] for q in found], planted)
            row["members_in_top"] = len(members & set(top.tolist())) / len(members)
            rows[f"{name}, top {p} %"] = row
    return {"planted": len(planted), "seconds": round(time.perf_counter() - start, 1), "rows": rows,
            "threshold": args.dup_threshold}


def finder_study(images: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> None:
    """No training: the duplicate finder alone on the real images, every sample inspected. Precision and recall
    of the planted pairs by pooled size and threshold, and the similarity a copy keeps when shifted or rescaled."""
    dup_images, given, planted = plant_duplicates(images, labels, args.duplicates or 40, args.seed)
    print(f"\nFinder alone: {len(planted)} planted conflicting pairs in {len(labels)} images, every sample inspected")
    print(f"{'pooled size':>12s}{'threshold':>11s}{'precision':>11s}{'recall':>8s}{'found':>7s}")
    for size in (8, 16):
        feats = pixel_features(dup_images, size=size)
        for threshold in (0.9, 0.95, 0.98):
            pairs = find_conflicting_duplicates(feats, given, np.arange(len(given)), threshold=threshold)
            r = pair_precision_recall([p[:2] for p in pairs], planted)
            print(f"{size:>12d}{threshold:>11.2f}{r['precision']:>11.3f}{r['recall']:>8.3f}{r['found']:>7d}")
    rng = np.random.default_rng(args.seed)
    a = images[rng.choice(len(images), min(500, len(images)), replace=False)]
    x = torch.as_tensor(a).permute(0, 3, 1, 2).float()
    variants = {
        "shifted 1 px": np.concatenate([a[:, :, :1], a[:, :, :-1]], axis=2),
        "shifted 2 px": np.concatenate([a[:, :, :2], a[:, :, :-2]], axis=2),
        "rescaled 32-28-32": nn.functional.interpolate(nn.functional.interpolate(x, size=28, mode="bilinear"),
                                                       size=32, mode="bilinear").permute(0, 2, 3, 1).numpy(),
    }
    print(f"\nSimilarity of {len(a)} images with an altered copy of themselves: median, 5th percentile, share >= "
          f"{args.dup_threshold}")
    for size in (8, 16):
        fa = pixel_features(a, size=size)
        for name, b in variants.items():
            sim = (fa * pixel_features(b, size=size)).sum(1)
            print(f"  pooled {size:>2d}, {name:18s}{np.median(sim):>8.4f}{np.percentile(sim, 5):>8.4f}"
                  f"{(sim >= args.dup_threshold).mean():>8.2f}")


# ------------------------------------------------------------------------------------------ tables
def _precision_at_noise(metrics: dict) -> float:
    return next(v for k, v in metrics.items() if k.startswith("precision@"))


def print_tables(results: dict, args: argparse.Namespace) -> None:
    runs = results["mislabel"]
    if runs:
        cols = [f"{100 * r['noise']:g} % noise" for r in runs]
        print(f"\nMislabel detection, AUROC / AP (N={args.n}, {args.epochs} epochs; chance AUROC 0.5, AP = noise)")
        print(f"{'score':44s}" + "".join(f"{c:>16s}" for c in cols))
        for name in runs[0]["scores"]:
            cells = "".join(f"{r['scores'][name]['auroc']:>9.3f} /{r['scores'][name]['ap']:5.3f}" for r in runs)
            print(f"{name:44s}{cells}")
        for key in ("curvature", "loss"):
            cells = "".join(f"{_precision_at_noise(r['scores'][DISPLAY[key]]):>16.3f}" for r in runs)
            print(f"{'precision at the noise rate: ' + key:44s}{cells}")
        print(f"{'train accuracy (given labels), last epoch':44s}" + "".join(f"{r['train_acc']:>16.3f}" for r in runs))
        print(f"{'flipped labels fit, last epoch':44s}" + "".join(f"{r['flipped_fit']:>16.3f}" for r in runs))
        print(f"{'seconds':44s}" + "".join(f"{r['seconds']:>16.0f}" for r in runs))
        mid = min(runs, key=lambda r: abs(r["noise"] - 0.05))
        print(f"\nPer scored epoch at {100 * mid['noise']:g} % noise: the score of that epoch alone")
        print(f"{'epoch':>6s}{'train acc':>11s}{'flipped fit':>13s}{'AUROC curv':>12s}{'AUROC loss':>12s}")
        for e in mid["per_epoch"]:
            print(f"{e['epoch']:>6d}{e['train_acc']:>11.3f}{e['flipped_fit']:>13.3f}{e['auroc_curvature']:>12.3f}"
                  f"{e['auroc_loss']:>12.3f}")
    dup = results.get("duplicates")
    if dup:
        print(f"\nPlanted conflicting duplicates: {dup['planted']} pairs in {args.n} images, no other noise "
              f"(cosine of 8x8 pooled pixels >= {dup['threshold']})")
        print(f"{'inspected':40s}{'precision':>11s}{'recall':>9s}{'found':>7s}{'pair members in top':>21s}")
        for name, r in dup["rows"].items():
            members = f"{r['members_in_top']:.3f}" if "members_in_top" in r else "-"
            precision = "n/a" if math.isnan(r["precision"]) else f"{r['precision']:.3f}"
            print(f"{name:40s}{precision:>11s}{r['recall']:>9.3f}{r['found']:>7d}{members:>21s}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000, help="first N training images of the standard order")
    parser.add_argument("--noise", type=float, nargs="*", default=[1, 2, 5, 10], help="symmetric noise, percent")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--every", type=int, default=2, help="score every this many epochs (the last included)")
    parser.add_argument("--n-vectors", type=int, default=2, help="Rademacher vectors per sample and epoch")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--augment", action="store_true", help="random crops and flips in training")
    parser.add_argument("--act", choices=("relu", "gelu"), default="relu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--duplicates", type=int, default=40, help="planted conflicting pairs (0: skip that run)")
    parser.add_argument("--no-duplicates", dest="duplicates", action="store_const", const=0)
    parser.add_argument("--dup-threshold", type=float, default=0.95)
    parser.add_argument("--finder-only", action="store_true", help="no training: the duplicate finder alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="where the stores and results.json go (default: a new folder "
                        "under outputs/validate_cifar10, which git ignores)")
    args = parser.parse_args(argv)
    args.out = args.out or Path("outputs") / "validate_cifar10" / time.strftime("%Y%m%d-%H%M%S")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no GPU/TPU banner per run
    images, labels = cifar10_offline_arrays(limit=args.n)
    if args.finder_only:
        finder_study(images, labels, args)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"validate_cifar10: {' '.join(sys.argv[1:]) or '(defaults)'} -> {args.out}", flush=True)
    results: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "mislabel": []}
    for percent in args.noise:
        results["mislabel"].append(mislabel_run(images, labels, percent / 100, args))
        print(f"  {percent:g} % noise done in {results['mislabel'][-1]['seconds']:.0f} s", flush=True)
    if args.duplicates:
        results["duplicates"] = duplicates_run(images, labels, args)
        print(f"  duplicates done in {results['duplicates']['seconds']:.0f} s", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print_tables(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
