"""curvature-report: the HTML report of a run directory, its sections, its refusals, and the page rendering in
headless Chromium with every image loaded."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from curvature_callback.analysis import write_scores_csv
from curvature_callback.analysis.report import write_report
from curvature_callback.core.store import CurvatureStore
from curvature_callback.experiments.report_cli import main, report_run

SETTINGS = {"h": 1e-3, "n_vectors": 2, "seed": 0, "loss": "cross_entropy", "fast": False, "pass_kind": "curvature"}
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
        loss = rng.gamma(1.0, 0.2, N) + 2.0 * flipped + 4.0 * top  # the duplicates question ranks them first
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
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings == ["Samples to review", "The run", "Which signal answers which question",
                        "Mislabel detection: the recommended score, curvature and every other signal",
                        "Which labels are wrong? The 16 highest by its recommended score",
                        "Which samples did the network memorize (atypical, long-tailed)? The 16 highest by its "
                        "recommended score",
                        "Which samples are duplicates with conflicting labels? The 16 highest by its recommended score",
                        "Curvature per class", "Against a reference memorization score"], headings
    assert "<h3>Duplicates with conflicting labels</h3>" in page.split("<h2>The run</h2>")[0]  # under review
    # each question's table follows its recommended score, curvature one column among the others
    top = page.split('<table class="top-mislabeled">')[1].split("</table>")[0]
    assert re.findall(r"<th>(.*?)</th>", top) == ["index", "given", "original", "recommended", "curvature", "loss",
                                                  "margin", "confidence"]
    shown = [float(v) for v in re.findall(r"<tr><td>\d+</td><td>[^<]*</td><td>[^<]*</td><td>([0-9.]+)</td>", top)]
    assert len(shown) == 16 and shown == sorted(shown, reverse=True)
    for score in ("recommended", "curvature", "loss", "margin", "confidence", "correct", "forgetting"):
        assert f"<td>{score}</td>" in page
    questions = page.split('<table class="questions">')[1].split("</table>")[0]
    assert "Which labels are wrong?" in questions and "<td>loss</td>" in questions  # no training steps: the loss
    # the detection table leads with the recommended score
    assert page.split('<table class="detection">')[1].index("<td>recommended</td>") < page.split(
        '<table class="detection">')[1].index("<td>curvature</td>")
    # the three planted pairs, and only they, are in the duplicates table
    table = page.split('<table class="duplicates">')[1].split("</table>")[0]
    assert sorted(re.findall(r"<td>#(\d+), #(\d+)</td>", table)) == sorted((str(a), str(b)) for a, b in report["pairs"])
    assert "labels checked against scores.csv" in page and "cifar100_infl_matrix.npz" in page
    assert re.search(r"<td>\d \(class\d\) / \d \(class\d\)</td>", table)  # given labels, named
    # self-contained: nothing fetched; one script, inline (the review's Download corrections.csv), no src
    assert "http://" not in page and "https://" not in page and page.count("<script") == page.count("<script>") == 1
    for name in ("detection.png", "class_histograms.png", "histogram.png", "memorization.png"):
        assert (report["run"] / "report" / name).read_bytes().startswith(b"\x89PNG"), name
    drawn = {int(p.stem) for p in (report["run"] / "report" / "thumbnails").glob("*.png")}
    assert {i for pair in report["pairs"] for i in pair} <= drawn and len(drawn) <= 3 * 16 + 6


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
    assert "No known label noise" in page and "images unavailable:" in page
    assert "pass --images FILE.npy" in page and "--rebuild-data" in page  # how to get them
    page = report_run(run, rebuild_data=True).read_text()
    assert "images unavailable:" in page and ".hydra/config.yaml is missing" in page
    with pytest.raises(FileNotFoundError, match="No scores.csv"):
        write_report(tmp_path)
    write_scores_csv(run / "scores.csv", {"label": np.arange(29) % 3})
    with pytest.raises(ValueError, match="29 rows, the store 30"):
        write_report(run)


def test_report_of_a_real_run_rebuilds_the_images_from_its_config(tmp_path):
    """A short curvature-train run on digits; the report rebuilds the datamodule from .hydra/config.yaml."""
    from hydra import compose, initialize_config_dir

    from curvature_callback.experiments.train import CONF_DIR, run

    overrides = [f"output_dir={tmp_path}", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                 "trainer.enable_progress_bar=false", "~logger", "threads=null", "callbacks.curvature.n_vectors=1"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run(cfg)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # what @hydra.main saves in a run directory
    # the run kept the images its report shows: a later report has them with no data at hand
    page = write_report(tmp_path, top_k=9, out_dir=tmp_path / "plain").read_text()
    assert "review_images.npy in the run folder" in page and 'class="noimage"' not in page
    assert page.count('class="thumb"') >= 9
    for name in ("review_images.npy", "review_indices.npy"):
        (tmp_path / name).unlink()
    page = write_report(tmp_path, top_k=9, out_dir=tmp_path / "plain").read_text()  # not asked: no images
    assert "images unavailable" in page and "--rebuild-data" in page and 'class="thumb"' not in page
    page = report_run(tmp_path, top_k=9, rebuild_data=True).read_text()
    assert "experiments.data.digits.DigitsDataModule rebuilt from" in page and "images unavailable" not in page
    assert page.count('class="thumb"') >= 9
    # what curvature-train itself would pass: its scored dataset
    from hydra.utils import instantiate

    dataset = instantiate(cfg.data).curvature_dataset()
    page = write_report(tmp_path, dataset=dataset, out_dir=tmp_path / "direct", top_k=9).read_text()
    assert "the caller" in page and page.count('class="thumb"') >= 9


# ------------------------------------------------------------------------------------------ in a browser
def _chromium(downloads: Path | None = None):
    """Headless Chromium (skips without it); ``downloads``: the folder a page's downloads go to, without asking."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) renders the report")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("headless Chromium needs the Debian packages chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


