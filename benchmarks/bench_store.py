"""CurvatureStore at ImageNet size: commit time and resident memory over a long run.

N = 1,281,167 samples (ImageNet-1k train), one commit per epoch, with a float32 history (200 epochs: 1 GB on
disk). The writer must not grow in resident memory as the history grows (target: < 64 MB of growth).

    python benchmarks/bench_store.py                      # 200 epochs, curvature with history
    python benchmarks/bench_store.py --epochs 20 --channels loss margin confidence correct
    python benchmarks/bench_store.py --epochs 3 --no-history --steps --class-evidence 3   # training-time channels
    python benchmarks/bench_store.py --epochs 10 --no-history --steps --evidence-window 0 8  # without / with window

``--steps`` adds the training-time channels (CSL, learning time, forgetting) with ``--class-evidence K`` slots of
class evidence each epoch (the callback's defaults: K = 3), and prints their size on disk. Each epoch then ends as
the callback's does: the epoch's summed rows and class evidence merged with the store's running values
(``merge_step_values``: the whole run's slots, and within an early window ``W`` the window's too; after it the
window's values carried), then committed; the table has the merge's time beside the commit's. ``--evidence-window
W ...`` runs one store per window (0: none), a row each.

Prints one markdown table.
"""

import argparse
import ctypes
import os
import resource
import statistics
import tempfile
import time

import numpy as np

from curvature_callback.core.channels import EARLY_SEEN, merge_step_values, step_channels
from curvature_callback.core.store import CurvatureStore


