"""CurvatureStore: format, commits (idempotent, atomic across crashes), the lock, settings (docs/DESIGN.md §2, §5)."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from cases import rewrite_journal

from curvature_callback.core import store_journal
from curvature_callback.core.store import (
    LABEL_UNKNOWN,
    CurvatureStore,
    StoreChangedError,
    StoreCorruptError,
    StoreMismatchError,
)

SETTINGS = {"h": 1e-3, "n_vectors": 10, "seed": 0, "loss": "cross_entropy", "fast": False, "pass_kind": "curvature"}


def make(path, n=5, **kw):
    return CurvatureStore.create(path, n, settings=SETTINGS, **kw)


def test_files_are_plain_npy_and_json(tmp_path):
    with make(tmp_path, keep_history=True, channels=("loss",)) as s:
        s.commit_epoch(0, {"curvature": np.arange(5.0), "loss": np.ones(5)})
    names = {"meta.json", "sum.npy", "count.npy", "labels.npy", "mean.npy", "last.npy", "history.npy", "loss_sum.npy",
             "loss_mean.npy", "loss_last.npy", "loss_history.npy", "lock"}
    assert names == set(os.listdir(tmp_path))
    for f in names - {"meta.json", "lock"}:
        np.load(tmp_path / f, mmap_mode="r", allow_pickle=False)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert {k: meta[k] for k in ("n", "h", "n_vectors", "seed", "loss", "epochs", "version")} == {
        "n": 5, "h": 1e-3, "n_vectors": 10, "seed": 0, "loss": "cross_entropy", "epochs": [0], "version": 3}


def test_running_mean_counts_and_history(tmp_path):
    with make(tmp_path, keep_history=True, history_capacity=1) as s:
        assert np.isnan(s.mean).all() and s.history.shape == (0, 5)
        s.commit_epoch(0, np.array([1.0, 2, 3, 4, 5]))
        s.commit_epoch(2, np.array([10.0, 30]), indices=np.array([4, 0]))
        s.commit_epoch(3, np.array([3.0, 4, 5, 6, 7]))  # grows the history beyond its capacity of 1 row
    r = CurvatureStore.open(tmp_path)
    np.testing.assert_allclose(r.mean, [(1 + 30 + 3) / 3, 3, 4, 5, (5 + 10 + 7) / 3])
    assert r.count.tolist() == [3, 2, 2, 2, 3] and r.epochs == [0, 2, 3]
    np.testing.assert_allclose(r.sum / r.count, r.mean)
    assert isinstance(r.history, np.memmap) and r.history.shape == (3, 5)
    np.testing.assert_allclose(r.history[1], [30, np.nan, np.nan, np.nan, 10])
    np.testing.assert_allclose(r.history[0], [1, 2, 3, 4, 5])
    np.testing.assert_allclose(np.nanmean(r.history, axis=0), r.mean, rtol=1e-6)
    np.testing.assert_allclose(r.channel_last(), [3, 4, 5, 6, 7])


def test_epoch_is_added_once(tmp_path):
    with make(tmp_path) as s:
        assert s.commit_epoch(1, np.ones(5)) is True
        assert s.commit_epoch(1, np.full(5, 7.0)) is False
    with CurvatureStore.open(tmp_path, "r+") as s:
        assert s.commit_epoch(1, np.full(5, 7.0)) is False
        assert s.count.tolist() == [1] * 5 and s.mean.tolist() == [1.0] * 5


def test_crash_before_the_commit_point_leaves_the_store_as_before(tmp_path, monkeypatch):
    with make(tmp_path) as s:
        s.commit_epoch(0, np.ones(5))
    s = CurvatureStore.open(tmp_path, "r+")
    real = store_journal.save_journal

    def dies_on_sums(path, arrays):
        def until_sums():
            for name, array in arrays:
                if name == "curvature_sum":
                    raise KeyboardInterrupt("killed while writing the journal")
                yield name, array
        return real(path, until_sums())

    monkeypatch.setattr(store_journal, "save_journal", dies_on_sums)
    with pytest.raises(KeyboardInterrupt):
        s.commit_epoch(1, np.full(5, 3.0))
    monkeypatch.undo()
    s.close()
    with CurvatureStore.open(tmp_path, "r+") as s:
        assert s.epochs == [0] and s.count.tolist() == [1] * 5 and s.mean.tolist() == [1.0] * 5
        assert not (tmp_path / "journal").exists()
        assert s.commit_epoch(1, np.full(5, 3.0))
        assert s.mean.tolist() == [2.0] * 5


def test_crash_in_the_middle_of_applying_is_finished_once(tmp_path):
    """A real process killed after the commit point, with half the arrays written: reopening finishes it."""
    with make(tmp_path, keep_history=True) as s:
        s.commit_epoch(0, np.ones(5))
    script = textwrap.dedent(f"""
        import os, numpy as np
        from curvature_callback.core import store as st
        real = st.CurvatureStore._array
        def dying(self, channel, kind):
            if kind == "mean":  # count and sum are written, mean and meta not yet
                os.kill(os.getpid(), 9)
            return real(self, channel, kind)
        s = st.CurvatureStore.open({str(tmp_path)!r}, "r+")
        st.CurvatureStore._array = dying
        s.commit_epoch(5, np.full(5, 3.0))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert np.load(tmp_path / "count.npy").tolist() == [2] * 5  # half-applied on disk
    with pytest.warns(RuntimeWarning, match="interrupted"):
        reader = CurvatureStore.open(tmp_path)
    with pytest.raises(StoreChangedError, match=r"interrupted commit .*no writer alive.*open\(path, 'r\+'\)"):
        reader.sum_of()  # half-updated: refused, not shown
    with CurvatureStore.open(tmp_path, "r+") as s:  # the dead writer's lock is gone with it
        assert s.epochs == [0, 5]
        assert s.count.tolist() == [2] * 5 and s.mean.tolist() == [2.0] * 5
        np.testing.assert_allclose(s.history, [[1] * 5, [3] * 5])
        assert s.commit_epoch(5, np.full(5, 3.0)) is False
        assert s.count.tolist() == [2] * 5


