"""The maths and the store: torch and numpy only, no Lightning (the store: numpy only, no torch).

- :mod:`~curvature_callback.core.settings`: what defines a score, validated and compared in one place;
- :mod:`~curvature_callback.core.estimator`: the per-sample input-loss curvature (finite differences);
- :mod:`~curvature_callback.core.channels`: the signals a store keeps beside curvature: each one's definition, the
  values it may hold, which pass records it, and how an epoch's values merge with the store's;
- :mod:`~curvature_callback.core.store`: running means in memory-mapped ``.npy`` files, journaled commits; its
  collaborators ``store_format`` (on-disk format), ``store_reader`` (the readers), ``store_create``,
  ``store_journal`` (the journal and its replay), ``store_locking`` (one writer, consistent readers),
  ``store_checks`` (the checks of an open and of a commit's inputs) and ``store_compat`` (settings compatibility);
- :mod:`~curvature_callback.core.steps`: the training-time signals recorded at every training step;
- :mod:`~curvature_callback.core.feeding`: which samples a pass and a rank score, and the loader that feeds them;
- :mod:`~curvature_callback.core.safe_paths`: reading inside a folder, writing through no link.
"""
