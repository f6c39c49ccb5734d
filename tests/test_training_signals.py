"""Training-time signals (CSL, learning time, forgetting at every minibatch) recorded from the training steps' own
outputs: equal to a reference computed from every step's values, under shuffling, gradient accumulation, a rotating
fraction, DDP and resume."""

import json

import numpy as np
import pytest
import torch
from boring import Blobs, Classifier, IndexedBlobsDM, StepClassifier, trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from curvature_callback import CurvatureCallback, CurvatureStore, WithIndex, sample_outputs
from curvature_callback.analysis.scores import suspicion_scores
from curvature_callback.core.steps import StepRecorder, epoch_step_values
from curvature_callback.integration.training_steps import read_step_outputs


class Presentations(Callback):
    """Writes every training step's (epoch, index, loss, correct) to a file per rank, independently of the
    callback (its own reading of the outputs, on the host)."""

    def __init__(self, folder):
        self.folder = folder
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for i, loss, c in zip(outputs["sample_index"].tolist(), outputs["sample_loss"].tolist(),
                           outputs["sample_correct"].tolist(), strict=True):
            self.rows.append((trainer.current_epoch, trainer.global_rank, i, loss, c))

    def on_train_epoch_end(self, trainer, pl_module):  # one file per rank and epoch: a resumed run adds its own
        path = self.folder / f"steps_{trainer.global_rank}_{trainer.current_epoch}.json"
        path.write_text(json.dumps(self.rows))
        self.rows = []


def reference(folder, n):
    """CSL, presentations, right presentations, forgetting events (Toneva: right at a sample's previous
    presentation, wrong now) and the last epoch with a wrong presentation, from the presentations in order."""
    rows = []
    for path in sorted(folder.glob("steps_*.json")):
        rows += json.loads(path.read_text())
    rows.sort(key=lambda r: r[0])  # by epoch (stable: each rank's order kept; a sample is on one rank per epoch)
    csl, seen, right, events = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    wrong_epoch, state = np.full(n, -1.0), np.full(n, -1)
    for epoch, _, i, loss, correct in rows:
        csl[i] += np.float32(loss)
        seen[i] += 1
        right[i] += correct
        events[i] += state[i] == 1 and not correct
        state[i] = int(correct)
        if not correct:
            wrong_epoch[i] = epoch
    return {"train_loss": csl, "train_seen": seen, "train_correct": right, "train_forgetting": events,
            "train_wrong_epoch": wrong_epoch, "train_last_correct": state.astype(float)}


def check_against_reference(store, ref):
    for name in ("train_seen", "train_correct", "train_forgetting"):
        np.testing.assert_array_equal(store.sum_of(name), ref[name], err_msg=name)
    np.testing.assert_array_equal(store.channel_last("train_wrong_epoch"), ref["train_wrong_epoch"])
    np.testing.assert_array_equal(store.channel_last("train_last_correct"), ref["train_last_correct"])
    # float32 losses, each added once per epoch to a float32 zero (exact), then summed in float64 by both
    np.testing.assert_allclose(store.sum_of("train_loss"), ref["train_loss"], rtol=1e-12)


def test_signals_equal_every_steps_values_with_accumulation_and_fraction(tmp_path):
    torch.manual_seed(0)
    cb = CurvatureCallback(Blobs(), n_vectors=1, every_n_epochs=2, fraction=0.5, directory=tmp_path / "s")
    t = trainer(tmp_path, [cb, Presentations(tmp_path)], max_epochs=5, accumulate_grad_batches=2)
    t.fit(StepClassifier(lr=3.0), IndexedBlobsDM(shuffle=True))
    store = CurvatureStore.open(tmp_path / "s")
    assert store.epochs == [0, 2, 4] and store.step_epochs == [0, 1, 2, 3, 4]
    assert store.count.tolist() == [2 if i % 2 == 0 else 1 for i in range(48)]  # the rotation is unchanged
    ref = reference(tmp_path, 48)
    assert ref["train_seen"].tolist() == [5] * 48 and ref["train_forgetting"].sum() > 0  # the test can tell
    check_against_reference(store, ref)
    scores = suspicion_scores(store)
    np.testing.assert_allclose(scores["train_loss"], ref["train_loss"] / 5)
    np.testing.assert_array_equal(scores["learning_time"], ref["train_wrong_epoch"] + 1)
    never_right = ref["train_correct"] == 0
    expected = np.where(never_right, ref["train_forgetting"].max() + 1, ref["train_forgetting"])
    np.testing.assert_array_equal(scores["train_forgetting"], expected)


