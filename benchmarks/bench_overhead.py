"""What the callback adds to training, side by side in one run: digits on the CPU, CIFAR-10 ResNet18 on a GPU.

Rows, each a full ``Trainer.fit`` of the same model from the same seed:

- training alone;
- + ``CurvatureCallback`` at the paper setting (n = 10 vectors, every epoch, float32);
- + ``CurvatureCallback`` at cheaper settings (fewer vectors, every k epochs, a rotating fraction; on a GPU
  also ``fast=True``: TF32 and channels_last);
- + a callback running the published scorer's loop (2n mean-reduced passes, per-vector CPU copies) at n = 10;
- the limit: the paper setting's scoring at the input-gradient forward+backward throughput / (n + 1).

For each: wall time, overhead over training alone, and the fidelity of its final scores to the paper
setting's (Spearman) with the mislabel AUROC. One markdown table.

``--capture``: the cost of the training-time signals (each sample's training loss and correctness at every step:
CSL, learning time, forgetting) and of the recommended configuration (those signals, no curvature pass), side by
side in one run: training alone, + the callback recording only training-time signals, interleaved over
``--repeats`` fits (A B A B ..., so a machine that gets busier weighs on both); median seconds per training step,
the ratio, and the mislabel AUROC of the recommended score beside the paper setting's curvature.

    python benchmarks/bench_overhead.py --capture --epochs 10 --repeats 5

``--recommended``: the recommended configuration (conf/callbacks/recommended.yaml: the training-time signals and a
forward-only pass every 4th epoch, what the recommended scores read) beside training alone, interleaved over
``--repeats`` fits: the whole fit's ratio, the callback's own time inside the runs (its batch hooks, passes and
commits) over the training time, and the mislabel AUROC of the recommended score beside every single signal of the
default run's configuration (conf/callbacks/curvature.yaml, one fit) on the same data. ``--setup miniature``: the
CIFAR-10 miniature of benchmarks/miniature_study.py (the first ``--samples`` images, its small ResNet, crop and
flip, SGD), on the CPU.

    python benchmarks/bench_overhead.py --recommended --epochs 40 --repeats 3
    python benchmarks/bench_overhead.py --recommended --setup miniature --samples 5000 --epochs 16 --repeats 2

    python benchmarks/bench_overhead.py                     # digits, 40 epochs, CPU (~10 min on 2 cores)
    python benchmarks/bench_overhead.py --epochs 10         # quicker
    python benchmarks/bench_overhead.py --setup cifar10 --device cuda --samples 10000 --epochs 6   # one GPU

``--setup cifar10``: the offline CIFAR-10 copy (first ``--samples`` images, 10 % symmetric noise), the CIFAR
ResNet18, SGD lr 0.1 cosine, batch 128, random crop and flip, bf16-mixed training on a GPU (32-true on the CPU);
scoring in float32 (TF32 off) unless ``fast``.
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
from torch.utils.data import DataLoader

from curvature_callback import CurvatureCallback
from curvature_callback.analysis import mislabel_metrics
from curvature_callback.experiments.data import DigitsDataModule
from curvature_callback.experiments.data.images import CIFARDataModule
from curvature_callback.experiments.models import SmallCNN, resnet_cifar
from curvature_callback.experiments.module import ClassifierModule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_estimator import precision, published_style  # noqa: E402


def _batches(ds, batch: int, device: torch.device):
    for x, y in DataLoader(ds, batch_size=batch, shuffle=False):
        yield x.to(device), y.to(device)


class PublishedStyle(Callback):
    """The published scorer's loop as an end-of-epoch callback, keeping a running sum per sample (float32:
    the TF32 flags off, as in the callback's paper row)."""

    def __init__(self, n_vectors: int = 10, h: float = 1e-3, batch_size: int = 256):
        self.n_vectors, self.h, self.batch_size = n_vectors, h, batch_size
        self.sum: np.ndarray | None = None
        self.count = 0

    def on_train_epoch_end(self, trainer, pl_module):
        ds = trainer.datamodule.curvature_dataset()
        was = pl_module.training
        scores = []
        with torch.enable_grad(), torch.inference_mode(False), precision(False):
            for x, y in _batches(ds, self.batch_size, pl_module.device):
                scores.append(published_style(pl_module, x.clone(), y.clone(), self.h, self.n_vectors))
        pl_module.train(was)
        s = torch.cat(scores).double().numpy()
        self.sum = s if self.sum is None else self.sum + s
        self.count += 1


