"""The report's samples to review and the run agree (the run's label_issues.csv is what the page shows), and the page
writes the corrections: a choice per flagged sample, pre-filled as corrections.csv is, saved by "Download
corrections.csv" in the format apply_corrections reads (in headless Chromium, from file://)."""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_report import _chromium, _issues, _make_run

from curvature_callback.analysis.label_issues import find_label_issues, write_label_issues_csv
from curvature_callback.analysis.report import REVIEW_TABLE, write_report
from curvature_callback.analysis.scores import read_scores_csv
from curvature_callback.core.corrections import apply_corrections, corrections_rows, write_corrections
from curvature_callback.core.store import CurvatureStore
from curvature_callback.experiments.report_cli import main

NOTICE = "Shown: the run's label_issues.csv"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 400-sample run folder (test_report's synthetic one) and what the store flags now."""
    root = tmp_path_factory.mktemp("review")
    made = _make_run(root)
    given = read_scores_csv(made["run"] / "scores.csv")["given_label"]
    store = CurvatureStore.open(made["run"] / "curvature")
    now = find_label_issues(store, given)
    store.close()
    assert len(now.flagged) >= 10  # the run has flags to disagree with
    return {**made, "root": root, "given": given, "now": now}


def _copy(made, tmp_path: Path) -> Path:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(made["run"], run, ignore=shutil.ignore_patterns("report"))
    return run


def _table_rows(page: str) -> list[dict[str, str]]:
    """The review table's rows: index, the reason cell, and the pre-filled choice."""
    table = page.split('<table class="review"')[1].split("</table>")[0]
    rows = []
    for tr in re.findall(r"<tr data-index.*?</tr>", table, flags=re.S):
        attrs = dict(re.findall(r'data-(index|given|suggested)="([^"]*)"', tr))
        rows.append({**attrs, "reason": html.unescape(re.search(r'<td class="reason">(.*?)</td>', tr).group(1)),
                     "action": re.search(r'<option value="(\w+)" selected>', tr).group(1),
                     "new_label": re.search(r'class="new-label"[^>]*value="([^"]*)"', tr).group(1)})
    return rows


# ------------------------------------------------------------------------------------------ the report and the run
def test_report_shows_the_runs_label_issues_csv_and_says_how_the_store_differs(made, tmp_path, capsys):
    run, n = _copy(made, tmp_path), len(made["given"])
    now = made["now"]
    # a label_issues.csv that is not what the store gives now: three of its flags, in reverse, and two others
    others = [i for i in range(n) if i not in set(now.flagged.tolist())][:2]
    flagged = np.array([*now.flagged[:3][::-1], *others], dtype=np.int64)
    rng = np.random.default_rng(5)
    filed = SimpleNamespace(flagged=flagged, reasons=tuple(f"the file's reason {k}" for k in range(5)),
                            suggested=rng.integers(0, 10, n), suggestion_confidence=np.full(n, 0.75),
                            score=rng.random(n), probability=np.full(n, 0.625))
    write_label_issues_csv(run / "label_issues.csv", filed, made["given"])
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "estimated_label_issues": 7,
                                                  "label_issues_method": "the run's own count"}))
    assert main([str(run)]) == 0
    page = html.unescape((run / "report" / "index.html").read_text())
    rows = _table_rows(page)
    assert [int(r["index"]) for r in rows] == flagged.tolist()  # the file's rows, in its order
    assert [r["reason"] for r in rows] == list(filed.reasons)
    assert "5 sample(s) flagged as likely mislabeled (estimated: 7)" in page and "the run's own count" in page
    assert "<td>0.62</td>" in page and "<td>0.75</td>" in page  # its probabilities and confidences
    notice = re.search(rf"{NOTICE}[^<]*", page).group(0)
    assert page.count(NOTICE) == 1
    assert "(5 flagged, as curvature-train wrote it)" in notice
    assert (f"the store would now give another answer: {len(now.flagged)} flagged (estimated {now.estimated}), "
            f"{len(now.flagged) - 3} of them not in the file, 2 of the file's not flagged now.") in notice

    # the store's own answer written as the file: the same page rows as without it, and the notice says so
    write_label_issues_csv(run / "label_issues.csv", now, made["given"])
    assert main([str(run)]) == 0
    page = html.unescape((run / "report" / "index.html").read_text())
    assert [int(r["index"]) for r in _table_rows(page)] == now.flagged[:REVIEW_TABLE].tolist()
    assert f"the store gives the same {len(now.flagged)} flagged sample(s) now." in page

    # a run folder without the file: today's page, the store's answer and no notice
    (run / "label_issues.csv").unlink()
    assert main([str(run)]) == 0
    page = html.unescape((run / "report" / "index.html").read_text())
    assert [int(r["index"]) for r in _table_rows(page)] == now.flagged[:REVIEW_TABLE].tolist()
    assert NOTICE not in page and f"(estimated: {now.estimated})" in page


@pytest.mark.parametrize(("text", "message"), [
    ("index,given_label\n1,2\n", "to start with the header index, given_label, suggested_label"),
    ("index,given_label,suggested_label,suggestion_confidence,score,probability,reasons\n3,1,2,0.5,1.0,1.5,x\n",
     "Expected column `probability` of"),
])
def test_report_refuses_a_damaged_label_issues_csv_and_writes_nothing(made, tmp_path, capsys, text, message):
    run = _copy(made, tmp_path)
    (run / "label_issues.csv").write_text(text)
    capsys.readouterr()
    assert main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("curvature-report: ") and message in err and "label_issues.csv" in err
    assert not (run / "report").exists()  # refused before anything was written


