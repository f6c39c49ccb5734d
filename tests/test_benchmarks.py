"""The prepared GPU script of issue 5 runs every step on the CPU at tiny sizes (SMOKE=1): its code paths work
before a GPU session spends device time on them. The miniature study (benchmarks/miniature_study.py) runs a tiny
setting end to end, and its saved settings (benchmarks/data/miniature) hold every signal with sane AUROCs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from offline import needs_offline

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@needs_offline
def test_gpu_issue5_script_runs_every_step_in_smoke_mode(tmp_path):
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "out"), "PY": sys.executable,
           "CURVATURE_DATA_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_issue5.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["estimator.txt", "fidelity.txt", "layout.txt", "machine.txt",
                                                      "overhead.txt"]
    for step, row in [("estimator", "| SmallCNN | cpu | float32 + channels_last |"),
                      ("layout", "| CIFAR ResNet18 | 16 |"),
                      ("fidelity", "| fp32 | 2 | 1 | 1/1 | 1.000 |"),
                      ("overhead", "| + published-style loop, n=10, every epoch |")]:
        text = (out / f"{step}.txt").read_text()
        assert f"## {step}: exit 0 after" in text, text[-3000:]
        assert row in text, text[-3000:]


# ------------------------------------------------------------------------------------- benchmarks/miniature_study.py
MINIATURE = REPO / "benchmarks" / "miniature_study.py"
MINIATURE_DATA = REPO / "benchmarks" / "data" / "miniature"
#: the signals every setting saves (the training-time ones when the callback records them)
MINIATURE_SIGNALS = {"curvature", "loss", "margin", "confidence", "correct", "forgetting", "train_loss",
                     "learning_time", "train_forgetting", "cleanlab"}


def _miniature():
    import importlib.util

    spec = importlib.util.spec_from_file_location("miniature_study", MINIATURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_offline
def test_miniature_study_runs_a_tiny_setting_and_prints_its_tables(tmp_path):
    pytest.importorskip("cleanlab")
    from offline import cache_dir

    env = {**os.environ, "CURVATURE_DATA_CACHE": str(cache_dir(tmp_path / "cache"))}
    out = tmp_path / "out"
    cmd = [sys.executable, str(MINIATURE), "--samples", "300", "--epochs", "2", "--cv-epochs", "1", "--noise", "0.1",
           "--seeds", "0", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out / "cifar10_p0.1_s0.npz", allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    for name in MINIATURE_SIGNALS | {"input_grad"}:
        assert data[name].shape == (300,) and data[name].dtype == np.float32, name
        assert np.isfinite(data[name]).all(), name
    assert data["flipped"].sum() == 30 and data["flipped"].dtype == bool
    assert len(data["dup_copies"]) == len(data["dup_sources"]) == 2  # N / 200, at least 2
    copies, sources = data["dup_copies"], data["dup_sources"]
    assert not data["flipped"][copies].any() and not data["flipped"][sources].any()
    assert (data["given"][copies] != data["given"][sources]).all()
    assert data["fit_flipped"].shape == data["fit_all"].shape == (2,)
    assert data["pred_probs"].shape == (300, 10)
    assert np.allclose(data["pred_probs"].astype(np.float32).sum(1), 1, atol=1e-2)
    done = subprocess.run([sys.executable, str(MINIATURE), "--tables", "--out", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("| training loss summed over steps (CSL) |", "| cleanlab: 1 - label quality (3-fold CV) |",
                "| input-gradient norm (CSG: epoch mean, eval mode) |",
                "**Planted conflicting duplicates", "| 10 % | 0 |"):
        assert row in done.stdout, done.stdout


def test_miniature_study_plants_duplicates_outside_the_noise():
    study = _miniature()
    labels = np.arange(1000) % 10
    images = np.random.default_rng(0).integers(0, 256, (1000, 4, 4), dtype=np.uint8)
    s = study.make_setting(images, labels, 0.05, seed=3, duplicates=5)
    assert s["flipped"].sum() == 50
    assert (s["given"] != s["original"]).sum() == 55  # the flipped ones and the 5 copies
    assert (s["images"][s["dup_copies"]] == s["images"][s["dup_sources"]]).all()
    assert (s["original"][s["dup_copies"]] == labels[s["dup_sources"]]).all()
    assert len(set(s["dup_copies"]) | set(s["dup_sources"])) == 10
    assert study.milestones_of(30) == [18, 24]
    assert study.milestones_of(30, (0.3, 0.7)) == [9, 21]


def test_miniature_study_splits_the_flipped_fit_by_learning_rate_phase():
    study = _miniature()
    config = {"epochs": 6, "milestones": [2, 4]}
    fit = np.array([0.1, 0.2, 0.5, 0.6, 0.9, 1.0])
    # learning time = one past the latest wrong epoch (0-based): right from that epoch on; 0 never wrong, 6 wrong
    # at the last epoch. Phases: epochs 0-1, 2-3, 4-5
    lt = np.array([0, 1, 2, 4, 5, 6, 1, 1])
    flipped = np.array([True] * 6 + [False] * 2)
    got = study.phases(config, fit, lt, flipped)
    assert [p["epochs"] for p in got] == [(1, 2), (3, 4), (5, 6)]
    assert [p["fit_end"] for p in got] == [0.2, 0.6, 1.0]
    assert np.allclose([p["learned"] for p in got], [2 / 6, 1 / 6, 2 / 6])  # 1 of 6 not fit at the end


@pytest.mark.slow
@pytest.mark.skipif(not list(MINIATURE_DATA.glob("*.npz")), reason="no saved miniature study")
def test_the_saved_miniature_study_has_every_signal_and_sane_aurocs():
    study = _miniature()
    files = sorted(MINIATURE_DATA.glob("*.npz"))
    # 12 MB: the decision grid's 48 files (~110-130 KB each, benchmarks/gpu_decision_study.sh) and the 27 before:
    # 10.7 MB
    assert sum(p.stat().st_size for p in files) < 12e6
    for path in files:
        result = study.evaluate(path)
        config, n = result["config"], result["config"]["n"]
        with np.load(path, allow_pickle=False) as f:
            for name in MINIATURE_SIGNALS - ({"cleanlab"} if not config["cv"] else set()):
                assert f[name].shape == (n,), (path.name, name)
            assert int(f["flipped"].sum()) == round(config["noise"] * n), path.name
        auroc = {k: v["auroc"] for k, v in result["mislabel"].items()}
        assert auroc["train_loss"] > 0.6 and auroc["loss"] > 0.6, (path.name, auroc)
        if config["noise"] >= 0.1 and config.get("noise_kind", "symmetric") == "symmetric":  # look-alikes: harder
            assert auroc["train_loss"] > 0.8, (path.name, auroc)
    assert "| signal |" in study.tables(MINIATURE_DATA)


MEMORIZING = sorted(MINIATURE_DATA.glob("*_mem.npz"))


@pytest.mark.skipif(not MEMORIZING, reason="no saved memorizing family")
def test_the_saved_memorizing_family_fits_every_given_label():
    """The ``--family memorize`` settings reached memorization: at the last epoch at least 99 % of the given labels
    right in eval mode (in their training minibatch: at least 98.5 %; 7 of the 8 saved settings reach 99 %, the 10 %
    seed 1 0.9875), at least 90 % of the flipped ones; and every CIFAR-10 setting fit most flipped labels after the
    first learning-rate drop (under half fit at the last epoch before it)."""
    minibatch = []
    for path in MEMORIZING:
        with np.load(path, allow_pickle=False) as f:
            config = json.loads(str(f["config"]))
            assert config["family"] == "memorize" and not config["augment"], path.name
            assert np.nanmean(f["eval_correct_last"]) >= 0.99, path.name
            assert f["fit_all"][-1] >= 0.985, (path.name, f["fit_all"][-1])
            minibatch.append(f["fit_all"][-1] >= 0.99)
            assert f["fit_flipped"][-1] >= 0.9, (path.name, f["fit_flipped"][-1])
            assert np.nanmean(f["eval_correct_last"][f["flipped"]]) >= 0.9, path.name
            assert f["input_grad"].dtype == np.float32 and np.isfinite(f["input_grad"]).all(), path.name
            if config["dataset"] == "cifar10":
                assert f["fit_flipped"][config["milestones"][0] - 1] < 0.5, path.name
    assert np.mean(minibatch) >= 0.75


# --------------------------------------------------------------------------- the decision study (--decide, issue 18)
def test_miniature_study_parses_the_accelerator(tmp_path, capsys):
    """--accelerator cpu (the default) or cuda reaches every training and pass; nothing else parses."""
    study = _miniature()
    assert study.main(["--accelerator", "cuda", "--tables", "--out", str(tmp_path)]) == 0
    assert "No saved settings" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        study.main(["--accelerator", "tpu", "--tables", "--out", str(tmp_path)])
    args = type("Args", (), {"accelerator": "cuda"})()
    assert str(study._device(args)) == "cuda" and str(study._device(type("Args", (), {})())) == "cpu"
    assert study._trainer(1, [], "cpu").accelerator.__class__.__name__ == "CPUAccelerator"


@pytest.mark.slow
def test_gpu_decision_script_runs_a_tiny_setting_on_the_cpu(tmp_path):
    """benchmarks/gpu_decision_study.sh end to end on the CPU (ACCEL=cpu) at a tiny size: a saved setting is skipped,
    the missing one runs, and the one archive holds its file and every log."""
    pytest.importorskip("cleanlab")
    fmnist = Path(os.environ.get("CURVATURE_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
    if not (fmnist / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("no Fashion-MNIST idx files")
    import tarfile

    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "fashion_mnist_p0.1_s0_mem_dec.npz").write_bytes(b"")
    env = {**os.environ, "ACCEL": "cpu", "PY": sys.executable, "OUT": str(tmp_path / "out"),
           "WORK": str(tmp_path / "work"), "SAVED": str(saved), "FMNIST_ROOT": str(fmnist),
           "DATASETS": "fashion_mnist", "KINDS": "symmetric", "NOISES": "0.1", "SEEDS": "0 1", "DEADLINE_S": "240",
           "EXTRA_ARGS": "--samples 200 --epochs 1 --cv-epochs 1 --test-samples 100"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_decision_study.sh")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "fashion_mnist_p0.1_s0_mem_dec: saved already, skipped" in done.stdout, done.stdout
    assert "fashion_mnist_p0.1_s1_mem_dec: done in" in done.stdout, done.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["decision_results.tar.gz"]
    with tarfile.open(tmp_path / "out" / "decision_results.tar.gz") as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "untar", filter="data")
    assert {"results/fashion_mnist_p0.1_s1_mem_dec.npz", "logs/fashion_mnist_p0.1_s1_mem_dec.log",
            "logs/smoke.log", "logs/summary.txt"} <= names, names
    with np.load(tmp_path / "untar" / "results" / "fashion_mnist_p0.1_s1_mem_dec.npz") as f:
        assert f["evidence_classes"].shape[0] == 200 and "payoff" in f.files


def test_miniature_study_plants_class_dependent_noise():
    from curvature_callback.experiments.data.noise import CONFUSABLE

    study = _miniature()
    labels = np.arange(1000) % 10
    images = np.random.default_rng(0).integers(0, 256, (1000, 4, 4), dtype=np.uint8)
    s = study.make_setting(images, labels, 0.1, seed=2, duplicates=5, kind="confusion", dataset="cifar10")
    pairs = {frozenset(p) for p in CONFUSABLE["cifar10"]}
    assert s["flipped"].sum() == 100
    assert all(frozenset((int(a), int(b))) in pairs
               for a, b in zip(s["original"][s["flipped"]], s["given"][s["flipped"]], strict=True))


def _decision_file(path):
    """A saved --decide setting of 10 samples: 0-3 mislabeled (3 a planted copy of 9), ours flags 0, 1, 5 with
    suggestions, cleanlab flags 0, 2, 3, 4."""
    original = np.array([1, 2, 3, 8, 5, 6, 7, 8, 9, 8])  # 3 shows the image of 9
    given = np.array([2, 3, 4, 5, 5, 6, 7, 8, 9, 8])
    flipped = np.array([True, True, True] + [False] * 7)
    probs = np.full((10, 10), 0.01, np.float32)
    probs[np.arange(10), [1, 0, 3, 8, 5, 6, 7, 8, 9, 8]] = 0.91  # CV argmax: right for 0, 2, 3 (the copy)
    payoff = {"test_n": 100, "cleanlab_estimated": 5, "test_acc": {name: 0.5 + 0.01 * i for i, name in enumerate(
        ("noisy", "ours removed", "ours relabeled", "cleanlab removed", "oracle removed"))},
              "trained_on": {"noisy": 10, "ours removed": 7, "ours relabeled": 10, "cleanlab removed": 6,
                             "oracle removed": 6}, "seconds": {"ours relabeled": 30.0}}
    config = {"dataset": "cifar10", "noise": 0.3, "seed": 0, "n": 10, "epochs": 2, "folds": 3, "tag": "_dec",
              "family": "augmented", "noise_kind": "confusion", "decide": True}
    np.savez(path, config=np.array(json.dumps(config)), given=given.astype(np.int8),
             original=original.astype(np.int8), flipped=flipped, dup_sources=np.array([9], np.int32),
             dup_copies=np.array([3], np.int32), pred_probs=probs.astype(np.float16),
             cleanlab_issues=np.isin(np.arange(10), [0, 2, 3, 4]), seconds=np.array([40, 80, 130], np.float32),
             ours_flagged=np.isin(np.arange(10), [0, 1, 5]), ours_suggested=np.array([1, 9, -1, -1, -1, 4, -1, -1, -1,
                                                                                      -1], np.int8),
             ours_estimated=np.array(4), payoff=np.array(json.dumps(payoff)))
    return path


def test_miniature_decision_table_is_rebuilt_from_a_saved_setting(tmp_path):
    study = _miniature()
    path = _decision_file(tmp_path / "cifar10_p0.3_s0_confusion_dec.npz")
    r = study.decision(path)
    assert r["mislabeled"] == 4  # the three flips and the copy
    ours, cl = r["ours"], r["cleanlab"]
    assert (ours["flagged"], ours["estimated"], cl["flagged"], cl["estimated"]) == (3, 4, 4, 5)
    assert ours["precision"] == pytest.approx(2 / 3) and ours["recall"] == pytest.approx(2 / 4)
    assert cl["precision"] == pytest.approx(3 / 4) and cl["recall"] == pytest.approx(3 / 4)
    assert ours["f1"] == pytest.approx(4 / 7) and cl["f1"] == pytest.approx(3 / 4)
    assert ours["suggested_right"] == pytest.approx(1 / 2)  # sample 0 -> 1 right, sample 1 -> 9 wrong
    assert cl["suggested_right"] == pytest.approx(1.0)  # the CV argmax of 0, 2 and 3
    assert (ours["seconds"], cl["seconds"], r["plain_seconds"]) == (40, 120, 30)
    with np.load(path) as f:
        variants = study.payoff_variants({k: f[k] for k in f.files})
    assert list(variants) == list(study.PAYOFF)
    labels, kept = variants["ours relabeled"]
    assert labels.tolist() == [1, 9, 4, 5, 5, 4, 7, 8, 9, 8] and kept.all()
    assert np.flatnonzero(~variants["ours removed"][1]).tolist() == [0, 1, 5]
    assert np.flatnonzero(~variants["cleanlab removed"][1]).tolist() == [0, 2, 3, 4]
    assert np.flatnonzero(~variants["oracle removed"][1]).tolist() == [0, 1, 2, 3]
    text = "\n".join(study.decision_tables([path]))
    assert "### Decision study: cifar10, confusion noise (family 'augmented', tag '_dec')" in text
    assert "| 30 % | 0 | 4 | 4 / 5 | 3 / 4 | 0.667 / 0.750 | 0.500 / 0.750 | 0.571 / 0.750 | 0.500 / 1.000 | " \
           "40 / 120 (30) |" in text, text
    assert "| 30 % | 0 | 0.5000 (10) | 0.5100 (7) | 0.5200 (10) | 0.5300 (6) | 0.5400 (6) |" in text, text


@needs_offline
def test_miniature_study_decides_on_a_tiny_setting(tmp_path):
    """--decide end to end in seconds: ours and cleanlab's flags saved, the four retrainings scored on test images."""
    pytest.importorskip("cleanlab")
    import curvature_callback.analysis

    if not hasattr(curvature_callback.analysis, "find_label_issues"):
        pytest.skip("curvature_callback.analysis.find_label_issues is not there yet (issue 18 item 1)")
    from offline import cache_dir

    env = {**os.environ, "CURVATURE_DATA_CACHE": str(cache_dir(tmp_path / "cache"))}
    out = tmp_path / "out"
    cmd = [sys.executable, str(MINIATURE), "--samples", "200", "--epochs", "1", "--cv-epochs", "1", "--noise", "0.1",
           "--seeds", "0", "--decide", "--noise-kind", "confusion", "--test-samples", "100", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    path = out / "cifar10_p0.1_s0_confusion_dec.npz"
    with np.load(path, allow_pickle=False) as f:
        assert f["ours_flagged"].shape == f["cleanlab_issues"].shape == (200,)
        assert f["ours_suggested"].shape == (200,) and int(f["ours_estimated"]) >= 0
        # what our answer was computed from: the store's class evidence, so a changed estimator recomputes it
        classes, mass = f["evidence_classes"], f["evidence_mass"]
        assert classes.dtype == np.int8 and mass.dtype == np.float16 and classes.shape == mass.shape
        assert classes.shape[0] == 200 and classes.shape[1] >= 1 and (classes < 10).all() and (classes >= -1).all()
        seen = (classes >= 0).any(1)
        assert seen.any() and (mass[seen] >= 0).all() and (mass[seen].astype(np.float32).sum(1) <= 1.01).all()
        assert json.loads(str(f["config"]))["accelerator"] == "cpu"
        payoff = json.loads(str(f["payoff"]))
    assert set(payoff["test_acc"]) == set(_miniature().PAYOFF) and payoff["test_n"] == 100
    assert payoff["trained_on"]["noisy"] == 200 and payoff["trained_on"]["oracle removed"] == 200 - 20 - 2
    done = subprocess.run([sys.executable, str(MINIATURE), "--tables", "--out", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "### Decision study: cifar10, confusion noise" in done.stdout and "**The payoff**" in done.stdout


def test_the_early_window_grid_is_rebuilt_from_its_saved_files():
    """docs/RESULTS.md's grid with the early window (issue 24): the summary the tables print from
    benchmarks/data/decision_early, by today's estimator, is the one the page quotes."""
    study = _miniature()
    files = sorted((REPO / "benchmarks" / "data" / "decision_early").glob("*_mem_dec.npz"))
    assert len(files) == 52  # 48 noisy settings and 4 clean runs
    text = "\n".join(study.decision_tables(files))
    assert ("Noisy settings: our F1 at least cleanlab's in 44 of 48; the count within 25 % in 18 of 36 settings at 5 % "
            "and above (cleanlab's: 0).") in text
    assert "fashion_mnist seed 0: ours 37 (1.9 % of 2000)" in text
    assert "cifar10 seed 0: ours 178 (8.9 % of 2000)" in text
    results = (REPO / "docs" / "RESULTS.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| cifar10, ", "| fashion_mnist, "))]
    assert len(rows) == 6 and all(row in results for row in rows), rows


def test_cleanlab_from_takes_only_a_setting_of_the_same_labels(tmp_path):
    """--cleanlab-from reuses cleanlab's side only for the same given labels, and names what it lacks."""
    import argparse

    study = _miniature()
    args = argparse.Namespace(cleanlab_from=tmp_path, noise_kind="confusion", tag="_dec")
    given = np.array([2, 3, 4, 5, 5, 6, 7, 8, 9, 8])
    with pytest.raises(FileNotFoundError, match="expected the saved setting"):
        study.reused_cleanlab(args, "cifar10", 0.3, 0, given)
    path = _decision_file(tmp_path / "cifar10_p0.3_s0_confusion_dec.npz")
    with pytest.raises(ValueError, match=r"lacks \['cleanlab'\]: it is not a --decide file"):
        study.reused_cleanlab(args, "cifar10", 0.3, 0, given)
    with np.load(path) as f:
        saved = {k: f[k] for k in f.files}
    np.savez(path, **saved, cleanlab=np.linspace(0, 1, 10, dtype=np.float32))
    reused = study.reused_cleanlab(args, "cifar10", 0.3, 0, given)
    assert reused["cleanlab_issues"].sum() == 4 and reused["payoff"]["cleanlab_estimated"] == 5
    with pytest.raises(ValueError, match="other given labels"):
        study.reused_cleanlab(args, "cifar10", 0.3, 0, given[::-1].copy())
    assert study.reused_cleanlab(argparse.Namespace(cleanlab_from=None), "cifar10", 0.3, 0, given) is None