def input_grad_seconds(model, ds, device: torch.device, batch: int = 256) -> float:
    """Seconds for one input-gradient forward+backward over the dataset (the unit of the limit), float32."""
    model.eval()
    with precision(False):
        start = time.perf_counter()
        for x, y in _batches(ds, batch, device):
            x = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(x), y.clone(), reduction="none").sum(), x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def make_run(setup: str, samples: int | None):
    """(datamodule, LightningModule) of a setup, fresh."""
    if setup == "miniature":  # the CIFAR-10 miniature's network (benchmarks/miniature_study.py) and recipe
        from miniature_study import build_net

        dm = CIFARDataModule(source="offline", noise=0.1, seed=0, batch_size=128, limit=samples or 5000,
                             validate=False)
        module = ClassifierModule(build_net(3, 16), optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                                  scheduler="cosine")
        return dm, module
    if setup == "digits":
        dm = DigitsDataModule(noise=0.1, seed=0, batch_size=64)
        module = ClassifierModule(SmallCNN(in_channels=1, num_classes=10, width=32), optimizer="adam", lr=2e-3,
                                  scheduler="cosine")
        return dm, module
    dm = CIFARDataModule(source="offline", noise=0.1, seed=0, batch_size=128, limit=samples, validate=False)
    module = ClassifierModule(resnet_cifar(18), optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                              scheduler="cosine")
    return dm, module


class StepClock(Callback):
    """Seconds spent in training batches (batch start to batch end, the callbacks' batch hooks included)."""

    def __init__(self):
        self.seconds, self.steps, self._t = 0.0, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # the last hook of a batch: the clocks's own, after the curvature callback's (callbacks run in order)
        self.seconds += time.perf_counter() - self._t
        self.steps += 1


