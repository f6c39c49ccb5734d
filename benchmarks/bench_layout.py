"""Does channels_last pay for the curvature pass? NCHW against channels_last inputs, per model, side by side.

``fast=True`` feeds 4-D image batches in channels_last on CUDA (``curvature_callback.core.estimator``); on the CPU the
inputs keep their layout. This times :func:`curvature_callback.input_curvature` at n = 10 with the layout forced
each way (the methods alternate within each round; medians over rounds) and checks that the scores agree.

    python benchmarks/bench_layout.py                  # CPU
    python benchmarks/bench_layout.py --device cuda    # GPU (with fast=True: TF32 as well)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _models import CifarResNet18, SmallCNN

from curvature_callback.core.estimator import input_curvature
from curvature_callback.experiments.models import SmallCNN as DigitsCNN


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n-vectors", type=int, default=10)
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    torch.manual_seed(0)
    cases = [
        ("SmallCNN (3x32x32)", SmallCNN(), (128 if gpu else 64, 3, 32, 32)),
        ("digits SmallCNN (1x8x8)", DigitsCNN(in_channels=1, num_classes=10, width=32), (256, 1, 8, 8)),
        ("CIFAR ResNet18", CifarResNet18(), (128 if gpu else 16, 3, 32, 32)),
    ]
    print(f"input_curvature, n={args.n_vectors}, fast=True, on {device}; median of {args.repeats} rounds\n")
    print("| model | batch | NCHW ms | channels_last ms | speed-up | median relative difference of the scores |")
    print("|---|--:|--:|--:|--:|--:|")
    for name, model, shape in cases:
        model = model.to(device).eval()
        x = torch.randn(shape, device=device)
        y = torch.randint(0, 10, (shape[0],), device=device)

        def run(channels_last: bool, model=model, x=x, y=y) -> torch.Tensor:
            out = input_curvature(model, x, y, n_vectors=args.n_vectors, fast=True, channels_last=channels_last)
            if gpu:
                torch.cuda.synchronize()
            return out

        a, b = run(False), run(True)  # also the warm-up
        rel = float(((a - b).abs() / a.abs()).median())
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for cl in (False, True):
                start = time.perf_counter()
                run(cl)
                seconds[cl].append(time.perf_counter() - start)
        speed = statistics.median(s / t for s, t in zip(seconds[False], seconds[True], strict=True))
        print(f"| {name} | {shape[0]} | {1000 * statistics.median(seconds[False]):.0f} | "
              f"{1000 * statistics.median(seconds[True]):.0f} | {speed:.2f}x | {rel:.1e} |", flush=True)


if __name__ == "__main__":
    main()
