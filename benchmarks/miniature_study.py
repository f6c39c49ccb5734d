"""The paper's regime in miniature, on the CPU: a small ResNet trained with augmentation, weight decay and a step
schedule until the flipped labels are memorized (after the first learning-rate drop), scored by every signal of
the callback, the training-time channels (CSL's training loss, learning time, minibatch forgetting) and cleanlab's
confident learning on 3-fold cross-validated probabilities.

For each setting (dataset, noise level, seed) one training run with :class:`~curvature_callback.CurvatureCallback`
and, with ``--cv``, three more on 2/3 of the data for cleanlab; every per-sample signal is saved to
``--out/<dataset>_p<noise>_s<seed>[<tag>].npz`` so that the tables are recomputed without retraining:

    export CURVATURE_CIFAR10_OFFLINE=/path/to/cifar10      # the offline CIFAR-10 copy's folder
    python benchmarks/miniature_study.py --dataset cifar10 --noise 0.01 0.02 0.05 0.1 --seeds 0 1
    python benchmarks/miniature_study.py --dataset fashion_mnist --noise 0.05 0.1 --seeds 0 1
    python benchmarks/miniature_study.py --dataset cifar10 --noise 0.1 --seeds 0 --n-vectors 10 --no-cv --tag _n10
    python benchmarks/miniature_study.py --family memorize --noise 0.01 0.02 0.05 0.1 --seeds 0 1   # memorizes
    python benchmarks/miniature_study.py --tables          # the markdown tables, from the saved files only
    python benchmarks/miniature_study.py --samples 300 --epochs 2 --cv-epochs 1 --noise 0.1 --seeds 0 --out /tmp/x
    python benchmarks/miniature_study.py --family memorize --decide --noise-kind confusion --noise 0.1 --seeds 0

Each setting plants conflicting duplicates beside the label noise: ``--duplicates`` images (default: the lab's
rate, 250 per 50,000, i.e. 25 of 5,000) copied exactly over as many other positions, each copy given a label other
than its source's. Source and copy are kept out of the label noise and out of the mislabel metrics; the duplicate
metrics rank them against the clean samples.

``--family`` picks the regime (:data:`FAMILIES`): ``augmented`` (the default, the lab's recipe: small ResNet,
crop/flip, weight decay; on the CPU it never memorizes) or ``memorize`` (a plain CNN without augmentation or weight
decay that fits every given label, the flipped ones mostly after the first learning-rate drop; files tagged
``_mem``, tabled apart, with the flipped labels' fit per learning-rate phase). Needs ``pip install cleanlab`` for
``--cv``. One CPU thread by default (``--threads``).

``--noise-kind`` picks what a flipped label becomes (``inject_label_noise``): ``symmetric`` (any other class, the
default), ``pair``, ``confusion`` (a class that looks alike: cat-dog, truck-automobile, ...) or ``model`` (a quick
model's confusions); files of a kind other than symmetric carry it in their name (``cifar10_p0.1_s0_confusion...``).

``--decide`` (the decision study, issue 18; noise 2/5/10/20 % unless ``--noise`` says otherwise; files tagged
``_dec`` after the family's tag) asks each method which samples to fix: ours
(``curvature_callback.analysis.find_label_issues`` on the run's store: a flagged set, its estimated count, a
suggested label each) against cleanlab's ``find_label_issues`` on the 3-fold CV probabilities (its estimated count
``num_label_issues``, the CV argmax as its suggested label), and then the payoff: the same recipe and seed retrained
with our flagged samples removed, with them relabeled to our suggestion, with cleanlab's issues removed, and with
the true mislabels removed (oracle), each scored on ``--test-samples`` images of the test split beside the noisy
run. A mislabel here is a sample whose given label is not its image's class: the flips and the planted copies.
Each ``--decide`` file also keeps what our answer was computed from (the store's class evidence, ``evidence_*``), so
a changed estimator recomputes our flagged set from the file alone.

``--accelerator cuda`` runs every training, scoring pass and prediction on the GPU (the grid's missing settings in
one GPU session: ``benchmarks/gpu_decision_study.sh``); the config records the accelerator and the device's name.
The default, ``cpu``, computes exactly what it did before the option existed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: what a setting saves beside the signals (every other float32 [N] array of a file is a signal)
META_KEYS = ("config", "given", "original", "flipped", "dup_sources", "dup_copies", "fit_flipped", "fit_all",
             "fit_copies", "epoch_seconds", "seconds", "pred_probs", "cleanlab_issues", "eval_correct_last",
             "ours_flagged", "ours_suggested", "ours_probability", "ours_estimated", "ours_method", "payoff",
             "evidence_classes", "evidence_mass", "epoch_probs", "early_classes", "early_mass")
#: the retrainings of ``--decide``: which training samples each drops or relabels (``payoff_variants``)
PAYOFF = ("noisy", "ours removed", "ours relabeled", "cleanlab removed", "oracle removed")
#: table order of the signals (others follow alphabetically)
ORDER = ("curvature", "input_grad", "loss", "margin", "confidence", "correct", "forgetting", "train_loss",
         "learning_time", "train_forgetting", "cleanlab")
NOTES = {
    "curvature": "curvature (epoch mean, eval mode)",
    "input_grad": "input-gradient norm (CSG: epoch mean, eval mode)", "loss": "loss (eval mode, epoch mean)",
    "margin": "margin, negated (AUM-style, eval mode)", "confidence": "confidence, negated (eval mode)",
    "correct": "fraction of scored epochs misclassified", "forgetting": "forgetting events (scored epochs)",
    "train_loss": "training loss summed over steps (CSL)", "learning_time": "learning time",
    "train_forgetting": "forgetting events per minibatch (Toneva)",
    "cleanlab": "cleanlab: 1 - label quality (3-fold CV)",
}
#: the regimes (``--family``): the options each sets unless given. ``augmented``: the lab's recipe (crop/flip, weight
#: decay 5e-4), which does not memorize on the CPU; ``memorize``: a plain CNN of width 24 on 2,000 images without
#: augmentation or weight decay, batch 64, lr 0.1 / 10 at 35 % and 80 % of 36 epochs: it fits the given labels
#: (>= 99 %), the flipped ones mostly after the first drop (docs/RESULTS.md; chosen by per-epoch fit, issue 17)
FAMILIES: dict[str, dict] = {
    "augmented": {"samples": 5000, "epochs": 30, "drops": [0.6, 0.8], "arch": "resnet", "width": 16, "augment": True,
                  "weight_decay": 5e-4, "batch_size": 128, "every": 2, "tag": ""},
    "memorize": {"samples": 2000, "epochs": 36, "drops": [0.35, 0.8], "arch": "plain", "width": 24, "augment": False,
                 "weight_decay": 0.0, "batch_size": 64, "every": 4, "tag": "_mem"},
}
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "miniature"
FMNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


# ----------------------------------------------------------------------------------------------------------- data
def _idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) as a numpy array."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_arrays(root: str | os.PathLike, limit: int | None, split: str = "train") -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """The first ``limit`` Fashion-MNIST images of ``split`` (uint8 [N, 28, 28]) and labels from the idx files."""
    root = Path(root)
    found = {}
    prefix = "train" if split == "train" else "t10k"
    for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        for cand in (root / name, root / f"{name}.gz", root / "FashionMNIST" / "raw" / name):
            if cand.exists():
                found[name] = cand
                break
        else:
            raise FileNotFoundError(f"No {name}[.gz] under {root}: apt-get install dataset-fashion-mnist, or pass "
                                    "--fmnist-root (or $CURVATURE_FASHION_MNIST).")
    images = _idx(found[f"{prefix}-images-idx3-ubyte"])[:limit]
    labels = _idx(found[f"{prefix}-labels-idx1-ubyte"])[:limit].astype(np.int64)
    return np.ascontiguousarray(images), labels


def load_arrays(dataset: str, samples: int | None, fmnist_root: str, split: str = "train") -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    if dataset == "cifar10":
        from curvature_callback.experiments.data import cifar10_offline_arrays

        return cifar10_offline_arrays(None, split, None, limit=samples)
    return fashion_mnist_arrays(fmnist_root, samples, split)


def make_setting(images: np.ndarray, labels: np.ndarray, noise: float, seed: int, duplicates: int,
                 num_classes: int = 10, kind: str = "symmetric", dataset: str | None = None) -> dict[str, np.ndarray]:
    """Planted conflicting duplicates, then label noise of ``kind`` on the other samples.

    ``duplicates`` images are copied exactly over as many others (sources and copies distinct, seeded by
    ``(seed, 7)``); each copy gets a label other than its source's. Then exactly ``round(noise * N)`` of the
    remaining samples get another label (``inject_label_noise`` of ``kind``, with ``dataset``'s classes, seed
    ``seed``).
    """
    from curvature_callback.experiments.data.noise import inject_label_noise

    n = len(labels)
    rng = np.random.default_rng((seed, 7))
    images, original = images.copy(), labels.astype(np.int64).copy()
    pick = rng.choice(n, size=2 * duplicates, replace=False)
    sources, copies = np.sort(pick[:duplicates]), pick[duplicates:]
    copies = copies[np.argsort(pick[:duplicates])]  # keep each copy beside its source
    given = original.copy()
    images[copies] = images[sources]
    original[copies] = original[sources]  # the copy shows the source's image: that is its true class
    given[copies] = (original[sources] + rng.integers(1, num_classes, size=duplicates)) % num_classes
    rest = np.setdiff1d(np.arange(n), pick)
    k = round(noise * n)
    noisy, flipped_rest = inject_label_noise(original[rest], num_classes, k / len(rest) if len(rest) else 0.0,
                                             kind=kind, seed=seed, dataset=dataset)
    given[rest] = noisy
    flipped = np.zeros(n, dtype=bool)
    flipped[rest[flipped_rest]] = True
    return {"images": images, "given": given, "original": original, "flipped": flipped,
            "dup_sources": sources.astype(np.int64), "dup_copies": copies.astype(np.int64)}


# ------------------------------------------------------------------------------------------------- model, module
def build_plain(in_channels: int, width: int, num_classes: int = 10):
    """A plain CNN: four 3x3 conv-BN-ReLU layers (``w``, ``2w``, ``4w``, ``8w`` channels, a 2x2 max-pool after each of
    the first three), global average pool, linear. Width 16: 0.10 M weights, a quarter of the ResNet's time per
    CIFAR-10 epoch on one core (no full-resolution second and third convolution)."""
    from torch import nn

    layers: list = []
    c = in_channels
    for i in range(4):
        layers += [nn.Conv2d(c, width * 2**i, 3, 1, 1, bias=False), nn.BatchNorm2d(width * 2**i), nn.ReLU()]
        if i < 3:
            layers.append(nn.MaxPool2d(2))
        c = width * 2**i
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


def make_net(arch: str, in_channels: int, width: int):
    """``"resnet"``: :func:`build_net`; ``"plain"``: :func:`build_plain`."""
    return {"resnet": build_net, "plain": build_plain}[arch](in_channels, width)


def build_net(in_channels: int, width: int, num_classes: int = 10):
    """A CIFAR ResNet in miniature: a 3x3 stem, three stages of one basic block each (``w``, ``2w``, ``4w``
    channels, the last two stride 2), global average pool, linear. Width 16: 0.17 M weights."""
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(c_out)
            self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(c_out)
            self.short = (nn.Identity() if stride == 1 and c_in == c_out else
                          nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

        def forward(self, x):
            out = self.b1(self.c1(x)).relu()
            return (self.b2(self.c2(out)) + self.short(x)).relu()

    w = width
    return nn.Sequential(
        nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        Basic(w, w, 1), Basic(w, 2 * w, 2), Basic(2 * w, 4 * w, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes),
    )


def _module_class():
    import lightning.pytorch as pl
    import torch
    import torch.nn.functional as F

    from curvature_callback import sample_outputs
    from curvature_callback.experiments.data.images import random_crop_flip

    class StudyModule(pl.LightningModule):
        """SGD with momentum, weight decay and a step schedule; random crop (pad 4) and flip of each training batch.

        ``training_step`` follows the callback's training-time contract: the batch is ``(x, y, index)`` and the
        step returns the per-sample losses, the indices and whether each was right beside the mean
        loss (``curvature_callback.sample_outputs``). With ``n`` and
        ``masks`` it also records, per epoch, the fraction of each masked group classified as its given label in
        its (augmented, train-mode) minibatch.
        """

        def __init__(self, net, *, lr: float, weight_decay: float, milestones: Sequence[int], fill, augment: bool,
                     n: int | None = None, masks: dict[str, np.ndarray] | None = None,
                     probs: np.ndarray | None = None) -> None:
            super().__init__()
            self.probs = probs  # ``--record-probs``: each presentation's softmax, [epochs, N, C] float16
            self.net, self.lr, self.weight_decay, self.milestones = net, lr, weight_decay, list(milestones)
            self.fill, self.augment = fill, augment
            self.masks = masks or {}
            self.correct = np.zeros(n or 0, dtype=bool)
            self.fit: dict[str, list[float]] = {k: [] for k in self.masks}
            self.epoch_starts: list[float] = []

        def forward(self, x):
            return self.net(x)

        def on_train_epoch_start(self) -> None:
            self.epoch_starts.append(time.perf_counter())
            self.epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]

        def training_step(self, batch, batch_idx):
            x, y, index = batch[0], batch[1], batch[2]
            if self.augment:
                x = random_crop_flip(x, 4, self.fill)
            logits = self(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            out = sample_outputs(losses, index, logits=logits, targets=y)  # the callback's training-time contract
            if len(self.correct):
                self.correct[index.cpu().numpy()] = out["sample_correct"].cpu().numpy()
            if self.probs is not None:
                self.probs[self.current_epoch, index.cpu().numpy()] = (
                    logits.detach().float().softmax(1).cpu().numpy().astype(np.float16))
            return out

        def on_train_epoch_end(self) -> None:
            for name, mask in self.masks.items():
                self.fit[name].append(float(self.correct[mask].mean()) if mask.any() else float("nan"))
            if self.masks:  # the main run: one line per epoch in the log
                print(f"  epoch {self.current_epoch + 1} (lr {self.epoch_lr:g}): fit " + ", ".join(
                    f"{k} {v[-1]:.3f}" for k, v in self.fit.items()) +
                    f"; {time.perf_counter() - self.epoch_starts[-1]:.1f} s", flush=True)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=self.milestones, gamma=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    return StudyModule


def _trainer(epochs: int, callbacks: list, accelerator: str = "cpu"):
    import lightning.pytorch as pl

    return pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator=accelerator, devices=1,
                      num_sanity_val_steps=0)


def _device(args):
    """The torch device of ``--accelerator``: where the hand-made passes (CV predictions, test accuracy) run. A fit
    hands its model back on the CPU (Lightning's teardown), so each such pass moves the net there first."""
    import torch

    return torch.device("cuda" if getattr(args, "accelerator", "cpu") == "cuda" else "cpu")


def _quiet() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*looks augmented.*")


# --------------------------------------------------------------------------------------------------------- a run
def milestones_of(epochs: int, fractions: Sequence[float] = (0.6, 0.8)) -> list[int]:
    """Epochs of the x0.1 decays: by default 60 % and 80 % of training (the paper's 120 and 160 of 200)."""
    return sorted({max(1, round(f * epochs)) for f in fractions})


def cross_validated_probs(scored, given: np.ndarray, args, in_channels: int, fill) -> np.ndarray:
    """Out-of-sample softmax probabilities: ``args.folds``-fold CV, the same model and schedule on the other folds."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, Subset

    from curvature_callback import WithIndex

    StudyModule = _module_class()
    n = len(given)
    perm = np.random.default_rng((args.seed, 11)).permutation(n)
    probs = np.zeros((n, 10), dtype=np.float32)
    for fold in range(args.folds):
        held = np.sort(perm[fold::args.folds])
        train_idx = np.setdiff1d(np.arange(n), held)
        pl.seed_everything(1000 * args.seed + fold + 1, verbose=False)
        net = make_net(args.arch, in_channels, args.width)
        module = StudyModule(net, lr=args.lr, weight_decay=args.weight_decay,
                             milestones=milestones_of(args.cv_epochs, args.drops), fill=fill, augment=args.augment)
        loader = DataLoader(Subset(WithIndex(scored), train_idx.tolist()), batch_size=args.batch_size, shuffle=True)
        _trainer(args.cv_epochs, [], args.accelerator).fit(module, loader)
        device = _device(args)
        net.to(device).eval()  # on the CPU: a no-op
        with torch.no_grad():
            for start in range(0, len(held), 500):
                idx = held[start : start + 500]
                x = torch.stack([scored[int(i)][0] for i in idx]).to(device)
                probs[idx] = net(x).softmax(1).cpu().numpy()
    return probs


def our_issues(store, given: np.ndarray) -> dict[str, np.ndarray]:
    """Our answer on a run's store (``curvature_callback.analysis.find_label_issues``): the flagged mask, the
    suggested label of every sample (-1: none), the probability of a wrong label and the estimated number of wrong
    labels, as the arrays a setting saves.

    Beside them what the answer was computed from, so that a changed estimator recomputes the flagged set from the
    file alone (the signals are saved anyway): the store's class evidence (``class_evidence``: ``evidence_classes``
    int8 [N, K], -1 an empty slot; ``evidence_mass`` float16 [N, K], the mean softmax mass)."""
    from curvature_callback.analysis import class_evidence, find_label_issues

    found = find_label_issues(store, given)
    n = len(given)
    flagged = np.asarray(found.flagged)
    if flagged.dtype != bool:  # indices of the flagged samples
        mask = np.zeros(n, dtype=bool)
        mask[flagged.astype(np.int64)] = True
        flagged = mask
    suggested = np.asarray(found.suggested, dtype=np.int64)
    if len(suggested) != n:  # one per flagged sample
        full = np.full(n, -1, dtype=np.int64)
        full[flagged] = suggested
        suggested = full
    probability = np.asarray(found.probability, dtype=np.float32)
    inputs: dict[str, np.ndarray] = {}
    evidence = class_evidence(store)
    if evidence is not None:
        inputs["evidence_classes"] = np.asarray(evidence[0]).astype(np.int8)
        inputs["evidence_mass"] = np.asarray(evidence[1]).astype(np.float16)
    early = class_evidence(store, early=True)
    if early is not None:  # the first epochs' evidence (the store's evidence window), kept in float32: the early
        # window's confident learning compares masses with class means, where float16's rounding could flip a sample
        inputs["early_classes"] = np.asarray(early[0]).astype(np.int8)
        inputs["early_mass"] = np.asarray(early[1]).astype(np.float32)
    return {"ours_flagged": flagged, "ours_suggested": suggested.astype(np.int8),
            "ours_probability": probability if probability.shape == (n,) else np.full(n, np.nan, np.float32),
            "ours_estimated": np.array(round(float(found.estimated)), dtype=np.int64),
            "ours_method": np.array(str(getattr(found, "method", ""))), **inputs}


def payoff_variants(d: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The retrainings of :data:`PAYOFF`, each as ``(training labels [N], kept [N])`` from a setting's arrays."""
    given = d["given"].astype(np.int64)
    every = np.ones(len(given), dtype=bool)
    ours = d["ours_flagged"]
    suggested = d["ours_suggested"].astype(np.int64)
    relabeled = given.copy()
    relabeled[ours & (suggested >= 0)] = suggested[ours & (suggested >= 0)]  # flagged without a suggestion: kept
    return {"noisy": (given, every), "ours removed": (given, ~ours), "ours relabeled": (relabeled, every),
            "cleanlab removed": (given, ~d["cleanlab_issues"]),
            "oracle removed": (given, given == d["original"].astype(np.int64))}


