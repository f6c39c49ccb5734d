"""Which fixed rule should the recommended score use? Every candidate rule against the best single signal, on every
saved setting of the miniature study (benchmarks/data/miniature/*.npz, from benchmarks/miniature_study.py).

For each question (mislabeled labels; planted duplicates with conflicting labels) and each candidate rule (a mean of
within-run ranks of named signals, ``analysis.recommend.rank_mean``), the AUROC in every setting, and its shortfall
against the best single signal of that setting (cleanlab included): the rule in ``analysis/recommend.py`` is the one
whose worst shortfall is smallest. The settings are the evidence the rule is chosen on, so its figures here are
in-sample; the default digits run and the Feldman & Zhang comparison (docs/RESULTS.md) are the held-out checks.

    .venv/bin/python benchmarks/recommend_rules.py                 # every npz in benchmarks/data/miniature
    .venv/bin/python benchmarks/recommend_rules.py --data DIR
    .venv/bin/python benchmarks/recommend_rules.py --glob '*_mem.npz'   # one family only (here: held out)
    .venv/bin/python benchmarks/recommend_rules.py --glob '*_s1_mem.npz' # the memorizing family's seed 1

A candidate is compared on the settings that have all its signals (``input_grad`` only in runs after issue 17, so
its rules count fewer settings).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from curvature_callback.analysis.metrics import mislabel_metrics
from curvature_callback.analysis.recommend import RULES, rank_mean

ROOT = Path(__file__).resolve().parents[1]
SINGLE = ("curvature", "input_grad", "loss", "margin", "confidence", "correct", "forgetting", "train_loss",
          "learning_time", "train_forgetting", "cleanlab")
CANDIDATES = (("train_loss",), ("loss",), ("confidence",), ("train_loss", "loss"), ("train_loss", "confidence"),
              ("loss", "confidence"), ("train_loss", "loss", "confidence"), ("train_loss", "loss", "margin"),
              ("train_loss", "confidence", "margin"), ("train_loss", "curvature"), ("train_loss", "loss", "curvature"),
              ("confidence", "curvature"), ("curvature",), ("input_grad",), ("train_loss", "input_grad"),
              ("loss", "input_grad"), ("train_loss", "loss", "input_grad"), ("curvature", "input_grad"),
              ("margin",), ("learning_time",), ("margin", "confidence"), ("confidence", "input_grad"),
              ("margin", "input_grad"), ("loss", "confidence", "input_grad"), ("learning_time", "input_grad"),
              ("train_loss", "learning_time"), ("loss", "learning_time"), ("margin", "learning_time"),
              ("loss", "confidence", "learning_time"), ("confidence", "learning_time"))


def targets(z: np.lib.npyio.NpzFile) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per question, (mask of the samples compared, positives among them)."""
    n = len(z["flipped"])
    planted = np.zeros(n, dtype=bool)
    planted[z["dup_copies"]] = True
    planted[z["dup_sources"]] = True
    copies = np.zeros(n, dtype=bool)
    copies[z["dup_copies"]] = True
    flipped = z["flipped"].astype(bool)
    clean = ~flipped & ~planted
    out = {"mislabeled": (~planted, flipped)}
    if copies.any():
        out["duplicates"] = (clean | copies, copies)
    return out


def auroc(score: np.ndarray, mask: np.ndarray, positive: np.ndarray) -> float:
    return mislabel_metrics(np.asarray(score, dtype=np.float64)[mask], positive[mask])["auroc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data" / "miniature")
    p.add_argument("--glob", nargs="+", default=["*.npz"], help="which files of --data (default: all; several "
                   "patterns: their union)")
    args = p.parse_args()
    files = sorted({f for pattern in args.glob for f in args.data.glob(pattern)})
    if not files:
        p.error(f"no .npz in {args.data}: run benchmarks/miniature_study.py first")
    rows: dict[str, dict[tuple[str, ...], list[tuple[float, float]]]] = {}  # (rule's AUROC, best single's)
    best: dict[str, list[tuple[float, str]]] = {}
    for path in files:
        z = np.load(path, allow_pickle=False)
        signals = {k: z[k] for k in SINGLE if k in z.files}
        for q, (mask, positive) in targets(z).items():
            if not 0 < positive[mask].sum() < mask.sum():
                continue
            singles = {k: auroc(v, mask, positive) for k, v in signals.items()}
            top = max(singles, key=singles.get)
            best.setdefault(q, []).append((singles[top], top))
            for rule in CANDIDATES:
                if all(s in signals for s in rule):
                    rows.setdefault(q, {}).setdefault(rule, []).append(
                        (auroc(rank_mean(signals, rule), mask, positive), singles[top]))
    print(f"{len(files)} settings: {', '.join(f.stem for f in files)}\n")
    for q, by_rule in rows.items():
        tops = best[q]
        print(f"**{q}**: best single signal per setting: "
              f"{', '.join(f'{name} {v:.3f}' for v, name in tops)}\n")
        print("| rule (mean of ranks) | mean AUROC | worst shortfall vs best single | settings within 0.005 |")
        print("|---|---|---|---|")
        chosen = RULES[q].signals if q in RULES else ()
        for rule, pairs in sorted(by_rule.items(), key=lambda kv: (-min(v - b for v, b in kv[1]), -len(kv[1]))):
            short = [b - v for v, b in pairs]
            mark = " (**the rule**)" if rule == tuple(chosen) else ""
            print(f"| {' + '.join(rule)}{mark} | {np.mean([v for v, _ in pairs]):.4f} | {max(short):+.4f} | "
                  f"{sum(s <= 0.005 for s in short)} of {len(short)} |")
        print()


if __name__ == "__main__":
    main()
