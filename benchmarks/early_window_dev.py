"""How the early window's rule, window and confidence threshold were chosen (docs/DESIGN.md §8), on development runs
that are not the reported grid: the miniature study's seed-2 settings and clean (0 %) runs, each training
presentation's softmax recorded (``miniature_study.py --family memorize --no-cv --record-probs --seeds 2 --tag
_mem_dev``). From each such run this keeps what the table needs (``--reduce``: the signals, the labels, the run's
class evidence and, per window W, the first W epochs' top-3 mean probabilities, as the store's evidence window would
hold them) and prints, per run, the estimate and F1 of ``estimate_label_issues`` before the early window (the mixture,
else the run's vote), with it at W = 8, 4 and 12, and at W = 8 without the confidence threshold:

    python benchmarks/early_window_dev.py --reduce /tmp/dev/*_mem_dev.npz     # once, from the full runs
    python benchmarks/early_window_dev.py                                       # the table, from benchmarks/data/dev

The top-3 here is exact (the sum's three largest), where the store's slots evict a class that leaves them (a lower
bound): on a 300-image run the two answers differed in one sample of 28.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DEV = Path(__file__).resolve().parent / "data" / "dev"
WINDOWS = (8, 4, 12)
KEEP = ("train_loss", "loss", "given", "original", "evidence_classes", "evidence_mass", "config")


def top_k_mean(epoch_probs: np.ndarray, window: int, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The first ``window`` epochs' mean probability per class, its ``k`` largest per sample (classes, means)."""
    mean = np.nan_to_num(epoch_probs[:window].astype(np.float64)).sum(0) / window
    classes = np.argsort(-mean, axis=1, kind="stable")[:, :k]
    return classes, np.take_along_axis(mean, classes, 1)


def reduce(paths: list[Path], out: Path) -> None:
    """Keep of each full development run the arrays the table reads."""
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        with np.load(path, allow_pickle=False) as f:
            kept = {k: f[k] for k in KEEP if k in f.files}
            for w in WINDOWS:
                classes, mass = top_k_mean(f["epoch_probs"], w)
                kept[f"early{w}_classes"], kept[f"early{w}_mass"] = classes.astype(np.int8), mass.astype(np.float32)
        np.savez_compressed(out / path.name, **kept)
        print(f"{out / path.name}")


def f1(flagged: np.ndarray, wrong: np.ndarray) -> float:
    hit = (flagged & wrong).sum()
    return 2 * hit / (flagged.sum() + wrong.sum()) if flagged.sum() + wrong.sum() else float("nan")


def answer(run: tuple, early: tuple | None = None) -> str:
    """``estimated, F1`` of ``estimate_label_issues`` on a run's ``(scores, given, evidence, wrong)``."""
    from curvature_callback.analysis.label_issues import estimate_label_issues

    scores, given, evidence, wrong = run
    found = estimate_label_issues(scores, given, evidence=evidence, early_evidence=early)
    flagged = np.zeros(len(given), dtype=bool)
    flagged[found.flagged] = True
    return f"{found.estimated}, {f1(flagged, wrong):.2f}"


def table(folder: Path) -> str:
    import curvature_callback.analysis.label_issues as li

    rows = ["| development run | wrong labels | early confidence (W = 8) | before | W = 8 | W = 4 | W = 12 | W = 8, no "
            "threshold |", "|---|---|---|---|---|---|---|---|"]
    threshold = li.MIN_EARLY_CONFIDENCE
    for path in sorted(folder.glob("*_mem_dev.npz")):
        with np.load(path, allow_pickle=False) as f:
            d = {k: f[k] for k in f.files}
        given, original = d["given"].astype(np.int64), d["original"].astype(np.int64)
        wrong = given != original
        scores = {k: d[k].astype(np.float64) for k in ("train_loss", "loss")}
        evidence = (d["evidence_classes"].astype(np.int64), d["evidence_mass"].astype(np.float64))

        run = (scores, given, evidence, wrong)
        early = {w: (d[f"early{w}_classes"].astype(np.int64), d[f"early{w}_mass"].astype(np.float64)) for w in WINDOWS}
        cells = [answer(run), *(answer(run, early[w]) for w in WINDOWS)]
        li.MIN_EARLY_CONFIDENCE = 0.0
        try:
            cells.append(answer(run, early[8]))
        finally:
            li.MIN_EARLY_CONFIDENCE = threshold
        config = json.loads(str(d["config"]))
        name = (f"{config['dataset']}, {100 * config['noise']:g} % {config.get('noise_kind', 'symmetric')}"
                if config["noise"] else f"{config['dataset']}, clean")
        rows.append(f"| {name} | {int(wrong.sum())} | {li.early_confidence(given, *early[8]):.2f} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduce", type=Path, nargs="+", default=None, help="full development runs to keep")
    parser.add_argument("--dev", type=Path, default=DEV, help="the reduced runs' folder")
    args = parser.parse_args(argv)
    if args.reduce:
        reduce(args.reduce, args.dev)
        return 0
    print(table(args.dev))
    return 0


if __name__ == "__main__":
    sys.exit(main())