def _issues(flagged: np.ndarray, n: int) -> SimpleNamespace:
    """Label issues as find_label_issues returns them, for a page with a chosen number of flagged samples."""
    rng = np.random.default_rng(1)
    return SimpleNamespace(
        estimated=len(flagged), flagged=flagged, probability=np.linspace(0.2, 1.0, n), score=rng.random(n),
        suggested=rng.integers(0, 10, n), suggestion_confidence=rng.random(n),
        reasons=tuple(f"reason {k} <b>" for k in range(len(flagged))), method="a test's own count <i>")


@pytest.mark.parametrize("flagged", [25, 2500])
def test_report_renders_in_headless_chromium_with_every_image_loaded(report, tmp_path, flagged):
    """25 flagged samples: every one a thumbnail; 2,500 (a run of 25,000): the first REVIEW_GRID as thumbnails, the
    next ones as table rows up to REVIEW_TABLE, the rest named as left to label_issues.csv; the page stays small and
    loads fast."""
    import time

    from curvature_callback.analysis.report import REVIEW_GRID, REVIEW_TABLE

    n = 25 * flagged if flagged > N else N
    run, images = tmp_path / "run", report["root"] / "images.npy"
    if n == N:
        shutil.copytree(report["run"], run, ignore=shutil.ignore_patterns("report"))
    else:  # a larger run: the same store and images, repeated
        rng = np.random.default_rng(2)
        store = CurvatureStore.create(run / "curvature", n, settings=SETTINGS, channels=("loss",))
        store.commit_epoch(0, {"curvature": rng.random(n), "loss": rng.random(n)})
        store.close()
        labels = rng.integers(0, 10, n)
        write_scores_csv(run / "scores.csv", {"label": labels, "given_label": labels})
        images = tmp_path / "images.npy"
        np.save(images, np.resize(np.load(report["root"] / "images.npy"), (n, 16, 16, 3)))
    chosen = np.random.default_rng(3).permutation(n)[:flagged]
    index = write_report(run, images_file=str(images), issues=_issues(chosen, n),
                         class_names=[f"class{c}" for c in range(10)])
    assert index.stat().st_size < 4_000_000
    browser = _chromium()
    try:
        start = time.perf_counter()
        browser.get(index.resolve().as_uri())
        loaded = time.perf_counter() - start
        assert browser.title == "Curvature report: run"
        assert loaded < 20, loaded  # headless Chromium on a busy CI machine: seconds, not minutes
        tiles = browser.execute_script("return Array.from(document.querySelectorAll('div.review .tile img'))"
                                       ".map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
        assert [t[0] for t in tiles] == [f"sample {i}" for i in chosen[:REVIEW_GRID]]  # most probable first
        state = browser.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
        broken = [s for s in state if not (s[1] and s[2] > 0 and s[3] > 0)]
        assert not broken, broken
        rows = browser.execute_script("return Array.from(document.querySelectorAll('table.review tbody tr'))"
                                      ".map(r => r.cells[0].innerText);")
        assert rows == [str(i) for i in chosen[:REVIEW_TABLE]]
        text = browser.execute_script("return document.body.innerText;")
        assert f"{flagged} sample(s) flagged as likely mislabeled (estimated: {flagged})" in text
        assert "a test's own count <i>" in text and "reason 0 <b>" in text  # text, never markup
        left = max(0, flagged - REVIEW_TABLE)
        assert (f"{left} more flagged sample(s) not listed here" in text) == (left > 0)
        headings = browser.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.innerText);")
        assert headings[0] == "Samples to review" and len(headings) >= 7, headings
        if n == N:
            pairs = browser.execute_script("return document.querySelectorAll('table.duplicates tbody tr').length;")
            assert pairs == 3
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
    assert "40, of which 20 scored" in page and "Which labels are wrong? The 20 highest" in page
    row = page.split('<tr class="curvature">')[1].split("</tr>")[0]
    assert "<td><b>1.000</b></td>" in row  # the two scored flipped samples (0 and 2) rank first: AUROC 1
    with pytest.raises(ValueError, match="No sample of the store"):
        empty = tmp_path / "empty"
        CurvatureStore.create(empty / "curvature", 40, settings=SETTINGS).close()
        write_scores_csv(empty / "scores.csv", {"label": labels})
        write_report(empty)


