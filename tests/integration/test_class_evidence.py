"""Class evidence from the training steps (issue 18 item 2, a suggested label for every sample): each sample's K most
favoured classes and their softmax mass over every presentation, against an independent float64 loop over the steps'
logits, with K >= C (exact) and K < C; the recorder's rounds, the ranks' merge, the store's value checks, a resume
with another K, and the reader."""

import json

import numpy as np
import pytest
import torch
from boring import Blobs, IndexedBlobsDM, StepClassifier, trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from curvature_callback import CurvatureCallback, CurvatureStore, sample_outputs
from curvature_callback.analysis import class_evidence
from curvature_callback.core.channels import STEP_CHANNELS, class_evidence_channels, epoch_class_values, step_channels
from curvature_callback.core.steps import StepRecorder, merge_evidence
from curvature_callback.core.store import StoreCorruptError, StoreMismatchError
from curvature_callback.integration.callback import DEFAULT_EVIDENCE_WINDOW
from curvature_callback.integration.training_steps import read_step_outputs


class Logits(Callback):
    """Writes every training step's (epoch, rank, index, logits) to a file per rank and epoch, on the host."""

    def __init__(self, folder):
        self.folder = folder
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for i, row in zip(outputs["sample_index"].tolist(), outputs["logits"].tolist(), strict=True):
            self.rows.append((trainer.current_epoch, trainer.global_rank, i, row))

    def on_train_epoch_end(self, trainer, pl_module):
        (self.folder / f"logits_{trainer.global_rank}_{trainer.current_epoch}.json").write_text(json.dumps(self.rows))
        self.rows = []


def merged(a, b, k):
    """The reference merge of two {class: mass} dicts: united, added, the k with most mass (ties: smaller class)."""
    out = dict(a)
    for c, m in b.items():
        out[c] = out.get(c, 0.0) + m
    return dict(sorted(out.items(), key=lambda cm: (-cm[1], cm[0]))[:k])


def reference(folder, n, k):
    """Per sample, in float64: every presentation's softmax, its min(k, C) most probable classes merged into the
    epoch's evidence in order (rank by rank), each epoch's evidence merged into the running one."""
    rows = []
    for path in sorted(folder.glob("logits_*.json")):
        rows += json.loads(path.read_text())
    rows.sort(key=lambda r: (r[0], r[1]))  # by epoch, then rank; each rank's order kept
    running, seen = [{} for _ in range(n)], np.zeros(n)
    for epoch in sorted({r[0] for r in rows}):
        now = [{} for _ in range(n)]
        for _, _, i, logits in (r for r in rows if r[0] == epoch):
            z = np.array(logits, dtype=np.float64)
            p = np.exp(z - z.max())
            p /= p.sum()
            top = np.argsort(-p, kind="stable")[:min(k, len(p))]
            now[i] = merged(now[i], {int(c): p[c] for c in top}, k)
            seen[i] += 1
        running = [merged(r, e, k) for r, e in zip(running, now, strict=True)]
    classes, mass = np.full((n, k), -1), np.zeros((n, k))
    for i, r in enumerate(running):
        classes[i, :len(r)], mass[i, :len(r)] = list(r), list(r.values())
    return classes, mass, seen


def check(store, folder, k):
    classes, mass, seen = reference(folder, store.n, k)
    got_classes, got_prob = class_evidence(store)
    np.testing.assert_array_equal(got_classes, classes)
    np.testing.assert_allclose(got_prob * seen[:, None], mass, rtol=1e-5, atol=1e-7)
    assert np.all(got_prob.sum(1) <= 1 + 1e-6)
    return classes, mass, seen