def test_accuracy(net, dataset, device=None) -> float:
    """Accuracy of ``net`` (eval mode, moved to ``device`` when given) on an ``ImageArrayDataset``."""
    import torch

    if device is not None:
        net.to(device)
    net.eval()
    right = 0
    with torch.no_grad():
        for start in range(0, len(dataset), 500):
            x = (dataset.images[start : start + 500].float() / 255.0 - dataset.mean) / dataset.std
            y = dataset.targets[start : start + 500]
            if device is not None:
                x, y = x.to(device), y.to(device)
            right += int((net(x).argmax(1) == y).sum())
    return right / len(dataset)


def retrain(images: np.ndarray, labels: np.ndarray, kept: np.ndarray, args, seed: int, mean, std, fill):
    """The main run's recipe and seed, without the callback, on the ``kept`` samples with ``labels``."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, Subset

    from curvature_callback import WithIndex
    from curvature_callback.experiments.data.images import ImageArrayDataset

    data = ImageArrayDataset(images, labels, mean, std)
    pl.seed_everything(seed, verbose=False)
    net = make_net(args.arch, data.images.shape[1], args.width)
    module = _module_class()(net, lr=args.lr, weight_decay=args.weight_decay,
                             milestones=milestones_of(args.epochs, args.drops), fill=fill, augment=args.augment)
    loader = DataLoader(Subset(WithIndex(data), np.flatnonzero(kept).tolist()), batch_size=args.batch_size,
                        shuffle=True)
    _trainer(args.epochs, [], args.accelerator).fit(module, loader)
    return net


def run_payoff(args, dataset: str, s: dict, out: dict, main_net, mean, std, fill, reused: dict | None = None) -> dict:
    """Test accuracy of the noisy run and of each retraining of :data:`PAYOFF` (as a JSON-ready dict). With
    ``--no-payoff`` none is retrained; with ``reused`` (``--cleanlab-from``) the retrainings that do not depend on our
    answer are taken from the saved setting."""
    from curvature_callback.experiments.data.images import ImageArrayDataset

    test_images, test_labels = load_arrays(dataset, args.test_samples, args.fmnist_root, split="test")
    test = ImageArrayDataset(test_images, test_labels, mean, std)
    result = {"test_n": len(test), "test_acc": {}, "trained_on": {}, "seconds": {}}
    for name, (labels, kept) in payoff_variants({**s, **out}).items():
        if reused is not None and name in reused["payoff"]["test_acc"] and name in ("cleanlab removed",
                                                                                    "oracle removed"):
            for key in ("test_acc", "trained_on", "seconds"):
                result[key][name] = reused["payoff"][key][name]
            continue
        if not args.payoff and name != "noisy":
            continue
        t0 = time.perf_counter()
        net = main_net if name == "noisy" else retrain(s["images"], labels, kept, args, args.seed, mean, std, fill)
        result["test_acc"][name] = test_accuracy(net, test, _device(args))
        result["trained_on"][name] = int(kept.sum())
        result["seconds"][name] = time.perf_counter() - t0
        print(f"  {name}: test acc {result['test_acc'][name]:.4f} on {len(test)}, trained on {int(kept.sum())}, "
              f"{result['seconds'][name]:.0f} s", flush=True)
    return result


def setting_name(args, dataset: str, noise: float, seed: int) -> str:
    """The file name of a setting: ``<dataset>_p<noise>_s<seed>[_<kind>]<tag>.npz``."""
    kind = "" if args.noise_kind == "symmetric" else f"_{args.noise_kind}"
    return f"{dataset}_p{noise:g}_s{seed}{kind}{args.tag}.npz"


#: what ``--cleanlab-from`` takes from a saved setting: cleanlab's side, which our estimator does not change
REUSED = ("given", "cleanlab", "cleanlab_issues", "pred_probs", "payoff", "seconds")


def reused_cleanlab(args, dataset: str, noise: float, seed: int, given: np.ndarray) -> dict | None:
    """Cleanlab's side of a setting saved before (``--cleanlab-from DIR``): its CV probabilities, issues, estimate,
    CV seconds and the retrainings that do not depend on our answer (cleanlab removed, oracle removed), from the file
    of the same name in DIR; None without the option. The file is a stranger's: refused unless it holds every array
    and its given labels are this setting's, so that the two answers are about the same data."""
    if not args.cleanlab_from:
        return None
    path = Path(args.cleanlab_from) / setting_name(args, dataset, noise, seed)
    if not path.is_file():
        raise FileNotFoundError(f"--cleanlab-from: expected the saved setting {path}, found none: run it with --decide "
                                "first, or drop --cleanlab-from.")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in REUSED if k not in f.files]
        if missing:
            raise ValueError(f"--cleanlab-from: {path} lacks {missing}: it is not a --decide file.")
        data = {k: f[k] for k in REUSED}
    if data["given"].shape != given.shape or not np.array_equal(data["given"].astype(np.int64), given):
        raise ValueError(f"--cleanlab-from: {path} holds other given labels than this setting's (another noise draw, "
                         "sample count or data): its cleanlab answer is about other data.")
    data["payoff"] = json.loads(str(data["payoff"]))
    return data