class TimedCallback(CurvatureCallback):
    """The callback, timing all of its own work: batch hooks (with the folds they trigger) and epoch ends (passes,
    reductions, commits)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.batch_seconds = self.epoch_seconds = 0.0

    def on_train_batch_end(self, *a, **kw):
        t = time.perf_counter()
        super().on_train_batch_end(*a, **kw)
        self.batch_seconds += time.perf_counter() - t

    def on_train_epoch_end(self, trainer, pl_module):
        t = time.perf_counter()
        super().on_train_epoch_end(trainer, pl_module)
        self.epoch_seconds += time.perf_counter() - t


def capture(args) -> None:
    """Training alone vs + training-time capture, interleaved; per-step medians and the whole fit's ratio."""
    from curvature_callback.analysis import suspicion_scores
    from curvature_callback.analysis.recommend import recommended_scores

    root = tempfile.mkdtemp(prefix="bench_capture_")
    fit(args, 1, [], root)  # warm-up
    step = {"alone": [], "capture": []}
    whole = {"alone": [], "capture": []}
    own = {"batch": [], "epoch": []}  # the callback's own time per step, measured inside the capture runs
    auroc = None
    for r in range(args.repeats):
        for name in ("alone", "capture"):
            clock = StepClock()
            callbacks = [clock]
            if name == "capture":  # no curvature pass (start_epoch past the end): training-time signals only
                cb = TimedCallback(directory=f"{root}/c{r}", log_histogram=False, start_epoch=10**9)
                callbacks = [cb, clock]
            # training alone returns the mean loss; with capture the step returns sample_outputs(...) (its argmax
            # and detaches are counted as capture's cost)
            seconds, dm, _ = fit(args, args.epochs, callbacks, root, plain=name == "alone")
            step[name].append(clock.seconds / clock.steps)
            if name == "capture":
                own["batch"].append(cb.batch_seconds / clock.steps)
                own["epoch"].append(cb.epoch_seconds / clock.steps)
            whole[name].append(seconds)
            if name == "capture" and auroc is None:
                store = cb.store
                rec = recommended_scores(suspicion_scores(store))["mislabeled"]
                auroc = mislabel_metrics(rec, np.asarray(dm.flipped))["auroc"]
            print(f"repeat {r} {name}: {seconds:.1f} s, {1e3 * step[name][-1]:.2f} ms/step", flush=True)
    med = {k: float(np.median(v)) for k, v in step.items()}
    wmed = {k: float(np.median(v)) for k, v in whole.items()}
    pairs = [c / a for a, c in zip(step["alone"], step["capture"], strict=True)]
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{args.setup}, {args.epochs} epochs x {args.repeats} interleaved repeats, {where}.\n")
    print("| run | median ms per training step | median fit s | vs training alone (per step; whole fit) |")
    print("|---|---|---|---|")
    print(f"| training alone | {1e3 * med['alone']:.3f} | {wmed['alone']:.1f} | 1 |")
    print(f"| + training-time signals (the recommended configuration: no curvature pass) | "
          f"{1e3 * med['capture']:.3f} | {wmed['capture']:.1f} | {med['capture'] / med['alone']:.4f}; "
          f"{wmed['capture'] / wmed['alone']:.4f} |")
    inside = float(np.median(own["batch"])) + float(np.median(own["epoch"]))
    print(f"| the callback's own time, measured inside the same runs (per step: batch hook "
          f"{1e6 * np.median(own['batch']):.1f} us, epoch end {1e6 * np.median(own['epoch']):.1f} us) | "
          f"{1e3 * inside:.3f} | | {inside / med['alone']:.4f} of a step |")
    print(f"\nPer-repeat step ratios: {', '.join(f'{p:.4f}' for p in pairs)} (median {np.median(pairs):.4f}). "
          f"Mislabel AUROC of the recommended score (first capture run): {auroc:.4f}.")


