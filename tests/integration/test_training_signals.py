"""Training-time signals (CSL, learning time, forgetting at every minibatch) recorded from the training steps' own
outputs: equal to a reference computed from every step's values, under shuffling, gradient accumulation, a rotating
fraction, DDP and resume."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from boring import Blobs, Classifier, IndexedBlobsDM, StepClassifier, trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from curvature_callback import CurvatureCallback, CurvatureStore, WithIndex, sample_outputs
from curvature_callback.analysis.scores import suspicion_scores
from curvature_callback.core.channels import epoch_step_values
from curvature_callback.core.steps import (
    StepRecorder,
    label_conflicts,
    label_keys,
    loss_jump,
    repeated_indices,
)
from curvature_callback.core.store import StoreMismatchError
from curvature_callback.core.store_format import LABEL_UNKNOWN
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
    cb = SavesStepLabels(Blobs(), n_vectors=1, every_n_epochs=2, directory=tmp_path / "s")
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
    for epoch in range(4):  # each rank saw half the samples: their label keys combined over ranks (MAX), every one
        keys = np.load(tmp_path / f"step_labels_{epoch}.npy")
        assert keys.tolist() == Blobs().targets.tolist(), epoch


def test_indices_out_of_range_are_left_out_with_a_warning(tmp_path):
    class Shifted(StepClassifier):
        def training_step(self, batch, i):
            x, y, index = batch
            return super().training_step((x, y, index + 40), i)  # 40 of 48 samples point past the end

    # no pass: its labels of samples 40..47 would refuse the shifted steps' (those of samples 0..7), as they should
    cb = CurvatureCallback(Blobs(), directory=tmp_path / "s", score_curvature=False)
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
    index, loss, correct, target, _ = read_step_outputs(out, None, lambda b: b)
    assert correct.tolist() == [True, False] and index.tolist() == [4, 5] and target is out["sample_target"]
    assert target.tolist() == [0, 0]  # the targets travel for the label check
    assert "not a dict" in read_step_outputs(torch.tensor(1.0), None, lambda b: b)
    assert "without ['sample_index']" in read_step_outputs({"loss": 1, "sample_loss": loss}, None, lambda b: b)
    assert "neither" in read_step_outputs({"sample_loss": loss, "sample_index": index}, None, lambda b: b)
    with_logits = {"sample_loss": loss, "sample_index": index, "logits": logits}
    assert read_step_outputs(with_logits, (None, y), lambda b: b)[2].tolist() == [True, False]
    assert read_step_outputs(with_logits, (None, y), lambda b: b)[3] is y
    # without sample_target, the batch's targets when they are [B] integers; else no labels to check
    given = {"sample_loss": loss, "sample_index": index, "sample_correct": correct}
    assert read_step_outputs(given, (None, y, index), lambda b: b)[3] is y
    assert read_step_outputs(given, (None, y.float()), lambda b: b)[3] is None
    assert read_step_outputs(given, {"no": "targets"}, lambda b: b[0])[3] is None  # a batch fn(batch) cannot read
    assert "per-sample values" in read_step_outputs({**out, "sample_index": index[:1]}, None, lambda b: b)
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


# ------------------------------------------------------------------------------------------ labels (issue 16, item 3)
class Relabeled(torch.utils.data.Dataset):
    """Blobs' inputs with labels of one's own under a name that is not ``targets`` (no fingerprint to catch a change),
    or, with ``shift``, Blobs' ``targets`` kept while a target transform changes what the items say."""

    def __init__(self, labels=None, shift=0):
        blobs = Blobs()
        self.x, self.labels = blobs.x, blobs.targets.tolist() if labels is None else list(labels)
        self.shift = shift
        if shift:
            self.targets = blobs.targets  # what a torchvision dataset keeps while its target_transform changes items

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], (self.labels[i] + self.shift) % 3


class RelabeledDM(IndexedBlobsDM):
    def __init__(self, dataset, shuffle=True):
        super().__init__(shuffle=shuffle)
        self.train = dataset