def rss_mb() -> float:
    """Resident memory, after glibc has given freed heap back (``malloc_trim``): what is held, not what the allocator
    keeps of the merge's freed temporaries (10 MB arrays at this N come from the heap, and stay resident without it)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: RSS as it is
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def epoch_end(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """What an epoch's end hands the merge when every sample was presented once: the ranks' summed rows (``[5, N]``
    float32: seen, a loss, right or wrong, no forgetting, the latest correctness) and the epoch's class evidence (K
    distinct classes of 10 per sample, int64, with float32 masses that sum to at most 1, the most first)."""
    right = (rng.random(n) < 0.9).astype(np.float32)
    sums = np.stack([np.ones(n, np.float32), rng.random(n, dtype=np.float32), right, np.zeros(n, np.float32), right])
    classes = np.argsort(rng.random((n, 10)), axis=1)[:, :k].astype(np.int64)
    mass = np.sort(rng.dirichlet(np.ones(k + 1), n)[:, :k], axis=1)[:, ::-1].astype(np.float32)
    return sums, (classes, np.ascontiguousarray(mass))


def run(args: argparse.Namespace, window: int, path: str) -> dict:
    """One store through ``args.epochs`` epochs; its timings, memory and sizes."""
    rng = np.random.default_rng(0)
    epoch_values = {c: rng.random(args.n) for c in ["curvature", *args.channels]}  # reused: measure the store
    settings = {"h": 1e-3, "n_vectors": 10, "seed": 0, "loss": "cross_entropy", "fast": False, "pass_kind": "curvature",
                "evidence_window": window}
    # two epochs' ends, alternated: measure the store, not the benchmark's arrays
    ends = [epoch_end(args.n, args.class_evidence, rng) for _ in range(2)] if args.steps else None
    start_rss = rss_mb()
    t0 = time.perf_counter()
    steps = step_channels(args.class_evidence, window) if args.steps else ()
    store = CurvatureStore.create(path, args.n, settings=settings, keep_history=not args.no_history,
                                  channels=args.channels, history_capacity=args.capacity or args.epochs,
                                  step_channels=steps)
    create_s = time.perf_counter() - t0
    times, merges, rss = [], {True: [], False: []}, []
    for epoch in range(args.epochs):
        values = indices = None
        if ends is not None:  # the callback's epoch end: merged with the store's running values, then committed
            t0 = time.perf_counter()
            sums, evidence = ends[epoch % 2]
            indices, values = merge_step_values(store, epoch, sums, evidence if args.class_evidence else None)
            merges[epoch < window].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store.commit_epoch(epoch, epoch_values, steps=values, step_indices=indices)
        times.append(time.perf_counter() - t0)
        values = indices = None  # the epoch's merged values go, as the callback's do after its commit
        rss.append(rss_mb())
    store.close()
    t0 = time.perf_counter()
    reader = CurvatureStore.open(path)
    top = np.argsort(-np.asarray(reader.mean))[:100]
    read_s = time.perf_counter() - t0
    ok = reader.count.min() == args.epochs and np.allclose(reader.mean[top], epoch_values["curvature"][top])
    sizes = {f: os.path.getsize(os.path.join(path, f)) / 2**20 for f in os.listdir(path)}
    return {"create": create_s, "times": times, "merges": merges, "rss": rss, "start_rss": start_rss,
            "read": read_s, "ok": ok, "sizes": sizes}


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
    p.add_argument("--evidence-window", type=int, nargs="+", default=[0], help="early class-evidence windows W with "
                   "--steps and K >= 1, one store (a row) each (default 0: none)")
    args = p.parse_args()
    windows = args.evidence_window if args.steps and args.class_evidence else [0]
    if args.steps and args.class_evidence:
        import torch  # noqa: F401 (the merge's; imported first, so that the RSS columns measure the store)

    root = args.dir or tempfile.mkdtemp(prefix="bench_store_")
    print("| N | epochs | channels | history | window | create s | merge s in window (median) | merge s after "
          "(median) | commit s (median) | commit s (max) | RSS after 1st commit MB | RSS growth after MB | peak RSS MB "
          "(ru_maxrss) | disk MB | training-time MB | early evidence MB | open+top-100 s | correct |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    growths, notes = [], []
    for window in windows:
        path = os.path.join(root, f"store_w{window}")
        r = run(args, window, path)
        rss, sizes = r["rss"], r["sizes"]
        growth = max(rss) - rss[0]
        growths.append(growth)
        training = sum(v for f, v in sizes.items() if f.startswith("train_"))
        early = sum(v for f, v in sizes.items() if f.startswith(("train_early_", EARLY_SEEN)))
        inside, after = (f"{statistics.median(m):.3f}" if m else "-" for m in (r["merges"][True], r["merges"][False]))
        print(f"| {args.n:,} | {args.epochs} | {1 + len(args.channels)} | {not args.no_history} | {window} | "
              f"{r['create']:.2f} | {inside} | {after} | {statistics.median(r['times']):.3f} | {max(r['times']):.3f} | "
              f"{rss[0] - r['start_rss']:.0f} | {growth:.1f} | "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} | {sum(sizes.values()):.0f} | "
              f"{training:.0f} | {early:.0f} | {r['read']:.2f} | {r['ok']} |")
        if args.steps:
            evidence = sum(v for f, v in sizes.items() if f.startswith("train_class_"))
            notes.append(f"W = {window}: training-time channels on disk {training:.0f} MB, of which class evidence "
                         f"(K = {args.class_evidence}: {2 * args.class_evidence} channels, a float64 sum and a float32 "
                         f"latest value each) {evidence:.0f} MB" + (f" and the early window's "
                         f"({2 * args.class_evidence + 1} channels) {early:.0f} MB." if window else "."))
        if args.dir is None:
            import shutil

            shutil.rmtree(path)
    if notes:
        print("\n" + "\n".join(notes) + f"\nDense [N, C] float32 evidence for C = 1,000 would be "
              f"{args.n * 1000 * 4 / 2**20:,.0f} MB.")
    growth = max(growths)
    print(f"\nRSS growth over the run: {growth:.1f} MB (target < 64 MB): {'PASS' if growth < 64 else 'FAIL'}")
    if args.dir is None:
        os.rmdir(root)


if __name__ == "__main__":
    main()