def run_setting(args, dataset: str, noise: float, seed: int) -> Path:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    from curvature_callback import CurvatureCallback, CurvatureStore, WithIndex
    from curvature_callback.analysis.scores import suspicion_scores
    from curvature_callback.experiments.data.images import ImageArrayDataset, channel_stats

    start_all = time.perf_counter()
    args.seed = seed
    images, labels = load_arrays(dataset, args.samples, args.fmnist_root)
    duplicates = args.duplicates if args.duplicates is not None else max(2, round(len(labels) / 200))
    s = make_setting(images, labels, noise, seed, duplicates, kind=args.noise_kind, dataset=dataset)
    mean, std = channel_stats(s["images"])
    fill = -mean / std
    scored = ImageArrayDataset(s["images"], s["given"], mean, std)
    in_channels = scored.images.shape[1]
    n = len(scored)

    StudyModule = _module_class()
    pl.seed_everything(seed, verbose=False)
    net = make_net(args.arch, in_channels, args.width)
    masks = {"flipped": s["flipped"], "all": np.ones(n, dtype=bool), "copies": np.isin(np.arange(n), s["dup_copies"])}
    module = StudyModule(net, lr=args.lr, weight_decay=args.weight_decay,
                         milestones=milestones_of(args.epochs, args.drops), fill=fill, augment=args.augment, n=n,
                         masks=masks,
                         probs=np.full((args.epochs, n, 10), np.nan, np.float16) if args.record_probs else None)
    work = Path(tempfile.mkdtemp(prefix="miniature_"))
    try:
        callback = CurvatureCallback(scored, n_vectors=args.n_vectors if args.pass_kind == "curvature" else 0,
                                     pass_kind=args.pass_kind, every_n_epochs=args.every,
                                     start_epoch=(args.epochs - 1) % args.every, directory=work / "store",
                                     log_histogram=False, batch_size=256, seed=seed)
        loader = DataLoader(WithIndex(scored), batch_size=args.batch_size, shuffle=True)
        t0 = time.perf_counter()
        _trainer(args.epochs, [callback], args.accelerator).fit(module, loader)
        main_seconds = time.perf_counter() - t0
        store = CurvatureStore.open(work / "store")
        signals = {k: np.asarray(v, dtype=np.float32) for k, v in suspicion_scores(store).items()}
        ours = our_issues(store, s["given"]) if args.decide or args.record_probs else {}
        eval_correct = (np.asarray(store.channel_last("correct"), dtype=np.float32)
                        if "correct" in store.channels else np.full(n, np.nan, np.float32))
        store_epochs = list(store.epochs)
        step_channels = list(getattr(store, "step_channels", []) or [])
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    out = {"given": s["given"].astype(np.int8), "original": s["original"].astype(np.int8), "flipped": s["flipped"],
           "dup_sources": s["dup_sources"].astype(np.int32), "dup_copies": s["dup_copies"].astype(np.int32),
           "fit_flipped": np.array(module.fit["flipped"], np.float32),
           "fit_all": np.array(module.fit["all"], np.float32),
           "fit_copies": np.array(module.fit["copies"], np.float32),
           "epoch_seconds": np.diff(np.array(module.epoch_starts + [t0 + main_seconds]) - t0).astype(np.float32),
           "eval_correct_last": eval_correct, **ours}
    if args.record_probs:
        out["epoch_probs"] = module.probs
    cv_seconds = 0.0
    reused = reused_cleanlab(args, dataset, noise, seed, s["given"].astype(np.int64))
    if reused is not None:  # cleanlab's side as saved: the same data, CV models and answer
        signals["cleanlab"] = reused["cleanlab"].astype(np.float32)
        out["cleanlab_issues"], out["pred_probs"] = reused["cleanlab_issues"], reused["pred_probs"]
        cleanlab_estimated = int(reused["payoff"]["cleanlab_estimated"])
        cv_seconds = float(reused["seconds"][1])
    elif args.cv:
        from cleanlab.count import num_label_issues
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        t1 = time.perf_counter()
        probs = cross_validated_probs(scored, s["given"], args, in_channels, fill)
        cv_seconds = time.perf_counter() - t1
        signals["cleanlab"] = (1.0 - get_label_quality_scores(s["given"], probs)).astype(np.float32)
        # one process (cleanlab's default forks a pool of every core, from a process that may hold a CUDA context,
        # in each of the GPU script's parallel settings); its result does not depend on n_jobs
        out["cleanlab_issues"] = find_label_issues(s["given"], probs, n_jobs=1)
        out["pred_probs"] = probs.astype(np.float16)
        cleanlab_estimated = int(num_label_issues(s["given"], probs))
    if args.decide:
        payoff = run_payoff(args, dataset, s, out, net, mean, std, fill, reused)
        payoff["cleanlab_estimated"] = cleanlab_estimated
        out["payoff"] = np.array(json.dumps(payoff))
    total = time.perf_counter() - start_all
    out["seconds"] = np.array([main_seconds, cv_seconds, total], np.float32)
    config = {k: v for k, v in vars(args).items() if k not in ("tables", "cv_seeds")}
    config["cleanlab_from"] = str(args.cleanlab_from) if args.cleanlab_from else None
    config.update(dataset=dataset, noise=noise, seed=seed, n=n, duplicates=duplicates,
                  milestones=milestones_of(args.epochs, args.drops), store_epochs=store_epochs,
                  step_channels=step_channels,
                  seconds_note="main (train + scoring), cv (3 trainings + predictions), total", signals=sorted(signals),
                  torch=torch.__version__, accelerator=args.accelerator,
                  device_name=torch.cuda.get_device_name() if args.accelerator == "cuda" else "cpu")
    out["config"] = np.array(json.dumps(config, default=str))
    clash = set(signals) & set(out)
    if clash:
        raise RuntimeError(f"signal names clash with bookkeeping keys: {sorted(clash)}")
    path = Path(args.out) / setting_name(args, dataset, noise, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **signals, **out)
    fit = out["fit_flipped"]
    print(f"{path.name}: main {main_seconds:.0f} s, cv {cv_seconds:.0f} s; train acc {out['fit_all'][-1]:.3f}, "
          f"flipped fit {fit[-1] if len(fit) else float('nan'):.3f}, signals {sorted(signals)}", flush=True)
    return path