def test_one_writer_at_a_time(tmp_path):
    s = make(tmp_path)
    with pytest.raises(RuntimeError, match=rf"open for writing elsewhere \(pid {os.getpid()}\)"):
        CurvatureStore.open(tmp_path, "r+")
    with pytest.raises(RuntimeError, match="open for writing elsewhere"):
        CurvatureStore.open_or_create(tmp_path, 5, settings=SETTINGS)
    reader = CurvatureStore.open(tmp_path)  # readers need no lock
    s.commit_epoch(0, np.ones(5))
    assert reader.epochs == [] and reader.count.tolist() == [0] * 5  # a snapshot: count was read at the open
    with pytest.raises(StoreChangedError, match=r"committed epoch\(s\) since you opened it.*CurvatureStore\.open"):
        reader.channel_mean("curvature")  # not read before the commit: no longer matches the reader's epochs
    assert CurvatureStore.open(tmp_path).mean.tolist() == [1.0] * 5
    s.close()
    s.close()
    CurvatureStore.open(tmp_path, "r+").close()


def test_read_only_refuses_to_write(tmp_path):
    make(tmp_path).close()
    r = CurvatureStore.open(tmp_path)
    with pytest.raises(RuntimeError, match="read-only.*mode='r\\+'"):
        r.commit_epoch(0, np.ones(5))
    with pytest.raises(ValueError):
        r.mean[0] = 1.0


@pytest.mark.parametrize(("key", "value"), [("h", 1e-2), ("n_vectors", 3), ("seed", 1), ("loss", "mse")])
def test_other_settings_are_refused_by_name(tmp_path, key, value):
    make(tmp_path).close()
    with pytest.raises(StoreMismatchError, match=rf"made with {key}=.*this run asks {key}={value!r}"):
        CurvatureStore.open_or_create(tmp_path, 5, settings={**SETTINGS, key: value})
    CurvatureStore.open_or_create(tmp_path, 5, settings=SETTINGS).close()  # the lock was released


def test_other_n_channels_history_or_dataset_refused(tmp_path):
    make(tmp_path, fingerprint={"dataset": "Blobs"}).close()
    with pytest.raises(StoreMismatchError, match="made with n=5, this run asks n=6"):
        CurvatureStore.open_or_create(tmp_path, 6, settings=SETTINGS)
    with pytest.raises(StoreMismatchError, match="channels"):
        CurvatureStore.open_or_create(tmp_path, 5, settings=SETTINGS, channels=("loss",))
    with pytest.raises(StoreMismatchError, match="keep_history"):
        CurvatureStore.open_or_create(tmp_path, 5, settings=SETTINGS, keep_history=True)
    with pytest.raises(StoreMismatchError, match="another dataset.*Blobs"):
        CurvatureStore.open_or_create(tmp_path, 5, settings=SETTINGS, fingerprint={"dataset": "Other"})


def test_bad_commits_are_refused_and_change_nothing(tmp_path):
    with make(tmp_path, channels=("loss",)) as s:
        with pytest.raises(ValueError, match=r"channels \['curvature', 'loss'\]"):
            s.commit_epoch(0, np.ones(5))
        with pytest.raises(ValueError, match="Expected 5 values for channel 'loss'"):
            s.commit_epoch(0, {"curvature": np.ones(5), "loss": np.ones(4)})
        with pytest.raises(ValueError, match="Non-finite.*'curvature'.*\\[2\\]"):
            s.commit_epoch(0, {"curvature": np.array([1, 1, np.nan, 1, 1]), "loss": np.ones(5)})
        with pytest.raises(ValueError, match="distinct `indices` in \\[0, 5\\)"):
            s.commit_epoch(0, {"curvature": np.ones(2), "loss": np.ones(2)}, indices=np.array([1, 1]))
        with pytest.raises(ValueError, match="distinct `indices`"):
            s.commit_epoch(0, {"curvature": np.ones(1), "loss": np.ones(1)}, indices=np.array([5]))
        assert s.epochs == [] and s.count.tolist() == [0] * 5


def test_open_and_create_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No curvature store"):
        CurvatureStore.open(tmp_path / "nothing")
    with pytest.raises(ValueError, match="positive integer"):
        CurvatureStore.create(tmp_path / "a", 0, settings=SETTINGS)
    make(tmp_path / "b").close()
    with pytest.raises(FileExistsError, match="exists"):
        make(tmp_path / "b")
    with pytest.raises(ValueError, match="mode"):
        CurvatureStore.open(tmp_path / "b", "w")


