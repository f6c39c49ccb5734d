"""Ground truth for memorization at small scale: Feldman & Zhang's subsampling estimator on digits, and how every
signal of one curvature run agrees with it.

    .venv/bin/python benchmarks/memorization_digits.py --models 100 --epochs 20 --out benchmarks/data/fz_digits.npz
    .venv/bin/python benchmarks/memorization_digits.py --reuse     # compare only: reuse the saved estimate

1. Trains ``--models`` copies of the default run's network and recipe (``SmallCNN`` width 32, AdamW lr 2e-3 without
   weight decay, cosine annealing over ``--epochs`` stepped per epoch, batch 64, cross-entropy on the given labels)
   in a plain torch loop on in-memory tensors, each on its own random ``--subset`` (70 %) of the 1797 training
   samples of ``DigitsDataModule(noise=0.1, seed=0)`` (the default run's data, 180 flipped labels). Each final
   model (eval mode) classifies every sample against its given label; the memorization of sample ``i`` is

       mem[i] = accuracy over the models trained WITH i  -  accuracy over the models trained WITHOUT i

   saved to ``--out`` (allow_pickle-free npz): ``mem``, ``with_count``, ``without_count``, ``with_correct``,
   ``without_correct``, ``given_labels``, ``original_labels``, ``flipped``, ``source_indices``, ``train_acc``
   (per model, on its own subset and given labels) and the settings ``models``, ``subset_fraction``, ``epochs``,
   ``seed`` as scalars.
2. Opens the store of one default ``curvature-train`` run (``--run``; made with
   ``curvature-train report=false ~logger hydra.run.dir=RUN`` when it is missing) and prints one markdown table:
   for each signal of ``suspicion_scores`` (higher = more suspicious; ``input_grad`` is the epoch-mean input-gradient
   norm, whose sum over the scored epochs is CSG, Ravikumar et al.: the same order when every epoch is scored, as
   in the default run), Pearson, Spearman, cosine@k and its
   chance level (``memorization_comparison``, top k by ``mem``) for k = 50, 180 (the flipped count) and all
   samples, on all samples and on the unflipped (clean) ones only. Cosine is not shift invariant and the
   negated margin and confidence are negative: each score is shifted to a minimum of 0 over the samples compared
   before the cosine (Pearson and Spearman do not care). Also the AUROC and AP of ``mem`` for the flipped labels,
   and each signal's AUROC for the memorized clean samples (``mem > 0.5``) among the clean ones.

One thread (``torch.set_num_threads(1)``): about 5 s per model at 20 epochs, 9 s at 40, on a shared 2-core machine;
the saved estimate (100 models, 20 epochs) took 8 minutes. Read cosine@k against its chance level: on all samples
the top 180 by ``mem`` are the flipped labels, all near 1, so any score's cosine there is its chance level.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from curvature_callback import CurvatureStore
from curvature_callback.analysis import mislabel_metrics, suspicion_scores
from curvature_callback.analysis.recommend import recommended_scores
from curvature_callback.analysis.references import memorization_comparison
from curvature_callback.experiments.data.digits import DigitsDataModule
from curvature_callback.experiments.models import SmallCNN

ROOT = Path(__file__).resolve().parents[1]
# the default run's recipe (conf/model/small_cnn.yaml, conf/data/digits.yaml, conf/trainer/cpu.yaml)
WIDTH, LR, WEIGHT_DECAY, BATCH_SIZE = 32, 2e-3, 0.0, 64
TOP_K = (50, 180)


def digits() -> tuple[DigitsDataModule, torch.Tensor, torch.Tensor]:
    """The default run's training set: inputs ``[1797, 1, 8, 8]`` (standardized) and given labels."""
    dm = DigitsDataModule(noise=0.1, seed=0)
    x, y = dm.curvature_dataset().tensors
    return dm, x, y