# ------------------------------------------------------------------------------------------ a run folder is data
def _tiny_run(run: Path, labels: np.ndarray | None = None) -> Path:
    """The least run folder the report reads: a store of one scored epoch and scores.csv (no noise, no images)."""
    labels = np.arange(30) % 3 if labels is None else labels
    store = CurvatureStore.create(run / "curvature", len(labels), settings=SETTINGS)
    store.commit_epoch(0, np.linspace(1, 2, len(labels)))
    store.close()
    write_scores_csv(run / "scores.csv", {"label": labels, "given_label": labels})
    return run


def _with_data_config(run: Path, data: dict) -> Path:
    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create({"seed": 0, "data": data}), run / ".hydra" / "config.yaml")
    return run


def test_report_never_builds_what_a_run_folders_config_names(tmp_path, capsys):
    """A config naming pathlib.Path.write_text or numpy.savetxt writes nothing, with or without --rebuild-data."""
    written = tmp_path / "written-by-config.txt"
    hostile = {
        "Path.write_text": {"_target_": "pathlib.Path.write_text",
                            "_args_": [{"_target_": "pathlib.Path", "_args_": [str(written)]}, "pwned"]},
        "numpy.savetxt": {"_target_": "numpy.savetxt", "fname": str(written), "X": [1.0, 2.0]},
        "a nested _target_": {"_target_": "curvature_callback.experiments.data.digits.DigitsDataModule",
                              "noise": {"_target_": "numpy.savetxt", "fname": str(written), "X": [1.0]}},
        "_args_": {"_target_": "curvature_callback.experiments.data.digits.DigitsDataModule",
                   "_args_": [{"_target_": "numpy.savetxt", "fname": str(written), "X": [1.0]}]},
        "a resolver": {"_target_": "curvature_callback.experiments.data.digits.DigitsDataModule",
                       "batch_size": "${mixed_precision:}"},
        "another environment variable": {"_target_": "curvature_callback.experiments.data.digits.DigitsDataModule",
                                         "batch_size": "${oc.env:HOME}"},
    }
    why = {"Path.write_text": "data._target_ in .* is 'pathlib.Path.write_text', expected one of this package's",
           "numpy.savetxt": "data._target_ in .* is 'numpy.savetxt', expected one of this package's",
           "a nested _target_": "data.noise in .* is a dict, expected a plain value",
           "_args_": "data._args_ in .*: expected the datamodule's own arguments only",
           "a resolver": r"data.batch_size in .* is '\$\{mixed_precision:\}', expected a plain value or",
           "another environment variable": r"data.batch_size in .* is '\$\{oc.env:HOME\}', expected a plain value"}
    for name, data in hostile.items():
        run = _with_data_config(_tiny_run(tmp_path / name.replace(" ", "_")), data)
        page = write_report(run).read_text()  # the default: the config is not even read
        assert "images unavailable: the run folder keeps none (review_images.npy), and the report builds" in page
        assert main([str(run), "--rebuild-data", "--out", str(run / "rebuilt")]) == 0, capsys.readouterr().err
        page = html.unescape((run / "rebuilt" / "index.html").read_text())
        assert re.search("images unavailable: " + why[name], page), (name, page.split("images")[1][:400])
        assert not written.exists(), name
    # a YAML tag that would construct a Python object is not even parsed
    run = _tiny_run(tmp_path / "tagged")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(
        f"data: !!python/object/apply:pathlib.Path.write_text [!!python/object/apply:pathlib.Path ['{written}'], x]\n")
    page = report_run(run, rebuild_data=True).read_text()
    assert "images unavailable: " in page and "is not valid YAML" in page and not written.exists()


