"""The maths and the store: torch and numpy only, no Lightning (the store: numpy only, no torch).

- :mod:`~curvature_callback.core.settings`: what defines a score, validated and compared in one place;
- :mod:`~curvature_callback.core.estimator`: the per-sample input-loss curvature (finite differences);
- :mod:`~curvature_callback.core.channels`: the signals a store keeps beside curvature, one definition each;
- :mod:`~curvature_callback.core.store`: running means in memory-mapped ``.npy`` files, journaled commits;
- :mod:`~curvature_callback.core.feeding`: which samples a pass and a rank score, and the loader that feeds them;
- :mod:`~curvature_callback.core.safe_paths`: reading inside a folder, writing through no link.
"""