def store_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("change", ["three labels", "target_transform"])
def test_labels_changed_between_fits_refused_without_a_pass(tmp_path, change):
    """score_curvature=False: only the training steps tell the labels; a second fit into the same store whose labels
    changed is refused before anything is written."""
    def fit(dataset, max_epochs):
        torch.manual_seed(0)
        cb = CurvatureCallback(dataset, directory=tmp_path / "s", score_curvature=False)
        trainer(tmp_path, [cb], max_epochs=max_epochs).fit(StepClassifier(), RelabeledDM(dataset))

    fit(Relabeled(), 2)
    store = CurvatureStore.open(tmp_path / "s")
    assert store.step_epochs == [0, 1] and store.labels.tolist() == Blobs().targets.tolist()  # the steps' labels
    before = store_bytes(tmp_path / "s")
    labels = Blobs().targets.tolist()
    if change == "three labels":
        for i in (5, 17, 30):
            labels[i] = (labels[i] + 1) % 3
        changed, match = Relabeled(labels), r"recorded samples \[5, 17, 30\] under other labels.*in the training steps"
    else:
        changed, match = Relabeled(shift=1), r"recorded samples \[0, 1, 2, .*\] under other labels"
    with pytest.raises(StoreMismatchError, match=match):
        fit(changed, 4)  # epochs 0 and 1 are in the store already; epoch 2 is refused
    assert store_bytes(tmp_path / "s") == before


class SavesStepLabels(CurvatureCallback):
    """Writes the label keys each commit hands the store for the training steps (a spawned rank is a copy: a file
    tells)."""

    def _commit(self, epoch, arrays, steps):
        if steps is not None:
            sums, keys = steps[:2]  # then the class evidence
            np.save(self._path.parent / f"step_labels_{epoch}.npy", keys[sums[0] > 0])
        return super()._commit(epoch, arrays, steps)


def test_labels_changed_on_resume_refused_at_the_first_epoch_without_a_pass(tmp_path):
    """every_n_epochs=2: the resumed run's first epoch has no pass; its training steps are refused there, not one
    epoch late after being committed."""
    ds = Relabeled()
    cb = CurvatureCallback(ds, n_vectors=1, every_n_epochs=2, directory=tmp_path / "s")
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    trainer(tmp_path, [cb, ck], max_epochs=1, enable_checkpointing=True).fit(StepClassifier(), RelabeledDM(ds))
    labels = list(ds.labels)
    labels[7] = (labels[7] + 1) % 3
    again = CurvatureCallback(Relabeled(labels), n_vectors=1, every_n_epochs=2, directory=tmp_path / "s")
    with pytest.raises(StoreMismatchError, match=r"recorded samples \[7\].*in the training steps"):
        trainer(tmp_path, [again, ModelCheckpoint()], max_epochs=3, enable_checkpointing=True).fit(
            StepClassifier(), RelabeledDM(Relabeled(labels)), ckpt_path=tmp_path / "ck" / "last.ckpt")
    store = CurvatureStore.open(tmp_path / "s")
    assert store.step_epochs == [0] and store.epochs == [0]


