"""Corrections a person made to a run's labels: the file's checks, apply_corrections, and our datamodules applying
them (relabel, drop) with the bookkeeping right and the scored indices unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curvature_callback import apply_corrections
from curvature_callback.core import corrections
from curvature_callback.core.corrections import (
    COLUMNS,
    MAX_LINE,
    CorrectionsError,
    corrections_rows,
    read_corrections,
    write_corrections,
)

HEADER = ",".join(COLUMNS)


def _file(tmp_path: Path, *lines: str, header: str = HEADER) -> Path:
    path = tmp_path / "corrections.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def test_relabel_and_drop_apply_and_the_rest_keep_their_labels(tmp_path):
    labels = np.array([0, 1, 2, 0, 1])
    path = _file(tmp_path, "1,1,0,relabel,0", "2,2,,DROP,", "4,1,2,keep,2")  # keep: new_label not read
    new, keep = apply_corrections(labels, path)
    assert new.tolist() == [0, 0, 2, 0, 1] and keep.tolist() == [True, True, False, True, True]
    assert new.dtype == np.int64 and labels.tolist() == [0, 1, 2, 0, 1]  # the caller's labels untouched
    # a spreadsheet's byte-order mark, blank lines and a notes column are fine
    path.write_bytes(b"\xef\xbb\xbf" + f"{HEADER},notes\n1,1,0,relabel,0,looks like a zero\n\n".encode())
    assert apply_corrections(labels, path)[0].tolist() == [0, 0, 2, 0, 1]


def test_the_prefilled_rows_relabel_confident_suggestions_and_keep_the_rest(tmp_path):
    rows = corrections_rows([7, 3, 9, 8], [1, 2, 4, 0], [5, 2, 6, -1], [0.9, 0.99, 0.2, 0.9])
    assert rows == [(7, 1, "5", "relabel", "5"), (3, 2, "2", "keep", ""), (9, 4, "6", "keep", ""),
                    (8, 0, "", "keep", "")]  # a confident suggestion of its own label, a weak one, none
    path = write_corrections(tmp_path / "corrections.csv", rows)
    assert Path(path).read_text().splitlines()[:2] == [HEADER, "7,1,5,relabel,5"]
    fixes = read_corrections(path, 10, 10)
    assert fixes.index.tolist() == [7, 3, 9, 8] and fixes.action.tolist() == ["relabel", "keep", "keep", "keep"]
    assert fixes.new_label.tolist() == [5, -1, -1, -1]


@pytest.mark.parametrize(
    ("lines", "header", "match"),
    [
        ((), "", "is empty"),
        (("1,1,relabel,0",), "index,given_label,action", r"missing: new_label"),
        (("1,1,0,relabel,0",), "index,index,given_label,action,new_label", "distinct column names"),
        (("9,1,0,keep,",), HEADER, r"index on line 2 .* in \[0, 5\), got '9'"),
        (("-1,1,0,keep,",), HEADER, r"index on line 2 .*got '-1'"),
        (("1.5,1,0,keep,",), HEADER, r"index on line 2 .*got '1.5'"),
        (("1,1,0,keep,", "1,1,0,drop,"), HEADER, "Sample 1 is on lines 2 and 3"),
        (("1,1,0,fix,",), HEADER, r"action on line 2 .* keep, relabel, drop, got 'fix'"),
        (("1,1,0,relabel,",), HEADER, r"new_label on line 2 .* in \[0, 3\), got ''"),
        (("1,1,0,relabel,3",), HEADER, r"new_label on line 2 .* in \[0, 3\), got '3'"),
        (("1,x,0,keep,",), HEADER, r"given_label on line 2 .*got 'x'"),
        (("0,0,,keep,",) * 1 + tuple(f"{i},{i % 3},,keep," for i in range(1, 6)), HEADER, "more than 5 rows"),
    ],
    ids=["empty", "column missing", "column twice", "index too high", "index negative", "index not an integer",
         "index twice", "unknown action", "relabel without label", "label out of range", "given not an integer",
         "more rows than samples"],
)
def test_a_bad_corrections_file_is_refused_naming_the_line(tmp_path, lines, header, match):
    path = tmp_path / "corrections.csv"
    path.write_text("\n".join([header, *lines]) + "\n" if header else "")
    with pytest.raises(CorrectionsError, match=match):
        apply_corrections(np.array([0, 1, 2, 0, 1]), path)


def test_a_file_made_for_other_labels_or_no_file_is_refused(tmp_path):
    path = _file(tmp_path, "1,2,0,relabel,0")
    with pytest.raises(CorrectionsError, match=r"sample 1 has given_label 2, but its label here is 1 .*other labels"):
        apply_corrections([0, 1, 2], path)
    with pytest.raises(CorrectionsError, match="No corrections file"):
        apply_corrections([0, 1, 2], tmp_path / "missing.csv")
    with pytest.raises(CorrectionsError, match="got a folder"):
        apply_corrections([0, 1, 2], tmp_path)
    (tmp_path / "latin.csv").write_bytes(HEADER.encode() + b"\n1,1,\xe9,keep,\n")
    with pytest.raises(CorrectionsError, match="UTF-8"):
        apply_corrections([0, 1, 2], tmp_path / "latin.csv")
    with pytest.raises(ValueError, match="1-d integer array"):
        apply_corrections(np.array([0.0, 1.0]), path)


def test_a_datamodule_trains_on_the_corrected_labels_and_scores_every_sample(tmp_path):
    from curvature_callback.experiments.data.digits import DigitsDataModule

    plain = DigitsDataModule(noise=0.1, seed=0)
    plain.setup()
    flipped = np.flatnonzero(plain.flipped)
    fix, drop, wrong = flipped[:5], flipped[5:8], flipped[8]  # five set right, three dropped, one set wrong
    lines = [f"{i},{plain.given_labels[i]},,relabel,{plain.original_labels[i]}" for i in fix]
    lines += [f"{i},{plain.given_labels[i]},,drop," for i in drop]
    other = (plain.original_labels[wrong] + 1) % 10
    other = other if other != plain.given_labels[wrong] else (other + 1) % 10
    lines.append(f"{wrong},{plain.given_labels[wrong]},,relabel,{other}")
    path = _file(tmp_path, *lines)

    dm = DigitsDataModule(noise=0.1, seed=0, corrections=str(path))
    dm.setup()
    n = len(plain.given_labels)
    assert len(dm.curvature_dataset()) == n  # every sample scored, at its index
    np.testing.assert_array_equal(dm.noisy_labels, plain.given_labels)
    np.testing.assert_array_equal(dm.original_labels, plain.original_labels)
    assert (dm.given_labels[fix] == dm.original_labels[fix]).all() and dm.given_labels[wrong] == other
    np.testing.assert_array_equal(dm.flipped, dm.given_labels != dm.original_labels)
    assert dm.flipped.sum() == plain.flipped.sum() - 5  # the set-right ones are no longer flipped
    assert dm.kept.sum() == n - 3 and not dm.kept[drop].any()
    # the scored dataset holds the corrected labels (what the store fingerprints)
    assert [int(dm.curvature_dataset()[int(i)][1]) for i in fix] == dm.original_labels[fix].tolist()
    # the training loader never shows a dropped sample, and names each sample by its scored index
    batches = list(dm.train_dataloader())
    seen = np.concatenate([b[2].numpy() for b in batches])
    assert sorted(seen.tolist()) == np.flatnonzero(dm.kept).tolist()
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), dm.given_labels[seen])


def test_a_datamodule_refuses_a_missing_file_at_once_and_a_bad_one_at_setup(tmp_path):
    from curvature_callback.experiments.data.digits import DigitsDataModule

    with pytest.raises(ValueError, match=r"data.corrections to be a CSV file .* which is no file"):
        DigitsDataModule(corrections=str(tmp_path / "nope.csv"))
    dm = DigitsDataModule(corrections=str(_file(tmp_path, "5000,0,,drop,")))
    with pytest.raises(CorrectionsError, match=r"index on line 2 .* \[0, 1797\)"):
        dm.setup()


def test_a_run_prefills_corrections_once_and_never_over_a_persons_edits(tmp_path, capsys):
    from types import SimpleNamespace

    from curvature_callback.experiments.outputs import prefill_corrections

    issues = SimpleNamespace(flagged=np.array([4, 1]), suggested=np.array([0, 2, 0, 0, 3]),
                             suggestion_confidence=np.array([0.0, 0.9, 0.0, 0.0, 0.4]))
    given = np.array([0, 0, 1, 1, 2])
    prefill_corrections(tmp_path, issues, given)
    assert (tmp_path / "corrections.csv").read_text().splitlines() == [HEADER, "4,2,3,keep,", "1,0,2,relabel,2"]
    (tmp_path / "corrections.csv").write_text(f"{HEADER}\n4,2,3,drop,\n")  # a person's edit
    prefill_corrections(tmp_path, issues, given)
    assert (tmp_path / "corrections.csv").read_text() == f"{HEADER}\n4,2,3,drop,\n"
    assert "left as it is" in capsys.readouterr().out


def _refused_within(seconds: float, call) -> BaseException | None:
    """What ``call()`` raised, run in a daemon thread: a call that blocks (a FIFO opened for reading with no writer)
    fails the test instead of hanging it."""
    import threading

    raised: list[BaseException | None] = []

    def run():
        try:
            call()
            raised.append(None)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            raised.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert raised, f"still reading after {seconds} s"
    return raised[0]


@pytest.mark.skipif(not Path("/dev/zero").exists() or not hasattr(__import__("os"), "mkfifo"), reason="POSIX only")
def test_a_device_a_fifo_or_a_folder_is_refused_before_anything_is_read(tmp_path):
    """A link to /dev/zero was read without bound (3.7 GB and growing), a FIFO blocked: regular files only, checked on
    the opened descriptor."""
    import os

    (tmp_path / "zero.csv").symlink_to("/dev/zero")
    error = _refused_within(10, lambda: apply_corrections([0, 1, 2], tmp_path / "zero.csv"))
    assert isinstance(error, CorrectionsError)
    assert error.args[0].startswith(f"Expected {tmp_path / 'zero.csv'} to be a corrections file, a regular file, got a "
                                    "device (the path leads to /dev/zero); pass the path of an existing CSV")
    os.mkfifo(tmp_path / "fifo.csv")
    error = _refused_within(10, lambda: read_corrections(tmp_path / "fifo.csv", 3, 3))
    assert isinstance(error, CorrectionsError) and "got a named pipe (FIFO)" in str(error)
    with pytest.raises(CorrectionsError, match="to be a corrections file, a regular file, got a folder; pass the path"):
        apply_corrections([0, 1, 2], tmp_path)


def test_a_huge_file_or_a_huge_line_is_refused_and_read_no_further(tmp_path):
    """The size cap follows from the samples (a header and a row per sample, each at most MAX_LINE characters, and
    some blank lines) and is checked before reading; a line has at most MAX_LINE characters."""
    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as f:
        f.truncate(10**10)  # 10 GB of NULs without a newline, sparse: nothing is written, and nothing may be read
    cap = (5 + 1 + 1024) * MAX_LINE
    with pytest.raises(CorrectionsError, match=rf"huge.csv to hold at most {cap} bytes \(a header and a row per sample "
                       rf"of 5, each at most {MAX_LINE} characters\), got 10000000000: too big .* fix the file"):
        apply_corrections([0, 1, 2, 0, 1], huge)
    line = _file(tmp_path, "1,1,0,keep," + "x" * MAX_LINE)  # a note column one character too long
    with pytest.raises(CorrectionsError, match=rf"lines of at most {MAX_LINE} characters in .*corrections.csv, got "
                       rf"{MAX_LINE + 11} on line 2; fix the file"):
        apply_corrections([0, 1, 2], line)
    line.write_text(HEADER + "," + "x" * 100_000)  # no newline at all, under the cap
    with pytest.raises(CorrectionsError, match=rf"got {len(HEADER) + 100_001} on line 1"):
        apply_corrections(np.zeros(100, dtype=np.int64), line)
    fine = _file(tmp_path, "1,1,0,keep," + "x" * (MAX_LINE - 11))  # the longest line allowed
    assert apply_corrections([0, 1, 2], fine)[1].all()


def test_a_file_that_grows_while_read_is_refused(tmp_path, monkeypatch):
    """It is read to its size at opening and one byte more: more bytes than it had means it is being written."""
    import os

    path = _file(tmp_path, "1,1,0,keep,")
    true_fstat = os.fstat

    def smaller(fd):  # the file as it was when opened: 10 bytes
        st = true_fstat(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, 10, *st[7:10]))

    monkeypatch.setattr(corrections.os, "fstat", smaller)
    with pytest.raises(CorrectionsError, match=r"corrections.csv grew while it was read \(from 10 bytes\): expected a "
                       r"corrections file that stays as it is; let whatever writes it finish"):
        apply_corrections([0, 1, 2], path)


def test_a_datamodule_refuses_a_file_that_drops_every_sample(tmp_path):
    from curvature_callback.experiments.data.digits import DigitsDataModule

    given = DigitsDataModule(noise=0.0).curvature_dataset()
    path = _file(tmp_path, *(f"{i},{int(y)},,drop," for i, (_, y) in enumerate(given)))
    with pytest.raises(CorrectionsError, match=rf"Expected data.corrections=.*corrections.csv to keep at least one "
                       rf"sample to train on, got every one of the {len(given)} samples dropped: set some rows' "
                       r"action to keep or relabel, or pass data.corrections=null"):
        DigitsDataModule(noise=0.0, corrections=str(path)).setup()
    keep_one = path.read_text().replace(",drop,\n", ",keep,\n", 1)  # one kept: trained on alone
    path.write_text(keep_one)
    dm = DigitsDataModule(noise=0.0, corrections=str(path))
    dm.setup()
    assert dm.kept.sum() == 1