def test_report_rebuilds_a_package_datamodule_only_when_asked(tmp_path):
    """Digits, as conf/data/digits.yaml has it: no images by default, the scored images with --rebuild-data."""
    from curvature_callback.experiments.data import DigitsDataModule

    data = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "data" / "digits.yaml"))
    datamodule = DigitsDataModule(noise=0.1, seed=0)
    datamodule.setup()
    run = _with_data_config(_tiny_run(tmp_path / "run", datamodule.given_labels), data)
    assert main([str(run), "--top-k", "9"]) == 0
    page = (run / "report" / "index.html").read_text()
    assert "images unavailable" in page and "--images FILE.npy" in page and "--rebuild-data" in page
    assert 'class="thumb"' not in page
    assert main([str(run), "--top-k", "9", "--rebuild-data"]) == 0
    page = (run / "report" / "index.html").read_text()
    assert "experiments.data.digits.DigitsDataModule rebuilt from" in page and "images unavailable" not in page
    assert page.count('class="thumb"') >= 9


def test_report_rebuild_reads_only_curvature_variables_and_never_downloads(tmp_path, monkeypatch):
    """CIFAR-10's config as shipped (root from $CURVATURE_DATA_ROOT, download: true, a cache_dir): rebuilt with
    download off and the cache_dir ignored; with no data there it fails and says so, having written nothing."""
    run = _tiny_run(tmp_path / "run")
    monkeypatch.delenv("CURVATURE_DATA_ROOT", raising=False)
    empty = tmp_path / "no-data-here"
    _with_data_config(run, {"_target_": "curvature_callback.experiments.data.images.CIFARDataModule",
                            "root": f"${{oc.env:CURVATURE_DATA_ROOT,{empty}}}", "download": True,
                            "cache_dir": str(tmp_path / "cache"), "limit": 30, "num_classes": 10})
    page = report_run(run, rebuild_data=True).read_text()
    assert "images unavailable: rebuilding curvature_callback.experiments.data.images.CIFARDataModule" in page
    assert "download=false (the report never downloads)" in page and "ignored (the default cache is used)" in page
    assert str(empty) in page  # the variable's default, resolved
    assert not empty.exists() and not (tmp_path / "cache").exists()


def test_rebuildable_datamodules_are_the_ones_the_configs_name():
    """Every _target_ of conf/data/*.yaml is allowed, and each allowed one is a LightningDataModule of ours."""
    import lightning.pytorch as pl

    from curvature_callback.experiments.report_cli import REBUILDABLE, _datamodule_class

    configs = (Path(__file__).resolve().parents[2] / "conf" / "data").glob("*.yaml")
    targets = {OmegaConf.load(f).get("_target_") for f in configs}
    assert targets - {None} == set(REBUILDABLE)
    for target in REBUILDABLE:
        cls = _datamodule_class(target)
        assert issubclass(cls, pl.LightningDataModule) and f"{cls.__module__}.{cls.__name__}" == target


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "precious.txt").write_text("keep me")
    return outside