@pytest.mark.parametrize("k", [3, 5, 2, 1], ids=["K=C", "K>C", "K<C", "K=1"])
def test_evidence_equals_a_float64_loop_over_every_steps_logits(tmp_path, k):
    """Blobs have C = 3 classes: K >= 3 is exact; K < 3 keeps the slots as the reference merge does."""
    torch.manual_seed(0)
    cb = CurvatureCallback(Blobs(), directory=tmp_path / "s", score_curvature=False, class_evidence=k)
    trainer(tmp_path, [cb, Logits(tmp_path)], max_epochs=4, accumulate_grad_batches=2).fit(
        StepClassifier(lr=3.0), IndexedBlobsDM(shuffle=True))
    store = CurvatureStore.open(tmp_path / "s")  # and the early window's slots, by default
    assert store.step_channels == list(step_channels(k, DEFAULT_EVIDENCE_WINDOW))
    classes, mass, seen = check(store, tmp_path, k)
    assert seen.tolist() == [4] * 48
    if k >= 3:  # every class kept: the masses are the whole softmax, 1 per presentation
        np.testing.assert_allclose(mass.sum(1), seen, rtol=1e-6)
        assert (classes[:, 3:] == -1).all()
    else:  # the test can tell: some sample changed its favoured classes over training
        assert len({tuple(c) for c in classes}) > 1 and (mass.sum(1) < seen - 1e-3).any()


def test_recorder_merges_a_samples_presentations_in_one_fold_in_rounds(monkeypatch):
    """A sample presented several times between two folds (rounds), or in separate folds: the same evidence."""
    g = torch.Generator().manual_seed(0)
    steps = [(torch.tensor(i), torch.randn(len(i), 5, generator=g)) for i in ([0, 1], [1, 0], [1, 2], [1, 3], [0, 1])]
    results = []
    for flush in (1, 2, 1000):
        monkeypatch.setattr(StepRecorder, "FLUSH_STEPS", flush)
        r = StepRecorder(4, torch.device("cpu"), classes=2)
        for index, logits in steps:
            r.add(index, torch.ones(len(index)), torch.ones(len(index), dtype=torch.bool), logits=logits)
        results.append(r.epoch_evidence())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    torch.testing.assert_close(results[0], results[2], rtol=0, atol=0)
    ref = [{} for _ in range(4)]
    for index, logits in steps:
        p = logits.double().softmax(1)
        for i, row in zip(index.tolist(), p, strict=True):
            top = row.topk(2).indices.tolist()
            ref[i] = merged(ref[i], {c: row[c].item() for c in top}, 2)
    ev = results[2]
    for i in range(4):
        assert (ev[i, :2] - 1).tolist() == [float(c) for c in ref[i]], i
        np.testing.assert_allclose(ev[i, 2:4].tolist(), list(ref[i].values()), rtol=1e-6)
    assert ev[:, 4].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_recorder_with_fewer_classes_than_slots_steps_without_logits_and_logits_not_finite():
    r = StepRecorder(4, torch.device("cpu"), classes=3)
    ones, right = torch.ones(2), torch.ones(2, dtype=torch.bool)
    r.add(torch.tensor([0, 1]), ones, right, logits=torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]))
    r.add(torch.tensor([2, 3]), ones, right)  # a step without logits
    r.add(torch.tensor([3, 0]), ones, right, logits=torch.tensor([[float("inf"), 0.0], [1.0, 0.0]]))
    ev = r.epoch_evidence()
    p = torch.tensor([0.0, 1.0]).softmax(0)
    assert (ev[:, :3] - 1).tolist() == [[0, 1, -1], [-1, -1, -1], [-1, -1, -1], [-1, -1, -1]]
    np.testing.assert_allclose(ev[0, 3:6].tolist(), [1.0, 1.0, 0.0], rtol=1e-6)  # p[1] + p[0], p[0] + p[1]
    assert ev[0, 3] == p[1] + p[0] and ev[:, 6].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_ranks_evidence_summed_and_a_padded_sample_gathered_and_merged():
    """Two ranks' recorders (DistributedSampler pads: sample 1 on both): the sum over ranks reads as it is where one
    rank has evidence, and the padded sample's slots are gathered and merged in rank order."""
    ranks = [StepRecorder(3, torch.device("cpu"), classes=2) for _ in range(2)]
    logits = {0: torch.tensor([[3.0, 1.0, 0.0]]), 1: torch.tensor([[0.0, 2.0, 1.0]])}
    ranks[0].add(torch.tensor([0, 1]), torch.ones(2), torch.ones(2, dtype=torch.bool),
                 logits=torch.tensor([[2.0, 0.0, 0.0], [3.0, 1.0, 0.0]]))
    ranks[1].add(torch.tensor([1, 2]), torch.ones(2), torch.ones(2, dtype=torch.bool),
                 logits=torch.tensor([[0.0, 2.0, 1.0], [0.0, 0.0, 5.0]]))
    reduced = ranks[0].epoch_evidence() + ranks[1].epoch_evidence()
    gathered = []

    def all_gather(mine):
        gathered.append(mine)
        return torch.stack([torch.cat((r.evidence[0][[1]].float(), r.evidence[1][[1]]), 1) for r in ranks])

    classes, mass = ranks[0].combine_evidence(reduced, all_gather)
    assert len(gathered) == 1 and gathered[0].shape == (1, 4)  # one gather, of the one padded sample
    p0, p1 = logits[0].softmax(1)[0], logits[1].softmax(1)[0]
    want = merged({0: p0[0].item(), 1: p0[1].item()}, {1: p1[1].item(), 2: p1[2].item()}, 2)
    assert classes[1].tolist() == list(want) and classes[0].tolist() == [0, 1] and classes[2].tolist() == [2, 0]
    np.testing.assert_allclose(mass[1].tolist(), list(want.values()), rtol=1e-6)
    # one rank alone: no gather at all
    alone = ranks[0].combine_evidence(ranks[0].epoch_evidence(), None)
    assert alone[0][1].tolist() == [0, 1]