# ------------------------------------------------------------------------------------------------------ tables
def load(path: Path) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(config, signals, bookkeeping)`` of a saved setting."""
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    config = json.loads(str(data.pop("config")))
    signals = {k: v.astype(np.float64) for k, v in data.items() if k not in META_KEYS}
    return config, signals, data


def with_recommended(signals: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The signals and the recommended scores (``curvature_callback.analysis.recommend``) beside them."""
    from curvature_callback.analysis.recommend import recommended_scores, used_signals

    extra: dict[str, np.ndarray] = {}
    groups: list[tuple[list[str], np.ndarray]] = []  # questions with one and the same score share a row
    for q, v in recommended_scores(dict(signals)).items():
        v = np.asarray(v, dtype=np.float64)
        same = [g for g in groups if np.array_equal(g[1], v, equal_nan=True)]
        if same:
            same[0][0].append(q)
        else:
            groups.append(([q], v))
    used = used_signals(signals)
    for questions, v in groups:
        extra[f"recommended: {', '.join(questions)} (rank mean of {' and '.join(used[questions[0]])})"] = v
    return {**signals, **extra}


def evaluate(path: Path) -> dict:
    """Mislabel and duplicate metrics of every signal of one saved setting."""
    from curvature_callback.analysis.metrics import detection_table

    config, signals, d = load(path)
    signals = with_recommended(signals)
    n = len(d["given"])
    planted = np.zeros(n, dtype=bool)
    planted[d["dup_sources"]] = planted[d["dup_copies"]] = True
    keep = ~planted  # the mislabel question: flipped vs clean, planted pairs left out
    flipped = d["flipped"][keep]
    k = int(flipped.sum())
    pct = 100.0 * k / keep.sum()
    finite = {name: v for name, v in signals.items() if np.isfinite(v).all()}
    table = detection_table({name: v[keep] for name, v in finite.items()}, flipped, at_percent=[pct])
    mislabel = {name: {"auroc": m["auroc"], "ap": m["ap"], "p@k": m[f"precision@{pct:g}%"]}
                for name, m in table.items()}
    clean = ~d["flipped"]  # the duplicate question: planted members vs clean samples
    copies = np.zeros(n, dtype=bool)
    copies[d["dup_copies"]] = True
    dup_copy = detection_table({name: v[clean] for name, v in finite.items()}, copies[clean], at_percent=())
    dup_pair = detection_table({name: v[clean] for name, v in finite.items()}, planted[clean], at_percent=())
    alone = clean & ~copies  # the sources (correctly labeled) against the clean samples, copies left out
    dup_source = detection_table({name: v[alone] for name, v in finite.items()}, (planted & ~copies)[alone],
                                 at_percent=())
    fit = d["fit_flipped"]
    reached = np.nonzero(fit >= 0.9)[0]
    issues = d.get("cleanlab_issues")
    cl = None
    if issues is not None:
        found = issues[keep]
        cl = {"flagged": int(found.sum()), "precision": float(flipped[found].mean()) if found.any() else float("nan"),
              "recall": float(found[flipped].mean()) if k else float("nan")}
    return {
        "config": config, "mislabel": mislabel, "k": k,
        "dup": {name: {"copy": dup_copy[name]["auroc"], "source": dup_source[name]["auroc"],
                       "pair": dup_pair[name]["auroc"]} for name in dup_copy},
        "fit_epoch": int(reached[0]) + 1 if len(reached) else None, "fit_final": float(fit[-1]) if len(fit) else None,
        "acc_final": float(d["fit_all"][-1]) if len(d["fit_all"]) else None,
        "copies_fit_final": float(d["fit_copies"][-1]) if len(d["fit_copies"]) else None,
        "eval_fit_final": float(np.nanmean(d["eval_correct_last"][d["flipped"]])) if d["flipped"].any() else None,
        "fit_curve": fit.tolist(), "seconds": d["seconds"].tolist(), "cleanlab_issues": cl, "signals": signals,
        "eval_acc_final": float(np.nanmean(d["eval_correct_last"])),
        "phases": phases(config, fit, signals.get("learning_time"), d["flipped"]),
    }