def test_report_refuses_to_write_through_links_in_the_run_folder(tmp_path, capsys):
    outside = _outside(tmp_path)
    run = _tiny_run(tmp_path / "run")
    (run / "report").symlink_to(outside)  # the default output folder itself
    with pytest.raises(ValueError, match=r"Refusing to write into .*report: expected a folder inside .* but it is a "
                                         r"link to .*outside\. Remove the link, or pass --out"):
        write_report(run)
    assert main([str(run)]) == 2 and "Refusing to write into" in capsys.readouterr().err
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    # named with --out, a link is the user's choice
    assert main([str(run), "--out", str(run / "report")]) == 0 and (outside / "index.html").is_file()
    # a link where a file goes: index.html, a PNG
    for name in ("index.html", "histogram.png"):
        run = _tiny_run(tmp_path / name)
        (run / "report").mkdir()
        (run / "report" / name).symlink_to(outside / "precious.txt")
        assert main([str(run)]) == 2
        assert re.search(rf"Refusing to write .*{re.escape(name)}: expected a file or nothing there, but it is a link",
                         capsys.readouterr().err)
        assert (outside / "precious.txt").read_text() == "keep me"
        assert (run / "report" / name).is_symlink()  # left as it was


def test_report_replaces_a_hard_link_instead_of_writing_through_it(tmp_path):
    outside = _outside(tmp_path)
    run = _tiny_run(tmp_path / "run")
    (run / "report").mkdir()
    (run / "report" / "index.html").hardlink_to(outside / "precious.txt")
    page = write_report(run).read_text()
    assert "Curvature report" in page and (outside / "precious.txt").read_text() == "keep me"


def test_report_thumbnails_never_go_through_links(report, tmp_path, capsys):
    outside = _outside(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(report["run"], run, ignore=shutil.ignore_patterns("report"))
    args = [str(run), "--images", str(report["root"] / "images.npy"), "--top-k", "4"]
    (run / "report").mkdir()
    (run / "report" / "thumbnails").symlink_to(outside)
    assert main(args) == 2 and "Refusing to write into" in capsys.readouterr().err
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    (run / "report" / "thumbnails").unlink()
    (run / "report" / "thumbnails").mkdir()
    (run / "report" / "thumbnails" / "5.png").symlink_to(outside / "precious.txt")  # 5: a planted duplicate
    assert main(args) == 2 and "5.png: expected a file or nothing there" in capsys.readouterr().err
    assert (outside / "precious.txt").read_text() == "keep me"


def test_report_reads_no_file_that_links_out_of_the_run_folder(tmp_path, capsys):
    outside = _outside(tmp_path)
    elsewhere = _tiny_run(outside / "other")  # a valid run outside: its files would be read without the check
    (elsewhere / "metrics.json").write_text(json.dumps({"train_acc": 0.123}))
    (elsewhere / "curvature" / "filenames.txt").write_text("\n".join(f"f{i}" for i in range(30)))
    cases = {
        "scores.csv": lambda run: (run / "scores.csv").symlink_to(elsewhere / "scores.csv"),
        "metrics.json": lambda run: (run / "metrics.json").symlink_to(elsewhere / "metrics.json"),
        "curvature": lambda run: (run / "curvature").symlink_to(elsewhere / "curvature"),
        "filenames.txt": lambda run: (run / "curvature" / "filenames.txt").symlink_to(
            elsewhere / "curvature" / "filenames.txt"),
    }
    for name, plant in cases.items():
        run = tmp_path / name
        if name == "curvature":
            run.mkdir()
            write_scores_csv(run / "scores.csv", {"label": np.arange(30) % 3})
        elif name == "scores.csv":
            _tiny_run(run)
            (run / "scores.csv").unlink()
        else:
            _tiny_run(run)
        plant(run)
        with pytest.raises(ValueError, match=rf"Refusing to read .*{re.escape(name)}: expected a path inside"):
            write_report(run)
        assert main([str(run)]) == 2 and "but a link takes it to" in capsys.readouterr().err
    # the config, read only with --rebuild-data: its refusal is a note, the report is still written
    run = _tiny_run(tmp_path / "config")
    (run / ".hydra").mkdir()
    digits = "curvature_callback.experiments.data.digits.DigitsDataModule"
    (outside / "config.yaml").write_text(f"data: {{_target_: {digits}}}\n")
    (run / ".hydra" / "config.yaml").symlink_to(outside / "config.yaml")
    page = report_run(run, rebuild_data=True).read_text()
    assert "images unavailable: Refusing to read" in page and "config.yaml" in page


def test_report_images_file_must_be_an_array_without_pickles(tmp_path, capsys):
    run = _tiny_run(tmp_path / "run")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 30, dtype=object), allow_pickle=True)
    assert main([str(run), "--images", str(tmp_path / "objects.npy")]) == 2
    assert re.search(r"Expected .*objects.npy to be an .npy of numeric \[N, ...\] images, loadable without pickle",
                     capsys.readouterr().err)
    np.savez(tmp_path / "vector.npz", x=np.zeros(30))
    (tmp_path / "vector.npz").rename(tmp_path / "vector.npy")  # a reference archive under the wrong name
    assert main([str(run), "--reference", str(tmp_path / "vector.npy")]) == 2
    assert re.search(r"Expected .*vector.npy to be an .npy vector .* got an archive", capsys.readouterr().err)
    np.savez(tmp_path / "images.npz", x=np.zeros((30, 4, 4)))
    with pytest.raises(ValueError, match=r"Expected .*images.npz to be an .npy of \[N, H, W\] .* got a NpzFile"):
        write_report(run, images_file=str(tmp_path / "images.npz"))