def test_merge_and_the_commits_running_evidence():
    c, m = merge_evidence(torch.tensor([[-1, -1, -1]]), torch.zeros(1, 3), torch.tensor([[4, 2]]),
                          torch.tensor([[0.5, 0.5]]), 3)
    assert c.tolist() == [[2, 4, -1]] and m.tolist() == [[0.5, 0.5, 0.0]]  # a tie: the smaller class first
    v = epoch_class_values(np.array([[1.0, 3.0], [np.nan, np.nan]]), np.array([[2.0, 0.5], [np.nan, np.nan]]),
                           np.array([[3, 0], [0, -1]]), np.array([[0.75, 0.25], [1.0, 0.0]]))
    assert v["train_class_0"].tolist() == [1.0, 0.0] and v["train_class_1"].tolist() == [3.0, -1.0]
    assert v["train_class_mass_0"].tolist() == [2.0, 1.0] and v["train_class_mass_1"].tolist() == [1.25, 0.0]


def test_sample_outputs_passes_detached_logits_and_the_reader_returns_them():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    out = sample_outputs(torch.tensor([0.1, 1.3]), torch.tensor([4, 5]), logits=logits, targets=torch.tensor([0, 0]))
    assert not out["logits"].requires_grad and out["logits"].data_ptr() == logits.data_ptr()  # a reference, no copy
    assert read_step_outputs(out, None, lambda b: b)[4] is out["logits"]
    for other in (out["logits"][:1], out["logits"].long(), out["logits"][:, :, None]):  # not [B, C] floating: unread
        assert read_step_outputs({**out, "logits": other}, None, lambda b: b)[4] is None


def test_off_and_without_logits_no_evidence(tmp_path):
    cb = CurvatureCallback(Blobs(), directory=tmp_path / "off", score_curvature=False, class_evidence=0)
    trainer(tmp_path, [cb], max_epochs=1).fit(StepClassifier(), IndexedBlobsDM())
    store = CurvatureStore.open(tmp_path / "off")
    assert store.step_channels == list(STEP_CHANNELS) and class_evidence(store) is None

    class NoLogits(StepClassifier):
        def training_step(self, batch, i):
            return {k: v for k, v in super().training_step(batch, i).items() if k != "logits"}

    cb = CurvatureCallback(Blobs(), directory=tmp_path / "none", score_curvature=False)
    trainer(tmp_path, [cb], max_epochs=1).fit(NoLogits(), IndexedBlobsDM())
    classes, prob = class_evidence(CurvatureStore.open(tmp_path / "none"))
    assert (classes == -1).all() and (prob == 0).all()  # presented, with no evidence