def test_a_sample_under_two_labels_in_one_epoch_refused(tmp_path):
    """index // 2 over Blobs' random labels: samples 2k and 2k + 1 both credited to k, under different labels."""

    class Halved(StepClassifier):
        def training_step(self, batch, i):
            x, y, index = batch
            return super().training_step((x, y, index // 2), i)

    cb = CurvatureCallback(Blobs(), directory=tmp_path / "s", score_curvature=False)
    with pytest.raises(ValueError, match=r"in epoch 0 the training steps presented sample\(s\) \[.*under different "
                                         r"labels.*`index // 2`.*Nothing of this epoch was added"):
        trainer(tmp_path, [cb], max_epochs=1).fit(Halved(), IndexedBlobsDM())
    assert CurvatureStore.open(tmp_path / "s").step_epochs == []


def test_label_conflicts_and_keys_of_the_recorder():
    r = StepRecorder(4, torch.device("cpu"))
    r.add(torch.tensor([0, 1]), torch.ones(2), torch.tensor([True, True]), torch.tensor([2, 1]))
    r.add(torch.tensor([0, 2]), torch.ones(2), torch.tensor([True, True]), torch.tensor([2, 0]))
    r.add(torch.tensor([1, 3]), torch.ones(2), torch.tensor([True, True]))  # keys not known: checked against nothing
    key, conflicts = label_conflicts(r.epoch_keys().numpy())
    assert key.tolist() == [2, 1, 0, LABEL_UNKNOWN] and conflicts.tolist() == []
    r.add(torch.tensor([2]), torch.ones(1), torch.tensor([True]), torch.tensor([1]))  # sample 2: 0, then 1
    key, conflicts = label_conflicts(r.epoch_keys().numpy())
    assert conflicts.tolist() == [2]
    r.next_epoch(r.epoch_sums())
    assert (r.epoch_keys() == LABEL_UNKNOWN).all()  # each epoch's keys are its own
    soft = torch.rand(2, 3)
    r.add(torch.tensor([0, 1]), torch.ones(2), torch.tensor([True, True]), soft)
    assert r.epoch_keys()[0, :2].tolist() == label_keys(soft).tolist()  # other targets: hashed, in the fold


# ------------------------------------------------------------------------------------------ dtypes (item 4)
def test_indices_and_correctness_of_another_dtype_refused(tmp_path):
    out = sample_outputs(torch.ones(3), torch.tensor([0, 1, 2]), correct=torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match=r"'sample_index' to hold integer dataset indices.*got dtype torch.bool, "
                                         r"which would credit every presentation to samples 0 and 1.*WithIndex"):
        read_step_outputs({**out, "sample_index": torch.tensor([False, True, True])}, None, lambda b: b)
    with pytest.raises(ValueError, match=r"'sample_index'.*got dtype torch.float32, which does not name a sample"):
        read_step_outputs({**out, "sample_index": torch.tensor([0.0, 1.0, 2.0])}, None, lambda b: b)
    with pytest.raises(ValueError, match=r"'sample_correct' to be bool \(or integers 0 and 1\).*got dtype "
                                         r"torch.float32.*logits.argmax\(1\) == y"):
        read_step_outputs({**out, "sample_correct": torch.tensor([0.9, 0.2, 0.6])}, None, lambda b: b)
    with pytest.raises(ValueError, match=r"'sample_target' to be a \[B, \.\.\.\] tensor.*\(B = 3\), got \[2\]"):
        read_step_outputs({**out, "sample_target": torch.tensor([0, 1])}, None, lambda b: b)
    # integers 0 and 1 count as bools; other integers are refused in the fold (the step itself reads no value)
    r = StepRecorder(3, torch.device("cpu"))
    r.add(*read_step_outputs({**out, "sample_correct": torch.tensor([1, 0, 1])}, None, lambda b: b))
    assert r.epoch_sums()[2].tolist() == [1.0, 0.0, 1.0]
    r.add(*read_step_outputs({**out, "sample_correct": torch.tensor([2, 0, 1])}, None, lambda b: b))
    with pytest.raises(ValueError, match=r"'sample_correct' to be 0 or 1.*got torch.int64 values \[2\]"):
        r.epoch_sums()


def test_a_bool_index_stops_the_fit(tmp_path):
    class Odd(StepClassifier):
        def training_step(self, batch, i):
            x, y, index = batch
            out = super().training_step(batch, i)
            return {**out, "sample_index": index % 2 == 1}

    cb = CurvatureCallback(Blobs(), directory=tmp_path / "s", score_curvature=False)
    with pytest.raises(ValueError, match=r"'sample_index'.*torch.bool"):
        trainer(tmp_path, [cb], max_epochs=1).fit(Odd(), IndexedBlobsDM())


# ------------------------------------------------------------------------------------------ doubts (item 8)
def test_repeated_indices_told_apart_from_legitimate_repeats():
    rng = np.random.default_rng(0)
    n = 10_000
    halved = np.bincount(np.arange(n) // 2, minlength=n)  # index // 2: half never, half twice
    in_batch = np.bincount(np.tile(np.arange(128), n // 128), minlength=n)  # a position in the batch
    assert "5000 of 10000 samples were never presented while 5000 were presented 2 times" in repeated_indices(halved)
    assert repeated_indices(in_batch) is not None
    padded = np.ones(n, dtype=int)
    padded[:3] = 2  # DistributedSampler's padding on 4 ranks
    subset = np.r_[np.ones(n // 2, dtype=int), np.zeros(n // 2, dtype=int)]
    repeated_augmentation = np.full(n, 3)
    legitimate = [padded, subset, repeated_augmentation, np.zeros(n, dtype=int)]
    legitimate += [np.bincount(rng.integers(0, n, int(lam * n)), minlength=n) for lam in (0.1, 1, 3, 5, 10)]
    weights = np.r_[np.full(n // 2, 1.0), np.full(n // 2, 4.0)]  # a weighted sampler, with replacement
    legitimate.append(np.bincount(rng.choice(n, n, p=weights / weights.sum()), minlength=n))
    assert [repeated_indices(s) for s in legitimate] == [None] * len(legitimate)


class EqualPairs(Relabeled):
    """Samples 2k and 2k + 1 share a label: index // 2 credits both to k without a label conflict."""

    def __init__(self):
        super().__init__()
        self.labels = [self.labels[i - i % 2] for i in range(len(self.labels))]


def test_repeated_indices_warned_once_per_fit(tmp_path):
    class Halved(StepClassifier):
        def training_step(self, batch, i):
            x, y, index = batch
            return super().training_step((x, y, index // 2), i)

    ds = EqualPairs()
    cb = CurvatureCallback(ds, directory=tmp_path / "s", score_curvature=False)
    with pytest.warns(UserWarning, match=r"in epoch 0, 24 of 48 samples were never presented while 24 were presented "
                                         r"2 times.*`index // 2`.*with replacement.*Warned once per fit") as caught:
        trainer(tmp_path, [cb], max_epochs=3).fit(Halved(), RelabeledDM(ds))
    assert len([w for w in caught if "never presented" in str(w.message)]) == 1


def test_no_doubt_raised_by_a_plain_run_or_its_resume(tmp_path, recwarn):
    """What the two heuristics must not say about a legitimate run: a shuffled fit resumed from its checkpoint after
    its first epoch, where the loss falls most (0.55 to 0.18 here: 3x)."""
    ds = Relabeled()
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    torch.manual_seed(0)
    cb = CurvatureCallback(ds, directory=tmp_path / "s", score_curvature=False)
    trainer(tmp_path, [cb, ck], max_epochs=1, enable_checkpointing=True).fit(StepClassifier(lr=0.3), RelabeledDM(ds))
    again = CurvatureCallback(ds, directory=tmp_path / "s", score_curvature=False)
    trainer(tmp_path, [again, ModelCheckpoint()], max_epochs=4, enable_checkpointing=True).fit(
        StepClassifier(lr=0.3), RelabeledDM(ds), ckpt_path=tmp_path / "ck" / "last.ckpt")
    assert CurvatureStore.open(tmp_path / "s").step_epochs == [0, 1, 2, 3]
    assert not [w for w in recwarn if "CurvatureCallback" in str(w.message)]


def test_another_training_loss_on_resume_warned(tmp_path):
    class Smoothed(StepClassifier):  # label smoothing 0.5: a loss floor far above cross-entropy's near convergence
        def training_step(self, batch, _):
            x, y, index = batch
            logits = self(x)
            losses = F.cross_entropy(logits, y, reduction="none", label_smoothing=0.5)
            return sample_outputs(losses, index, logits=logits, targets=y)

    ds = Relabeled()
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    torch.manual_seed(0)
    cb = CurvatureCallback(ds, directory=tmp_path / "s", score_curvature=False)
    trainer(tmp_path, [cb, ck], max_epochs=3, enable_checkpointing=True).fit(StepClassifier(lr=0.3), RelabeledDM(ds))
    again = CurvatureCallback(ds, directory=tmp_path / "s", score_curvature=False)
    with pytest.warns(UserWarning, match=r"mean training loss per presentation went from .* \(the store's latest "
                                         r"epoch, 2\) to .* in epoch 3.*label smoothing.*another `directory`"):
        trainer(tmp_path, [again, ModelCheckpoint()], max_epochs=5, enable_checkpointing=True).fit(
            Smoothed(lr=0.3), RelabeledDM(ds), ckpt_path=tmp_path / "ck" / "last.ckpt")


def test_loss_jump_thresholds():
    one = np.ones(1)
    assert loss_jump(one * 0.1, one, one * 0.39, one) is None  # up less than LOSS_JUMP times
    assert loss_jump(one * 0.1, one, one * 0.41, one) == (0.1, 0.41)
    assert loss_jump(one * 1.6, one, one * 0.11, one) is None  # down less than LOSS_JUMP**2 times (a schedule's drop)
    assert loss_jump(one * 1.6, one, one * 0.09, one) == (1.6, 0.09)
    assert loss_jump(np.array([np.nan]), np.array([np.nan]), one, one) is None  # nothing to compare with
    assert loss_jump(-one, one, one * 10, one) is None  # a loss of one's own that is negative: not compared


@pytest.mark.parametrize("shift", [-1, 1])
def test_shifted_indices_are_refused_as_out_of_range_not_as_labels_changed(tmp_path, shift):
    class Shifted(StepClassifier):
        def training_step(self, batch, _):
            x, y, index = batch
            logits = self(x)
            return sample_outputs(F.cross_entropy(logits, y, reduction="none"), index + shift, logits=logits,
                                  targets=y)

    torch.manual_seed(0)
    cb = CurvatureCallback(Blobs(), directory=tmp_path / "s", n_vectors=2)
    with pytest.raises(ValueError, match=r"in epoch 0 the training steps gave 1 presentation\(s\) a 'sample_index' "
                       r"outside \[0, 48\) .* the indices look shifted .* not the labels changed\. Expected "
                       r"'sample_index' to be the sample's position in the scored dataset \(WithIndex's third item\)"):
        trainer(tmp_path, [cb], max_epochs=1).fit(Shifted(), IndexedBlobsDM())