def _family(config: dict) -> str:
    """The regime of a saved setting (files from before ``--family`` are the augmented one)."""
    return config.get("family", "augmented")


def phases(config: dict, fit_flipped: np.ndarray, learning_time: np.ndarray | None,
           flipped: np.ndarray) -> list[dict]:
    """The flipped labels' fit by learning-rate phase: for each phase (before the first drop, between the drops, after
    the last), its epochs, the fraction of flipped labels right in their minibatch at its last epoch, and, from the
    per-sample learning time (one past the latest epoch a presentation was wrong), the fraction first fit for good
    (right at every later presentation) in that phase."""
    epochs = int(config["epochs"])
    bounds = [0, *[int(m) for m in config["milestones"] if 0 < int(m) < epochs], epochs]
    lt = None if learning_time is None else np.asarray(learning_time, dtype=np.float64)[flipped]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        row = {"epochs": (lo + 1, hi), "fit_end": float(fit_flipped[hi - 1]) if len(fit_flipped) >= hi else None}
        if lt is not None and len(lt):
            # learned for good in this phase (0-based epochs lo .. hi - 1): right from epoch lt on, lo <= lt <= hi - 1
            # (lt = 0: never wrong; lt = epochs: wrong at the last epoch, in no phase)
            row["learned"] = float(((lt >= lo) & (lt <= hi - 1)).mean())
        out.append(row)
    return out


def _phase_table(group: list[dict]) -> list[str]:
    """Per setting: the flipped labels' fit before and after each drop."""
    rows = sorted(group, key=lambda r: (r["config"]["noise"], r["config"]["seed"]))
    ph0 = rows[0]["phases"]
    head = " | ".join(f"epochs {a}-{b} (lr x{10.0 ** -i:g})" for i, (a, b) in
                      enumerate(p["epochs"] for p in ph0))
    lines = ["**Flipped labels fit by learning-rate phase**: the fraction right in its minibatch at the phase's last "
             "epoch / the fraction first fit for good in the phase (right at every later presentation, from the "
             "learning time); train accuracy on the given labels at the last epoch (minibatch / eval mode)", "",
             f"| noise | seed | {head} | not fit at the end | train acc (minibatch / eval) |",
             "| --- | --- |" + " --- |" * len(ph0) + " --- | --- |"]
    for r in rows:
        c, ph = r["config"], r["phases"]
        cells = [f"{p['fit_end']:.3f} / {p.get('learned', float('nan')):.3f}" for p in ph]
        not_fit = 1.0 - sum(p.get("learned", float("nan")) for p in ph)
        lines.append(f"| {100 * c['noise']:g} % | {c['seed']} | " + " | ".join(cells) +
                     f" | {not_fit:.3f} | {r['acc_final']:.3f} / {r['eval_acc_final']:.3f} |")
    return [*lines, ""]


