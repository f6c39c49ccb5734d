"""The channel home (core/channels/): what a pass records, and an epoch's values merged with what the store holds,
for a user of CurvatureStore without the callback."""

import numpy as np
import pytest
import torch.nn.functional as F

from curvature_callback import CurvatureCallback, CurvatureStore
from curvature_callback.analysis import class_evidence
from curvature_callback.core.channels import (
    CLASSIFICATION,
    class_slots_at,
    early_evidence_channels,
    evidence_window_at,
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


def test_the_early_window_merges_like_the_whole_run_inside_it_and_is_carried_unchanged_after(tmp_path):
    """W = 2: epochs 0 and 1 go into both evidences by the same merge; epoch 2 into the whole run's only, the window's
    latest values carried as they were (a sample first seen after the window: empty slots, no presentation)."""
    settings = {**SETTINGS, "evidence_window": 2}
    s = CurvatureStore.create(tmp_path, 4, settings=settings, step_channels=step_channels(2, 2))
    assert s.evidence_window == 2 and evidence_window_at(tmp_path) == 2 and class_slots_at(tmp_path) == 2
    rows = {0: [1, 1, 0, 0], 1: [1, 2, 0, 0], 2: [1, 1, 1, 0]}  # presentations: sample 2 after the window only
    epochs = {0: ([[0, 1], [1, 2], [0, 1], [0, 1]], [[0.75, 0.25], [0.5, 0.5], [0, 0], [0, 0]]),
              1: ([[1, 0], [2, 1], [0, 1], [0, 1]], [[0.5, 0.5], [1.25, 0.75], [0, 0], [0, 0]]),
              2: ([[1, 0], [1, 2], [2, 0], [0, 1]], [[1.0, 0.0], [0.5, 0.5], [0.875, 0.125], [0, 0]])}
    early_before = None
    for epoch, (classes, mass) in epochs.items():
        seen = np.array(rows[epoch], dtype=float)
        sums = np.stack([seen, seen / 2, seen, 0 * seen, np.minimum(seen, 1)])
        idx, steps = merge_step_values(s, epoch, sums, (np.array(classes), np.array(mass)))
        assert steps["train_early_seen"].tolist() == (seen[idx].tolist() if epoch < 2 else [0.0] * len(idx))
        s.commit_epoch(epoch, None, steps=steps, step_indices=idx)
        if epoch == 1:
            early_before = {c: np.array(s.channel_last(c)) for c in early_evidence_channels(2)[1:]}
            whole = class_evidence(s)
            early = class_evidence(s, early=True)
            for got, want in zip(early, whole, strict=True):  # every epoch so far in the window: the same evidence
                np.testing.assert_array_equal(got, want)
    for c, before in early_before.items():  # frozen: the window's latest values as they were after epoch 1
        np.testing.assert_array_equal(s.channel_last(c)[[0, 1, 3]], before[[0, 1, 3]], err_msg=c)
    assert s.sum_of("train_early_seen").tolist() == [2.0, 3.0, 0.0, 0.0] and s.sum_of("train_seen")[2] == 1
    classes, prob = class_evidence(s, early=True)
    assert classes.tolist() == [[0, 1], [2, 1], [-1, -1], [-1, -1]]
    np.testing.assert_allclose(prob[:2], [[1.25 / 2, 0.75 / 2], [1.75 / 3, 1.25 / 3]])
    assert np.isnan(prob[2:]).all()  # sample 2 seen after the window only, sample 3 never
    whole_classes, whole_prob = class_evidence(s)
    assert whole_classes[0].tolist() == [1, 0] and whole_classes[2].tolist() == [2, 0]  # the whole run moved on
    np.testing.assert_allclose(whole_prob[0], [1.75 / 3, 1.25 / 3])
    s.close()
    r = CurvatureStore.open(tmp_path)  # its values pass every open's checks
    assert r.evidence_window == 2 and class_evidence(r, early=True)[0].tolist() == classes.tolist()


def test_a_store_without_a_window_has_no_early_evidence_and_refuses_names_that_do_not_fit(tmp_path):
    s = CurvatureStore.create(tmp_path / "none", 2, settings=SETTINGS, step_channels=step_channels(2))
    assert s.evidence_window == 0 and evidence_window_at(tmp_path / "none") == 0
    steps = {c: np.zeros(1) for c in step_channels(2)} | {"train_seen": np.ones(1), "train_wrong_epoch": -np.ones(1)}
    s.commit_epoch(0, None, steps=steps, step_indices=np.array([0]))
    assert class_evidence(s) is not None and class_evidence(s, early=True) is None
    s.close()
    with pytest.raises(ValueError, match=r"Expected class_evidence >= 1 with evidence_window=3 .*got class_evidence=0"):
        step_channels(0, 3)
    for window, steps in ((2, step_channels(2)), (0, step_channels(2, 2)), (2, step_channels(2, 2)[:-1])):
        with pytest.raises(ValueError, match=r"Expected training-time channels that fit the class evidence asked for: "
                           r"expected the early window's 'step_channels'"):
            CurvatureStore.create(tmp_path / "bad", 2, settings={**SETTINGS, "evidence_window": window},
                                  step_channels=steps)
    with pytest.raises(ValueError, match=r"Expected argument `evidence_window` to be an integer >= 0, got -1"):
        CurvatureStore.create(tmp_path / "bad", 2, settings={**SETTINGS, "evidence_window": -1},
                              step_channels=step_channels(2))
    assert not (tmp_path / "bad").exists()
