"""Early-window class evidence (issue 24 item 1, the evidence before the network memorizes): the class evidence of the
first W epochs kept apart and frozen after, against the same float64 loop over the steps' logits as the whole run's
(tests/integration/test_class_evidence.py) restricted to the window; resume inside and after the window, DDP, a store
made before the window existed, the refusals and the store's value checks."""

import json
import shutil

import numpy as np
import pytest
import torch
from boring import Blobs, IndexedBlobsDM, StepClassifier, trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_class_evidence import SETTINGS, Logits, check, reference

from curvature_callback import CurvatureCallback, CurvatureStore
from curvature_callback.analysis import class_evidence
from curvature_callback.core.channels import early_evidence_channels, step_channels
from curvature_callback.core.store import StoreCorruptError, StoreMismatchError

EARLY = early_evidence_channels(3)  # train_early_seen, then the K = 3 slots' classes and masses


def window_of(folder, w):
    """The logits files of the epochs before ``w``, in a folder of their own (the reference reads a whole folder)."""
    out = folder / f"first_{w}"
    out.mkdir()
    for path in folder.glob("logits_*.json"):
        if int(path.stem.split("_")[2]) < w:
            shutil.copy(path, out)
    return out


def check_early(store, folder, w, k=3):
    """The store's early evidence against the float64 loop over the first ``w`` epochs' logits."""
    classes, mass, seen = reference(window_of(folder, w), store.n, k)
    got_classes, got_prob = class_evidence(store, early=True)
    np.testing.assert_array_equal(store.sum_of("train_early_seen"), seen)
    np.testing.assert_array_equal(got_classes, classes)
    np.testing.assert_allclose(got_prob * seen[:, None], mass, rtol=1e-5, atol=1e-7)
    return mass, seen


class Snapshots(Callback):
    """After the curvature callback's commit of each epoch (it comes first in the list), the store's latest values."""

    def __init__(self, cb):
        self.cb, self.latest = cb, {}

    def on_train_epoch_end(self, trainer, pl_module):
        store = self.cb.store
        self.latest[trainer.current_epoch] = {c: np.array(store.channel_last(c)) for c in store.step_channels}
        self.latest[trainer.current_epoch]["train_early_seen_sum"] = np.array(store.sum_of("train_early_seen"))


def test_early_evidence_equals_the_loop_over_the_window_and_is_frozen_after_it(tmp_path):
    """K = C = 3 (exact), W = 2 of 4 epochs: the window's evidence is the loop's over epochs 0-1; epochs 2 and 3 move
    the whole run's evidence and leave the window's latest values as they were after epoch 1, bit for bit."""
    cb = CurvatureCallback(Blobs(), directory=tmp_path / "s", score_curvature=False, evidence_window=2)
    snapshots = Snapshots(cb)
    torch.manual_seed(0)
    trainer(tmp_path, [cb, snapshots, Logits(tmp_path)], max_epochs=4, accumulate_grad_batches=2).fit(
        StepClassifier(lr=3.0), IndexedBlobsDM(shuffle=True))
    store = CurvatureStore.open(tmp_path / "s")
    assert store.evidence_window == 2 and cb.evidence_window == 2 and cb.class_evidence == 3
    assert store.step_channels == list(step_channels(3, 2)) and store.step_channels[-7:] == list(EARLY)
    early_mass, early_seen = check_early(store, tmp_path, 2)
    _, whole_mass, whole_seen = check(store, tmp_path, 3)  # the whole run's, unchanged by the window
    assert early_seen.tolist() == [2] * 48 and whole_seen.tolist() == [4] * 48
    np.testing.assert_allclose(early_mass.sum(1), early_seen, rtol=1e-6)
    for epoch in (2, 3):
        for name in EARLY[1:]:
            np.testing.assert_array_equal(snapshots.latest[epoch][name], snapshots.latest[1][name], err_msg=name)
        np.testing.assert_array_equal(snapshots.latest[epoch]["train_early_seen_sum"], early_seen)
        assert (snapshots.latest[epoch]["train_early_seen"] == 0).all()  # no presentation counted after the window
    moved = snapshots.latest[3]["train_class_mass_0"] != snapshots.latest[1]["train_class_mass_0"]
    assert moved.all()  # the test can tell: the whole run's evidence kept growing