def test_report_refuses_another_runs_label_issues_csv(made, tmp_path, capsys):
    run = _copy(made, tmp_path)
    other = made["given"].copy()
    i = int(made["now"].flagged[0])
    other[i] = (other[i] + 1) % 10
    write_label_issues_csv(run / "label_issues.csv", made["now"], other)
    assert main([str(run)]) == 2
    err = capsys.readouterr().err
    assert f"got given_label {other[i]} for sample {i}, whose label in scores.csv is {made['given'][i]}" in err
    assert "another run's" in err and not (run / "report" / "index.html").exists()


# ------------------------------------------------------------------------------------------ the page's choices
def test_review_choices_are_prefilled_as_corrections_csv_is(made, tmp_path):
    run, n = _copy(made, tmp_path), len(made["given"])
    chosen = np.random.default_rng(4).permutation(n)[:60]
    issues = _issues(chosen, n)
    issues.suggested[chosen[:5]] = made["given"][chosen[:5]]  # a suggestion that is the given label: keep
    issues.suggested[chosen[5]] = -1  # none: keep, an empty suggested_label
    page = write_report(run, issues=issues).read_text()
    expected = corrections_rows(chosen, made["given"][chosen], issues.suggested[chosen],
                                issues.suggestion_confidence[chosen])
    assert {r[3] for r in expected} == {"keep", "relabel"}
    got = [(int(r["index"]), int(r["given"]), r["suggested"], r["action"], r["new_label"]) for r in _table_rows(page)]
    assert got == expected
    assert page.count("Download corrections.csv") >= 1 and '<datalist id="classes">' in page
    assert page.count("<option value=") == 3 * len(chosen) + 10  # the classes listed once, not per row


def _download(browser, downloads: Path, timeout: float = 30) -> Path:
    """Click "Download corrections.csv" and wait for the file."""
    from selenium.webdriver.common.by import By

    button = browser.find_element(By.XPATH, "//button[normalize-space()='Download corrections.csv']")
    button.click()
    target = downloads / "corrections.csv"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.is_file() and not list(downloads.glob("*.crdownload")) and target.stat().st_size:
            return target
        time.sleep(0.1)
    raise AssertionError(f"no corrections.csv in {downloads} after {timeout} s: {list(downloads.iterdir())}")


def test_review_page_downloads_the_choices_as_a_corrections_file_in_chromium(made, tmp_path):
    """From file://: untouched, the download is corrections.csv as curvature-train pre-fills it; after a drop, a
    relabel to another class and a keep, apply_corrections follows the choices; a relabel without a class saves
    nothing and says why."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    run, n, given = _copy(made, tmp_path), len(made["given"]), made["given"]
    chosen = np.random.default_rng(6).permutation(n)[:30]
    issues = _issues(chosen, n)
    issues.suggestion_confidence[chosen[:3]] = 0.9  # the first three pre-filled as relabels
    issues.suggested[chosen[:3]] = (given[chosen[:3]] + 1) % 10
    index = write_report(run, issues=issues, class_names=[f"class{c}" for c in range(10)])
    prefilled = corrections_rows(chosen, given[chosen], issues.suggested[chosen], issues.suggestion_confidence[chosen])
    write_corrections(tmp_path / "expected.csv", prefilled)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser = _chromium(downloads)
    try:
        browser.get(index.resolve().as_uri())
        untouched = _download(browser, downloads)
        assert untouched.read_bytes() == (tmp_path / "expected.csv").read_bytes()  # what curvature-train writes
        untouched.unlink()

        rows = browser.find_elements(By.CSS_SELECTOR, "table.review tbody tr[data-index]")
        assert [int(r.get_attribute("data-index")) for r in rows] == chosen.tolist()
        Select(rows[0].find_element(By.CSS_SELECTOR, "select.action")).select_by_value("drop")
        Select(rows[1].find_element(By.CSS_SELECTOR, "select.action")).select_by_value("keep")
        other = (int(given[chosen[3]]) + 5) % 10  # a class neither given nor suggested
        Select(rows[3].find_element(By.CSS_SELECTOR, "select.action")).select_by_value("relabel")
        box = rows[3].find_element(By.CSS_SELECTOR, "input.new-label")
        assert box.is_enabled()
        box.clear()
        box.send_keys(str(other))
        Select(rows[4].find_element(By.CSS_SELECTOR, "select.action")).select_by_value("relabel")
        box4 = rows[4].find_element(By.CSS_SELECTOR, "input.new-label")
        box4.clear()
        box4.send_keys("12")  # not a class of ten: refused, nothing saved
        browser.find_element(By.ID, "download-corrections").click()
        time.sleep(0.5)
        status = browser.find_element(By.ID, "corrections-status").text
        assert f"Sample {chosen[4]}: expected a class in [0, 10)" in status and "Nothing was saved" in status
        assert not list(downloads.iterdir())
        Select(rows[4].find_element(By.CSS_SELECTOR, "select.action")).select_by_value("keep")
        assert not box4.is_enabled()  # a keep's class box is not read
        edited = _download(browser, downloads)
    finally:
        browser.quit()

    new, keep = apply_corrections(given, edited, num_classes=10)
    expected = given.copy()
    for i, _, _, action, label in prefilled[2:]:  # the rows left as they were pre-filled
        if action == "relabel":
            expected[i] = int(label)
    expected[chosen[3]] = other
    expected[chosen[4]] = given[chosen[4]]  # kept after all
    assert expected[chosen[2]] == issues.suggested[chosen[2]] != given[chosen[2]]
    np.testing.assert_array_equal(new, expected)  # rows 0 and 1: their pre-filled relabels undone (drop, keep)
    assert np.flatnonzero(~keep).tolist() == [chosen[0]]
    assert len(edited.read_text().splitlines()) == 1 + len(chosen)  # only the samples shown get rows