def test_a_resumed_run_with_k_below_c_equals_an_uninterrupted_one(tmp_path):
    """K = 1 of 3 classes (evictions happen): the running slots continue from the store's latest values."""
    def fit(name, epochs, ckpt=None, *more):
        cb = CurvatureCallback(Blobs(), directory=tmp_path / name, score_curvature=False, class_evidence=1)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / f"ck_{name}", save_last=True)
        torch.manual_seed(0)
        trainer(tmp_path, [cb, checkpoint, *more], max_epochs=epochs, enable_checkpointing=True).fit(
            StepClassifier(lr=3.0), IndexedBlobsDM(), ckpt_path=ckpt)

    (tmp_path / "logits").mkdir()
    fit("straight", 5, None, Logits(tmp_path / "logits"))
    fit("resumed", 2)
    fit("resumed", 5, tmp_path / "ck_resumed" / "last.ckpt")
    a, b = CurvatureStore.open(tmp_path / "straight"), CurvatureStore.open(tmp_path / "resumed")
    assert a.step_epochs == b.step_epochs == [0, 1, 2, 3, 4]
    favourites = {}  # the test can tell: some sample's most probable class changed, an eviction
    for path in (tmp_path / "logits").glob("logits_*.json"):
        for _, _, i, logits in json.loads(path.read_text()):
            favourites.setdefault(i, set()).add(int(np.argmax(logits)))
    assert max(map(len, favourites.values())) > 1
    for got, want in zip(class_evidence(b), class_evidence(a), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_resume_with_another_k_is_refused_by_name(tmp_path):
    cb = CurvatureCallback(Blobs(), directory=tmp_path / "s", score_curvature=False)
    trainer(tmp_path, [cb], max_epochs=1).fit(StepClassifier(), IndexedBlobsDM())
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir() if p.name != "lock"}
    for k, fix in ((5, 3), (0, 3)):
        cb = CurvatureCallback(Blobs(), directory=tmp_path / "s", score_curvature=False, class_evidence=k)
        with pytest.raises(StoreMismatchError, match=rf"keeps class evidence in 3 slot\(s\) per sample "
                           rf"\(class_evidence=3\), this run asks for {k} \(class_evidence={k}\).*Resume with "
                           rf"class_evidence={fix} \(step channels with {fix} class-evidence slots\), or use another "
                           r"`directory`"):
            trainer(tmp_path, [cb], max_epochs=2).fit(StepClassifier(), IndexedBlobsDM())
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir() if p.name != "lock"} == before


# ------------------------------------------------------------------------------------------ the store's value checks
SETTINGS = {"h": 1e-3, "n_vectors": 0, "seed": 0, "loss": "cross_entropy", "fast": False, "pass_kind": "forward"}


def evidence_store(path, k=3):
    """Three samples, two epochs: sample 0 all three classes, sample 1 two (slot 2 empty), sample 2 never seen."""
    with CurvatureStore.create(path, 3, settings=SETTINGS, step_channels=(*STEP_CHANNELS,
                                                                           *class_evidence_channels(k))) as s:
        for e in (0, 1):
            seen = np.array([1.0, 1.0])
            steps = {c: np.zeros(2) for c in STEP_CHANNELS} | {"train_seen": seen, "train_wrong_epoch": -seen}
            steps |= {"train_class_0": np.array([2.0, 1.0]), "train_class_1": np.array([0.0, 0.0]),
                      "train_class_2": np.array([1.0, -1.0]), "train_class_mass_0": (e + 1) * np.array([0.5, 0.75]),
                      "train_class_mass_1": (e + 1) * np.array([0.3, 0.25]),
                      "train_class_mass_2": (e + 1) * np.array([0.2, 0.0])}
            s.commit_epoch(e, None, steps=steps, step_indices=np.array([0, 1]))
    return path