def test_a_run_resumed_inside_and_after_the_window_equals_an_uninterrupted_one(tmp_path):
    """K = 1 of 3 classes (evictions), W = 3 of 5 epochs: resumed from the checkpoints of epoch 1 (inside the window)
    and epoch 3 (after it), every training-time channel, the window's included, equals the straight run's."""
    def fit(name, epochs, ckpt=None, *more):
        cb = CurvatureCallback(Blobs(), directory=tmp_path / name, score_curvature=False, class_evidence=1,
                               evidence_window=3 if ckpt is None else None)  # a resume follows the store's own
        checkpoint = ModelCheckpoint(dirpath=tmp_path / f"ck_{name}", save_last=True)
        torch.manual_seed(0)
        trainer(tmp_path, [cb, checkpoint, *more], max_epochs=epochs, enable_checkpointing=True).fit(
            StepClassifier(lr=3.0), IndexedBlobsDM(), ckpt_path=ckpt)
        return cb

    fit("straight", 5)
    fit("resumed", 2)
    assert fit("resumed", 4, tmp_path / "ck_resumed" / "last.ckpt").evidence_window == 3
    fit("resumed", 5, tmp_path / "ck_resumed" / "last.ckpt")
    a, b = CurvatureStore.open(tmp_path / "straight"), CurvatureStore.open(tmp_path / "resumed")
    assert a.step_epochs == b.step_epochs == [0, 1, 2, 3, 4] and a.evidence_window == b.evidence_window == 3
    assert a.step_channels == b.step_channels == list(step_channels(1, 3))
    for name in a.step_channels:
        np.testing.assert_array_equal(b.sum_of(name), a.sum_of(name), err_msg=name)
        np.testing.assert_array_equal(b.channel_last(name), a.channel_last(name), err_msg=name)
    assert a.sum_of("train_early_seen").tolist() == [3] * 48
    for got, want in zip(class_evidence(b, early=True), class_evidence(a, early=True), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_ddp_ranks_early_evidence_equals_the_loop_with_a_padded_sample(tmp_path):
    """47 samples on 2 ranks (one padded sample on both each epoch), W = 2 of 3 epochs: the window's evidence is the
    loop's over the first two epochs, from the same one all_reduce and gather as the whole run's."""
    cb = CurvatureCallback(Blobs(47), directory=tmp_path / "s", score_curvature=False, evidence_window=2)
    torch.manual_seed(0)
    trainer(tmp_path, [cb, Logits(tmp_path)], max_epochs=3, devices=2, strategy="ddp_spawn").fit(
        StepClassifier(lr=3.0), IndexedBlobsDM(47, shuffle=True))
    store = CurvatureStore.open(tmp_path / "s")
    assert {p.name.split("_")[1] for p in tmp_path.glob("logits_*.json")} == {"0", "1"}  # both ranks trained
    mass, seen = check_early(store, tmp_path, 2)
    assert seen.sum() == 48 * 2 and seen.max() > 2  # a sample presented twice in an epoch: the test can tell
    np.testing.assert_allclose(mass.sum(1), seen, rtol=1e-6)
    assert store.sum_of("train_seen").sum() == 48 * 3


def made_before_the_window(tmp_path, name="old"):
    """A store as a callback made it before the window existed: K = 3, no early channels, no evidence_window."""
    cb = CurvatureCallback(Blobs(), directory=tmp_path / name, score_curvature=False, evidence_window=0)
    trainer(tmp_path, [cb], max_epochs=1).fit(StepClassifier(), IndexedBlobsDM())
    meta = json.loads((tmp_path / name / "meta.json").read_text())
    assert meta.pop("evidence_window") == 0
    (tmp_path / name / "meta.json").write_text(json.dumps(meta))
    return tmp_path / name


def test_a_store_made_before_the_window_opens_and_resumes_with_the_default_keeping_none(tmp_path):
    d = made_before_the_window(tmp_path)
    store = CurvatureStore.open(d)
    assert store.evidence_window == 0 and class_evidence(store, early=True) is None
    assert class_evidence(store) is not None
    again = CurvatureCallback(Blobs(), directory=d, score_curvature=False)
    trainer(tmp_path, [again], max_epochs=2).fit(StepClassifier(), IndexedBlobsDM())
    store = CurvatureStore.open(d)
    assert again.evidence_window == 0 and again.class_evidence == 3 and store.step_epochs == [0, 1]
    assert store.step_channels == list(step_channels(3)) and class_evidence(store, early=True) is None
    assert "evidence_window" not in json.loads((d / "meta.json").read_text())  # its meta.json as it was made


def test_resumes_with_another_window_are_refused_naming_both(tmp_path):
    old = made_before_the_window(tmp_path)
    cb = CurvatureCallback(Blobs(), directory=tmp_path / "w2", score_curvature=False, evidence_window=2)
    trainer(tmp_path, [cb], max_epochs=1).fit(StepClassifier(), IndexedBlobsDM())
    cases = ((old, 2, r"keeps no early-window class evidence \(evidence_window=0: made without it, or before it "
                      r"existed\), this run asks for evidence_window=2.*Resume with evidence_window=0"),
             (tmp_path / "w2", 3, r"keeps the class evidence of its first 2 epoch\(s\) apart \(evidence_window=2\), "
                                  r"this run asks for evidence_window=3.*Resume with evidence_window=2 \(or None: the "
                                  r"store's own\), or use another `directory`"),
             (tmp_path / "w2", 0, r"\(evidence_window=2\), this run asks for evidence_window=0"))
    for d, w, message in cases:
        before = {p.name: p.read_bytes() for p in d.iterdir() if p.name != "lock"}
        cb = CurvatureCallback(Blobs(), directory=d, score_curvature=False, evidence_window=w)
        with pytest.raises(StoreMismatchError, match=message):
            trainer(tmp_path, [cb], max_epochs=2).fit(StepClassifier(), IndexedBlobsDM())
        assert {p.name: p.read_bytes() for p in d.iterdir() if p.name != "lock"} == before


def test_a_window_without_class_evidence_is_refused_at_construction():
    for kw, got, fix in (({"class_evidence": 0}, "class_evidence=0", "class_evidence >= 1"),
                         ({"record_training": False}, "record_training=False", "record_training=True")):
        with pytest.raises(ValueError, match=rf"^Expected class evidence with evidence_window=4 \(the window keeps the "
                           rf"class evidence of the first 4 epoch\(s\) apart\), got {got}: .* Drop evidence_window .*"
                           rf"or set it to 0, or keep {fix}\.$"):
            CurvatureCallback(evidence_window=4, **kw)
        assert CurvatureCallback(evidence_window=0, **kw).evidence_window == 0  # off, or the default: no refusal
        assert CurvatureCallback(**kw).evidence_window is None
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match=r"Expected argument `evidence_window` to be an integer >= 0"):
            CurvatureCallback(evidence_window=bad)


