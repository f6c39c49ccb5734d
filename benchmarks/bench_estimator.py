"""Throughput of ``input_curvature`` against the published scorer's loop and against the hardware limit.

Three ways to score a batch of ``B`` samples with ``n`` Rademacher vectors, timed side by side:

* published: the loop of Garg, Ravikumar & Roy's scorer. Per vector: a forward at ``x + h*(v + 1e-7)`` and one
  at ``x``, one backward through the difference of the two mean-reduced losses, the squared gradient norm per
  sample copied to the CPU. ``2n`` forward+backward passes per sample. (Their per-sample loop that maps the
  0s of ``randint`` to -1 is vectorized here, which only makes this baseline faster.)
* ours: :func:`curvature_callback.input_curvature`, ``n + 1`` passes per sample, the ``n`` perturbed copies
  stacked in chunks of ``--chunk-size`` rows.
* limit: what ``n + 1`` input-gradient passes cost at batch ``B`` (forward, per-sample loss summed,
  ``autograd.grad`` w.r.t. the input), i.e. the input-gradient throughput divided by ``n + 1``.

Every method of a row runs in the same arithmetic (IEEE float32, or TF32 with ``fast``), with the model in
``eval()`` mode. The methods take turns within each round, so that a noisy neighbour slows all three alike;
the table reports median throughputs, the ratios as medians of the per-round ratios, and how many CPU cores
other processes used while timing (``--max-others`` redoes disturbed rounds).

On Linux, CPU rows also depend on glibc's allocator: a stacked pass whose buffers cross its (adaptive) mmap
and trim thresholds gets fresh, page-faulted memory on every call. ``MALLOC_MMAP_THRESHOLD_=2000000000
MALLOC_TRIM_THRESHOLD_=4000000000`` in the environment takes that out (docs/PERFORMANCE.md).

Run::

    python benchmarks/bench_estimator.py                # CPU small CNN (+ GPU ResNet18 when CUDA is there)
    python benchmarks/bench_estimator.py --sweep-chunk  # plus the chunk-size table of the CPU small CNN
    python benchmarks/bench_estimator.py --max-others 0.15  # on a shared machine: time quiet rounds only
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from _models import CifarResNet18, SmallCNN
from torch import Tensor, nn

from curvature_callback.core import estimator
from curvature_callback.core.estimator import default_chunk_size, input_curvature

CPU_TARGET = 1.8  # ours / published, small CNN on CPU, B=64, n=10
GPU_TARGET = 0.95  # ours / limit, ResNet18 on GPU, B=128, n=10, float32
H = 1e-3  # the paper's finite-difference step
SWEEP = (32, 64, 128, 256, 640)  # chunk sizes of --sweep-chunk (640 = all B*n rows of B=64, n=10 at once)


# ---------------------------------------------------------------------------------------------- methods
def published_style(model: nn.Module, x: Tensor, y: Tensor, h: float, n: int) -> Tensor:
    """The published scorer's loop (norm squared, per sample), as it runs: mean-reduced losses, 2n passes."""
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    scores = torch.zeros(len(x))
    for _ in range(n):
        v = torch.randint_like(x, high=2) * 2 - 1  # Rademacher
        v = h * (v + 1e-7)
        loss_pos = F.cross_entropy(model(x + v), y)
        loss_orig = F.cross_entropy(model(x), y)
        (grad_diff,) = torch.autograd.grad(loss_pos - loss_orig, x)
        scores += grad_diff.flatten(1).pow(2).sum(1).cpu()
    return scores / n


def input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """One forward+backward for the input gradient of the per-sample losses: the unit the limit counts."""
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="none").sum(), x)
    return g