def test_a_module_without_the_outputs_gets_told_how_and_curvature_still_works(tmp_path):
    cb = CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "s")
    with pytest.warns(UserWarning, match=r"without \['sample_loss', 'sample_index'\].*WithIndex.*sample_outputs"):
        trainer(tmp_path, [cb]).fit(Classifier(), IndexedBlobsDM())
    store = CurvatureStore.open(tmp_path / "s")
    assert store.epochs == [0, 1] and store.step_epochs == []
    assert "train_loss" not in suspicion_scores(store) and np.isfinite(store.mean).all()


def test_record_training_off_makes_no_step_channels_and_no_warning(tmp_path, recwarn):
    cb = CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "s", record_training=False)
    trainer(tmp_path, [cb]).fit(Classifier(), IndexedBlobsDM())
    assert CurvatureStore.open(tmp_path / "s").step_channels == []
    assert not [w for w in recwarn if "training-time" in str(w.message)]


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    straight = CurvatureCallback(Blobs(), n_vectors=1, every_n_epochs=3, directory=tmp_path / "straight")
    torch.manual_seed(0)
    trainer(tmp_path, [straight], max_epochs=4).fit(StepClassifier(lr=3.0), IndexedBlobsDM())
    first = CurvatureCallback(Blobs(), n_vectors=1, every_n_epochs=3, directory=tmp_path / "resumed")
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    torch.manual_seed(0)
    trainer(tmp_path, [first, ck], max_epochs=2, enable_checkpointing=True).fit(StepClassifier(lr=3.0),
                                                                                 IndexedBlobsDM())
    second = CurvatureCallback(Blobs(), n_vectors=1, every_n_epochs=3, directory=tmp_path / "resumed")
    trainer(tmp_path, [second, ModelCheckpoint()], max_epochs=4, enable_checkpointing=True).fit(
        StepClassifier(lr=3.0), IndexedBlobsDM(), ckpt_path=tmp_path / "ck" / "last.ckpt")
    a, b = CurvatureStore.open(tmp_path / "straight"), CurvatureStore.open(tmp_path / "resumed")
    assert b.step_epochs == a.step_epochs == [0, 1, 2, 3] and b.epochs == a.epochs == [0, 3]
    assert a.sum_of("train_forgetting").sum() + (a.sum_of("train_correct") < 4).sum() > 0
    for name in a.step_channels:
        np.testing.assert_array_equal(b.sum_of(name), a.sum_of(name), err_msg=name)
        np.testing.assert_array_equal(b.channel_last(name), a.channel_last(name), err_msg=name)


@pytest.mark.slow
def test_ddp_ranks_record_their_own_samples_summed(tmp_path):
    cb = CurvatureCallback(Blobs(), n_vectors=1, every_n_epochs=2, directory=tmp_path / "s")
    torch.manual_seed(0)
    trainer(tmp_path, [cb, Presentations(tmp_path)], max_epochs=4, devices=2, strategy="ddp_spawn",
            accumulate_grad_batches=2).fit(StepClassifier(lr=3.0), IndexedBlobsDM(shuffle=True))
    store = CurvatureStore.open(tmp_path / "s")
    assert store.step_epochs == [0, 1, 2, 3] and store.epochs == [0, 2]
    assert {p.name.split("_")[1] for p in tmp_path.glob("steps_*.json")} == {"0", "1"}  # both ranks trained
    ref = reference(tmp_path, 48)
    assert ref["train_seen"].tolist() == [4] * 48  # 48 samples over 2 ranks: no padding, each seen once an epoch
    assert ref["train_forgetting"].sum() > 0  # events across epochs, where a sample changes rank: the test can tell
    check_against_reference(store, ref)


