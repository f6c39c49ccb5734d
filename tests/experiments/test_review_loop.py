"""The review -> fix -> retrain loop on the tiny default (digits, a few epochs): a run flags labels
(label_issues.csv) and pre-fills corrections.csv; a person edits it; the next run trains on the corrected labels
(data.corrections=FILE) with its bookkeeping right and every sample scored at its index."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from curvature_callback.analysis import read_scores_csv
from curvature_callback.core.corrections import COLUMNS, apply_corrections
from curvature_callback.core.store import CurvatureStore
from curvature_callback.experiments.train import CONF_DIR, run

#: a few epochs of the default run, quiet, one pass kind that costs little
QUICK = ("trainer.max_epochs=6", "trainer.enable_progress_bar=false", "~logger", "threads=null",
         "callbacks.curvature.n_vectors=1")


def _compose(out, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[f"output_dir={out}", *QUICK, *overrides])


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """The first run of the loop, shared: it flags labels and pre-fills corrections.csv."""
    out = tmp_path_factory.mktemp("loop") / "first"
    run(_compose(out))
    return out


@pytest.mark.slow
def test_train_review_correct_retrain(first, tmp_path):
    second = tmp_path / "second"
    labels = np.load(first / "labels.npz")
    given, original = labels["given_labels"], labels["original_labels"]

    # review: the flagged samples, most probable first, and a corrections file pre-filled from them
    issues = _rows(first / "label_issues.csv")
    prefilled = _rows(first / "corrections.csv")
    assert list(prefilled[0]) == list(COLUMNS) and len(issues) >= 20
    assert [r["index"] for r in prefilled] == [r["index"] for r in issues]
    for row in prefilled:
        i = int(row["index"])
        assert int(row["given_label"]) == given[i]
        relabel = row["suggested_label"] not in ("", row["given_label"])
        assert row["action"] in ("relabel", "keep") and (row["action"] == "relabel") <= relabel
        assert row["new_label"] == (row["suggested_label"] if row["action"] == "relabel" else "")
    # the page shows them, from the images the run kept
    page = (first / "report" / "index.html").read_text()
    assert f"{len(issues)} sample(s) flagged" in page and 'class="noimage"' not in page.split("<h2>The run")[0]
    kept = np.load(first / "review_indices.npy")
    assert {int(r["index"]) for r in issues[:100]} <= set(kept.tolist())

    # a person: accepts the pre-filled rows, drops the first flagged one whose suggestion they doubt
    edited = [dict(r) for r in prefilled]
    edited[0].update(action="drop", new_label="")
    dropped = int(edited[0]["index"])
    path = tmp_path / "corrections.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(edited)
    relabeled = {int(r["index"]): int(r["new_label"]) for r in edited if r["action"] == "relabel"}

    metrics = run(_compose(second, f"data.corrections={path}"))
    after = np.load(second / "labels.npz")
    np.testing.assert_array_equal(after["noisy_labels"], given)  # the labels the file was made for
    np.testing.assert_array_equal(after["original_labels"], original)
    expected = given.copy()
    expected[list(relabeled)] = list(relabeled.values())
    np.testing.assert_array_equal(after["given_labels"], expected)
    np.testing.assert_array_equal(after["flipped"], expected != original)
    assert after["kept"].tolist() == [i != dropped for i in range(len(given))]
    # fewer wrong labels than before: the suggestions set most flagged flips right
    assert after["flipped"].sum() < labels["flipped"].sum()
    assert metrics["n_flipped"] == int(after["flipped"].sum())

    # every sample scored at its index; the dropped one never trained on
    columns = read_scores_csv(second / "scores.csv")
    assert columns["index"].tolist() == list(range(len(given)))
    np.testing.assert_array_equal(columns["given_label"], expected)
    store = CurvatureStore.open(second / "curvature")
    seen = np.asarray(store.sum_of("train_seen"))
    assert seen[dropped] == 0 and (np.delete(seen, dropped) > 0).all()
    assert np.isfinite(np.asarray(store.mean)).all()  # the pass scored it anyway
    store.close()
    assert json.loads((second / "metrics.json").read_text())["n_samples"] == len(given)


@pytest.mark.slow
def test_the_reports_download_is_what_the_next_run_trains_on(first, tmp_path):
    """The review on the first run's page in headless Chromium (from file://): one flagged sample dropped, one
    relabeled to a class of the person's choosing, the rest as pre-filled; the downloaded file trains the next run."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    from test_report import _chromium
    from test_report_review import _download

    given = np.load(first / "labels.npz")["given_labels"]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser = _chromium(downloads)
    try:
        browser.get((first / "report" / "index.html").resolve().as_uri())
        rows = browser.find_elements(By.CSS_SELECTOR, "table.review tbody tr[data-index]")
        shown = [int(r.get_attribute("data-index")) for r in rows]
        assert shown == [int(r["index"]) for r in _rows(first / "label_issues.csv")][:1000]
        Select(rows[0].find_element(By.CSS_SELECTOR, "select.action")).select_by_value("drop")
        Select(rows[1].find_element(By.CSS_SELECTOR, "select.action")).select_by_value("relabel")
        chosen = (int(given[shown[1]]) + 3) % 10
        box = rows[1].find_element(By.CSS_SELECTOR, "input.new-label")
        box.clear()
        box.send_keys(str(chosen))
        path = _download(browser, downloads)
    finally:
        browser.quit()
    prefilled = _rows(first / "corrections.csv")
    downloaded = _rows(path)
    assert downloaded[2:] == prefilled[2:]  # the rows left alone are the pre-filled ones
    assert downloaded[0]["action"] == "drop" and downloaded[1]["new_label"] == str(chosen)
    labels, keep = apply_corrections(given, path, num_classes=10)

    second = tmp_path / "second"
    run(_compose(second, f"data.corrections={path}"))
    after = np.load(second / "labels.npz")
    np.testing.assert_array_equal(after["noisy_labels"], given)
    np.testing.assert_array_equal(after["given_labels"], labels)
    assert labels[shown[1]] == chosen and np.flatnonzero(~after["kept"]).tolist() == [shown[0]]
    np.testing.assert_array_equal(after["kept"], keep)
