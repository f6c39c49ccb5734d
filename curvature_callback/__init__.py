"""curvature_callback: which training samples did the network memorize?

Per-sample input-loss curvature (Garg, Ravikumar & Roy, ICML 2024) as a PyTorch Lightning callback.
"""

__all__ = ["input_curvature", "CurvatureCallback", "CurvatureStore", "WithIndex", "sample_outputs", "apply_corrections"]
__version__ = "0.1.0"


def __getattr__(name: str):  # each on first use: the store needs no torch, the estimator no Lightning
    if name == "input_curvature":
        from curvature_callback.core.estimator import input_curvature

        return input_curvature
    if name == "CurvatureCallback":
        from curvature_callback.integration.callback import CurvatureCallback

        return CurvatureCallback
    if name == "CurvatureStore":
        from curvature_callback.core.store import CurvatureStore

        return CurvatureStore
    if name == "WithIndex":
        from curvature_callback.core.feeding import WithIndex

        return WithIndex
    if name == "sample_outputs":
        from curvature_callback.integration.training_steps import sample_outputs

        return sample_outputs
    if name == "apply_corrections":  # numpy only: for a user's own datamodule (the review -> fix -> retrain loop)
        from curvature_callback.core.corrections import apply_corrections

        return apply_corrections
    raise AttributeError(f"module 'curvature_callback' has no attribute {name!r}")
