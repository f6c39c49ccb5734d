"""The Lightning glue: :class:`~curvature_callback.integration.callback.CurvatureCallback` decides when to score,
runs the pass, gathers across ranks, commits and logs; :mod:`~curvature_callback.integration.sinks` writes to
the loggers (W&B images and tables). Imports only :mod:`curvature_callback.core`."""