def conf_callback(name: str) -> dict:
    """The keyword arguments of ``conf/callbacks/<name>.yaml``'s CurvatureCallback (one source of truth)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "callbacks" / f"{name}.yaml")
    kwargs = OmegaConf.to_container(cfg.curvature, resolve=False)
    return {k: v for k, v in kwargs.items() if k not in ("_target_", "directory")}


def recommended(args) -> None:
    """Training alone vs the recommended configuration, interleaved; the default run's signals once, beside."""
    from curvature_callback.analysis import suspicion_scores
    from curvature_callback.analysis.recommend import recommended_scores

    root = tempfile.mkdtemp(prefix="bench_recommended_")
    fit(args, 1, [], root)  # warm-up
    whole = {"alone": [], "recommended": []}
    own, train = [], []  # the callback's own seconds per fit, and the rest of the fit
    aurocs: dict[str, float] = {}
    for r in range(args.repeats):
        for name in ("alone", "recommended"):
            callbacks = []
            if name == "recommended":
                cb = TimedCallback(directory=f"{root}/r{r}", **{**conf_callback("recommended"), "log_histogram": False})
                callbacks = [cb]
            seconds, dm, _ = fit(args, args.epochs, callbacks, root, plain=name == "alone")
            whole[name].append(seconds)
            if name == "recommended":
                own.append(cb.batch_seconds + cb.epoch_seconds)
                train.append(seconds - own[-1])
                if not aurocs:
                    flipped = np.asarray(dm.flipped)
                    signals = suspicion_scores(cb.store)
                    aurocs["recommended"] = mislabel_metrics(recommended_scores(signals)["mislabeled"],
                                                             flipped)["auroc"]
                    aurocs.update({f"{k} (recommended run)": mislabel_metrics(v, flipped)["auroc"]
                                   for k, v in signals.items()})
            print(f"repeat {r} {name}: {seconds:.1f} s", flush=True)
    cb = TimedCallback(directory=f"{root}/default", **{**conf_callback("curvature"), "log_histogram": False})
    seconds, dm, _ = fit(args, args.epochs, [cb], root)
    flipped = np.asarray(dm.flipped)
    default = {k: mislabel_metrics(v, flipped)["auroc"] for k, v in suspicion_scores(cb.store).items()}
    best = max(default, key=default.get)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    wmed = {k: float(np.median(v)) for k, v in whole.items()}
    ratio = float(np.median([o / t for o, t in zip(own, train, strict=True)]))
    print(f"\n{args.setup}, {args.epochs} epochs x {args.repeats} interleaved repeats, {where}.\n")
    print("| run | median fit s | vs training alone | the callback's own time / the rest of the fit |")
    print("|---|---|---|---|")
    print(f"| training alone | {wmed['alone']:.1f} | 1 | |")
    print(f"| + the recommended configuration | {wmed['recommended']:.1f} | "
          f"{wmed['recommended'] / wmed['alone']:.3f} | {ratio:.3f} |")
    print(f"| (the default run's configuration, one fit) | {seconds:.1f} | {seconds / wmed['alone']:.3f} | "
          f"{(cb.batch_seconds + cb.epoch_seconds) / (seconds - cb.batch_seconds - cb.epoch_seconds):.3f} |")
    print("\n| mislabel AUROC | value |\n|---|---|")
    for k, v in aurocs.items():
        print(f"| {k} | {v:.4f} |")
    for k, v in sorted(default.items(), key=lambda kv: -kv[1]):
        print(f"| {k} (default run) | {v:.4f} |")
    print(f"\nRecommended {aurocs['recommended']:.4f} vs the default run's best single signal ({best}) "
          f"{default[best]:.4f}: {aurocs['recommended'] - default[best]:+.4f}.")


class PlainStep(ClassifierModule):
    """The training step of plain training: the mean loss alone (what a module returns without the contract)."""

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")[0].mean()


