"""The channel home (core/channels/): what a pass records, and an epoch's values merged with what the store holds,
for a user of CurvatureStore without the callback."""

import numpy as np
import pytest
import torch.nn.functional as F

from curvature_callback import CurvatureCallback, CurvatureStore
from curvature_callback.core.channels import (
    CLASSIFICATION,
    class_slots_at,
    merge_pass_values,
    merge_step_values,
    pass_channels,
    step_channels,
)

SETTINGS = {"pass_kind": "curvature", "h": 1e-3, "n_vectors": 2, "seed": 0, "loss": "ce", "fast": False}


def per_sample_loss(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="none")


@pytest.mark.parametrize("kind", ["curvature", "gradient", "forward"])
@pytest.mark.parametrize("own_loss", [False, True])
@pytest.mark.parametrize("record_outputs", [False, True])
def test_pass_channels_are_the_channels_the_callback_records(kind, own_loss, record_outputs):
    if kind != "curvature" and not record_outputs:
        pytest.skip("a gradient or forward pass needs record_outputs")
    cb = CurvatureCallback(pass_kind=kind, record_outputs=record_outputs,
                           loss_fn=per_sample_loss if own_loss else None, loss_id="ce" if own_loss else None)
    assert cb.channels == pass_channels(kind, classification=not own_loss, record_outputs=record_outputs)


def test_pass_channels_refuses_an_unknown_pass_kind():
    assert CLASSIFICATION == ("loss", "margin", "confidence", "correct", "input_grad", "forgetting")
    with pytest.raises(ValueError, match="Expected `pass_kind` one of"):
        pass_channels("hessian")


def test_a_store_without_the_callback_merges_forgetting_and_class_evidence(tmp_path):
    s = CurvatureStore.create(tmp_path, 3, settings=SETTINGS, channels=pass_channels(), step_channels=step_channels(2))
    assert class_slots_at(tmp_path) == 2 and class_slots_at(tmp_path / "none") is None
    raw = {c: np.zeros(3) for c in ("curvature", "loss", "margin", "confidence", "input_grad")}
    rows = np.array([[1, 1, 0], [0.5, 0.25, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0]], dtype=float)  # sample 2 unseen
    epochs = ((0, [1.0, 1.0, 0.0], [[0, 1], [1, 2], [0, 1]], [[0.75, 0.25]] * 3),
              (1, [0.0, 1.0, 0.0], [[1, 0], [2, -1], [0, 1]], [[0.5, 0.5], [1, 0], [0.75, 0.25]]))
    for epoch, correct, classes, mass in epochs:
        values = merge_pass_values(s, {**raw, "correct": np.array(correct)})
        idx, steps = merge_step_values(s, epoch, rows, (np.array(classes), np.array(mass)))
        s.commit_epoch(epoch, values, steps=steps, step_indices=idx)
    assert s.sum_of("forgetting").tolist() == [1.0, 0.0, 0.0]  # sample 0: right, then wrong
    assert s.channel_last("train_class_0").tolist()[:2] == [0.0, 2.0] and np.isnan(s.channel_last("train_class_0")[2])
    assert s.channel_last("train_class_mass_0").tolist()[:2] == [1.25, 1.25]  # 0.75 + 0.5, and 0.25 + 1
    assert s.channel_last("train_class_1").tolist()[:2] == [1.0, 1.0]
    with pytest.raises(ValueError, match="Expected class evidence in the store's 2 slot"):
        merge_step_values(s, 2, rows, (np.zeros((3, 3), dtype=int), np.zeros((3, 3))))
    s.close()
