"""CurvatureStore at ImageNet size: commit time and resident memory over a long run.

N = 1,281,167 samples (ImageNet-1k train), one commit per epoch, with a float32 history (200 epochs: 1 GB on
disk). The writer must not grow in resident memory as the history grows (target: < 64 MB of growth).

    python benchmarks/bench_store.py                      # 200 epochs, curvature with history
    python benchmarks/bench_store.py --epochs 20 --channels loss margin confidence correct
    python benchmarks/bench_store.py --epochs 3 --no-history --steps --class-evidence 3   # training-time channels

``--steps`` adds the training-time channels (CSL, learning time, forgetting) with ``--class-evidence K`` slots of
class evidence each epoch (the callback's defaults: K = 3), and prints their size on disk.

Prints one markdown table.
"""

import argparse
import os
import resource
import statistics
import tempfile
import time

import numpy as np

from curvature_callback.core.channels import STEP_CHANNELS, class_evidence_channels
from curvature_callback.core.store import CurvatureStore


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def step_values(n: int, k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Training-time values of an epoch that sees every sample once, reused every epoch (measure the store, not the
    benchmark's arrays): a loss, right or wrong (the latest wrong epoch 0), and K distinct classes of 10 with masses
    that sum to at most 1."""
    right = (rng.random(n) < 0.9).astype(np.float64)
    out = {"train_seen": np.ones(n), "train_loss": rng.random(n), "train_correct": right,
           "train_forgetting": np.zeros(n), "train_last_correct": right, "train_wrong_epoch": right - 1.0}
    classes = np.argsort(rng.random((n, 10)), axis=1)[:, :k].astype(np.float64)
    mass = np.sort(rng.dirichlet(np.ones(k + 1), n)[:, :k], axis=1)[:, ::-1]
    names = class_evidence_channels(k)
    return {**out, **{names[j]: classes[:, j] for j in range(k)}, **{names[k + j]: mass[:, j] for j in range(k)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_281_167)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--channels", nargs="*", default=[])
    p.add_argument("--no-history", action="store_true")
    p.add_argument("--capacity", type=int, default=None, help="history rows made at creation (default: --epochs)")
    p.add_argument("--dir", default=None, help="where to make the store (default: a temporary folder)")
    p.add_argument("--steps", action="store_true", help="also commit the training-time channels every epoch")
    p.add_argument("--class-evidence", type=int, default=3, help="class-evidence slots K with --steps (default 3)")
    args = p.parse_args()

    root = args.dir or tempfile.mkdtemp(prefix="bench_store_")
    path = os.path.join(root, "store")
    rng = np.random.default_rng(0)
    epoch_values = {c: rng.random(args.n) for c in ["curvature", *args.channels]}  # reused: measure the store
    settings = {"h": 1e-3, "n_vectors": 10, "seed": 0, "loss": "cross_entropy", "fast": False, "pass_kind": "curvature"}
    steps = step_values(args.n, args.class_evidence, rng) if args.steps else None
    start_rss = rss_mb()
    t0 = time.perf_counter()
    step_channels = (*STEP_CHANNELS, *class_evidence_channels(args.class_evidence)) if args.steps else ()
    store = CurvatureStore.create(path, args.n, settings=settings, keep_history=not args.no_history,
                                  channels=args.channels, history_capacity=args.capacity or args.epochs,
                                  step_channels=step_channels)
    create_s = time.perf_counter() - t0
    times, rss = [], []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        store.commit_epoch(epoch, epoch_values, steps=steps)
        times.append(time.perf_counter() - t0)
        rss.append(rss_mb())
    store.close()
    t0 = time.perf_counter()
    reader = CurvatureStore.open(path)
    top = np.argsort(-np.asarray(reader.mean))[:100]
    read_s = time.perf_counter() - t0
    ok = reader.count.min() == args.epochs and np.allclose(reader.mean[top], epoch_values["curvature"][top])
    sizes = {f: os.path.getsize(os.path.join(path, f)) / 2**20 for f in os.listdir(path)}
    disk = sum(sizes.values())
    growth = max(rss) - rss[0]
    print("| N | epochs | channels | history | create s | commit s (median) | commit s (max) | RSS after 1st "
          "commit MB | RSS growth after MB | peak RSS MB (ru_maxrss) | disk MB | open+top-100 s | correct |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.n:,} | {args.epochs} | {1 + len(args.channels)} | {not args.no_history} | {create_s:.2f} | "
          f"{statistics.median(times):.3f} | {max(times):.3f} | {rss[0] - start_rss:.0f} | {growth:.1f} | "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} | {disk:.0f} | {read_s:.2f} | {ok} |")
    if args.steps:
        evidence = sum(v for f, v in sizes.items() if f.startswith("train_class_"))
        training = sum(v for f, v in sizes.items() if f.startswith("train_"))
        print(f"\nTraining-time channels on disk: {training:.0f} MB, of which class evidence (K = "
              f"{args.class_evidence}: {2 * args.class_evidence} channels, a float64 sum and a float32 latest value "
              f"each) {evidence:.0f} MB; dense [N, C] float32 evidence for C = 1,000 would be "
              f"{args.n * 1000 * 4 / 2**20:,.0f} MB.")
    print(f"\nRSS growth over the run: {growth:.1f} MB (target < 64 MB): {'PASS' if growth < 64 else 'FAIL'}")
    if args.dir is None:
        import shutil

        shutil.rmtree(root)


if __name__ == "__main__":
    main()
