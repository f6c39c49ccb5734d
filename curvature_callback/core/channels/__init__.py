"""The per-sample signals a store keeps ("channels"): the one home of what a channel is.

- :mod:`~curvature_callback.core.channels.definitions`: each channel's meaning, source, reduction and orientation,
  which pass kinds record it (:func:`pass_channels`), the training-time channels (:func:`step_channels`) and the
  class-evidence slots' names (the whole run's and the early window's);
- :mod:`~curvature_callback.core.channels.values`: the values each channel's arrays may hold, which the store checks
  at its open and at each read;
- :mod:`~curvature_callback.core.channels.merge`: how an epoch's raw values merge with what the store holds at the
  commit (forgetting events, the training steps' sums, the running class evidence).

The store keeps arrays, journals and commits and asks these what to check; the callback asks them what to record and
what to commit, and so can a user of :class:`~curvature_callback.core.store.CurvatureStore` without the callback.
Nothing here imports torch at import time (the store needs none).

Example:
    >>> pass_channels("gradient", classification=False), step_channels(2)[-4:]
    (('loss', 'input_grad'), ('train_class_0', 'train_class_1', 'train_class_mass_0', 'train_class_mass_1'))
"""

from curvature_callback.core.channels.definitions import (
    CHANNELS,
    CLASS_MASS,
    CLASS_SLOT,
    CLASSIFICATION,
    EARLY_MASS,
    EARLY_SEEN,
    EARLY_SLOT,
    PRIMARY,
    STEP_CHANNELS,
    Channel,
    class_evidence_channels,
    class_slots,
    class_slots_at,
    classification_values,
    early_evidence_channels,
    evidence_window_at,
    pass_channels,
    step_channels,
)
from curvature_callback.core.channels.merge import (
    epoch_class_values,
    epoch_step_values,
    forgetting_events,
    merge_pass_values,
    merge_step_values,
)

__all__ = [
    "CHANNELS", "CLASSIFICATION", "CLASS_MASS", "CLASS_SLOT", "EARLY_MASS", "EARLY_SEEN", "EARLY_SLOT", "PRIMARY",
    "STEP_CHANNELS", "Channel", "class_evidence_channels", "class_slots", "class_slots_at", "classification_values",
    "early_evidence_channels", "epoch_class_values", "epoch_step_values", "evidence_window_at", "forgetting_events",
    "merge_pass_values", "merge_step_values", "pass_channels", "step_channels",
]
