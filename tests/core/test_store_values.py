"""CurvatureStore: what its arrays hold is checked at every open, its meaning keys are required, no commit writes a
journal that cannot be replayed, a creation never leaves a half store under the store's name, and the training
steps' labels are checked like the pass's (issue "Trust, round 2"; docs/DESIGN.md §7)."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cases import rewrite_journal

from curvature_callback.core import store as store_module
from curvature_callback.core.channels import STEP_CHANNELS
from curvature_callback.core.settings import MEANING_KEYS
from curvature_callback.core.store import (
    LABEL_UNKNOWN,
    CurvatureStore,
    StoreCorruptError,
    StoreMismatchError,
)

SETTINGS = {"h": 1e-3, "n_vectors": 10, "seed": 0, "loss": "cross_entropy", "fast": False, "pass_kind": "curvature"}
N = 5


def steps(epoch, seen=(1, 1, 1, 1, 1), correct=(1, 0, 1, 1, 0)):
    seen, correct = np.array(seen, float), np.array(correct, float)
    return {"train_seen": seen, "train_loss": seen * 0.5, "train_correct": correct, "train_forgetting": 0 * seen,
            "train_last_correct": correct, "train_wrong_epoch": np.where(correct < seen, float(epoch), -1.0)}


def two_epochs(path):
    """A store with two committed epochs: scores (curvature and loss) and the training-time channels."""
    with CurvatureStore.create(path, N, settings=SETTINGS, channels=("loss",), step_channels=STEP_CHANNELS) as s:
        for e in (0, 1):
            s.commit_epoch(e, {"curvature": np.arange(1.0, N + 1), "loss": np.full(N, 2.0)}, steps=steps(e))
    return path


def snapshot(path):
    return {f: (path / f).read_bytes() for f in sorted(os.listdir(path)) if (path / f).is_file() and f != "lock"}


def put(path, name, sample, value):
    """Write one value into one array file as a stranger would (the header and the size stay right)."""
    array = np.load(path / name)
    array[sample] = value
    np.save(path / name, array)


DAMAGES = {  # file, sample, value -> what the refusal says
    "nan sum": ("sum.npy", 3, np.nan, r"sum\.npy is damaged: expected finite sums.*got nan for sample 3"),
    "inf loss sum": ("loss_sum.npy", 1, np.inf,
                     r"loss_sum\.npy is damaged: expected finite sums.*got inf for sample 1"),
    "nan train loss": ("train_loss_sum.npy", 4, np.nan,
                       r"train_loss_sum\.npy is damaged: expected finite sums, got nan for sample 4"),
    "mean": ("mean.npy", 2, 7.0, r"mean\.npy is damaged: expected sum\.npy / count\.npy .*got 7\.0 for sample 2"),
    "last nan": ("loss_last.npy", 0, np.nan, r"loss_last\.npy is damaged: expected a finite latest value where count"),
    "negative seen": ("train_seen_sum.npy", 1, -1.0, r"train_seen_sum\.npy is damaged: expected whole counts >= 0, "
                      r"got -1\.0 for sample 1"),
    "fractional seen": ("train_seen_sum.npy", 0, 1.5, r"train_seen_sum\.npy is damaged: expected whole counts"),
    "more right than seen": ("train_correct_sum.npy", 0, 3.0,
                             r"train_correct_sum\.npy is damaged: expected at most the presentations"),
    "last correct": ("train_last_correct_last.npy", 0, 0.5,
                     r"train_last_correct_last\.npy is damaged: expected 0 or 1"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_bad_value_is_refused_at_every_open_by_file_and_sample_and_the_store_stays_readable(tmp_path, damage):
    name, sample, value, message = DAMAGES[damage]
    d = two_epochs(tmp_path / "s")
    good = np.load(d / name)
    put(d, name, sample, value)
    before = snapshot(d)
    for mode in ("r", "r+"):
        with pytest.raises(StoreCorruptError, match=message):
            CurvatureStore.open(d, mode)
    with pytest.raises(StoreCorruptError, match=message):
        CurvatureStore.open_or_create(d, N, settings=SETTINGS, channels=("loss",), step_channels=STEP_CHANNELS)
    assert snapshot(d) == before and not (d / "journal").exists()  # nothing written, no journal left to brick it
    np.save(d / name, good)  # the value put back: readable and writable as before
    with CurvatureStore.open(d, "r+") as s:
        assert s.commit_epoch(2, {"curvature": np.ones(N), "loss": np.ones(N)}, steps=steps(2))
    r = CurvatureStore.open(d)
    assert r.epochs == [0, 1, 2] and r.count.tolist() == [3] * N and np.isfinite(r.mean).all()


def test_a_lost_step_epoch_is_refused_where_a_latest_value_names_it(tmp_path):
    d = two_epochs(tmp_path / "s")
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "step_epochs": [0]}))  # epoch 1's training steps "lost"
    with pytest.raises(StoreCorruptError, match=r"train_wrong_epoch_last\.npy is damaged: expected -1 or one of "
                       r"meta\.json's step_epochs \[0\], got 1\.0 for sample 1"):
        CurvatureStore.open(d)


@pytest.mark.parametrize("key", MEANING_KEYS)
def test_a_meta_json_without_a_meaning_key_is_refused(tmp_path, key):
    d = two_epochs(tmp_path / "s")
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != key}))
    before = snapshot(d)
    for mode in ("r", "r+"):
        with pytest.raises(StoreCorruptError, match=rf"meta\.json is damaged: expected key '{key}' .*no such key"):
            CurvatureStore.open(d, mode)
    with pytest.raises(StoreCorruptError, match=rf"expected key '{key}'"):  # no 0.5-scores into a store of 1e-3
        CurvatureStore.open_or_create(d, N, settings={**SETTINGS, "h": 0.5}, channels=("loss",),
                                      step_channels=STEP_CHANNELS)
    assert snapshot(d) == before
    (d / "meta.json").write_text(json.dumps({**meta, key: None}))
    with pytest.raises(StoreCorruptError, match=rf"expected '{key}' as .*, got None"):
        CurvatureStore.open(d)
    with pytest.raises(ValueError, match=rf"Expected `settings` with every key .*got none for \['{key}'\]"):
        CurvatureStore.create(tmp_path / "new", N, settings={k: v for k, v in SETTINGS.items() if k != key})
    assert not (tmp_path / "new").exists()


def test_no_commit_writes_a_journal_that_cannot_be_replayed(tmp_path):
    with CurvatureStore.create(tmp_path / "s", 2, settings=SETTINGS, keep_history=True) as s:
        s.commit_epoch(0, np.array([1.0, 1.0]))
        with pytest.raises(ValueError, match=r"within float32's range .*got 1e\+39 at sample 1"):
            s.commit_epoch(1, np.array([1.0, 1e39]))  # its latest value and history would be inf
        on_disk = np.load(tmp_path / "s" / "sum.npy", mmap_mode="r+")
        on_disk[1] = np.nan  # the file changed under the writer after its open checked it
        on_disk.flush()
        with pytest.raises(StoreCorruptError, match=r"sum\.npy is damaged: expected finite sums, got nan for sample "
                           r"1\. Nothing of this commit was applied"):
            s.commit_epoch(1, np.array([1.0, 3.0]))
        assert not (tmp_path / "s" / "journal").exists() and s.epochs == [0]
        on_disk[1] = 1.0
        on_disk.flush()
        assert s.commit_epoch(1, np.array([1.0, 3.0]))
    r = CurvatureStore.open(tmp_path / "s")
    assert r.mean.tolist() == [1.0, 2.0] and r.history[1].tolist() == [1.0, 3.0]


def test_a_damaged_pending_journal_is_called_damaged_by_a_reader_first(tmp_path, monkeypatch):
    with CurvatureStore.create(tmp_path, N, settings=SETTINGS) as s:
        s.commit_epoch(0, np.ones(N))
        monkeypatch.setattr(CurvatureStore, "_apply_journal", lambda self: None)  # stops at the commit point
        s.commit_epoch(1, np.full(N, 3.0))
    monkeypatch.undo()
    rewrite_journal(tmp_path / "journal", curvature_sum=np.full(N, np.nan))
    for mode in ("r", "r+"):  # the same first message from a reader as from the writer
        with pytest.raises(StoreCorruptError, match=r"journal/parts\.npz\[curvature_sum\] is damaged: expected finite "
                           r"values, "
                           r"got NaN or infinity\. It records a commit past its commit point that cannot be replayed"):
            CurvatureStore.open(tmp_path, mode)


KILLED_CREATE = """
import os, signal
import numpy as np
from curvature_callback.core import store, store_create, store_format
calls = []
def kill_at(real):
    def write(path, *args):
        calls.append(path)
        if len(calls) == {k}:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs: as a power cut or an OOM kill
        real(path, *args)
    return write