def test_channel_names_and_newer_format_refused(tmp_path):
    with pytest.raises(ValueError, match="extra channel names that are identifiers, not 'curvature'"):
        make(tmp_path / "a", channels=("curvature",))
    with pytest.raises(ValueError, match="identifiers"):
        make(tmp_path / "b", channels=("my loss",))
    with pytest.raises(ValueError, match=r"Expected distinct channel names, got \['loss', 'loss'\]"):
        make(tmp_path / "b", channels=("loss", "loss"))
    make(tmp_path / "c").close()
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    (tmp_path / "c" / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(RuntimeError, match="format version 99.*upgrade curvature_callback"):
        CurvatureStore.open(tmp_path / "c")


# ---------------------------------------------------------------------------------------- a store is untrusted data
ROOT = Path(__file__).resolve().parents[2]
# subprocesses import the store alone: the package imports torch only on demand, and the store never (checked)
PRELUDE = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(ROOT)!r})
    import curvature_callback.core.store as st
    assert "torch" not in sys.modules, "the store imported torch"
""")


def snapshot(path):
    return {f: (path / f).read_bytes() for f in sorted(os.listdir(path)) if (path / f).is_file()}


def test_store_files_without_meta_json_are_refused_and_left_as_they_are(tmp_path):
    with make(tmp_path, keep_history=True, channels=("loss",)) as s:
        s.commit_epoch(0, {"curvature": np.arange(5.0), "loss": np.ones(5)})
    (tmp_path / "meta.json").unlink()
    before = snapshot(tmp_path)
    with pytest.raises(StoreCorruptError, match=rf"in {re.escape(str(tmp_path))} without a meta.json, got count\.npy, "
                       r"history\.npy, .*loss_sum\.npy, mean\.npy, sum\.npy but meta\.json is missing.*Nothing was "
                       r"overwritten\. Restore meta\.json"):
        CurvatureStore.open_or_create(tmp_path, 5, settings=SETTINGS)
    assert snapshot(tmp_path) == before
    other = tmp_path / "other"  # somebody else's files, named like ours
    (other / "journal").mkdir(parents=True)
    np.save(other / "margin_mean.npy", np.ones(3))
    with pytest.raises(StoreCorruptError, match=r"got journal, margin_mean\.npy but meta\.json is missing"):
        make(other)
    assert np.load(other / "margin_mean.npy").tolist() == [1.0] * 3 and sorted(os.listdir(other)) == [
        "journal", "lock", "margin_mean.npy"]


def damaged_store(path):
    with make(path, keep_history=True, channels=("loss",), history_capacity=4) as s:
        for e in (0, 1):
            s.commit_epoch(e, {"curvature": np.full(5, e + 1.0), "loss": np.ones(5)})
    return path


def _cut(path, delta):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) + delta)


DAMAGES = {  # what is done to a store of N=5, epochs [0, 1] -> what the refusal says
    "truncated": (lambda d: _cut(d / "sum.npy", -8),
                  r"sum\.npy is damaged: expected 168 bytes .*got 160 bytes \(trunc"),
    "enlarged": (lambda d: _cut(d / "loss_mean.npy", 8),
                 r"loss_mean\.npy is damaged: .*got 176 bytes \(extra bytes"),
    "dtype": (lambda d: np.save(d / "last.npy", np.zeros(5)),
              r"last\.npy is damaged: expected dtype float32, got dtype float64"),
    "object": (lambda d: np.save(d / "mean.npy", np.array([None] * 5), allow_pickle=True),
               r"mean\.npy is damaged: expected dtype float64, got dtype object"),
    "fortran": (lambda d: np.save(d / "history.npy", np.asfortranarray(np.zeros((4, 5), np.float32))),
                r"history\.npy is damaged: expected C order, got Fortran order"),
    "shape": (lambda d: np.save(d / "count.npy", np.zeros(6, np.int64)),
              r"count\.npy is damaged: expected shape \(5,\) \(n=5 in meta\.json\), got shape \(6,\)"),
    "few rows": (lambda d: np.save(d / "loss_history.npy", np.zeros((1, 5), np.float32)),
                 r"loss_history\.npy is damaged: expected shape \(capacity >= 2 epochs, 5\).*got shape \(1, 5\)"),
    "labels": (lambda d: _cut(d / "labels.npy", -8), r"labels\.npy is damaged: .*\(trunc"),
    "missing": (lambda d: (d / "loss_last.npy").unlink(),
                r"loss_last\.npy is damaged: expected the file .*no such file"),
    "header": (lambda d: (d / "sum.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}\n"),
               r"sum\.npy is damaged: expected a \.npy file, got an unreadable header"),
    "not npy": (lambda d: (d / "count.npy").write_text("hello"), r"count\.npy is damaged: expected a \.npy file"),
    "counts": (lambda d: np.save(d / "count.npy", np.array([0, 1, 3, 2, 2])),
               r"count\.npy is damaged: expected counts in \[0, 2\] \(meta\.json lists 2 epoch\(s\)\), got 3 for "
               r"sample 2"),
    "negative counts": (lambda d: np.save(d / "count.npy", np.array([0, -1, 0, 2, 2])),
                        r"count\.npy is damaged: expected counts in \[0, 2\].*got -1 for sample 1"),
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("mode", ["r", "r+"])
def test_damaged_arrays_are_refused_by_name_and_never_repaired(tmp_path, damage, mode):
    do, message = DAMAGES[damage]
    d = damaged_store(tmp_path)
    do(d)
    before = snapshot(d)
    with pytest.raises(StoreCorruptError, match=message):
        CurvatureStore.open(d, mode)
    with pytest.raises(StoreCorruptError, match=message):
        CurvatureStore.open_or_create(d, 5, settings=SETTINGS, channels=("loss",))
    assert snapshot(d) == {**before, "lock": snapshot(d)["lock"]}  # not padded, not rewritten; only the pid


def edit_meta(path, change):
    meta = json.loads((path / "meta.json").read_text())
    new = change(meta)
    (path / "meta.json").write_text(new if isinstance(new, str) else json.dumps(new))


META_DAMAGES = {
    "not json": (lambda m: '{"n": 5,', r"expected a JSON object, got text that does not parse as JSON"),
    "binary": (lambda m: "\udcff", r"expected a JSON object, got text that does not parse"),
    "a list": (lambda m: "[1, 2]", r"expected a JSON object, got a JSON list"),
    "no n": (lambda m: {k: v for k, v in m.items() if k != "n"}, r"expected key 'n' \(a positive integer\), got no "
             "such key"),
    "n text": (lambda m: {**m, "n": "5"}, r"expected 'n' as a positive integer, got '5'"),
    "n zero": (lambda m: {**m, "n": 0}, r"expected 'n' as a positive integer, got 0"),
    "n bool": (lambda m: {**m, "n": True}, r"expected 'n' as a positive integer, got True"),
    "epochs repeated": (lambda m: {**m, "epochs": [0, 0]}, r"expected 'epochs' as a list of distinct integers"),
    "epochs floats": (lambda m: {**m, "epochs": [0.5, 1]},
                      r"expected 'epochs' as a list of distinct integers, got \[0\.5, 1\]"),
    "epochs missing": (lambda m: {k: v for k, v in m.items() if k != "epochs"}, r"expected key 'epochs'"),
    "channels text": (lambda m: {**m, "channels": "loss"},
                      r"expected 'channels' as a list of distinct identifier strings"),
    "channel name": (lambda m: {**m, "channels": ["my loss"]},
                     r"expected 'channels' .*identifier strings other than 'curvature', got \['my loss'\]"),
    "keep_history": (lambda m: {**m, "keep_history": "yes"}, r"expected 'keep_history' as true or false, got 'yes'"),
    "version": (lambda m: {**m, "version": "1"}, r"expected 'version' as a positive integer, got '1'"),
    "fingerprint": (lambda m: {**m, "fingerprint": []}, r"expected 'fingerprint' as an object, got \[\]"),
}


@pytest.mark.parametrize("damage", META_DAMAGES)
def test_damaged_meta_json_is_refused_by_name(tmp_path, damage):
    change, message = META_DAMAGES[damage]
    d = damaged_store(tmp_path)
    if damage == "binary":
        (d / "meta.json").write_bytes(b"\xff\xfe\x00garbage")
    else:
        edit_meta(d, change)
    for mode in ("r", "r+"):
        with pytest.raises(StoreCorruptError, match=rf"{re.escape(str(d / 'meta.json'))} is damaged: {message}"):
            CurvatureStore.open(d, mode)


def test_meta_json_that_disagrees_with_the_arrays_is_refused(tmp_path):
    d = damaged_store(tmp_path)
    edit_meta(d, lambda m: {**m, "n": 6})
    with pytest.raises(StoreCorruptError, match=r"count\.npy is damaged: expected shape \(6,\) \(n=6 in meta"):
        CurvatureStore.open(d)
    edit_meta(d, lambda m: {**m, "n": 5, "epochs": [0]})  # the counts say 2 epochs
    for mode in ("r", "r+"):
        with pytest.raises(StoreCorruptError, match=r"count\.npy is damaged: expected counts in \[0, 1\] \(meta\.json "
                           r"lists 1 epoch\(s\)\), got 2 for sample 0 \(5 sample\(s\) out of range\)"):
            CurvatureStore.open(d, mode)
    edit_meta(d, lambda m: {**m, "channels": ["loss", "margin"], "epochs": [0, 1]})
    with pytest.raises(StoreCorruptError, match=r"margin_sum\.npy is damaged: expected the file"):
        CurvatureStore.open(d)


def test_a_commit_that_failed_while_applying_is_finished_by_the_next_commit(tmp_path, monkeypatch):
    real = CurvatureStore._write
    writes = []

    def fails_once(array, where, values):
        writes.append(1)
        if len(writes) == 3:  # count and sum written, mean not: half-applied, past the commit point
            raise OSError(errno.EIO, "Input/output error")
        return real(array, where, values)

    with make(tmp_path, keep_history=True) as s:
        s.commit_epoch(0, np.ones(5))
        monkeypatch.setattr(CurvatureStore, "_write", staticmethod(fails_once))
        with pytest.raises(OSError, match="Input/output error"):
            s.commit_epoch(1, np.full(5, 3.0))
        monkeypatch.undo()
        assert s.epochs == [0] and (tmp_path / "journal" / "journal.json").exists()
        assert s.commit_epoch(2, np.full(5, 5.0))  # replays epoch 1 first, never drops it
        assert s.commit_epoch(1, np.full(5, 9.0)) is False
        assert s.epochs == [0, 1, 2] and s.count.tolist() == [3] * 5 and s.mean.tolist() == [3.0] * 5
    r = CurvatureStore.open(tmp_path)
    assert r.sum.tolist() == [9.0] * 5 and r.history.tolist() == [[1.0] * 5, [3.0] * 5, [5.0] * 5]


def test_a_damaged_journal_is_refused_not_replayed(tmp_path, monkeypatch):
    with make(tmp_path) as s:
        s.commit_epoch(0, np.ones(5))
        monkeypatch.setattr(CurvatureStore, "_apply_journal", lambda self: None)  # stops at the commit point
        s.commit_epoch(1, np.full(5, 3.0))
    monkeypatch.undo()
    journal = tmp_path / "journal"
    rewrite_journal(journal, count=np.array([2, 2, 2, 2, 2], dtype=np.int32))
    before = snapshot(tmp_path)
    with pytest.raises(StoreCorruptError, match=r"journal/parts\.npz\[count\] is damaged: expected a 1-d int64 array "
                       r"of 5 values, got int32 of shape \(5,\)\. It records a commit past its commit point"):
        CurvatureStore.open(tmp_path, "r+")
    rewrite_journal(journal, count=None)
    with pytest.raises(StoreCorruptError, match=r"parts\.npz\[count\] is damaged: expected the array 'count' in "
                       r"parts\.npz, got arrays \['curvature_sum', 'curvature_values', 'indices'\]"):
        CurvatureStore.open(tmp_path, "r+")
    (journal / "parts.npz").write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(StoreCorruptError, match=r"journal/parts\.npz is damaged: expected a \.npz file of the commit's "
                       r"arrays, got BadZipFile"):
        CurvatureStore.open(tmp_path, "r+")
    before = snapshot(tmp_path)
    (journal / "journal.json").write_text('{"epoch": 1, "row": 7}')
    with pytest.raises(StoreCorruptError, match=r"journal\.json is damaged: expected row 1 \(meta\.json lists 1 "
                       r"epochs\), got row 7"):
        CurvatureStore.open(tmp_path, "r+")
    (journal / "journal.json").write_text("[]")
    for mode in ("r", "r+"):
        with pytest.raises(StoreCorruptError, match=r"journal\.json is damaged: expected a commit record"):
            CurvatureStore.open(tmp_path, mode)
    assert {k: v for k, v in snapshot(tmp_path).items() if k != "lock"} == {
        k: v for k, v in before.items() if k != "lock"}
    assert sorted(os.listdir(journal)) == ["journal.json", "parts.npz"]


def test_a_pending_journal_of_one_npy_per_array_still_replays(tmp_path, monkeypatch):
    """Stores before the one-file journal wrote one .npy per array: a commit they left past its commit point is
    finished the same way."""
    with make(tmp_path) as s:
        s.commit_epoch(0, np.ones(5))
        monkeypatch.setattr(CurvatureStore, "_apply_journal", lambda self: None)  # stops at the commit point
        s.commit_epoch(1, np.full(5, 3.0))
    monkeypatch.undo()
    journal = tmp_path / "journal"
    with np.load(journal / "parts.npz") as z:
        for key in z.files:
            np.save(journal / f"{key}.npy", z[key])
    (journal / "parts.npz").unlink()
    np.save(journal / "count.npy", np.array([2, 2, 2, 2, 9]))
    with pytest.raises(StoreCorruptError, match=r"journal/count\.npy is damaged: expected counts in \[1, 2\]"):
        CurvatureStore.open(tmp_path, "r+")
    np.save(journal / "count.npy", np.array([2, 2, 2, 2, 2]))
    with CurvatureStore.open(tmp_path, "r+") as s:
        assert s.epochs == [0, 1] and s.mean.tolist() == [2.0] * 5 and not journal.exists()


WRITER = """
import time
import numpy as np
s = st.CurvatureStore.open({path!r}, "r+")
print("ready", flush=True)
epoch, end = 0, time.monotonic() + 60
while not os.path.exists({stop!r}) and time.monotonic() < end:
    s.commit_epoch(epoch, np.full({n}, float(epoch)))  # after epochs 0..k-1: count k, sum k(k-1)/2 everywhere
    epoch += 1
