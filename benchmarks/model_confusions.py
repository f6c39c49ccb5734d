"""The confusions of a quick model, per dataset: what ``inject_label_noise(kind="model")`` draws the flipped labels
from. Written once into ``curvature_callback/experiments/data/model_confusions.json``:

    export CURVATURE_CIFAR10_OFFLINE=/path/to/cifar10      # the offline CIFAR-10 copy's folder
    python benchmarks/model_confusions.py                  # about 2 minutes on one CPU thread

Each dataset's counts are a quick model's held-out predictions against the true labels (``counts[true][predicted]``):

- ``cifar10``: a small CNN (three conv-BN-ReLU-pool layers of 32/64/128 channels, global average pool, linear)
  trained on the first 5,000 training images of the offline copy for 6 epochs (SGD, lr 0.05, momentum 0.9, batch
  64, no augmentation), predicting the 10,000 test images;
- ``fashion_mnist``: the same network and recipe on Debian's ``dataset-fashion-mnist`` (``--fmnist-root``);
- ``digits``: scikit-learn's logistic regression on the 8x8 digits, trained on one tenth of them and predicting
  the other nine tenths, for each tenth of a stratified 10-fold split (every image predicted 9 times).

The noise reads the off-diagonal counts plus ``pseudo_count`` in every off-diagonal cell (a class the model never
confused still has somewhere to go), each row normalised to 1. Seeded (``--seed``); torch's CPU kernels may differ
in the last digits between machines, so a rerun elsewhere gives close, not identical, counts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from miniature_study import FMNIST_DEFAULT, _idx  # noqa: E402  (the idx reader of the study)

OUT = Path(__file__).resolve().parents[1] / "curvature_callback" / "experiments" / "data" / "model_confusions.json"
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")


def _fmnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    return _idx(root / f"{prefix}-images-idx3-ubyte.gz"), _idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(int)


def _cnn_counts(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], args) -> np.ndarray:
    """Train the small CNN on ``train``, return the confusion counts of its predictions on ``test``."""
    import torch
    from torch import nn

    torch.manual_seed(args.seed)

    def tensor(images: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.array(images), dtype=torch.float32) / 255.0  # a writable copy
        return x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)

    x, y = tensor(train[0]), torch.as_tensor(train[1])
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    x = (x - mean) / std
    layers: list[nn.Module] = []
    c = x.shape[1]
    for w in (32, 64, 128):
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
        c = w
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(args.epochs):
        net.train()
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    xt = (tensor(test[0]) - mean) / std
    with torch.no_grad():
        pred = torch.cat([net(b).argmax(1) for b in xt.split(500)]).numpy()
    counts = np.zeros((10, 10), dtype=np.int64)
    np.add.at(counts, (np.asarray(test[1]), pred), 1)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5000, help="training images of the quick CNN")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pseudo-count", type=float, default=1.0)
    parser.add_argument("--fmnist-root", type=Path, default=Path(FMNIST_DEFAULT))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from curvature_callback.experiments.data import CIFAR10_CLASSES, cifar10_offline_arrays

    found: dict[str, dict] = {}
    recipe = (f"small CNN (conv-BN-ReLU-pool 32/64/128, GAP, linear), first {args.samples} training images, "
              f"{args.epochs} epochs SGD lr 0.05 momentum 0.9 batch 64, seed {args.seed}; counts on the test split")
    for name, classes, load in (
        ("cifar10", CIFAR10_CLASSES, lambda split, limit=None: cifar10_offline_arrays(None, split, limit=limit)),
        ("fashion_mnist", FMNIST_CLASSES, lambda split, limit=None: tuple(a[:limit] for a in _fmnist(
            args.fmnist_root, split))),
    ):
        t0 = time.perf_counter()
        counts = _cnn_counts(load("train", args.samples), load("test"), args)
        found[name] = {"classes": list(classes), "model": recipe, "counts": counts.tolist()}
        print(f"{name}: held-out accuracy {np.trace(counts) / counts.sum():.3f}, {time.perf_counter() - t0:.0f} s",
              flush=True)
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    digits = load_digits()
    x, y = digits.data / 16.0, digits.target
    counts = np.zeros((10, 10), dtype=np.int64)
    # trained on one tenth (about 180 images), predicting the other nine tenths: enough mistakes to show the
    # confusions (on 4/5 of the data it errs on 56 of 1,797, too few for 90 cells); every image counted 9 times
    for held, fold in StratifiedKFold(10, shuffle=True, random_state=args.seed).split(x, y):
        pred = LogisticRegression(max_iter=2000).fit(x[fold], y[fold]).predict(x[held])
        np.add.at(counts, (y[held], pred), 1)
    found["digits"] = {"classes": [str(i) for i in range(10)], "counts": counts.tolist(),
                       "model": "logistic regression on x / 16 trained on one tenth of the images, predicting the "
                                f"other nine tenths, for each of 10 stratified folds (seed {args.seed})"}
    print(f"digits: held-out accuracy {np.trace(counts) / counts.sum():.3f}", flush=True)
    doc = {"about": "counts[true][predicted] of a quick model's held-out predictions; written by "
                    "benchmarks/model_confusions.py (see its docstring)",
           "pseudo_count": args.pseudo_count, "datasets": found}
    text = json.dumps(doc, indent=1)
    # a row of numbers a line
    text = re.sub(r"\[\s+([-\d.,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    args.out.write_text(text + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