store_create.save_npy = kill_at(store_format.save_npy)  # 7 arrays, then meta.json (the 8th write)
store_create.atomic_write_json = kill_at(store_format.atomic_write_json)
store.CurvatureStore.create({path!r}, 5, settings={settings!r}, step_channels=("train_seen",))
"""


@pytest.mark.parametrize("k", [1, 4, 7, 8])
def test_a_kill_during_creation_leaves_no_half_store_under_its_name(tmp_path, k):
    path = tmp_path / "curvature"
    code = KILLED_CREATE.format(k=k, path=str(path), settings=SETTINGS)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert not path.exists()  # the half store is in a hidden sibling, never under the store's name
    assert [f for f in os.listdir(tmp_path) if re.fullmatch(r"\.curvature\.creating-\d+-[0-9a-f]+", f)]
    with CurvatureStore.open_or_create(path, 5, settings=SETTINGS, step_channels=("train_seen",)) as s:
        assert s.commit_epoch(0, np.ones(5))  # the next run just creates it
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is replaced by the new store whole
    CurvatureStore.create(empty, 2, settings=SETTINGS).close()
    assert sorted(os.listdir(empty)) == ["count.npy", "labels.npy", "last.npy", "lock", "mean.npy", "meta.json",
                                         "sum.npy"]


def test_training_step_labels_are_checked_and_recorded_like_the_pass_labels(tmp_path):
    with CurvatureStore.create(tmp_path, N, settings=SETTINGS, step_channels=STEP_CHANNELS) as s:
        unknown = LABEL_UNKNOWN
        # an epoch without a pass: the steps' labels are recorded (where known)
        assert s.commit_epoch(0, None, steps=steps(0), step_labels=np.array([3, 1, unknown, 4, 1]))
        assert s.labels.tolist() == [3, 1, unknown, 4, 1]
        before = snapshot(tmp_path)
        with pytest.raises(StoreMismatchError, match=r"recorded samples \[1, 4\] under other labels \(2 sample\(s\); "
                           r"e\.g\. sample 1: label key 1 then, 9 now, in the training steps\)"):
            s.commit_epoch(1, None, steps=steps(1), step_labels=np.array([3, 9, 5, 4, 9]))
        with pytest.raises(StoreMismatchError, match=r"recorded samples \[2\] under other labels"):
            # the pass and the steps of one epoch disagree on a sample no commit recorded yet
            s.commit_epoch(1, np.ones(N), labels=np.array([3, 1, 6, 4, 1]), steps=steps(1),
                           step_labels=np.array([3, 1, 5, 4, 1]))
        with pytest.raises(StoreMismatchError, match=r"recorded samples \[0\] under other labels .*then, 2 now\)"):
            s.commit_epoch(1, np.ones(N), labels=np.array([2, 1, 6, 4, 1]), steps=steps(1))  # the pass checks too
        assert snapshot(tmp_path) == before and s.step_epochs == [0] and s.epochs == []
        assert s.commit_epoch(1, np.ones(N), labels=np.array([3, 1, 6, 4, 1]), steps=steps(1),
                              step_labels=np.array([3, unknown, 6, 4, 1]))
    r = CurvatureStore.open(tmp_path)
    assert r.labels.tolist() == [3, 1, 6, 4, 1] and r.step_epochs == [0, 1] and r.epochs == [1]


def test_a_reader_whose_open_check_was_cut_short_checks_each_array_when_it_reads_it(tmp_path, monkeypatch):
    d = two_epochs(tmp_path / "s")
    put(d, "loss_sum.npy", 2, np.nan)

    def busy(self):
        raise store_module.StoreChangedError("a commit landed during the check")  # as under a writer's commits

    monkeypatch.setattr(CurvatureStore, "_check_values", busy)
    r = CurvatureStore.open(d)  # the open's check was cut short: the reads check instead
    assert r.sum.tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]
    for read in (lambda: r.channel_mean("loss"), lambda: r.sum_of("loss")):
        with pytest.raises(StoreCorruptError, match=r"loss_sum\.npy is damaged: expected finite sums.*got nan for "
                           r"sample 2"):
            read()


def test_a_gradient_pass_store_holds_no_curvature_and_says_so(tmp_path):
    settings = {**SETTINGS, "n_vectors": 0, "pass_kind": "gradient"}
    with CurvatureStore.create(tmp_path / "g", 3, settings=settings, channels=("loss", "input_grad"),
                               keep_history=True) as s:
        assert s.pass_kind == "gradient"
        assert s.commit_epoch(0, {"loss": [1.0, 2.0, 3.0], "input_grad": [0.5, 0.25, 4.0]})
        with pytest.raises(ValueError, match=r"Expected values for channels \['loss', 'input_grad'\], got "
                           r"\['curvature', 'input_grad', 'loss'\]"):
            s.commit_epoch(1, {"curvature": np.ones(3), "loss": np.ones(3), "input_grad": np.ones(3)})
        assert s.commit_epoch(1, {"loss": [3.0, 2.0, 1.0], "input_grad": [1.5, 0.75, 0.0]})
    r = CurvatureStore.open(tmp_path / "g")
    assert np.isnan(r.mean).all() and r.sum.tolist() == [0.0] * 3 and r.count.tolist() == [2] * 3
    assert r.channel_mean("loss").tolist() == [2.0] * 3 and r.channel_mean("input_grad").tolist() == [1.0, 0.5, 2.0]
    assert np.isnan(r.history).all() and r.channel_history("loss")[1].tolist() == [3.0, 2.0, 1.0]
    put(tmp_path / "g", "mean.npy", 1, 0.0)
    with pytest.raises(StoreCorruptError, match=r"mean\.npy is damaged: expected NaN everywhere \(a gradient pass "
                       r"computes no curvature\), got 0\.0 for sample 1"):
        CurvatureStore.open(tmp_path / "g")


def test_a_format_2_store_is_a_curvature_pass_and_is_still_added_to(tmp_path):
    d = two_epochs(tmp_path / "s")
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**{k: v for k, v in meta.items() if k != "pass_kind"}, "version": 2}))
    with CurvatureStore.open_or_create(d, N, settings=SETTINGS, channels=("loss",), step_channels=STEP_CHANNELS) as s:
        assert s.pass_kind == "curvature" and s.commit_epoch(2, {"curvature": np.ones(N), "loss": np.ones(N)})
    assert json.loads((d / "meta.json").read_text())["version"] == 2  # read as it is, never rewritten as another
    with pytest.raises(StoreMismatchError, match=r"was made with pass_kind='curvature', this run asks "
                       r"pass_kind='gradient'"):
        CurvatureStore.open_or_create(d, N, settings={**SETTINGS, "n_vectors": 0, "pass_kind": "gradient"},
                                      channels=("loss",), step_channels=STEP_CHANNELS)


@pytest.mark.parametrize(("n_vectors", "kind"), [(0, "curvature"), (2, "gradient"), (1, "forward")])
def test_a_pass_kind_that_disagrees_with_n_vectors_is_refused(tmp_path, n_vectors, kind):
    d = two_epochs(tmp_path / "s")
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "n_vectors": n_vectors, "pass_kind": kind}))
    with pytest.raises(StoreCorruptError, match=rf"expected 'n_vectors' >= 1 for a curvature pass, 0 for a gradient "
                       rf"or forward pass, got n_vectors={n_vectors} with pass_kind='{kind}'"):
        CurvatureStore.open(d)


def test_the_analysis_reads_no_curvature_from_a_pass_that_computed_none(tmp_path):
    from curvature_callback.analysis import suspicion_scores

    settings = {**SETTINGS, "n_vectors": 0, "pass_kind": "forward"}
    with CurvatureStore.create(tmp_path / "f", 3, settings=settings, channels=("loss",)) as s:
        s.commit_epoch(0, {"loss": [1.0, 2.0, 3.0]})
    scores = suspicion_scores(CurvatureStore.open(tmp_path / "f"))
    assert set(scores) == {"loss"} and scores["loss"].tolist() == [1.0, 2.0, 3.0]
