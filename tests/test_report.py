"""curvature-report: the HTML report of a run directory, its sections, its refusals, and the page rendering in
headless Chromium with every image loaded."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from curvature_callback.analysis import write_scores_csv
from curvature_callback.report import main, write_report
from curvature_callback.store import CurvatureStore

SETTINGS = {"h": 1e-3, "n_vectors": 2, "seed": 0, "loss": "cross_entropy"}
CHANNELS = ("loss", "margin", "confidence", "correct", "forgetting")
N, FULL = 400, 500  # the run scores 400 of a 500-image dataset (source_index), like a subset experiment


def _make_run(root: Path) -> dict:
    """A run directory as curvature-train writes it, with synthetic scores: 10 % flipped labels with high
    curvature, three planted duplicate pairs with conflicting labels at the very top."""
    rng = np.random.default_rng(0)
    run = root / "run"
    images = rng.integers(0, 256, (N, 16, 16, 3), dtype=np.uint8)
    original = rng.integers(0, 10, N)
    given = original.copy()
    flipped = np.zeros(N, dtype=bool)
    flipped[rng.choice(N, N // 10, replace=False)] = True
    given[flipped] = (original[flipped] + 1 + rng.integers(0, 9, flipped.sum())) % 10
    pairs = [(5, 17), (40, 41), (100, 300)]
    for a, b in pairs:
        images[b] = images[a]
        given[b] = original[b] = (given[a] + 3) % 10
    source = np.sort(rng.choice(FULL, N, replace=False))
    store = CurvatureStore.create(run / "curvature", N, settings=SETTINGS, channels=CHANNELS, keep_history=True)
    top = np.zeros(N, dtype=bool)
    top[[i for p in pairs for i in p]] = True
    for epoch in range(3):
        curvature = rng.lognormal(-10, 1, N) * np.where(flipped, 8.0, 1.0) * np.where(top, 1e3, 1.0)
        loss = rng.gamma(1.0, 0.2, N) + 2.0 * flipped
        correct = (rng.random(N) < np.where(flipped, 0.3, 0.9)).astype(float)
        store.commit_epoch(epoch, {"curvature": curvature, "loss": loss, "margin": 1.0 - loss,
                                   "confidence": np.exp(-loss), "correct": correct, "forgetting": np.zeros(N)})
    store.close()
    write_scores_csv(run / "scores.csv", {"label": original, "given_label": given, "flipped": given != original,
                                          "curvature": np.zeros(N), "source_index": source})
    (run / "metrics.json").write_text(json.dumps({"train_acc": 0.97, "flipped_memorized": 0.8}))
    np.save(root / "images.npy", images)
    full_labels = rng.integers(0, 10, FULL)
    full_labels[source] = original
    mem = rng.random(FULL)
    np.savez(root / "cifar100_infl_matrix.npz", tr_mem=mem, tr_labels=full_labels)
    return {"run": run, "pairs": pairs, "flipped": given != original}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    made = _make_run(root)
    code = main([str(made["run"]), "--images", str(root / "images.npy"), "--reference",
                 str(root / "cifar100_infl_matrix.npz"), "--top-k", "16", "--class-names",
                 ",".join(f"class{c}" for c in range(10))])
    assert code == 0
    return {**made, "root": root, "index": made["run"] / "report" / "index.html"}


def test_report_has_every_section_and_the_planted_duplicates(report):
    page = report["index"].read_text()
    for heading in ("Mislabel detection: curvature beside the baselines", "Curvature per class",
                    "The 16 most-curved samples", "Duplicates with conflicting labels among the 50 most-curved",
                    "Curvature against a reference memorization score"):
        assert heading in page, heading
    for score in ("curvature", "loss", "margin", "confidence", "correct", "forgetting"):
        assert f"<td>{score}</td>" in page
    # the three planted pairs, and only they, are in the duplicates table
    table = page.split('<table class="duplicates">')[1].split("</table>")[0]
    assert sorted(re.findall(r"<td>#(\d+), #(\d+)</td>", table)) == sorted((str(a), str(b)) for a, b in report["pairs"])
    assert "labels checked against scores.csv" in page and "cifar100_infl_matrix.npz" in page
    assert re.search(r"<td>\d \(class\d\) / \d \(class\d\)</td>", table)  # given labels, named
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained, static
    for name in ("detection.png", "class_histograms.png", "histogram.png", "top_k.png", "memorization.png"):
        assert (report["run"] / "report" / name).read_bytes().startswith(b"\x89PNG"), name
    assert len(list((report["run"] / "report" / "thumbnails").glob("*.png"))) == 6


def test_report_detection_numbers_match_the_analysis(report):
    from curvature_callback.analysis import mislabel_metrics, suspicion_scores

    store = CurvatureStore.open(report["run"] / "curvature")
    auroc = mislabel_metrics(suspicion_scores(store)["curvature"], report["flipped"])["auroc"]
    row = report["index"].read_text().split('<tr class="curvature">')[1].split("</tr>")[0]
    assert re.findall(r"<td>(?:<b>)?([0-9.]+)", row)[0] == f"{auroc:.3f}"


def test_report_refuses_a_misaligned_reference_and_says_why(report, tmp_path, capsys):
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "cifar100_infl_matrix.npz", tr_mem=rng.random(FULL), tr_labels=rng.integers(0, 10, FULL))
    code = main([str(report["run"]), "--images", str(report["root"] / "images.npy"), "--reference",
                 str(tmp_path / "cifar100_infl_matrix.npz"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "Refusing to align cifar100_infl_matrix.npz: its labels disagree" in capsys.readouterr().err


def test_report_without_images_or_noise_still_reports_the_numbers(tmp_path):
    run = tmp_path / "run"
    store = CurvatureStore.create(run / "curvature", 30, settings=SETTINGS)
    store.commit_epoch(0, np.linspace(1, 2, 30))
    store.close()
    write_scores_csv(run / "scores.csv", {"label": np.arange(30) % 3, "given_label": np.arange(30) % 3})
    page = write_report(run).read_text()
    assert "No known label noise" in page and "no images:" in page and ".hydra/config.yaml is missing" in page
    with pytest.raises(FileNotFoundError, match="No scores.csv"):
        write_report(tmp_path)
    write_scores_csv(run / "scores.csv", {"label": np.arange(29) % 3})
    with pytest.raises(ValueError, match="29 rows, the store 30"):
        write_report(run)


def test_report_of_a_real_run_rebuilds_the_images_from_its_config(tmp_path):
    """A short curvature-train run on digits; the report rebuilds the datamodule from .hydra/config.yaml."""
    from hydra import compose, initialize_config_dir

    from curvature_callback.train import CONF_DIR, run

    overrides = [f"output_dir={tmp_path}", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                 "trainer.enable_progress_bar=false", "~logger", "threads=null", "callbacks.curvature.n_vectors=1"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run(cfg)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # what @hydra.main saves in a run directory
    page = write_report(tmp_path, top_k=9).read_text()
    assert "the datamodule of" in page and "no images" not in page
    assert (tmp_path / "report" / "top_k.png").is_file()
    # what curvature-train itself would pass: its scored dataset
    from hydra.utils import instantiate

    dataset = instantiate(cfg.data).curvature_dataset()
    page = write_report(tmp_path, dataset=dataset, out_dir=tmp_path / "direct", top_k=9).read_text()
    assert "the caller" in page and (tmp_path / "direct" / "top_k.png").is_file()


# ------------------------------------------------------------------------------------------ in a browser
def _chromium():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) renders the report")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("headless Chromium needs the Debian packages chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


def test_report_renders_in_headless_chromium_with_every_image_loaded(report):
    browser = _chromium()
    try:
        browser.get(report["index"].resolve().as_uri())
        assert browser.title == "Curvature report: run"
        state = browser.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);"
        )
        # detection, per-class and overall histograms, top-k grid, memorization, 6 duplicate thumbnails
        assert len(state) == 11, state
        broken = [s for s in state if not (s[1] and s[2] > 0 and s[3] > 0)]
        assert not broken, broken
        headings = browser.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.innerText);")
        assert len(headings) == 5, headings
        rows = browser.execute_script("return document.querySelectorAll('table.duplicates tbody tr').length;")
        assert rows == 3
    finally:
        browser.quit()


def test_report_aligns_an_imagenet_format_reference_by_the_runs_file_names(tmp_path):
    rng = np.random.default_rng(3)
    run = tmp_path / "run"
    labels = rng.integers(0, 3, 30)
    files = [f"n0{c}/n0{c}_{i}.JPEG" for i, c in enumerate(labels)]  # as curvature-train's `file` column
    store = CurvatureStore.create(run / "curvature", 30, settings=SETTINGS)
    store.commit_epoch(0, np.linspace(1, 2, 30))
    store.close()
    write_scores_csv(run / "scores.csv", {"label": labels, "given_label": labels, "file": np.array(files)})
    mem = rng.random(30)
    perm = rng.permutation(30)
    np.savez(tmp_path / "imagenet_index.npz", tr_filenames=np.array([files[i] for i in perm], dtype="S"),
             tr_labels=labels[perm], tr_mem=mem[perm])
    page = write_report(run, reference=tmp_path / "imagenet_index.npz").read_text()
    assert "imagenet_index.npz: file names matched, then labels checked" in page
    expected = np.corrcoef(np.linspace(1, 2, 30), mem)[0, 1]
    assert f"<td>Pearson</td><td>{expected:.3f}</td>" in page


def test_report_of_a_partly_scored_run_uses_the_scored_samples(tmp_path):
    """With callbacks.curvature.fraction < 1 a short run leaves some samples unscored (NaN means)."""
    run = tmp_path / "run"
    labels = np.arange(40) % 4
    given = labels.copy()
    given[[0, 2, 5, 7]] = (labels[[0, 2, 5, 7]] + 1) % 4
    store = CurvatureStore.create(run / "curvature", 40, settings=SETTINGS, channels=("loss",))
    scored = np.arange(0, 40, 2)
    store.commit_epoch(0, {"curvature": np.where(given != labels, 5.0, 1.0)[scored] + scored / 100,
                           "loss": np.ones(20)}, indices=scored)
    store.close()
    write_scores_csv(run / "scores.csv", {"label": labels, "given_label": given, "flipped": given != labels})
    np.save(tmp_path / "images.npy", np.random.default_rng(0).random((40, 8, 8)))
    page = write_report(run, images_file=str(tmp_path / "images.npy"), top_k=30).read_text()
    assert "40, of which 20 scored" in page and "The 20 most-curved samples" in page
    row = page.split('<tr class="curvature">')[1].split("</tr>")[0]
    assert "<td><b>1.000</b></td>" in row  # the two scored flipped samples (0 and 2) rank first: AUROC 1
    with pytest.raises(ValueError, match="No sample of the store"):
        empty = tmp_path / "empty"
        CurvatureStore.create(empty / "curvature", 40, settings=SETTINGS).close()
        write_scores_csv(empty / "scores.csv", {"label": labels})
        write_report(empty)