# ---------------------------------------------------------------------------------------------- timing
def precision(fast: bool) -> contextlib.AbstractContextManager[None]:
    """All methods of a row in one arithmetic: IEEE float32, or TF32 matmuls and convolutions (``fast``), set
    the way the estimator sets them inside its pass."""
    return estimator._tf32(fast)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _busy_cpu_seconds() -> float:
    """CPU seconds used by everything on the machine (busy and stolen time in /proc/stat); NaN off Linux."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return float("nan")
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Timing:
    seconds: dict[str, list[float]]  #: per function, one value per kept round
    others: float  #: mean CPU cores used by other processes during the kept rounds


@dataclass
class Quiet:
    """For shared machines: time only when other processes use at most ``max_others`` CPU cores."""

    max_others: float
    max_wait: float  #: seconds per table, spent waiting and redoing rounds, before giving up

    def wait(self, deadline: float) -> None:
        """Sleep until a second goes by in which other processes used at most ``max_others`` cores."""
        while time.monotonic() < deadline:
            busy, wall = _busy_cpu_seconds(), time.perf_counter()
            time.sleep(1.0)
            others = (_busy_cpu_seconds() - busy) / (time.perf_counter() - wall)
            if not others > self.max_others:  # NaN (no /proc/stat) counts as quiet
                return


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int, *,
                     clock: Callable[[], float] = time.perf_counter, quiet: Quiet | None = None) -> Timing:
    """Seconds per call of each function over ``repeats`` rounds; each round calls every function once.

    ``clock`` is wall time by default; ``time.process_time`` (this process's CPU seconds) is steadier on a
    shared machine when torch runs one thread. With ``quiet``, each round starts in a quiet second and a round
    during which other processes used more than ``quiet.max_others`` cores is done again, for up to
    ``quiet.max_wait`` seconds; then the least disturbed rounds are kept.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    deadline = time.monotonic() + (quiet.max_wait if quiet else 0.0)
    rounds: list[tuple[float, dict[str, float]]] = []
    while True:
        if quiet:
            quiet.wait(deadline)
        busy, own, wall = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
        seconds = {}
        for name, fn in fns.items():
            _sync(device)
            start = clock()
            fn()
            _sync(device)
            seconds[name] = clock() - start
        others = (_busy_cpu_seconds() - busy - (time.process_time() - own)) / (time.perf_counter() - wall)
        rounds.append((others if math.isnan(others) else max(others, 0.0), seconds))
        clean = sum(not o > quiet.max_others for o, _ in rounds) if quiet else len(rounds)
        if clean >= repeats or (len(rounds) >= repeats and time.monotonic() >= deadline):
            break
    rounds = sorted(rounds, key=lambda r: r[0])[:repeats]  # the least disturbed (all of them without quiet)
    seconds = {name: [s[name] for _, s in rounds] for name in fns}
    return Timing(seconds, statistics.fmean(o for o, _ in rounds))


@dataclass
class Row:
    model: str
    device: str
    arithmetic: str
    batch: int
    n: int
    chunk: int
    published: float  #: samples/s, median over rounds
    ours: float
    limit: float
    ours_vs_published: float  #: median of the per-round ratios
    ours_vs_limit: float
    others: float  #: CPU cores used by other processes while timing


def _batch(batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    return x, y


def _paired(seconds: dict[str, list[float]], slower: str, faster: str) -> float:
    """Median over rounds of how many times faster ``faster`` ran than ``slower`` in the same round."""
    return statistics.median(a / b for a, b in zip(seconds[slower], seconds[faster], strict=True))


def measure(name: str, model: nn.Module, device: torch.device, *, batch: int, n: int, chunk: int | None,
            fast: bool, warmup: int, repeats: int, clock: Callable[[], float] = time.perf_counter,
            quiet: Quiet | None = None, channels_last: bool = False) -> Row:
    """One row. ``channels_last`` (with ``fast``): all three methods get channels_last inputs."""
    model = model.to(device).eval()
    x, y = _batch(batch, device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    chunk = default_chunk_size(device) if chunk is None else chunk

    def limit() -> None:
        for _ in range(n + 1):
            input_gradient(model, x, y)

    fns = {
        "published": lambda: published_style(model, x, y, H, n),
        "ours": lambda: input_curvature(model, x, y, h=H, n_vectors=n, chunk_size=chunk, fast=fast,
                                        channels_last=fast and channels_last),
        "limit": limit,
    }
    fast_default = estimator.default_channels_last(device) == channels_last  # what fast=True does on this device
    with precision(fast):
        timing = time_interleaved(fns, device, warmup, repeats, clock=clock, quiet=quiet)
    sec = timing.seconds
    speed = {k: batch / statistics.median(t) for k, t in sec.items()}
    arithmetic = "float32" if not fast or device.type != "cuda" else "tf32"
    if fast and channels_last:
        arithmetic += " + channels_last"
    if fast and fast_default and device.type == "cuda":
        arithmetic += " (fast=True)"
    return Row(name, device.type, arithmetic, batch, n, chunk,
               speed["published"], speed["ours"], speed["limit"], _paired(sec, "published", "ours"),
               _paired(sec, "limit", "ours"), timing.others)


def training_speed(model: nn.Module, device: torch.device, batch: int, warmup: int, repeats: int) -> float:
    """Samples/s of a bf16-mixed SGD training step (forward, backward, step) at ``batch``: what a GPU run of
    ``experiment=cifar10_*`` does per batch, the unit of "overhead vs training"."""
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = _batch(batch, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    timing = time_interleaved({"train": step}, device, warmup, repeats)
    return batch / statistics.median(timing.seconds["train"])


def sweep_chunks(sizes: tuple[int, ...], *, batch: int, n: int, warmup: int, repeats: int,
                 clock: Callable[[], float] = time.perf_counter, quiet: Quiet | None = None) -> None:
    """Print how the chunk size changes the speed of ``input_curvature`` on the CPU small CNN."""
    device, default = torch.device("cpu"), default_chunk_size(torch.device("cpu"))
    sizes = tuple(sorted({*sizes, default}))
    model = SmallCNN().eval()
    x, y = _batch(batch, device)
    fns = {c: (lambda c=c: input_curvature(model, x, y, h=H, n_vectors=n, chunk_size=c)) for c in sizes}
    timing = time_interleaved(fns, device, warmup, repeats, clock=clock, quiet=quiet)
    print(f"input_curvature on the CPU small CNN, B={batch}, n={n}, by chunk size (rows per stacked pass); "
          f"other processes used {timing.others:.2f} cores while timing:")
    print()
    print("| chunk | ms per batch | samples/s | speed vs default |")
    print("|--:|--:|--:|--:|")
    for c in sizes:
        median = statistics.median(timing.seconds[c])
        mark = f"{c} (default)" if c == default else str(c)
        speed = _paired(timing.seconds, default, c)
        print(f"| {mark} | {1000 * median:.0f} | {batch / median:,.1f} | {speed:.2f} |")


# ---------------------------------------------------------------------------------------------- report
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    return (f"torch {torch.__version__}; CPU: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
            f"threads; GPU: {gpu}")


def print_table(rows: list[Row]) -> None:
    print("| model | device | arithmetic | B | n | chunk | published (samples/s) | ours (samples/s) "
          "| limit (samples/s) | ours/published | ours/limit | others (cores) |")
    print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r.model} | {r.device} | {r.arithmetic} | {r.batch} | {r.n} | {r.chunk} "
              f"| {r.published:,.1f} | {r.ours:,.1f} | {r.limit:,.1f} "
              f"| {r.ours_vs_published:.2f}x | {r.ours_vs_limit:.2f} | {r.others:.2f} |")


def print_verdicts(rows: list[Row]) -> None:
    cpu = [r for r in rows if r.device == "cpu" and r.model == "SmallCNN" and r.arithmetic == "float32"]
    gpu = [r for r in rows
           if r.device == "cuda" and r.model == "CifarResNet18" and r.arithmetic == "float32" and r.n == 10]
    for r in cpu:
        ratio = r.ours_vs_published
        print(f"CPU target (SmallCNN, ours/published >= {CPU_TARGET}x, at B={r.batch}, n={r.n}): "
              f"{ratio:.2f}x {'PASS' if ratio >= CPU_TARGET else 'FAIL'}")
    for r in gpu:
        ratio = r.ours_vs_limit
        print(f"GPU target (CifarResNet18 float32, ours/limit >= {GPU_TARGET}, at B={r.batch}, n={r.n}): "
              f"{ratio:.2f} {'PASS' if ratio >= GPU_TARGET else 'FAIL'}")
    if not cpu:
        print("CPU target: not measured (no CPU row)")
    if not gpu:
        print("GPU target: not measured (no CUDA device, or --device cpu)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the CPU row, and the GPU rows when CUDA is available")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 64 on CPU, 128 on GPU)")
    parser.add_argument("--n-vectors", type=int, default=10, help="Rademacher vectors per sample")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (medians reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="rows per stacked pass of input_curvature (default: default_chunk_size(device))")
    parser.add_argument("--sweep-chunk", action="store_true",
                        help="also time chunk sizes on the CPU small CNN")
    parser.add_argument("--max-others", type=float, default=None,
                        help="shared machines: start each round in a second in which other processes used at "
                             "most this many CPU cores, and redo a round during which they used more")
    parser.add_argument("--max-wait", type=float, default=600.0,
                        help="with --max-others: seconds per table to wait and redo rounds before giving up")
    parser.add_argument("--channels-last", action="store_true",
                        help="also a CPU row with channels_last inputs (fast=True's GPU layout), to see if it pays")
    parser.add_argument("--gpu-extra-n", type=int, nargs="*", default=[1, 2],
                        help="GPU: also time these n_vectors (float32 and fast=True)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time, steadier than wall time on a shared machine with "
                             "--threads 1 (CPU rows only)")
    args = parser.parse_args()
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu times CPU work only: add --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    quiet = Quiet(args.max_others, args.max_wait) if args.max_others is not None else None
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    torch.manual_seed(0)

    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"],
               "cuda": ["cuda"]}[args.device]
    print(machine())
    print(f"clock: {'process CPU time' if args.clock == 'cpu' else 'wall time'}; rounds timed "
          + (f"when other processes used <= {args.max_others} cores" if quiet else "whatever else runs"))
    print()
    common = {"n": args.n_vectors, "chunk": args.chunk_size, "warmup": args.warmup, "repeats": args.repeats,
              "clock": clock, "quiet": quiet}
    rows = []
    if "cpu" in devices:
        rows.append(measure("SmallCNN", SmallCNN(), torch.device("cpu"), batch=args.batch or 64, fast=False,
                            **common))
        if args.channels_last:
            rows.append(measure("SmallCNN", SmallCNN(), torch.device("cpu"), batch=args.batch or 64, fast=True,
                                channels_last=True, **common))
    train = None
    if "cuda" in devices:
        cuda = torch.device("cuda")
        for n in sorted({args.n_vectors, *args.gpu_extra_n}, reverse=True):
            for fast, cl in ((False, False), (True, False), (True, True)):
                if n != args.n_vectors and not (fast and cl) and fast:
                    continue  # fewer vectors: float32 and fast=True only
                rows.append(measure("CifarResNet18", CifarResNet18(), cuda, batch=args.batch or 128, fast=fast,
                                    channels_last=cl, **{**common, "n": n}))
        train = training_speed(CifarResNet18(), cuda, args.batch or 128, args.warmup, args.repeats)
    print_table(rows)
    print()
    if train is not None:
        print(f"bf16-mixed training step of CifarResNet18 (SGD, B={args.batch or 128}): {train:,.0f} samples/s. "
              "Scoring pass time / training epoch time, per row (ours):")
        for r in rows:
            if r.device == "cuda":
                print(f"- {r.arithmetic}, n={r.n}: {train / r.ours:.2f}x")
        print()
    print_verdicts(rows)
    if args.sweep_chunk:
        print()
        sweep_chunks(SWEEP, batch=args.batch or 64, n=args.n_vectors, warmup=args.warmup,
                     repeats=args.repeats, clock=clock, quiet=quiet)


if __name__ == "__main__":
    main()
