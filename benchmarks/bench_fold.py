"""The training-time recorder alone: what a training step and a fold cost, without and with class evidence.

A step hands :class:`~curvature_callback.core.steps.StepRecorder` references to its tensors (a list append); every
256 steps (or 64 MB of kept logits) the fold sums them per sample and, with class evidence, takes each presentation's
softmax and top K and merges it into the sample's K slots. Measured on the chosen device with random logits, every
sample presented once per epoch (one merge round), as a plain sampler does.

    python benchmarks/bench_fold.py                          # CPU, N = 50,000, batch 256, C = 10 and 1,000
    python benchmarks/bench_fold.py --device cuda --n 1281167

Prints one markdown table: per step (the add), per fold (256 steps or fewer) and per epoch, medians of --repeats.
"""

import argparse
import statistics
import time

import torch

from curvature_callback.core.steps import StepRecorder


def epoch(n: int, classes: int, k: int, device: torch.device, steps: list) -> tuple[float, float]:
    """One epoch through a fresh recorder: the median seconds of an add (a fold inside one is an outlier the median
    drops) and the seconds of the whole epoch (adds and folds)."""
    r = StepRecorder(n, device, classes=k)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    adds = []
    t0 = time.perf_counter()
    for index, loss, correct, target, logits in steps:
        t = time.perf_counter()
        r.add(index, loss, correct, target, logits)
        adds.append(time.perf_counter() - t)
    r.epoch_sums()
    if k:
        r.epoch_evidence()
    sync()
    return statistics.median(adds), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--classes", type=int, nargs="+", default=[10, 1000])
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: a shared machine's threads contend "
                   "and time noise, not work)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"N = {args.n:,}, batch {args.batch}, {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; fold every {StepRecorder.FLUSH_STEPS} steps or "
          f"{StepRecorder.FLUSH_BYTES >> 20} MB of logits\n")
    print("| C | K | per step (add) us | per epoch ms | folds per epoch | per fold ms | epoch vs K = 0 |")
    print("|---|---|---|---|---|---|---|")
    for c in args.classes:
        order = torch.randperm(args.n, device=device)
        steps = [(order[i:i + args.batch], torch.rand(len(order[i:i + args.batch]), device=device),
                  torch.rand(len(order[i:i + args.batch]), device=device) > 0.5,
                  torch.randint(0, c, (len(order[i:i + args.batch]),), device=device),
                  torch.randn(len(order[i:i + args.batch]), c, device=device))
                 for i in range(0, args.n, args.batch)]
        base = None
        for k in (0, args.k):
            per_fold = StepRecorder.FLUSH_STEPS if not k else max(1, min(
                StepRecorder.FLUSH_STEPS, -(-StepRecorder.FLUSH_BYTES // (args.batch * c * 4))))
            folds = -(-len(steps) // per_fold)
            epoch(args.n, c, k, device, steps[:8])  # warm-up
            runs = [epoch(args.n, c, k, device, steps) for _ in range(args.repeats)]
            add = statistics.median(r[0] for r in runs)
            whole = statistics.median(r[1] for r in runs)
            base = whole if k == 0 else base
            print(f"| {c:,} | {k} | {1e6 * add:.1f} | {1e3 * whole:.1f} | {folds} | "
                  f"{1e3 * (whole - add * len(steps)) / folds:.1f} | {whole / base:.2f}x |")


if __name__ == "__main__":
    main()
