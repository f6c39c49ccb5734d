"""Corrections a person made to a run's labels: the file's checks, apply_corrections, and our datamodules applying
them (relabel, drop) with the bookkeeping right and the scored indices unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curvature_callback import apply_corrections
from curvature_callback.core.corrections import (
    COLUMNS,
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
