"""How well the label-issue finder (curvature_callback/analysis/label_issues.py) counts and flags, against the planted
flips: the miniature study's saved signals (benchmarks/data/miniature/*.npz) and any curvature-train run folders.

The finder reads no ground truth; this script alone compares its answer with the flips. The figures are docs/DESIGN.md
§8's:

    .venv/bin/python benchmarks/label_issues_check.py                       # every saved miniature setting
    .venv/bin/python benchmarks/label_issues_check.py --clean               # their clean samples only (truth: 0)
    .venv/bin/python benchmarks/label_issues_check.py --runs outputs/*/*    # curvature-train runs (metrics.json)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from curvature_callback.analysis import read_metrics
from curvature_callback.analysis.label_issues import estimate_label_issues

ROOT = Path(__file__).resolve().parents[1]
HEADER = "| setting | flips | estimated | flagged | precision | recall |\n|---|---|---|---|---|---|"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def miniature_rows(data: Path, clean: bool = False) -> list[str]:
    """One table row per saved setting: the finder on its ``train_loss`` and ``loss`` (the mislabeled rule's)."""
    rows = []
    for path in sorted(data.glob("*.npz")):
        z = np.load(path, allow_pickle=False)
        keep = ~z["flipped"] if clean else np.ones(len(z["flipped"]), dtype=bool)
        flipped = z["flipped"][keep]
        found = estimate_label_issues({"train_loss": z["train_loss"][keep], "loss": z["loss"][keep]},
                                      z["given"][keep].astype(np.int64))
        hit = flipped[found.flagged]
        precision = float(hit.mean()) if len(hit) else None
        recall = float(hit.sum() / flipped.sum()) if flipped.any() else None
        rows.append(f"| {path.stem} | {int(flipped.sum())} | {found.estimated} | {len(found.flagged)} | "
                    f"{_fmt(precision)} | {_fmt(recall)} |")
    return rows


def run_rows(runs: list[Path]) -> list[str]:
    """One table row per curvature-train run folder, from its metrics.json."""
    rows = []
    for run in runs:
        m = read_metrics(run / "metrics.json")
        rows.append(f"| {run} | {m.get('n_flipped')} | {m.get('estimated_label_issues')} | {m.get('flagged')} | "
                    f"{_fmt(m.get('flagged_precision'))} | {_fmt(m.get('flagged_recall'))} |")
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data" / "miniature")
    parser.add_argument("--clean", action="store_true", help="the settings' clean samples only: the truth is 0")
    parser.add_argument("--runs", type=Path, nargs="*", help="curvature-train run folders instead")
    args = parser.parse_args(argv)
    rows = run_rows(args.runs) if args.runs else miniature_rows(args.data, clean=args.clean)
    table = "\n".join([HEADER, *rows])
    print(table)
    return table


if __name__ == "__main__":
    main()