def test_without_a_window_the_reader_says_none(tmp_path):
    cb = CurvatureCallback(Blobs(), directory=tmp_path / "s", score_curvature=False, evidence_window=0)
    trainer(tmp_path, [cb], max_epochs=1).fit(StepClassifier(), IndexedBlobsDM())
    store = CurvatureStore.open(tmp_path / "s")
    assert class_evidence(store, early=True) is None and class_evidence(store) is not None
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["evidence_window"] == 0


# ------------------------------------------------------------------------------------------ the store's value checks
def early_store(path):
    """Three samples, W = 1 of two epochs: sample 0 in both (its window's evidence from epoch 0), sample 1 in epoch 1
    only (no window evidence), sample 2 never seen."""
    with CurvatureStore.create(path, 3, settings={**SETTINGS, "evidence_window": 1},
                               step_channels=step_channels(2, 1)) as s:
        for e, idx in ((0, [0]), (1, [0, 1])):
            one = np.ones(len(idx))
            steps = {c: np.zeros(len(idx)) for c in step_channels(2, 1)} | {"train_seen": one,
                                                                             "train_wrong_epoch": -one}
            steps |= {"train_class_0": 2 * one, "train_class_1": 0 * one, "train_class_mass_0": 0.75 * one,
                      "train_class_mass_1": 0.25 * one}
            steps |= {"train_early_seen": one if e < 1 else 0 * one, "train_early_class_0": 2 * one if e < 1 else
                      np.array([2.0, -1.0]), "train_early_class_1": 0 * one if e < 1 else np.array([0.0, -1.0]),
                      "train_early_class_mass_0": 0.75 * one if e < 1 else np.array([0.75, 0.0]),
                      "train_early_class_mass_1": 0.25 * one if e < 1 else np.array([0.25, 0.0])}
            s.commit_epoch(e, None, steps=steps, step_indices=np.array(idx))
    return path


