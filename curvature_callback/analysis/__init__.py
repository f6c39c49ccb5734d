"""What the scores say; reads stores, never trains. Imports only :mod:`curvature_callback.core`.

- :mod:`~curvature_callback.analysis.metrics`: detection metrics and rank correlations;
- :mod:`~curvature_callback.analysis.scores`: a store's channels as suspicion scores, the run's ``scores.csv``;
- :mod:`~curvature_callback.analysis.recommend`: the recommended score per question, one fixed rule each;
- :mod:`~curvature_callback.analysis.label_issues`: which labels are wrong: the estimated count, the flagged set, each
  sample's probability and suggested label, ``label_issues.csv``;
- :mod:`~curvature_callback.analysis.references`: memorization against a reference (Feldman & Zhang);
- :mod:`~curvature_callback.analysis.duplicates`, :mod:`~curvature_callback.analysis.plots`,
  :mod:`~curvature_callback.analysis.report` (``curvature-report``; matplotlib, the ``experiments`` extra).

The numbers (metrics, scores, label issues, references) are re-exported here.
"""

from curvature_callback.analysis.label_issues import (
    LabelIssues,
    find_label_issues,
    read_label_issues_csv,
    write_label_issues_csv,
)
from curvature_callback.analysis.metrics import correlations, detection_table, mislabel_metrics, ranks, top_k
from curvature_callback.analysis.references import align_reference, load_feldman_zhang, memorization_comparison
from curvature_callback.analysis.scores import (
    SCORE_NOTES,
    class_evidence,
    epoch_average,
    read_metrics,
    read_scores_csv,
    suspicion_scores,
    write_scores_csv,
)

__all__ = [
    "SCORE_NOTES", "LabelIssues", "align_reference", "class_evidence", "correlations", "detection_table",
    "epoch_average", "find_label_issues", "load_feldman_zhang", "memorization_comparison", "mislabel_metrics", "ranks",
    "read_label_issues_csv", "read_metrics", "read_scores_csv", "suspicion_scores", "top_k", "write_label_issues_csv",
    "write_scores_csv",
]