def test_indices_out_of_range_are_left_out_with_a_warning(tmp_path):
    class Shifted(StepClassifier):
        def training_step(self, batch, i):
            x, y, index = batch
            return super().training_step((x, y, index + 40), i)  # 40 of 48 samples point past the end

    cb = CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "s")
    with pytest.warns(UserWarning, match=r"left out 40 training presentation\(s\) of epoch 0.*\[0, 48\)"):
        trainer(tmp_path, [cb], max_epochs=1).fit(Shifted(), IndexedBlobsDM())
    seen = CurvatureStore.open(tmp_path / "s").sum_of("train_seen")
    assert seen[:40].tolist() == [0] * 40 and seen[40:].tolist() == [1] * 8


def test_recorder_counts_forgetting_within_and_across_epochs():
    r = StepRecorder(3, torch.device("cpu"), previous=np.array([1.0, np.nan, 0.0]))
    r.add(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([False, True, True]))
    r.add(torch.tensor([1, 2]), torch.tensor([0.5, 0.5]), torch.tensor([False, True]))
    sums = r.epoch_sums()
    # sample 0: right before this epoch, wrong now (1 event); sample 1: right then wrong (1); sample 2: none
    assert sums[3].tolist() == [1.0, 1.0, 0.0] and sums[4].tolist() == [0.0, 0.0, 1.0]
    idx, values = epoch_step_values(sums.numpy(), 7, np.array([2.0, np.nan, 5.0]))
    assert idx.tolist() == [0, 1, 2] and values["train_wrong_epoch"].tolist() == [7.0, 7.0, 5.0]
    r.next_epoch(sums)
    assert r.state.tolist() == [0, 0, 1] and r.buffers.abs().sum() == 0


def test_sample_outputs_and_what_the_reader_refuses():
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    out = sample_outputs(torch.tensor([0.1, 1.3], requires_grad=True), torch.tensor([4, 5]), logits=logits, targets=y)
    assert out["loss"].requires_grad and not out["sample_loss"].requires_grad
    index, loss, correct = read_step_outputs(out, None, lambda b: b)
    assert correct.tolist() == [True, False] and index.tolist() == [4, 5]
    assert "not a dict" in read_step_outputs(torch.tensor(1.0), None, lambda b: b)
    assert "without ['sample_index']" in read_step_outputs({"loss": 1, "sample_loss": loss}, None, lambda b: b)
    assert "neither" in read_step_outputs({"sample_loss": loss, "sample_index": index}, None, lambda b: b)
    with_logits = {"sample_loss": loss, "sample_index": index, "logits": logits}
    assert read_step_outputs(with_logits, (None, y), lambda b: b)[2].tolist() == [True, False]
    assert "integer indices" in read_step_outputs({**out, "sample_index": index.float()}, None, lambda b: b)
    with pytest.raises(ValueError, match="reduction='none'"):
        sample_outputs(torch.tensor(1.0), index, correct=torch.tensor([True, True]))
    with pytest.raises(ValueError, match="Expected `logits` and `targets`, or `correct`"):
        sample_outputs(loss, index, logits=logits)
    assert WithIndex([(1, 2)])[0] == (1, 2, 0) and WithIndex([{"a": 1}])[0] == {"a": 1, "index": 0}


@pytest.mark.parametrize("flush", [1, 2, 1000])
def test_recorder_gives_the_same_sums_whatever_its_chunks(flush, monkeypatch):
    """Presentations folded every step, every 2 steps or at the end: the same events, in time order per sample."""
    monkeypatch.setattr(StepRecorder, "FLUSH_STEPS", flush)
    r = StepRecorder(3, torch.device("cpu"), previous=np.array([1.0, np.nan, np.nan]))
    steps = [([0, 1], [False, True]), ([1, 0], [False, True]), ([0, 1], [False, True]), ([2, 1], [True, False])]
    for index, correct in steps:
        r.add(torch.tensor(index), torch.ones(len(index)), torch.tensor(correct))
    sums = r.epoch_sums()
    # sample 0: prev right; wrong (event), right, wrong (event); sample 1: right, wrong (event), right, wrong (event)
    assert sums[0].tolist() == [3, 4, 1] and sums[2].tolist() == [1, 2, 1]
    assert sums[3].tolist() == [2, 2, 0] and sums[4].tolist() == [0, 0, 1]