DAMAGES = {  # the edits (file, sample, value) -> what the refusal says
    "window mass beyond the window's presentations": (  # sample 1: seen after the window only
        [("train_early_class_0_last.npy", 1, 0.0), ("train_early_class_mass_0_last.npy", 1, 0.5)],
        r"train_early_class_mass_1_last\.npy is damaged: expected a total mass over slots 0\.\.1 at most the "
        r"presentations in train_early_seen_sum\.npy .* for sample 1"),
    "more window presentations than presentations": (
        [("train_early_seen_sum.npy", 1, 3.0)],
        r"train_early_seen_sum\.npy is damaged: expected at most the presentations in train_seen_sum\.npy"),
    "a window class twice": ([("train_early_class_1_last.npy", 0, 2.0)],
                             r"train_early_class_1_last\.npy is damaged: expected a class other than slot 0's"),
    "no window value where seen": ([("train_early_class_0_last.npy", 1, np.nan)],
                                   r"train_early_class_0_last\.npy is damaged: expected a latest value where "
                                   r"train_seen_sum\.npy says seen"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_window_evidence_is_refused_at_every_open_by_file_and_sample(tmp_path, damage):
    edits, message = DAMAGES[damage]
    d = early_store(tmp_path / "s")
    classes, prob = class_evidence(CurvatureStore.open(d), early=True)
    assert classes.tolist() == [[2, 0], [-1, -1], [-1, -1]] and prob[0].tolist() == [0.75, 0.25]
    assert np.isnan(prob[1:]).all()  # sample 1 seen after the window only, sample 2 never
    for file, sample, value in edits:
        array = np.load(d / file)
        array[sample] = value
        np.save(d / file, array)
    for mode in ("r", "r+"):
        with pytest.raises(StoreCorruptError, match=message):
            CurvatureStore.open(d, mode)


def test_a_meta_json_whose_window_does_not_fit_its_channels_is_refused(tmp_path):
    d = early_store(tmp_path / "s")
    meta = json.loads((d / "meta.json").read_text())
    for change, message in (({"evidence_window": 0}, r"expected the early window's 'step_channels' \[\] "
                                                     r"\(evidence_window=0\), got \['train_early_seen'"),
                            ({"evidence_window": "1"}, r"expected 'evidence_window' as an integer >= 0 \(epochs\)"),
                            ({"step_channels": meta["step_channels"][:-1]}, r"expected the early window's")):
        (d / "meta.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(StoreCorruptError, match=r"meta\.json is damaged: " + message):
            CurvatureStore.open(d)