DAMAGES = {  # file, sample, value -> what the refusal says
    "fractional class": ("train_class_1_last.npy", 0, 0.5, r"train_class_1_last\.npy is damaged: expected a whole "
                         r"class id >= -1 \(-1: an empty slot\), got 0\.5 for sample 0"),
    "class below -1": ("train_class_0_last.npy", 1, -2.0, r"train_class_0_last\.npy is damaged: expected a whole"),
    "a class twice": ("train_class_1_last.npy", 0, 2.0, r"train_class_1_last\.npy is damaged: expected a class other "
                      r"than slot 0's, got 2\.0 for sample 0"),
    "a class after an empty slot": ("train_class_0_last.npy", 1, -1.0, r"train_class_1_last\.npy is damaged: "
                                    r"expected an empty slot \(-1\) after slot 0's empty one, got 0\.0 for sample 1"),
    "negative mass": ("train_class_mass_2_last.npy", 0, -0.1, r"train_class_mass_2_last\.npy is damaged: expected a "
                      r"probability mass >= 0"),
    "mass in an empty slot": ("train_class_mass_2_last.npy", 1, 0.1, r"train_class_mass_2_last\.npy is damaged: "
                              r"expected 0 where train_class_2_last\.npy says the slot is empty, got 0\.1"),
    "slots out of order": ("train_class_mass_1_last.npy", 0, 1.5, r"train_class_mass_1_last\.npy is damaged: expected "
                           r"at most slot 0's mass \(slots by mass, descending\), got 1\.5 for sample 0"),
    "more mass than presentations": ("train_class_mass_0_last.npy", 1, 1.9, r"train_class_mass_2_last\.npy is "
                                     r"damaged: expected a total mass over slots 0\.\.2 at most the presentations in "
                                     r"train_seen_sum\.npy .*66 float32 ulps allowed.*sample 1"),
    "nan class where seen": ("train_class_0_last.npy", 0, np.nan, r"train_class_0_last\.npy is damaged: expected a "
                             r"latest value where train_seen_sum\.npy says seen"),
    "fractional class sum": ("train_class_0_sum.npy", 0, 3.5, r"train_class_0_sum\.npy is damaged: expected whole sums "
                             r"of class ids"),
    "negative mass sum": ("train_class_mass_0_sum.npy", 0, -1.0, r"train_class_mass_0_sum\.npy is damaged: expected "
                          r"sums >= 0"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_class_evidence_is_refused_at_every_open_by_file_and_sample(tmp_path, damage):
    name, sample, value, message = DAMAGES[damage]
    d = evidence_store(tmp_path / "s")
    good = np.load(d / name)
    array = good.copy()
    array[sample] = value
    np.save(d / name, array)
    for mode in ("r", "r+"):
        with pytest.raises(StoreCorruptError, match=message):
            CurvatureStore.open(d, mode)
    np.save(d / name, good)
    classes, prob = class_evidence(CurvatureStore.open(d))
    assert classes.tolist() == [[2, 0, 1], [1, 0, -1], [-1, -1, -1]]
    np.testing.assert_allclose(prob[:2], [[0.5, 0.3, 0.2], [0.75, 0.25, 0.0]], rtol=1e-7)
    assert np.isnan(prob[2]).all()


def test_the_total_mass_tolerance_is_float32_rounding(tmp_path):
    """A total one float32 ulp per epoch over the presentations passes; 1e-4 over does not."""
    d = evidence_store(tmp_path / "s")
    for total, ok in ((2.0 * (1 + 60 * 2.0**-23), True), (2.0 * (1 + 1e-4), False)):
        array = np.load(d / "train_class_mass_0_last.npy")
        array[0] = total - 1.0  # slots 1 and 2 hold 0.6 + 0.4 of sample 0
        np.save(d / "train_class_mass_0_last.npy", array)
        if ok:
            CurvatureStore.open(d)
        else:
            with pytest.raises(StoreCorruptError, match="at most the presentations"):
                CurvatureStore.open(d)


def test_a_meta_json_with_half_a_slot_is_refused(tmp_path):
    d = evidence_store(tmp_path / "s")
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "step_channels": meta["step_channels"][:-1]}))
    with pytest.raises(StoreCorruptError, match=r"meta\.json is damaged: expected class-evidence 'step_channels' "
                       r"'train_class_j' and 'train_class_mass_j' for every slot"):
        CurvatureStore.open(d)


