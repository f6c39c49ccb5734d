"""Where the scoring pass's time goes: waiting for batches (load) against scoring them (compute).

The callback feeds its pass through :class:`curvature_callback.core.feeding.BatchFeeder`: one DataLoader whose
``num_workers`` workers start at the first pass and persist (pinned memory on CUDA), or, when the scored inputs
fit (``cache="auto"``: CIFAR), tensors kept on the device after the first pass. This script runs the same feeder and
:func:`curvature_callback.core.estimator.curvature_details` on two sources of CIFAR-10 images (offline copy, standard
order) and times, per pass, the seconds spent in ``next(batches)`` (decode, normalize, collate, worker start-up,
host-to-device copy) and in the estimator:

* ``array``: the uint8 array in memory, normalized per sample (``ImageArrayDataset``: CIFAR datamodules);
* ``jpeg``: the JPEG files through torchvision's ``ImageFolder`` with ToTensor+Normalize (an ImageNet-style
  folder, at CIFAR's size: per-image decoding cost without ImageNet's compute).

Each setting runs two passes: the first pays worker start-up (and fills the cache); the table shows both.

Run::

    python benchmarks/bench_loading.py                       # CPU: small CNN, 2048 samples, n_vectors 10
    python benchmarks/bench_loading.py --model resnet18 --n 256 --n-vectors 1
    python benchmarks/bench_loading.py --device cuda --model resnet18 --n 8192   # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from curvature_callback.core.estimator import curvature_details
from curvature_callback.core.feeding import BatchFeeder
from curvature_callback.experiments.data import (
    CIFAR10_TARBALL,
    ImageArrayDataset,
    channel_stats,
    cifar10_offline_arrays,
    cifar10_offline_root,
    data_cache_dir,
    unpack,
)
from curvature_callback.experiments.models import SmallCNN, resnet_cifar
from curvature_callback.integration.callback import default_batch_to_inputs


def datasets(n: int) -> dict[str, torch.utils.data.Dataset]:
    images, labels = cifar10_offline_arrays(limit=n)
    mean, std = channel_stats(images)
    array = ImageArrayDataset(images, labels, mean, std)
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    root = cifar10_offline_root()
    folder = unpack(root / CIFAR10_TARBALL, data_cache_dir(None)) / "train"
    jpeg = ImageFolder(os.fspath(folder), transform=T.Compose([T.ToTensor(), T.Normalize(mean.tolist(),
                                                                                         std.tolist())]))
    jpeg.samples = jpeg.samples[:: max(1, len(jpeg.samples) // n)][:n]  # n files across the classes
    return {"array": array, "jpeg": jpeg}


def one_pass(feeder: BatchFeeder, model: torch.nn.Module, n: int, n_vectors: int, device: torch.device) -> tuple:
    load = compute = 0.0
    batches = feeder.batches(np.arange(n), device)
    while True:
        start = time.perf_counter()
        item = next(batches, None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        got = time.perf_counter()
        load += got - start
        if item is None:
            return load, compute
        idx, x, y = item
        curvature_details(model, x, y, n_vectors=n_vectors, indices=idx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        compute += time.perf_counter() - got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="samples scored per pass")
    parser.add_argument("--n-vectors", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model", choices=["small_cnn", "resnet18"], default="small_cnn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", default="0,2", help="comma-separated num_workers to try")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the main process")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = (SmallCNN(3, 10, width=32) if args.model == "small_cnn" else resnet_cifar(18)).to(device).eval()
    sources = datasets(args.n)
    print(f"# scoring pass on {device} ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores): "
          f"{args.model}, {args.n} CIFAR-10 samples, batch {args.batch_size}, n_vectors {args.n_vectors}")
    print("| source | feeding | pass | load s | compute s | load share | samples/s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    settings = [(w, False) for w in map(int, args.workers.split(","))] + [(0, True)]
    for name, dataset in sources.items():
        for workers, cache in settings:
            feeder = BatchFeeder(dataset, default_batch_to_inputs, args.batch_size, workers, cache)
            label = "device cache" if cache else f"{workers} workers" + (", pinned" if device.type == "cuda" else "")
            for p in (1, 2):
                load, compute = one_pass(feeder, model, args.n, args.n_vectors, device)
                total = load + compute
                print(f"| {name} | {label} | {p} | {load:.2f} | {compute:.2f} | {100 * load / total:.0f} % | "
                      f"{args.n / total:.0f} |", flush=True)
            feeder.close()


if __name__ == "__main__":
    main()