s.close()
print(epoch)
"""


def test_readers_see_one_committed_epoch_set_while_another_process_commits(tmp_path):
    n, path, stop = 20_000, tmp_path / "s", tmp_path / "stop"
    make(path, n=n, keep_history=True, history_capacity=2).close()
    writer = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + "import os\n" + WRITER.format(path=str(path), stop=str(stop), n=n)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "ready\n", writer.stderr.read()
        seen, changed = set(), 0
        end = time.monotonic() + 3
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # not even a warning: a commit in progress is waited for
            while time.monotonic() < end:
                try:
                    r = CurvatureStore.open(path)
                    epochs, count = r.epochs, r.count  # count is read at the open
                    time.sleep(0.002 * (len(seen) % 3))  # give a commit the time to land in between
                    total, mean, last, history = r.sum, r.mean, r.channel_last(), np.array(r.history)
                except StoreChangedError as e:
                    assert "since you opened it" in str(e)
                    changed += 1
                    continue
                k = len(epochs)
                assert epochs == list(range(k))
                assert (count == k).all() and (total == k * (k - 1) / 2).all()
                np.testing.assert_array_equal(mean, np.full(n, (k - 1) / 2 if k else np.nan))
                np.testing.assert_array_equal(last, np.full(n, k - 1.0 if k else np.nan, dtype=np.float32))
                np.testing.assert_array_equal(history, np.repeat(np.arange(k, dtype=np.float32)[:, None], n, axis=1))
                seen.add(k)
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    committed = int(out.split()[-1])
    assert committed >= 3 and len(seen) >= 2, (committed, seen, changed)


def test_a_full_disk_fails_before_anything_changes_and_the_run_goes_on(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    with make(tmp_path / "s", keep_history=True, history_capacity=1) as s:
        s.commit_epoch(0, np.ones(5))
        monkeypatch.setattr(os, "posix_fallocate", full)
        with pytest.raises(OSError, match=r"Could not write the commit of epoch 1 into .*No space left on device.*"
                           r"as it was before this commit: free some space") as caught:
            s.commit_epoch(1, np.full(5, 3.0))  # needs a second history row: the file grows
        assert caught.value.errno == errno.ENOSPC
        assert s.epochs == [0] and s.sum.tolist() == [1.0] * 5 and s.history.shape == (1, 5)
        assert sorted(os.listdir(tmp_path / "s")) == ["count.npy", "history.npy", "journal", "labels.npy", "last.npy",
                                                      "lock", "mean.npy", "meta.json", "sum.npy"]  # no .grow left
        assert not (tmp_path / "s" / "journal" / "journal.json").exists()  # before the commit point
        with pytest.raises(OSError, match="No space left on device"):
            make(tmp_path / "new", keep_history=True)
        # a failed create leaves nothing that blocks the next: not even the folder (it is built aside, then renamed)
        assert not (tmp_path / "new").exists() and not [f for f in os.listdir(tmp_path) if "creating" in f]
        monkeypatch.undo()
        assert s.commit_epoch(1, np.full(5, 3.0))
    r = CurvatureStore.open(tmp_path / "s")
    assert r.epochs == [0, 1] and r.mean.tolist() == [2.0] * 5 and r.history.tolist() == [[1.0] * 5, [3.0] * 5]
    make(tmp_path / "new", keep_history=True).close()


def test_history_space_is_reserved_not_sparse(tmp_path, monkeypatch):
    n, rows = 100_000, 4
    data = n * rows * 4
    with make(tmp_path / "a", n=n, keep_history=True, history_capacity=rows):
        pass
    assert os.stat(tmp_path / "a" / "history.npy").st_blocks * 512 >= data  # allocated, not a hole
    monkeypatch.setattr(os, "posix_fallocate", lambda *a: (_ for _ in ()).throw(OSError(errno.EOPNOTSUPP, "no")))
    with make(tmp_path / "b", n=n, keep_history=True, history_capacity=rows) as s:  # zeros written instead
        assert os.stat(tmp_path / "b" / "history.npy").st_blocks * 512 >= data
        s.commit_epoch(0, np.arange(n, dtype=np.float64))
        assert s.history.shape == (1, n) and s.history[0, -1] == n - 1


FILE_SIZE_LIMIT = """
import errno, json, resource, signal
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
s = st.CurvatureStore.open({path!r}, "r+")
out = []
for limit in (4000, 12000):  # the journal's files do not fit; then the journal fits, the grown history not
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        s.commit_epoch(2, np.full(1000, 7.0))
        out.append("committed")
    except OSError as e:
        out.append(errno.errorcode[e.errno])
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    r = st.CurvatureStore.open({path!r})
    out.append([r.epochs, float(r.sum[0]), r.count.tolist()[:2], os.path.exists({journal!r})])