@pytest.mark.slow
def test_ddp_ranks_evidence_equals_the_loop_with_a_padded_sample(tmp_path):
    """47 samples on 2 ranks: DistributedSampler pads one sample onto both ranks each epoch; its two presentations are
    merged (gathered, in rank order), every other sample's read from the one rank that saw it. K = C: exact."""
    cb = CurvatureCallback(Blobs(47), directory=tmp_path / "s", score_curvature=False)
    torch.manual_seed(0)
    trainer(tmp_path, [cb, Logits(tmp_path)], max_epochs=3, devices=2, strategy="ddp_spawn").fit(
        StepClassifier(lr=3.0), IndexedBlobsDM(47, shuffle=True))
    store = CurvatureStore.open(tmp_path / "s")
    assert {p.name.split("_")[1] for p in tmp_path.glob("logits_*.json")} == {"0", "1"}  # both ranks trained
    _, mass, seen = check(store, tmp_path, 3)
    assert seen.sum() == 48 * 3 and seen.max() > 3  # a sample presented twice in an epoch: the test can tell
    np.testing.assert_array_equal(store.sum_of("train_seen"), seen)
    np.testing.assert_allclose(mass.sum(1), seen, rtol=1e-6)


def test_the_experiments_module_records_evidence_by_default(tmp_path):
    """curvature-train's ClassifierModule returns its logits through sample_outputs: the default callback keeps them."""
    from curvature_callback.experiments.module import ClassifierModule

    cb = CurvatureCallback(Blobs(), directory=tmp_path / "s", score_curvature=False)
    trainer(tmp_path, [cb], max_epochs=2).fit(ClassifierModule(torch.nn.Linear(6, 3), lr=0.5), IndexedBlobsDM())
    classes, prob = class_evidence(CurvatureStore.open(tmp_path / "s"))
    assert classes.shape == (48, 3) and (classes >= 0).all()  # K = 3 = C: every class of every sample
    np.testing.assert_allclose(prob.sum(1), 1.0, rtol=1e-6)


def test_the_default_follows_the_store_it_resumes(tmp_path):
    """class_evidence=None: 3 for a new store; a store made without class evidence (K = 0, as before it existed) or
    with another K resumes with its own, never refused by a default."""
    for k in (0, 2):
        cb = CurvatureCallback(Blobs(), directory=tmp_path / f"k{k}", score_curvature=False, class_evidence=k)
        trainer(tmp_path, [cb], max_epochs=1).fit(StepClassifier(), IndexedBlobsDM())
        again = CurvatureCallback(Blobs(), directory=tmp_path / f"k{k}", score_curvature=False)
        assert again.class_evidence is None
        trainer(tmp_path, [again], max_epochs=2).fit(StepClassifier(), IndexedBlobsDM())
        store = CurvatureStore.open(tmp_path / f"k{k}")
        assert again.class_evidence == k and store.step_epochs == [0, 1]  # a window by default where evidence is kept
        assert store.step_channels == list(step_channels(k, DEFAULT_EVIDENCE_WINDOW if k else 0))
    fresh = CurvatureCallback(Blobs(), directory=tmp_path / "new", score_curvature=False)
    trainer(tmp_path, [fresh], max_epochs=1).fit(StepClassifier(), IndexedBlobsDM())
    assert fresh.class_evidence == 3 and class_evidence(CurvatureStore.open(tmp_path / "new"))[0].shape[1] == 3