def fit(args, epochs: int, callbacks: list, root: str, plain: bool = False):
    L.seed_everything(0, verbose=False)
    dm, module = make_run(args.setup, args.samples)
    if plain:
        module.__class__ = PlainStep
    gpu = args.device == "cuda"
    trainer = L.Trainer(max_epochs=epochs, accelerator="gpu" if gpu else "cpu", devices=1, logger=False,
                        precision="bf16-mixed" if gpu else "32-true", enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                        callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(module, dm)
    if gpu:
        torch.cuda.synchronize()
    return time.perf_counter() - start, dm, module


CPU_SETTINGS = {
    "paper": ("paper: n=10, every epoch", dict(n_vectors=10)),
    "n2": ("n=2, every epoch (the default run)", dict(n_vectors=2)),
    "n1": ("n=1, every epoch", dict(n_vectors=1)),
    "n10_every3": ("n=10, every 3 epochs (the old default run)", dict(n_vectors=10, every_n_epochs=3)),
    "n2_every2": ("n=2, every 2 epochs", dict(n_vectors=2, every_n_epochs=2)),
    "n1_half": ("n=1, fraction 1/2", dict(n_vectors=1, fraction=0.5)),
    "n1_every2": ("n=1, every 2 epochs (the recommended configuration with a pass: eval loss and confidence)",
                  dict(n_vectors=1, every_n_epochs=2)),
}
FAST_SETTINGS = {
    "paper_fast": ("n=10, every epoch, fast=True", dict(n_vectors=10, fast=True)),
    "n2_fast": ("n=2, every epoch, fast=True", dict(n_vectors=2, fast=True)),
    "n1_fast": ("n=1, every epoch, fast=True", dict(n_vectors=1, fast=True)),
    "n2_every2_fast": ("n=2, every 2 epochs, fast=True", dict(n_vectors=2, every_n_epochs=2, fast=True)),
}
DEFAULT_ROWS = {"cpu": "paper,n2,n1,n10_every3,n2_every2,n1_half,published",
                "cuda": "paper,paper_fast,n2_fast,n1_fast,n2,published"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", choices=["digits", "cifar10", "miniature"], default="digits")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--samples", type=int, default=None, help="cifar10: the first this many training images")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--rows", default=None,
                   help=f"comma-separated settings, the first is the reference; choose from "
                        f"{', '.join([*CPU_SETTINGS, *FAST_SETTINGS, 'published'])} (default: {DEFAULT_ROWS})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--capture", action="store_true",
                   help="measure the training-time signals' cost per step instead (interleaved with training alone)")
    p.add_argument("--repeats", type=int, default=5, help="--capture: interleaved fits of each kind")
    p.add_argument("--recommended", action="store_true",
                   help="measure the recommended configuration's whole cost instead (interleaved with training alone)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch.cuda.is_available() is False")
    if args.recommended:
        recommended(args)
        return
    if args.capture:
        capture(args)
        return
    names = (args.rows or DEFAULT_ROWS[args.device]).split(",")
    known = {**CPU_SETTINGS, **FAST_SETTINGS}
    unknown = [n for n in names if n not in known and n != "published"]
    if unknown:
        p.error(f"unknown --rows {unknown}; choose from {', '.join([*known, 'published'])}")
    root = tempfile.mkdtemp(prefix="bench_overhead_")
    device = torch.device(args.device)
    fit(args, 1, [], root)  # warm-up: imports, data decode, cuDNN autotuning, first-call costs
    base, dm, module = fit(args, args.epochs, [], root)
    unit = input_grad_seconds(module.net.to(device), dm.curvature_dataset(), device)
    flipped = np.asarray(dm.flipped)
    rows, paper = [], None
    for i, name in enumerate(names):
        if name == "published":
            pub = PublishedStyle(n_vectors=10)
            seconds, _, _ = fit(args, args.epochs, [pub], root)
            mean = pub.sum / pub.count
            label = "published-style loop, n=10, every epoch"
        else:
            label, kw = known[name]
            cb = CurvatureCallback(directory=f"{root}/s{i}", log_histogram=False, **kw)
            seconds, _, _ = fit(args, args.epochs, [cb], root)
            mean = np.array(cb.store.mean)
        paper = mean if paper is None else paper
        rows.append((label, seconds, spearman(mean, paper), mislabel_metrics(mean, flipped)["auroc"]))
        print(f"{label}: {seconds:.1f} s", flush=True)
    base = min(base, fit(args, args.epochs, [], root)[0])  # again at the end: the machine may have been busier
    limit = base + args.epochs * 11 * unit
    what = ("Digits (1797 images, 10 % symmetric noise), SmallCNN" if args.setup == "digits" else
            f"CIFAR-10 offline (first {len(flipped)} images, 10 % symmetric noise), ResNet18, bf16-mixed training"
            if args.device == "cuda" else f"CIFAR-10 offline (first {len(flipped)} images), ResNet18, float32")
    where = (torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)")
    print(f"\n{what}, {args.epochs} epochs, {where}. Training alone: {base:.1f} s. "
          f"Reference for Spearman: {rows[0][0]}.\n")
    print("| setting | wall s | overhead vs training | Spearman vs reference | mislabel AUROC |")
    print("|---|---|---|---|---|")
    print(f"| training alone | {base:.1f} | 0 | | |")
    for label, seconds, rho, auroc in rows:
        print(f"| + {label} | {seconds:.1f} | {(seconds - base) / base:.2f}x | {rho:.4f} | {auroc:.4f} |")
    print(f"| limit: paper setting at (n+1) x input-gradient passes (float32) | {limit:.1f} | "
          f"{(limit - base) / base:.2f}x | | |")


if __name__ == "__main__":
    main()
