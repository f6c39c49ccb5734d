"""curvature_callback: which training samples did the network memorize?

Per-sample input-loss curvature (Garg, Ravikumar & Roy, ICML 2024) as a PyTorch Lightning callback.
"""

from curvature_callback.estimator import input_curvature

__all__ = ["input_curvature", "CurvatureCallback", "CurvatureStore"]
__version__ = "0.1.0"


def __getattr__(name: str):  # the callback pulls in Lightning: import it only when asked for
    if name == "CurvatureCallback":
        from curvature_callback.callback import CurvatureCallback

        return CurvatureCallback
    if name == "CurvatureStore":
        from curvature_callback.store import CurvatureStore

        return CurvatureStore
    raise AttributeError(f"module 'curvature_callback' has no attribute {name!r}")