def train_one(x: torch.Tensor, y: torch.Tensor, subset: np.ndarray, epochs: int, seed: int) -> tuple[np.ndarray, float]:
    """Train one model on ``subset`` with the default recipe; its eval-mode predictions on all samples and its
    accuracy on ``subset`` (given labels)."""
    torch.manual_seed(seed)
    net = SmallCNN(in_channels=1, num_classes=10, width=WIDTH)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    order = torch.Generator().manual_seed(seed)
    xs, ys = x[subset], y[subset]
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xs), generator=order)
        for start in range(0, len(xs), BATCH_SIZE):  # drop_last=False, as the datamodule's loader
            batch = perm[start : start + BATCH_SIZE]
            loss = F.cross_entropy(net(xs[batch]), ys[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        pred = net(x).argmax(1).numpy()
    return pred, float((pred[subset] == y.numpy()[subset]).mean())


def estimate(models: int, epochs: int, fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Feldman & Zhang's subsampling estimate of memorization on the default run's data."""
    dm, x, y = digits()
    n, m = len(y), round(fraction * len(y))
    given = y.numpy()
    rng = np.random.default_rng(seed)
    with_count, without_count = np.zeros(n, np.int64), np.zeros(n, np.int64)
    with_correct, without_correct = np.zeros(n, np.int64), np.zeros(n, np.int64)
    train_acc = np.zeros(models)
    start = time.perf_counter()
    for k in range(models):
        inside = np.zeros(n, bool)
        inside[rng.permutation(n)[:m]] = True
        pred, train_acc[k] = train_one(x, y, np.flatnonzero(inside), epochs, seed=seed * 100_003 + k)
        correct = pred == given
        with_count += inside
        without_count += ~inside
        with_correct += correct & inside
        without_correct += correct & ~inside
        print(f"model {k + 1}/{models}: train acc {train_acc[k]:.4f}, held-out acc (given labels) "
              f"{correct[~inside].mean():.4f}, {time.perf_counter() - start:.0f} s", flush=True)
    if (with_count == 0).any() or (without_count == 0).any():
        raise RuntimeError("Some sample was in every subset or in none: train more models.")
    mem = with_correct / with_count - without_correct / without_count
    return {
        "mem": mem.astype(np.float64), "with_count": with_count, "without_count": without_count,
        "with_correct": with_correct, "without_correct": without_correct,
        "given_labels": np.asarray(dm.given_labels, np.int64),
        "original_labels": np.asarray(dm.original_labels, np.int64),
        "flipped": np.asarray(dm.flipped, bool), "source_indices": np.asarray(dm.source_indices, np.int64),
        "train_acc": train_acc, "models": np.int64(models), "subset_fraction": np.float64(fraction),
        "epochs": np.int64(epochs), "seed": np.int64(seed), "train_seconds": np.float64(time.perf_counter() - start),
    }


def curvature_signals(run: Path, given: np.ndarray) -> dict[str, np.ndarray]:
    """Every signal of the default curvature run in ``run`` (made when missing), higher = more suspicious."""
    if not (run / "curvature" / "meta.json").is_file():
        subprocess.run([str(Path(sys.executable).with_name("curvature-train")), "report=false", "~logger",
                        "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"], check=True, cwd=ROOT)
    labels = np.load(run / "labels.npz", allow_pickle=False)
    if not np.array_equal(labels["given_labels"], given):
        raise RuntimeError(f"{run} trained on other labels than the memorization estimate.")
    store = CurvatureStore.open(run / "curvature")
    try:
        signals = suspicion_scores(store)
    finally:
        store.close()
    if "input_grad" not in signals:
        print(f"note: {run} predates the input-gradient channel (no input_grad, CSG): pass a new --run folder to "
              "make a run that has it", flush=True)
    recommended = recommended_scores(signals)  # the rule of the memorized question, fixed (not fitted to mem)
    return {"recommended": recommended["memorized"], **signals} if "memorized" in recommended else signals


def comparison(score: np.ndarray, mem: np.ndarray) -> dict[str, float]:
    """Pearson, Spearman and cosine@k (top k by ``mem``; k = 50, 180, all) with chance, the score shifted to >= 0."""
    out = memorization_comparison(score - score.min(), mem, top_k=[*TOP_K, len(mem)])
    return {k.replace(f"@{len(mem)}", "@all"): v for k, v in out.items() if k != "n"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=64, help="models trained (K)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per model (the default run: 40)")
    parser.add_argument("--subset", type=float, default=0.7, help="fraction of the samples each model trains on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets, inits and batch orders")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data" / "fz_digits.npz")
    parser.add_argument("--run", type=Path, default=Path("/tmp/fz_run"), help="a default curvature-train run")
    parser.add_argument("--reuse", action="store_true", help="load --out instead of training")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.reuse:
        data = dict(np.load(args.out, allow_pickle=False))
    else:
        data = estimate(args.models, args.epochs, args.subset, args.seed)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.out, **data)
    mem, flipped = data["mem"], data["flipped"]
    acc = data["train_acc"]
    print(f"\nK={int(data['models'])} models, {float(data['subset_fraction']):.0%} subsets, {int(data['epochs'])} "
          f"epochs, seed {int(data['seed'])}: training {float(data['train_seconds']):.0f} s; train acc (given "
          f"labels, own subset) mean {acc.mean():.4f}, min {acc.min():.4f}; with/without counts "
          f"{data['with_count'].min()}..{data['with_count'].max()} / "
          f"{data['without_count'].min()}..{data['without_count'].max()}")
    detect = mislabel_metrics(mem, flipped)
    print(f"mem: mean {mem[flipped].mean():.3f} on flipped, {mem[~flipped].mean():.3f} on clean; "
          f"flipped-label AUROC {detect['auroc']:.3f}, AP {detect['ap']:.3f}; "
          f"clean samples with mem > 0.5: {int((mem[~flipped] > 0.5).sum())}, flipped ones with mem < 0.5: "
          f"{int((mem[flipped] < 0.5).sum())}\n")

    signals = curvature_signals(args.run, data["given_labels"])
    header = ["signal", "samples", "pearson", "spearman"]
    for k in (*TOP_K, "all"):
        header += [f"cos@{k}", f"chance@{k}"]
    rows = []
    for part, mask in (("all", np.ones_like(flipped)), ("clean", ~flipped)):
        for name, score in signals.items():
            got = comparison(score[mask], mem[mask])
            cells = [got["pearson"], got["spearman"]]
            for k in (*TOP_K, "all"):
                cells += [got[f"cosine@{k}"], got[f"cosine_chance@{k}"]]
            rows.append([name, f"{part} ({int(mask.sum())})", *(f"{v:.3f}" for v in cells)])
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    memorized = mem[~flipped] > 0.5  # the clean samples that most models fit only when they train on them
    found = {name: mislabel_metrics(score[~flipped], memorized)["auroc"] for name, score in signals.items()}
    print(f"\nAUROC for the {int(memorized.sum())} memorized clean samples (mem > 0.5) among the clean ones: "
          + ", ".join(f"{name} {auroc:.3f}" for name, auroc in found.items()))


if __name__ == "__main__":
    main()
