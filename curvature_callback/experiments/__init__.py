"""The experiment app on top of everything: datasets, models, the classifier module, ``curvature-train`` (Hydra),
``curvature-report`` and ``curvature-collect``. Needs the ``experiments`` extra.

- :mod:`~curvature_callback.experiments.train`: ``curvature-train``, the thin app (compose, check, build, fit,
  write);
- :mod:`~curvature_callback.experiments.config_checks`: what a composed config may hold, and building from it;
- :mod:`~curvature_callback.experiments.run_folder`: where a run writes, and the refusal of a link there;
- :mod:`~curvature_callback.experiments.callbacks`: the Lightning callbacks the app adds (clock, labels);
- :mod:`~curvature_callback.experiments.evaluation`: what a run found (scores.csv's columns, metrics.json's figures);
- :mod:`~curvature_callback.experiments.outputs`: what a run writes from it;
- :mod:`~curvature_callback.experiments.ddp_relaunch`: the app under Lightning's DDP relaunch and in a sweep;
- :mod:`~curvature_callback.experiments.quiet`: the lines of Lightning and torch the app keeps off the console;
- :mod:`~curvature_callback.experiments.arguments`: what a value of the configs must be, said once;
- :mod:`~curvature_callback.experiments.data`, :mod:`~curvature_callback.experiments.models`,
  :mod:`~curvature_callback.experiments.module`: datasets with label noise, networks, the classifier;
- :mod:`~curvature_callback.experiments.report_cli`, :mod:`~curvature_callback.experiments.collect`: the other two
  console scripts.
"""
