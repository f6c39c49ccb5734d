"""The experiment app on top of everything: datasets, models, the classifier module, ``curvature-train`` (Hydra)
and ``curvature-collect``. Needs the ``experiments`` extra."""
