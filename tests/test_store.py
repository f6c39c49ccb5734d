"""CurvatureStore: format, commits (idempotent, atomic across crashes), the lock, settings (DESIGN §2, §5)."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from curvature_callback.store import CurvatureStore, StoreMismatchError

SETTINGS = {"h": 1e-3, "n_vectors": 10, "seed": 0, "loss": "cross_entropy"}


def make(path, n=5, **kw):
    return CurvatureStore.create(path, n, settings=SETTINGS, **kw)


def test_files_are_plain_npy_and_json(tmp_path):
    with make(tmp_path, keep_history=True, channels=("loss",)) as s:
        s.commit_epoch(0, {"curvature": np.arange(5.0), "loss": np.ones(5)})
    names = {"meta.json", "sum.npy", "count.npy", "mean.npy", "last.npy", "history.npy", "loss_sum.npy",
             "loss_mean.npy", "loss_last.npy", "loss_history.npy", "lock"}
    assert names == set(os.listdir(tmp_path))
    for f in names - {"meta.json", "lock"}:
        np.load(tmp_path / f, mmap_mode="r", allow_pickle=False)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert {k: meta[k] for k in ("n", "h", "n_vectors", "seed", "loss", "epochs", "version")} == {
        "n": 5, "h": 1e-3, "n_vectors": 10, "seed": 0, "loss": "cross_entropy", "epochs": [0], "version": 1}


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
    real = np.save

    def dies_on_sums(f, arr, **kw):
        if "curvature_sum" in getattr(f, "name", ""):
            raise KeyboardInterrupt("killed while writing the journal")
        return real(f, arr, **kw)

    monkeypatch.setattr(np, "save", dies_on_sums)
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
        from curvature_callback import store as st
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
        CurvatureStore.open(tmp_path)
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
    assert reader.count.tolist() == [1] * 5  # memory maps see the writer's commits
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
    make(tmp_path / "c").close()
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    (tmp_path / "c" / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(RuntimeError, match="format version 99.*upgrade curvature_callback"):
        CurvatureStore.open(tmp_path / "c")