out.append(s.commit_epoch(2, np.full(1000, 7.0)))
print(json.dumps(out))
"""


def test_a_file_size_limit_fails_cleanly_and_lifting_it_lets_the_run_go_on(tmp_path):
    path = tmp_path / "s"
    with make(path, n=1000, keep_history=True, history_capacity=2) as s:
        s.commit_epoch(0, np.ones(1000))
        s.commit_epoch(1, np.full(1000, 3.0))
    script = PRELUDE + "import os\n" + FILE_SIZE_LIMIT.format(path=str(path), journal=str(path / "journal" /
                                                                                              "journal.json"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    before = [[0, 1], 4.0, [2, 2], False]
    assert json.loads(proc.stdout) == ["EFBIG", before, "EFBIG", before, True]
    r = CurvatureStore.open(path)
    assert r.epochs == [0, 1, 2] and r.mean.tolist() == [11 / 3] * 1000 and r.history.shape == (3, 1000)
    np.testing.assert_array_equal(r.history[2], 7.0)


@pytest.mark.parametrize("epoch", [0.7, 2.0, True, np.bool_(False), "1", None])
def test_epoch_must_be_an_integer(tmp_path, epoch):
    with make(tmp_path) as s:
        with pytest.raises(ValueError, match=rf"Expected `epoch` as an integer \(the training epoch\), got "
                           rf"{re.escape(repr(epoch))} of type {type(epoch).__name__}: pass an int"):
            s.commit_epoch(epoch, np.ones(5))
        assert s.epochs == []
        assert s.commit_epoch(np.int64(3), np.ones(5)) and s.commit_epoch(np.int32(4), np.ones(5))
    assert json.loads((tmp_path / "meta.json").read_text())["epochs"] == [3, 4]


def test_a_second_writer_is_refused_even_without_the_lock_file(tmp_path):
    s = make(tmp_path)
    (tmp_path / "lock").unlink()
    with pytest.raises(RuntimeError, match=r"open for writing elsewhere \(pid unknown\): one writer at a time"):
        CurvatureStore.open(tmp_path, "r+")
    script = PRELUDE + f"st.CurvatureStore.open({str(tmp_path)!r}, 'r+')"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "open for writing elsewhere" in proc.stderr
    s.close()
    with CurvatureStore.open(tmp_path, "r+") as s:
        assert (tmp_path / "lock").read_text() == str(os.getpid())


def test_labels_are_recorded_once_and_checked_at_every_commit(tmp_path):
    with make(tmp_path) as s:
        assert (s.labels == LABEL_UNKNOWN).all()
        s.commit_epoch(0, np.ones(2), indices=np.array([1, 3]), labels=np.array([7, 8]))
        s.commit_epoch(1, np.ones(3), indices=np.array([0, 1, 3]), labels=np.array([6, 7, 8]))  # 0 recorded now
        before = {f: (tmp_path / f).read_bytes() for f in ("sum.npy", "count.npy", "labels.npy", "meta.json")}
        with pytest.raises(StoreMismatchError, match=r"recorded samples \[3\] under other labels .*sample 3: label "
                           r"key 8 then, 9 now"):
            s.commit_epoch(2, np.ones(3), indices=np.array([0, 1, 3]), labels=np.array([6, 7, 9]))
        assert {f: (tmp_path / f).read_bytes() for f in before} == before  # nothing added
        with pytest.raises(ValueError, match="Expected `labels` as 2 integer label keys"):
            s.commit_epoch(2, np.ones(2), indices=np.array([0, 1]), labels=np.array([6.0, 7.0]))
        with pytest.raises(ValueError, match="Expected label keys other than"):
            s.commit_epoch(2, np.ones(1), indices=np.array([2]), labels=np.array([LABEL_UNKNOWN]))
    r = CurvatureStore.open(tmp_path)
    assert r.labels.tolist() == [6, 7, LABEL_UNKNOWN, 8, LABEL_UNKNOWN] and r.epochs == [0, 1]


def test_a_format_1_store_is_read_but_not_added_to(tmp_path):
    with make(tmp_path) as s:
        s.commit_epoch(0, np.arange(5.0))
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    (tmp_path / "labels.npy").unlink()  # format 1 had none
    r = CurvatureStore.open(tmp_path)
    assert r.labels is None and r.mean.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(StoreMismatchError, match="format version 1, which records no labels"):
        CurvatureStore.open(tmp_path, "r+")


def test_a_real_full_disk_refuses_the_commit_and_the_run_goes_on_once_space_is_freed(tmp_path):
    """On a 6 MB tmpfs (root only; skipped where mounting is not allowed): history growth needs space that is not
    there, so the commit fails with ENOSPC before anything changes; deleting a file lets the same commit through."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root and mount permission")
    try:
        n = 50_000
        with CurvatureStore.create(disk / "s", n, settings=SETTINGS, keep_history=True, history_capacity=2) as s:
            s.commit_epoch(0, np.full(n, 1.0))
            s.commit_epoch(1, np.full(n, 2.0))
            with open(disk / "filler", "wb") as f, pytest.raises(OSError):
                while True:
                    f.write(bytes(1 << 16))
            with pytest.raises(OSError, match="No space left on device.*The store is as it was before this commit"):
                s.commit_epoch(2, np.full(n, 3.0))  # the history must grow to 4 rows: no room
            assert s.epochs == [0, 1] and (np.asarray(s.sum) == 3.0).all()
            (disk / "filler").unlink()
            assert s.commit_epoch(2, np.full(n, 3.0)) is True
        r = CurvatureStore.open(disk / "s")
        assert r.epochs == [0, 1, 2] and (r.mean == 2.0).all() and r.history.shape == (3, n)
        r.close()
        del r  # its history map keeps the file system busy
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)  # detached once the last map goes