def test_report_draws_dollar_signs_in_class_names_as_text(report, tmp_path):
    """Matplotlib's math text would parse `$...$` in a class name (and fail on `$\\nope$`): it is plain text."""
    names = ["a$b", "$x", "cost $5", r"$\nope$", "x^$_$", "$$", "6", "7", "8", "9"]
    out = tmp_path / "out"
    assert main([str(report["run"]), "--images", str(report["root"] / "images.npy"), "--top-k", "16", "--out",
                 str(out), "--class-names", ",".join(names)]) == 0
    assert (out / "class_histograms.png").read_bytes().startswith(b"\x89PNG")
    assert "cost $5" in (out / "index.html").read_text()
    # the same strings as score names and a reference's name
    from curvature_callback.analysis.plots import plot_detection_curves, plot_memorization

    rng = np.random.default_rng(0)
    plot_detection_curves({r"$\nope$": rng.random(40), "a$b": rng.random(40)}, np.arange(40) % 4 == 0,
                          tmp_path / "d.png")
    plot_memorization(rng.random(40), rng.random(40), tmp_path / "m.png", name=r"$\nope$.npz")
    assert (tmp_path / "d.png").is_file() and (tmp_path / "m.png").is_file()


def test_report_escapes_what_the_run_folder_names(tmp_path):
    """Class names, file names and the run folder's name are text on the page, never markup: the template escapes
    them (once: no double escaping), and the page stays free of script."""
    hostile = ["<script>alert(1)</script>", 'a&b"', "c'<i>d"]
    run = _tiny_run(tmp_path / 'run <b>&"x"')
    np.save(tmp_path / 'img<&>".npy', np.random.default_rng(0).random((30, 8, 8)))
    np.save(tmp_path / 'ref<&>".npy', np.linspace(0, 1, 30))
    page = write_report(run, class_names=hostile, images_file=str(tmp_path / 'img<&>".npy'),
                        reference=tmp_path / 'ref<&>".npy', top_k=30).read_text()
    assert "<script" not in page and "<b>&" not in page and "<i>d" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a&amp;b&#34;" in page and "c&#39;&lt;i&gt;d" in page
    assert "Curvature report: run &lt;b&gt;&amp;&#34;x&#34;</title>" in page  # the run folder's name
    assert "img&lt;&amp;&gt;&#34;.npy" in page and "ref&lt;&amp;&gt;&#34;.npy: a plain vector" in page
    assert "&amp;lt;" not in page and "&amp;amp;" not in page  # escaped once
    text = html.unescape(page)
    for name in hostile:
        assert f"0 ({hostile[0]})" in text and f"({name})" in text