def _side_by_side(group: list[dict], names: list[str]) -> list[str]:
    """Every signal over every setting of a group: mislabel AUROC and AP, their difference from CSL's
    (``train_loss``) per setting, and the duplicate copies' AUROC beside the duplicates rule's."""
    dup_rule = [n for n in names if n.startswith("recommended") and "duplicates" in n.split("(")[0]]

    def spread(diffs: list[float]) -> str:
        d = np.asarray(diffs)
        return f"{d.mean():+.3f} ({int((d > 0).sum())} / {int((d < 0).sum())})"

    lines = [f"**Side by side, {len(group)} settings** (mean over every noise level and seed; Δ = the signal minus "
             "CSL's (`train_loss`) in each setting, mean (settings above / below); duplicate copies: Δ against the "
             "recommended duplicates score)", "",
             "| signal | mislabel AUROC | Δ AUROC vs CSL | mislabel AP | Δ AP vs CSL | duplicate copies AUROC | "
             "Δ vs duplicates rule | both members AUROC |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in names:
        ml = [r["mislabel"][name] for r in group]
        csl = [r["mislabel"]["train_loss"] for r in group] if "train_loss" in names else None
        copy = [r["dup"][name]["copy"] for r in group]
        ref = [r["dup"][dup_rule[0]]["copy"] for r in group] if dup_rule else None
        lines.append(
            f"| {NOTES.get(name, name)} | {np.mean([m['auroc'] for m in ml]):.3f} | "
            f"{spread([m['auroc'] - c['auroc'] for m, c in zip(ml, csl, strict=True)]) if csl else '-'} | "
            f"{np.mean([m['ap'] for m in ml]):.3f} | "
            f"{spread([m['ap'] - c['ap'] for m, c in zip(ml, csl, strict=True)]) if csl else '-'} | "
            f"{np.mean(copy):.3f} | {spread([a - b for a, b in zip(copy, ref, strict=True)]) if ref else '-'} | "
            f"{np.mean([r['dup'][name]['pair'] for r in group]):.3f} |")
    return [*lines, ""]


def _ms(values: Sequence[float], digits: int = 3) -> str:
    """mean ± half the range over seeds (one value: itself)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {(v.max() - v.min()) / 2:.{digits}f}"


def _ordered(names) -> list[str]:
    names = set(names)
    first = [n for n in ORDER if n in names]
    rest = sorted(n for n in names if n not in ORDER and not n.startswith("recommended"))
    return first + rest + sorted(n for n in names if n.startswith("recommended"))


def _flagging(flagged: np.ndarray, mislabeled: np.ndarray, suggested: np.ndarray, original: np.ndarray) -> dict:
    """A flagged mask against the mislabels: its size, precision, recall and F1, and how often its suggested label is
    the image's class on the mislabels it found."""
    found = flagged & mislabeled
    precision = float(found.sum() / flagged.sum()) if flagged.any() else float("nan")
    recall = float(found.sum() / mislabeled.sum()) if mislabeled.any() else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    right = float((suggested[found] == original[found]).mean()) if found.any() else float("nan")
    return {"flagged": int(flagged.sum()), "precision": precision, "recall": recall, "f1": f1, "suggested_right": right}


def decision(path: Path) -> dict | None:
    """The decision study of one saved setting (``--decide``; None for other files): ours against cleanlab on which
    samples to fix (a mislabel: given label != the image's class), the cost of each, the retrainings' test accuracy."""
    config, signals, d = load(path)
    if "ours_flagged" not in d or "payoff" not in d:
        return None
    payoff = json.loads(str(d["payoff"]))
    given, original = d["given"].astype(np.int64), d["original"].astype(np.int64)
    mislabeled = given != original
    flagged, suggested, estimated = d["ours_flagged"], d["ours_suggested"].astype(np.int64), int(d["ours_estimated"])
    changed = False
    if "evidence_classes" in d:  # our answer by today's estimator, from what the run's answer was computed from
        from curvature_callback.analysis.label_issues import estimate_label_issues

        early = ((d["early_classes"].astype(np.int64), d["early_mass"].astype(np.float64)) if "early_classes" in d
                 else None)
        found = estimate_label_issues(signals, given, evidence=(d["evidence_classes"].astype(np.int64),
                                                                d["evidence_mass"].astype(np.float64)),
                                      early_evidence=early)
        now = np.zeros(len(given), dtype=bool)
        now[found.flagged] = True
        changed = not np.array_equal(now, flagged.astype(bool))
        flagged, suggested, estimated = now, found.suggested, int(found.estimated)
    seconds = d["seconds"].astype(np.float64)
    cv_argmax = d["pred_probs"].astype(np.float32).argmax(1)
    return {
        "config": config, "mislabeled": int(mislabeled.sum()), "payoff": payoff,
        # the relabeled retraining trains on every sample without the callback: a plain run's time
        "plain_seconds": payoff["seconds"].get("ours relabeled"),
        "ours": {**_flagging(flagged, mislabeled, suggested, original), "estimated": estimated,
                 "seconds": float(seconds[0]), "changed": changed},
        "cleanlab": {**_flagging(d["cleanlab_issues"], mislabeled, cv_argmax, original),
                     "estimated": int(payoff["cleanlab_estimated"]), "seconds": float(seconds[0] + seconds[1])},
    }


def repay(path: Path, args) -> None:
    """Retrain the payoff of our answer (``ours removed``, ``ours relabeled``) of a saved ``--decide`` setting whose
    flagged set today's estimator changed, with the recipe and seed the file records, and save the file with today's
    answer and those rows (``--repay FILE``): the payoff table then shows the retrained set without a star."""
    from curvature_callback.experiments.data.images import channel_stats

    found = decision(path)
    if found is None or not found["ours"]["changed"]:
        print(f"{path.name}: our flagged set is today's; nothing to retrain")
        return
    config, signals, d = load(path)
    for key in ("arch", "width", "lr", "weight_decay", "epochs", "drops", "augment", "batch_size", "accelerator"):
        setattr(args, key, config[key])
    images, labels = load_arrays(config["dataset"], config["samples"], args.fmnist_root)
    s = make_setting(images, labels, config["noise"], config["seed"], config["duplicates"],
                     kind=config.get("noise_kind", "symmetric"), dataset=config["dataset"])
    if not np.array_equal(s["given"], d["given"].astype(np.int64)):
        raise ValueError(f"{path}: the setting rebuilt from its config has other given labels; not retrained")
    from curvature_callback.analysis.label_issues import estimate_label_issues

    early = (d["early_classes"].astype(np.int64), d["early_mass"].astype(np.float64)) if "early_classes" in d else None
    now = estimate_label_issues(signals, s["given"], evidence=(d["evidence_classes"].astype(np.int64),
                                                               d["evidence_mass"].astype(np.float64)),
                                early_evidence=early)
    flagged = np.zeros(len(s["given"]), dtype=bool)
    flagged[now.flagged] = True
    ours = {"ours_flagged": flagged, "ours_suggested": now.suggested.astype(np.int8),
            "ours_probability": now.probability.astype(np.float32),
            "ours_estimated": np.array(now.estimated, dtype=np.int64), "ours_method": np.array(now.method)}
    mean, std = channel_stats(s["images"])
    payoff = json.loads(str(d["payoff"]))
    test_images, test_labels = load_arrays(config["dataset"], config.get("test_samples"), args.fmnist_root, "test")
    from curvature_callback.experiments.data.images import ImageArrayDataset

    test = ImageArrayDataset(test_images, test_labels, mean, std)
    for name, (labels_v, kept) in payoff_variants({**d, **ours}).items():
        if not name.startswith("ours"):
            continue
        t0 = time.perf_counter()
        net = retrain(s["images"], labels_v, kept, args, config["seed"], mean, std, -mean / std)
        payoff["test_acc"][name] = test_accuracy(net, test, _device(args))
        payoff["trained_on"][name] = int(kept.sum())
        payoff["seconds"][name] = time.perf_counter() - t0
        print(f"  {name}: test acc {payoff['test_acc'][name]:.4f}, trained on {int(kept.sum())}", flush=True)
    np.savez_compressed(path, **{**d, **ours, "payoff": np.array(json.dumps(payoff)),
                                 "config": np.array(json.dumps(config))})
    print(f"{path}: our payoff retrained for today's {int(flagged.sum())} flagged")


def decision_tables(files: Sequence[Path]) -> list[str]:
    """Per dataset, noise kind and tag: which samples each method would fix, and what fixing them buys."""
    found = [r for r in (decision(p) for p in files) if r is not None]
    lines: list[str] = []

    def key_of(c: dict) -> tuple[str, str, str]:
        return c["dataset"], c.get("noise_kind", "symmetric"), c.get("tag") or ""

    def pair(a: float, b: float, digits: int = 3) -> str:  # "-": nothing flagged, or no mislabel found
        return " / ".join("-" if not np.isfinite(v) else f"{v:.{digits}f}" for v in (a, b))

    for key in sorted({key_of(r["config"]) for r in found}):
        group = sorted((r for r in found if key_of(r["config"]) == key),
                       key=lambda r: (r["config"]["noise"], r["config"]["seed"]))
        c0 = group[0]["config"]
        lines += [f"### Decision study: {key[0]}, {key[1]} noise (family {_family(c0)!r}, tag {key[2]!r}): "
                  f"{c0['n']} samples, {c0['epochs']} epochs, {c0['folds']}-fold CV for cleanlab", "",
                  "**Which samples to fix** (a mislabel: a sample whose given label is not its image's class, the "
                  "flips and the planted copies; each cell ours / cleanlab's; suggested label right: on the mislabels "
                  "each found, ours against the CV argmax; cost: our one run against the same run plus the CV "
                  "trainings, beside a plain training without the callback; ours recomputed by today's "
                  "find_label_issues from the saved signals and class evidence where the file keeps them)", "",
                  "| noise | seed | mislabels | estimated | flagged | precision | recall | F1 | suggested label "
                  "right | cost s: ours / cleanlab (plain training) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in group:
            c, o, cl = r["config"], r["ours"], r["cleanlab"]
            plain = "-" if r["plain_seconds"] is None else f"{r['plain_seconds']:.0f}"
            lines.append(f"| {100 * c['noise']:g} % | {c['seed']} | {r['mislabeled']} | {o['estimated']} / "
                         f"{cl['estimated']} | {o['flagged']} / {cl['flagged']} | "
                         f"{pair(o['precision'], cl['precision'])} | {pair(o['recall'], cl['recall'])} | "
                         f"{pair(o['f1'], cl['f1'])} | "
                         f"{pair(o['suggested_right'], cl['suggested_right'])} | {o['seconds']:.0f} / "
                         f"{cl['seconds']:.0f} ({plain}) |")
        wins = sum(r["ours"]["f1"] >= r["cleanlab"]["f1"] for r in group)
        lines += ["", f"Our F1 at least cleanlab's in {wins} of {len(group)} settings.", "",
                  f"**The payoff**: test accuracy on {group[0]['payoff']['test_n']} test images (original labels) "
                  "after retraining with the same recipe and seed (noisy: the run itself, with the callback), the "
                  "training samples of each in parentheses; *: our flagged set of the run itself, which today's "
                  "estimator changed, so 'ours' here is not the set above", "",
                  "| noise | seed | " + " | ".join(PAYOFF) + " |", "| --- | --- |" + " --- |" * len(PAYOFF)]
        for r in group:
            c, acc, n = r["config"], r["payoff"]["test_acc"], r["payoff"]["trained_on"]
            star = " *" if r["ours"]["changed"] else ""
            lines.append(f"| {100 * c['noise']:g} % | {c['seed']} | " + " | ".join(
                (f"{acc[v]:.4f} ({n[v]})" + (star if v.startswith("ours") else "")) if v in acc else "-"
                for v in PAYOFF) + " |")
        lines.append("")
    if found:
        wins = sum(r["ours"]["f1"] >= r["cleanlab"]["f1"] for r in found)
        lines += [f"**All decision settings**: our F1 at least cleanlab's in {wins} of {len(found)}.", ""]
        lines += decision_summary(found)
    return lines


def within(estimated: int, true: int, tolerance: float = 0.25) -> bool:
    """The estimate within ``tolerance`` of the true count."""
    return abs(estimated - true) <= tolerance * true


def decision_summary(found: list[dict]) -> list[str]:
    """The decision study's summary: per dataset and noise kind, the settings where our F1 is at least cleanlab's
    (noisy settings), the mean F1, the count within 25 % of the truth at 5 % noise and above, the suggested label
    right; then the totals, and each clean run's estimate (its only wrong labels the planted copies)."""
    noisy = [r for r in found if r["config"]["noise"] > 0]
    lines = ["**Summary** (each cell ours / cleanlab's; F1 wins: settings where our F1 is at least cleanlab's; count "
             "within 25 %: of the settings at 5 % and above; suggested label right: mean over settings)", "",
             "| dataset, noise | F1 wins | mean F1 | count within 25 % | suggested label right |",
             "| --- | --- | --- | --- | --- |"]
    keys = sorted({(r["config"]["dataset"], r["config"].get("noise_kind", "symmetric")) for r in noisy})
    for key in keys:
        group = [r for r in noisy if (r["config"]["dataset"], r["config"].get("noise_kind", "symmetric")) == key]
        high = [r for r in group if r["config"]["noise"] >= 0.05]
        wins = sum(r["ours"]["f1"] >= r["cleanlab"]["f1"] for r in group)
        count = [sum(within(r[m]["estimated"], r["mislabeled"]) for r in high) for m in ("ours", "cleanlab")]
        mean = {m: np.mean([r[m]["f1"] for r in group]) for m in ("ours", "cleanlab")}
        right = {m: np.nanmean([r[m]["suggested_right"] for r in group]) for m in ("ours", "cleanlab")}
        lines.append(f"| {key[0]}, {key[1]} | {wins} of {len(group)} | {mean['ours']:.3f} / {mean['cleanlab']:.3f} | "
                     f"{count[0]} / {count[1]} of {len(high)} | {right['ours']:.3f} / {right['cleanlab']:.3f} |")
    high = [r for r in noisy if r["config"]["noise"] >= 0.05]
    wins = sum(r["ours"]["f1"] >= r["cleanlab"]["f1"] for r in noisy)
    count = [sum(within(r[m]["estimated"], r["mislabeled"]) for r in high) for m in ("ours", "cleanlab")]
    lines += ["", f"Noisy settings: our F1 at least cleanlab's in {wins} of {len(noisy)}; the count within 25 % in "
              f"{count[0]} of {len(high)} settings at 5 % and above (cleanlab's: {count[1]})."]
    by_level = []
    for level in sorted({r["config"]["noise"] for r in noisy}):
        at = [r for r in noisy if r["config"]["noise"] == level]
        ratio = [np.median([r[m]["estimated"] / r["mislabeled"] for r in at]) for m in ("ours", "cleanlab")]
        w = sum(r["ours"]["f1"] >= r["cleanlab"]["f1"] for r in at)
        by_level.append(f"{100 * level:g} %: F1 wins {w} of {len(at)}, estimate / truth median {ratio[0]:.2f} / "
                        f"{ratio[1]:.2f}")
    lines += ["By noise level: " + "; ".join(by_level) + "."]
    clean = [r for r in found if r["config"]["noise"] == 0]
    if clean:
        lines += ["Clean runs (0 %: the planted copies the only wrong labels): " + "; ".join(
            f"{r['config']['dataset']} seed {r['config']['seed']}: ours {r['ours']['estimated']} "
            f"({100 * r['ours']['estimated'] / r['config']['n']:.1f} % of {r['config']['n']}), cleanlab "
            f"{r['cleanlab']['estimated']}" for r in sorted(clean, key=lambda r: (r["config"]["dataset"],
                                                                                  r["config"]["seed"]))) + "."]
    return lines + [""]


def _has_flips(path: Path) -> bool:
    with np.load(path, allow_pickle=False) as f:
        return bool(f["flipped"].any())


def tables(folder: Path) -> str:
    """The markdown tables of every saved setting in ``folder``."""
    from curvature_callback.analysis.metrics import correlations

    files = sorted(folder.glob("*.npz"))
    if not files:
        return f"No saved settings in {folder}."
    runs = [(p, evaluate(p)) for p in files if _has_flips(p)]  # a clean run ranks nothing: its decision only
    lines: list[str] = []
    main = [(p, r) for p, r in runs if not r["config"].get("tag")]
    grouped = [(p, r) for p, r in runs if r["config"].get("tag") and (_family(r["config"]) != "augmented"
                                                                       or r["config"].get("decide"))]
    extra = [(p, r) for p, r in runs if r["config"].get("tag") and p not in {q for q, _ in grouped}]
    families = grouped

    def key_of(c: dict) -> tuple[str, str, str]:
        return c.get("tag") or "", c["dataset"], c.get("noise_kind", "symmetric")

    for key in sorted({key_of(r["config"]) for _, r in main + families}):
        group = [r for _, r in main + families if key_of(r["config"]) == key]
        noises = sorted({r["config"]["noise"] for r in group})
        by = {p: [r for r in group if r["config"]["noise"] == p] for p in noises}
        c0 = group[0]["config"]
        seeds = sorted({r["config"]["seed"] for r in group})
        regime = "" if not key[0] else (
            f" (family {_family(c0)!r}, tag {key[0]!r}: {c0.get('arch', 'resnet')} net, "
            f"{'crop/flip' if c0.get('augment', True) else 'no augmentation'}, weight decay {c0['weight_decay']:g}, "
            f"lr {c0['lr']:g}, CV {c0['cv_epochs'] if c0.get('cv') else 'none'} epochs)")
        kind = "" if key[2] == "symmetric" else f", {key[2]} noise"
        lines += [f"### {c0['dataset']}{kind}{regime}: {c0['n']} samples, {c0['epochs']} epochs (x0.1 at "
                  f"{c0['milestones']}), width {c0['width']}, curvature n={c0['n_vectors']} every {c0['every']} "
                  f"epoch(s); seeds {seeds}", ""]
        names = _ordered(set.intersection(*(set(r["mislabel"]) for r in group)))
        for metric, label in (("auroc", "AUROC"), ("ap", "AP"), ("p@k", "precision at k = number flipped")):
            lines += [f"**Mislabel detection, {label}** (mean ± half-range over seeds; planted pairs left out)", "",
                      "| signal | " + " | ".join(f"{100 * p:g} %" for p in noises) + " |",
                      "| --- |" + " --- |" * len(noises)]
            for name in names:
                lines.append(f"| {NOTES.get(name, name)} | " + " | ".join(
                    _ms([r["mislabel"][name][metric] for r in by[p]]) for p in noises) + " |")
            lines.append("")
        lines += ["**Planted conflicting duplicates, AUROC against the clean samples** (the copies, with the wrong "
                  "label; their sources, with the right one; both; mean ± half-range over every setting of this "
                  "dataset)", "", "| signal | copies | sources | both members |", "| --- | --- | --- | --- |"]
        for name in names:
            lines.append(f"| {NOTES.get(name, name)} | {_ms([r['dup'][name]['copy'] for r in group])} | "
                         f"{_ms([r['dup'][name]['source'] for r in group])} | "
                         f"{_ms([r['dup'][name]['pair'] for r in group])} |")
        lines += ["", "**Memorization and cost per setting**", "",
                  "| noise | seed | flipped fit >= 90 % (epoch, minibatch) | flipped fit, last epoch (minibatch / "
                  "eval) | train acc, last epoch | copies fit | cleanlab find_label_issues: flagged, precision, "
                  "recall | wall s: main / CV / total |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sorted(group, key=lambda r: (r["config"]["noise"], r["config"]["seed"])):
            c, cl, sec = r["config"], r["cleanlab_issues"], r["seconds"]
            cls = "-" if cl is None else f"{cl['flagged']}, {cl['precision']:.3f}, {cl['recall']:.3f}"
            lines.append(f"| {100 * c['noise']:g} % | {c['seed']} | {r['fit_epoch'] or 'never'} | "
                         f"{r['fit_final']:.3f} / {r['eval_fit_final']:.3f} | {r['acc_final']:.3f} | "
                         f"{r['copies_fit_final']:.3f} | {cls} | {sec[0]:.0f} / {sec[1]:.0f} / {sec[2]:.0f} |")
        curve = [r for r in group if r["config"]["noise"] == max(noises)]
        if curve:
            lines += ["", f"Flipped labels fit per epoch (minibatch, {100 * max(noises):g} % noise): " + "; ".join(
                f"seed {r['config']['seed']}: " + " ".join(f"{x:.2f}" for x in r["fit_curve"]) for r in curve), ""]
        if key[0]:
            lines += _phase_table(group) + _side_by_side(group, names)
    for p, r in extra:  # tagged runs: compared with the untagged run of the same setting
        c = r["config"]
        base = [b for _, b in main if all(b["config"][k] == c[k] for k in ("dataset", "noise", "seed"))
                and key_of(b["config"])[2] == key_of(c)[2]]
        cv = f"CV {c['cv_epochs']} epochs" if c.get("cv") else "no CV"
        lines += [f"### {p.name} (tag {c['tag']!r}): {c['epochs']} epochs (x0.1 at {c['milestones']}), {cv}, width "
                  f"{c['width']}, curvature n={c['n_vectors']} every {c['every']}; flipped fit, last epoch "
                  f"{r['fit_final']:.3f} (minibatch), train acc {r['acc_final']:.3f}; wall s main / CV / total "
                  + " / ".join(f"{x:.0f}" for x in r["seconds"]), "",
                  "| signal | AUROC | AP | P@k | duplicates AUROC (copies / both) | base run AUROC |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name in _ordered(r["mislabel"]):
            m = r["mislabel"][name]
            b = f"{base[0]['mislabel'][name]['auroc']:.3f}" if base and name in base[0]["mislabel"] else "-"
            lines.append(f"| {NOTES.get(name, name)} | {m['auroc']:.3f} | {m['ap']:.3f} | {m['p@k']:.3f} | "
                         f"{r['dup'][name]['copy']:.3f} / {r['dup'][name]['pair']:.3f} | {b} |")
        if base and "curvature" in base[0]["signals"]:
            cor = correlations(r["signals"]["curvature"], base[0]["signals"]["curvature"])
            lines += ["", f"Curvature n={c['n_vectors']} against the base run's n={base[0]['config']['n_vectors']}: "
                      f"Spearman {cor['spearman']:.3f}, Pearson {cor['pearson']:.3f}; wall s {r['seconds'][0]:.0f} "
                      f"(base {base[0]['seconds'][0]:.0f})."]
        lines.append("")
    return "\n".join(lines + decision_tables(files))


# --------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("cifar10", "fashion_mnist"), default="cifar10")
    parser.add_argument("--noise", type=float, nargs="+", default=None,
                        help="fractions flipped (default 0.01 0.02 0.05 0.1; with --decide 0.02 0.05 0.1 0.2)")
    parser.add_argument("--noise-kind", choices=("symmetric", "pair", "confusion", "model"), default="symmetric",
                        help="what a flipped label becomes (inject_label_noise): any other class, c + 1, a class that "
                        "looks alike, a quick model's confusion")
    parser.add_argument("--decide", action="store_true", help="the decision study: our find_label_issues against "
                        "cleanlab's, then retrain without (or relabeling) each one's flagged samples; needs --cv")
    parser.add_argument("--test-samples", type=int, default=None, help="with --decide, the first N test images "
                        "(default: the whole test split)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="augmented",
                        help="the regime: its model, augmentation, weight decay, schedule and file tag (FAMILIES); "
                        "any of those options given explicitly wins")
    parser.add_argument("--samples", type=int, default=None, help="the first N training images (standard order)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--drops", type=float, nargs="+", default=None,
                        help="fractions of --epochs where the learning rate is divided by 10")
    parser.add_argument("--arch", choices=("resnet", "plain"), default=None,
                        help="resnet: build_net (3 basic blocks); plain: build_plain (4 conv layers)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="random crop (pad 4) and flip of each training batch")
    parser.add_argument("--cv", action=argparse.BooleanOptionalAction, default=True,
                        help="cleanlab on out-of-sample probabilities from --folds-fold cross-validation")
    parser.add_argument("--cv-epochs", type=int, default=None, help="epochs of each CV training (default --epochs)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--cv-seeds", type=int, nargs="+", default=None,
                        help="with --cv, cross-validate only these seeds (default: every seed)")
    parser.add_argument("--n-vectors", type=int, default=2)
    parser.add_argument("--every", type=int, default=None, help="score curvature every this many epochs (ending on "
                        "the last)")
    parser.add_argument("--width", type=int, default=None, help="channels of the first stage (then 2x, 4x)")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--duplicates", type=int, default=None,
                        help="planted conflicting copies (default: N / 200, the lab's 250 per 50,000)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accelerator", choices=("cpu", "cuda"), default="cpu",
                        help="where every training (main run, CV folds, payoff retrainings), the scoring passes and "
                        "the CV predictions and test accuracy run; cpu (the default) as every saved setting so far")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--tag", default=None, help="suffix of the file names (tagged runs get their own table; "
                        "default: the family's)")
    parser.add_argument("--fmnist-root", default=os.environ.get("CURVATURE_FASHION_MNIST", FMNIST_DEFAULT))
    parser.add_argument("--record-probs", action="store_true",
                        help="also save each training presentation's softmax (epoch_probs, float16 [epochs, N, 10]) "
                             "and our answer: the evidence for choosing a class-evidence window and rule")
    parser.add_argument("--cleanlab-from", type=Path, default=None,
                        help="with --decide: take cleanlab's side (CV probabilities, issues, estimate, the cleanlab- "
                             "and oracle-removed retrainings) from the file of the same name in this folder instead "
                             "of training it again (its given labels must be this setting's)")
    parser.add_argument("--payoff", action=argparse.BooleanOptionalAction, default=True,
                        help="with --decide: retrain for the payoff (--no-payoff: only the noisy run's test accuracy "
                             "and what --cleanlab-from brings)")
    parser.add_argument("--pass-kind", choices=("curvature", "gradient", "forward"), default="curvature",
                        help="the callback's pass (forward: the eval-mode baselines only, the cheapest; the decision "
                             "reads the training loss and the eval-mode loss)")
    parser.add_argument("--repay", type=Path, nargs="+", default=None,
                        help="saved --decide files: retrain our payoff rows where today's estimator changed the "
                             "flagged set, and save them with today's answer (the recipe from each file)")
    parser.add_argument("--tables", action="store_true", help="print the tables of the files in --out; no training")
    args = parser.parse_args(argv)
    if args.noise is None:
        args.noise = [0.02, 0.05, 0.1, 0.2] if args.decide else [0.01, 0.02, 0.05, 0.1]
    if args.decide and args.tag is None:
        args.tag = FAMILIES[args.family]["tag"] + "_dec"
    if args.decide and (not (args.cv or args.cleanlab_from) or args.cv_seeds is not None):
        parser.error("--decide compares with cleanlab on every setting: drop --no-cv and --cv-seeds")
    for key, value in FAMILIES[args.family].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.tables:
        print(tables(args.out))
        return 0
    if args.repay:
        import torch

        torch.set_num_threads(args.threads)
        _quiet()
        for path in args.repay:
            repay(path, args)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    _quiet()
    if args.cv_epochs is None:
        args.cv_epochs = args.epochs
    cv, cv_seeds = args.cv, args.cv_seeds
    for noise in args.noise:
        for seed in args.seeds:
            args.cv = cv and (cv_seeds is None or seed in cv_seeds)
            run_setting(args, args.dataset, noise, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