STEPS = ("train_seen", "train_loss")


def test_training_time_channels_commit_with_their_own_samples_and_epochs(tmp_path):
    with make(tmp_path, channels=("loss",), step_channels=STEPS, keep_history=True) as s:
        # an epoch without a pass: the training steps alone, for the samples they saw
        assert s.commit_epoch(0, None, steps={"train_seen": [1, 1], "train_loss": [0.5, 2.0]}, step_indices=[1, 3])
        assert s.commit_epoch(1, {"curvature": np.ones(5), "loss": np.ones(5)},
                              steps={"train_seen": np.ones(5), "train_loss": np.full(5, 0.25)})
        # each part once: epoch 1's steps are in, epoch 1's scores too
        assert s.commit_epoch(1, None, steps={"train_seen": np.ones(5), "train_loss": np.ones(5)}) is False
        assert s.commit_epoch(0, {"curvature": np.full(5, 3.0), "loss": np.ones(5)})  # epoch 0's scores: new
    r = CurvatureStore.open(tmp_path)
    assert r.epochs == [1, 0] and r.step_epochs == [0, 1] and r.step_channels == list(STEPS)
    assert r.sum_of("train_seen").tolist() == [1, 2, 1, 2, 1]
    assert r.sum_of("train_loss").tolist() == [0.25, 0.75, 0.25, 2.25, 0.25]
    assert r.channel_last("train_loss").tolist() == [0.25] * 5 and r.count.tolist() == [2] * 5
    assert r.history.shape == (2, 5)  # rows are the scored epochs only
    with pytest.raises(KeyError, match="no mean for 'train_loss'"):
        r.channel_mean("train_loss")
    with make(tmp_path / "plain") as s, pytest.raises(ValueError, match="no training-time channels"):
        s.commit_epoch(0, None, steps={"train_seen": np.ones(5)})
    with make(tmp_path / "bad", step_channels=STEPS) as s:
        with pytest.raises(ValueError, match=r"training-time channels \['train_seen', 'train_loss'\]"):
            s.commit_epoch(0, None, steps={"train_seen": np.ones(5)})
        with pytest.raises(ValueError, match="Non-finite values for channel 'train_loss'"):
            s.commit_epoch(0, None, steps={"train_seen": np.ones(5), "train_loss": np.full(5, np.nan)})
        assert s.step_epochs == []
    with pytest.raises(ValueError, match="not 'curvature' nor a channel's"):
        make(tmp_path / "clash", channels=("loss",), step_channels=("loss",))


