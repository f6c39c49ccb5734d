"""Cost-fidelity frontier of the scoring schedule: how cheap can curvature get and still rank like the paper?

One training run on the offline CIFAR-10 copy with symmetric label noise records, at every epoch, every sample's
score for each of n = 10 Rademacher vectors in float32 (the paper setting), and on a GPU also the same vectors
with TF32 (``fast=True``) on some epochs. Every cheaper setting is then a sub-selection of what was recorded:

- ``n``: the first n vectors of each epoch (the draw is keyed by (seed, index, k): the same vectors a run with
  ``n_vectors=n`` would use);
- ``every``: scored epochs ``e % every == every - 1`` (the last epoch is always among them);
- ``fraction = 1/P``: pass p scores the samples with ``index % P == p % P`` (as ``CurvatureCallback(fraction=)``);
- ``tf32`` (GPU): the TF32 values instead of float32 on the epochs that have them.

For each setting: the Spearman correlation of its per-sample epoch mean with the paper setting's (n = 10, every
epoch, all samples, float32), the mislabel AUROC of both, and the cost of the scoring it needs relative to the
paper setting and to training. Prints the frontier as one markdown table.

    python benchmarks/bench_fidelity.py                       # CPU: 2,000 images, small CNN (~10 min, 2 cores)
    python benchmarks/bench_fidelity.py --device cuda --samples 50000 --model resnet18 --epochs 15   # one GPU
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curvature_callback.analysis import mislabel_metrics
from curvature_callback.core.estimator import curvature_details
from curvature_callback.experiments.data import cifar10_offline_arrays, inject_label_noise
from curvature_callback.experiments.models import SmallCNN

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def make_model(name: str) -> nn.Module:
    if name == "small_cnn":
        return SmallCNN(in_channels=3, num_classes=10, width=32)
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _models import CifarResNet18

    return CifarResNet18(num_classes=10)


def score_epoch(model, x, y, args, fast: bool) -> tuple[np.ndarray, float]:
    """Per-vector scores [N, n] of every sample at this epoch, and the seconds it took."""
    start, out = time.perf_counter(), []
    for lo in range(0, len(x), args.score_batch):
        xb, yb = x[lo : lo + args.score_batch].to(args.device), y[lo : lo + args.score_batch].to(args.device)
        res = curvature_details(model, xb, yb, n_vectors=args.n_vectors, seed=0, fast=fast,
                                indices=torch.arange(lo, lo + len(xb), device=args.device))
        out.append(res.per_vector.float().cpu())
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return torch.cat(out).numpy(), time.perf_counter() - start


def settings_mean(per_epoch: np.ndarray, n: int, every: int, period: int) -> np.ndarray:
    """Per-sample mean over the (epoch, vector) entries a setting would have computed."""
    epochs, samples = per_epoch.shape[0], per_epoch.shape[1]
    scored = [e for e in range(epochs) if e % every == (epochs - 1) % every]
    total, count = np.zeros(samples), np.zeros(samples)
    for p, e in enumerate(scored):
        idx = np.arange(p % period, samples, period)
        total[idx] += per_epoch[e, idx, :n].mean(1)
        count[idx] += 1
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--n-vectors", type=int, default=10)
    p.add_argument("--model", default="small_cnn", choices=["small_cnn", "resnet18"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--score-batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--tf32-every", type=int, default=4, help="GPU: also score with TF32 every this many epochs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)

    images, labels = cifar10_offline_arrays(limit=args.samples)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD
    given, flipped = inject_label_noise(labels, 10, args.noise, seed=args.seed)
    y = torch.from_numpy(given)
    model = make_model(args.model).to(args.device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    gpu = args.device.startswith("cuda")

    per_epoch, tf32, train_s, score_s, tf32_s = [], {}, [], [], []
    for epoch in range(args.epochs):
        model.train()
        start = time.perf_counter()
        for idx in torch.randperm(len(x)).split(args.batch):
            xb, yb = x[idx].to(args.device), y[idx].to(args.device)
            with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=gpu):
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if gpu:
            torch.cuda.synchronize()
        train_s.append(time.perf_counter() - start)
        scores, seconds = score_epoch(model, x, y, args, fast=False)
        per_epoch.append(scores)
        score_s.append(seconds)
        if gpu and (epoch % args.tf32_every == args.tf32_every - 1 or epoch == args.epochs - 1):
            tf32[epoch], seconds = score_epoch(model, x, y, args, fast=True)
            tf32_s.append(seconds)
        print(f"epoch {epoch}: train {train_s[-1]:.1f} s, score (n={args.n_vectors}) {score_s[-1]:.1f} s", flush=True)

    with torch.no_grad():
        model.eval()
        train_acc = float((model(x.to(args.device)).argmax(1).cpu() == y).float().mean())
    per_epoch = np.stack(per_epoch)  # [epochs, N, n]
    ref = settings_mean(per_epoch, args.n_vectors, 1, 1)
    ref_auroc = mislabel_metrics(ref, flipped)["auroc"]
    t_train, t_score = float(np.median(train_s)), float(np.median(score_s))
    rows = []
    for n, every, period in itertools.product(sorted({1, 2, 4, args.n_vectors}), [1, 2, 4], [1, 2, 4]):
        if n > args.n_vectors or math.ceil(args.epochs / every) < period:
            continue
        mean = settings_mean(per_epoch, n, every, period)
        cost = (n + 1) / (args.n_vectors + 1) / every / period  # of the paper setting's scoring
        rows.append(("fp32", n, every, period, cost, cost * t_score / t_train, spearman(mean, ref),
                     mislabel_metrics(mean, flipped)["auroc"]))
    if tf32:
        tf_epochs = sorted(tf32)
        for n in sorted({1, 2, args.n_vectors}):
            tf_mean = np.mean([tf32[e][:, :n].mean(1) for e in tf_epochs], axis=0)
            fp_mean = np.mean([per_epoch[e][:, :n].mean(1) for e in tf_epochs], axis=0)
            rel = float(np.median(np.abs(tf32[tf_epochs[-1]][:, 0] / per_epoch[tf_epochs[-1]][:, 0] - 1)))
            cost = (n + 1) / (args.n_vectors + 1) / args.tf32_every * float(np.median(tf32_s)) / t_score
            rows.append((f"tf32 (rel err {rel:.3f})", n, args.tf32_every, 1, cost, cost * t_score / t_train,
                         spearman(tf_mean, ref), mislabel_metrics(tf_mean, flipped)["auroc"]))
            rows.append(("fp32 same epochs", n, args.tf32_every, 1, (n + 1) / (args.n_vectors + 1) / args.tf32_every,
                         (n + 1) / (args.n_vectors + 1) / args.tf32_every * t_score / t_train,
                         spearman(fp_mean, ref), mislabel_metrics(fp_mean, flipped)["auroc"]))

    rows.sort(key=lambda r: r[4])
    best = -1.0
    print(f"\nCIFAR-10 offline, first {args.samples} images, {args.noise:.0%} symmetric noise, {args.model}, "
          f"{args.epochs} epochs on {args.device}; train accuracy on given labels {train_acc:.3f}.")
    print(f"Training {t_train:.2f} s/epoch; paper-setting scoring (n={args.n_vectors}, float32) {t_score:.2f} s/epoch "
          f"= {t_score / t_train:.1f}x training. Paper-setting AUROC {ref_auroc:.4f}.\n")
    print("| precision | n | every k epochs | fraction | cost vs paper | cost vs training | Spearman vs paper | "
          "AUROC | frontier |")
    print("|---|---|---|---|---|---|---|---|---|")
    for prec, n, every, period, cost, vs_train, rho, auroc in rows:
        frontier = rho > best
        best = max(best, rho)
        print(f"| {prec} | {n} | {every} | 1/{period} | {cost:.3f} | {vs_train:.2f}x | {rho:.4f} | {auroc:.4f} | "
              f"{'*' if frontier else ''} |")
    good = [r for r in rows if r[6] >= 0.99 and abs(r[7] - ref_auroc) <= 0.005]
    if good:
        r = good[0]
        print(f"\nCheapest setting with Spearman >= 0.99 and AUROC within 0.005: {r[0]}, n={r[1]}, every {r[2]}, "
              f"fraction 1/{r[3]}: {r[4]:.3f} of the paper setting's scoring, {r[5]:.2f}x training.")
    else:
        print("\nNo cheaper setting reached Spearman >= 0.99 with AUROC within 0.005.")


if __name__ == "__main__":
    main()