# ------------------------------------------------------------------------------------------ the run's kept images
def test_report_of_a_run_without_curvature_follows_the_recommended_scores(tmp_path):
    """A forward pass (callbacks=recommended): no curvature anywhere, every list by the recommended scores."""
    run = tmp_path / "run"
    rng = np.random.default_rng(4)
    labels = np.arange(60) % 3
    given = labels.copy()
    given[:6] = (labels[:6] + 1) % 3
    forward = {**SETTINGS, "pass_kind": "forward", "n_vectors": 0}
    store = CurvatureStore.create(run / "curvature", 60, settings=forward, channels=("loss", "confidence"))
    loss = rng.random(60) + 3.0 * (given != labels)
    store.commit_epoch(0, {"loss": loss, "confidence": np.exp(-loss)})
    store.close()
    write_scores_csv(run / "scores.csv", {"label": labels, "given_label": given, "flipped": given != labels})
    np.save(tmp_path / "images.npy", rng.integers(0, 256, (60, 8, 8), dtype=np.uint8))
    page = write_report(run, images_file=str(tmp_path / "images.npy"), top_k=6).read_text()
    assert "Curvature per class" not in page and "h, vectors, seed" not in page and "<td>forward</td>" in page
    top = page.split('<table class="top-mislabeled">')[1].split("</table>")[0]
    assert "curvature" not in top
    assert sorted(map(int, re.findall(r"<tr><td>(\d+)</td>", top))) == list(range(6))  # the flipped, by their loss


def test_report_shows_the_run_folders_kept_images_and_refuses_bad_ones(report, tmp_path, capsys):
    from curvature_callback.analysis.thumbnails import IMAGES_FILE, INDICES_FILE

    run = tmp_path / "run"
    shutil.copytree(report["run"], run, ignore=shutil.ignore_patterns("report"))
    write_report(run, images_file=str(report["root"] / "images.npy"), keep_images=True, top_k=16)
    kept = np.load(run / INDICES_FILE)
    images = np.load(run / IMAGES_FILE)
    assert images.dtype == np.uint8 and images.shape == (len(kept), 16, 16, 3) and len(kept) <= 3 * 16 + 6 + 100
    assert {i for pair in report["pairs"] for i in pair} <= set(kept.tolist())
    assert main([str(run), "--top-k", "16"]) == 0  # no flags: the kept images, as many as the page shows
    page = (run / "report" / "index.html").read_text()
    assert f"review_images.npy in the run folder ({len(kept)} images)" in page and 'class="noimage"' not in page
    table = page.split('<table class="duplicates">')[1].split("</table>")[0]
    assert sorted(re.findall(r"<td>#(\d+), #(\d+)</td>", table)) == sorted((str(a), str(b)) for a, b in report["pairs"])

    def refused(match: str) -> None:
        assert main([str(run), "--out", str(tmp_path / "out")]) == 2
        assert re.search(match, capsys.readouterr().err), match

    good = images.copy()
    np.save(run / IMAGES_FILE, good.astype(np.float32))
    refused(r"review_images.npy to be uint8 \[K, H, W, C\] .* got float32")
    np.save(run / IMAGES_FILE, np.zeros((len(kept), 65, 8, 3), dtype=np.uint8))
    refused(r"H, W in \[1, 64\]")
    np.save(run / IMAGES_FILE, np.array([{"x": 1}] * len(kept), dtype=object), allow_pickle=True)
    refused(r"review_images.npy to be an .npy of uint8 .* loadable without pickle")
    (run / IMAGES_FILE).write_bytes(b"\x93NUMPY garbage")
    refused(r"review_images.npy to be an .npy of uint8")
    np.save(run / IMAGES_FILE, good)
    np.save(run / INDICES_FILE, kept[:-1])
    refused(rf"review_indices.npy to be int64 \[{len(kept)}\]")
    np.save(run / INDICES_FILE, np.r_[kept[:-1], N])
    refused(rf"increasing sample indices in \[0, {N}\)")
    np.save(run / INDICES_FILE, kept[::-1].copy())
    refused("not increasing")
    (run / INDICES_FILE).unlink()
    refused("review_images.npy without review_indices.npy")
    outside = _outside(tmp_path)
    np.save(outside / INDICES_FILE, kept)
    (run / INDICES_FILE).symlink_to(outside / INDICES_FILE)
    refused(r"Refusing to read .*review_indices.npy: expected a path inside")