def test_training_time_channels_must_match_to_resume(tmp_path):
    make(tmp_path, step_channels=STEPS).close()
    with pytest.raises(StoreMismatchError, match=r"holds training-time channels \['train_seen', 'train_loss'\], "
                       r"this run records \[\]"):
        CurvatureStore.open_or_create(tmp_path, 5, settings=SETTINGS)
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "step_channels": ["curvature"]}))
    with pytest.raises(StoreCorruptError, match="'step_channels' as a list of distinct identifier strings"):
        CurvatureStore.open(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "step_epochs": [1, 1]}))
    with pytest.raises(StoreCorruptError, match="'step_epochs' as a list of distinct integers"):
        CurvatureStore.open(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "train_loss_last.npy").write_bytes(b"")
    with pytest.raises(StoreCorruptError, match="train_loss_last.npy"):
        CurvatureStore.open(tmp_path)


def test_a_commit_of_scores_and_steps_interrupted_after_its_commit_point_is_finished_once(tmp_path, monkeypatch):
    with make(tmp_path, step_channels=STEPS) as s:
        monkeypatch.setattr(CurvatureStore, "_apply_journal", lambda self: None)  # stops at the commit point
        s.commit_epoch(0, np.ones(5), steps={"train_seen": np.ones(2), "train_loss": [1.0, 2.0]}, step_indices=[0, 4])
    monkeypatch.undo()
    assert json.loads((tmp_path / "journal" / "journal.json").read_text()) == {
        "epoch": 0, "row": 0, "scores": True, "steps": True}
    rewrite_journal(tmp_path / "journal", step_indices=np.array([0, 0]))
    with pytest.raises(StoreCorruptError, match=r"parts\.npz\[step_indices\] is damaged: expected distinct indices"):
        CurvatureStore.open(tmp_path, "r+")
    rewrite_journal(tmp_path / "journal", step_indices=np.array([0, 4]))
    with CurvatureStore.open(tmp_path, "r+") as s:  # replayed, once
        assert s.epochs == [0] and s.step_epochs == [0]
        assert s.sum_of("train_loss").tolist() == [1.0, 0, 0, 0, 2.0] and s.count.tolist() == [1] * 5
        assert not s.commit_epoch(0, np.ones(5), steps={"train_seen": np.ones(5), "train_loss": np.ones(5)})
        assert s.sum_of("train_seen").tolist() == [1.0, 0, 0, 0, 1.0]


