"""``curvature-report RUN_DIR``: one static HTML page that says what a run's scores mean.

It reads a run directory as ``curvature-train`` writes it (the store in ``curvature/``, ``scores.csv``,
``metrics.json``, ``.hydra/config.yaml``) and writes ``RUN_DIR/report/index.html``: self-contained (every figure
is embedded as a PNG data URI, no network; one inline script), with the same PNGs beside it for reuse. The page is the
Jinja2 template ``templates/report.html.j2`` (structure and CSS); this package reads the run and computes each
section's context as plain strings and numbers, which the template escapes. Sections:

- **samples to review**: the samples whose labels look wrong, most probable first: the run's ``label_issues.csv``
  where it is there (the page says so, and whether the store now gives another answer), else
  :func:`~curvature_callback.analysis.find_label_issues` on the store; as thumbnails with the given and suggested
  label, the probability and the reason, how many were estimated and how; past :data:`REVIEW_GRID` the rest in a
  table (up to :data:`REVIEW_TABLE` rows, all of them in ``label_issues.csv``). Each row has a choice (keep /
  relabel to a class / drop), pre-filled as ``corrections.csv`` is, and **Download corrections.csv** saves the
  choices as a corrections file (:mod:`curvature_callback.core.corrections`; the page's one script, inline: no
  server, works from ``file://``); then the duplicates with conflicting labels, as pairs;
- which signal answers which question (the recommended score of :mod:`~curvature_callback.analysis.recommend`, and
  why);
- mislabel detection by the recommended score, curvature and every other signal (when labels were flipped);
- for each question, the samples its recommended score ranks highest, with every signal as a column (curvature one
  of them);
- the curvature histogram per class (when the run scored curvature);
- the comparison with a reference memorization score, when one is given (``--reference``).

A run without curvature (a gradient or forward pass, ``callbacks=recommended``) has every section but the curvature
histograms: the lists follow the recommended scores, never curvature alone.

**Where the images come from.** The store holds scores, not pixels. The report takes the images from the
``images`` (or ``dataset``) argument (``curvature-train`` passes its dataset), ``images_file`` (an ``[N, ...]``
``.npy`` in the store's order, loaded without pickle), or else the run folder's own ``review_images.npy`` (the
images of the samples the report shows, which ``curvature-train`` keeps: :mod:`~curvature_callback.analysis.thumbnails`,
``keep_images``). It builds nothing itself: the console script (:mod:`curvature_callback.experiments.report_cli`)
can rebuild one of this package's own datamodules when asked with ``--rebuild-data``. Without images the report
still has every number; the sections that need pixels say why they are empty and how to get them.

**A run folder is data from a stranger.** Nothing read from it chooses what code runs. Every file read from the run
folder must stay inside it once links are followed, and nothing is written through a link: the default output folder
``RUN_DIR/report`` must not be a link nor lead out of the run folder (``--out`` chooses another place), and a link
in it where a file goes is refused (:mod:`curvature_callback.core.safe_paths`).

**Layout**, one concept a module of this package:

- :mod:`~curvature_callback.analysis.report.write`: :func:`write_report`, the story (read, compute, render, write);
- :mod:`~curvature_callback.analysis.report.run`: reading the run folder;
- :mod:`~curvature_callback.analysis.report.images`: where the images come from, their checks, the thumbnails drawn;
- :mod:`~curvature_callback.analysis.report.issues`: the label issues shown (the run's file, or the store's);
- :mod:`~curvature_callback.analysis.report.review`: the samples to review, with their pre-filled choices;
- :mod:`~curvature_callback.analysis.report.sections`: every other section's context;
- :mod:`~curvature_callback.analysis.report.cells`: values as the page shows them;
- :mod:`~curvature_callback.analysis.report.render`: the template filled.

The reference score is read by :func:`curvature_callback.analysis.references.load_reference`.
"""

from curvature_callback.analysis.report.review import REVIEW_GRID, REVIEW_TABLE
from curvature_callback.analysis.report.write import write_report

__all__ = ["REVIEW_GRID", "REVIEW_TABLE", "write_report"]