def test_a_commit_syncs_its_arrays_once_and_a_failed_sync_keeps_the_journal(tmp_path, monkeypatch):
    from curvature_callback.core import store_format

    calls = []
    monkeypatch.setattr(store_format, "_SYNCFS", lambda fd: calls.append(fd) or 0)
    with make(tmp_path) as s:
        s.commit_epoch(0, np.ones(5))
        assert len(calls) == 1  # one sync for the commit's arrays, whatever their number
        monkeypatch.setattr(store_format, "_SYNCFS", lambda fd: -1)  # the filesystem reports an error (errno 0 here)
        with pytest.raises(OSError, match="syncfs of"):
            s.commit_epoch(1, np.full(5, 3.0))
        assert s.epochs == [0] and (tmp_path / "journal" / "journal.json").exists()  # past its commit point: kept
        flushed = []
        real = np.memmap.flush
        monkeypatch.setattr(store_format, "_SYNCFS", None)  # not Linux: each array flushed
        monkeypatch.setattr(np.memmap, "flush", lambda self: flushed.append(self.shape) or real(self))
        assert s.commit_epoch(2, np.full(5, 5.0))  # replays epoch 1 first
        assert s.epochs == [0, 1, 2] and s.mean.tolist() == [3.0] * 5 and len(flushed) >= 2 * 4


def test_a_folder_that_cannot_be_made_is_named_with_why_not_its_hidden_build_folder(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(OSError, match=rf"^Cannot create the store folder {tmp_path}/file/sub/store: {tmp_path}/file "
                       r"is a file, not a folder \(.*\)\. Pass a `directory` on a writable disk"):
        make(tmp_path / "file" / "sub" / "store")
    if Path("/proc/self").is_dir():  # Linux: a virtual filesystem takes no new folder
        with pytest.raises(FileNotFoundError, match=r"^Cannot create the store folder /proc/curvature_store: /proc "
                           r"takes no new folder: not a real filesystem .*Pass a `directory` on a writable disk"):
            make("/proc/curvature_store")
    assert (tmp_path / "file").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]
