"""Analysis: detection metrics at k % inspected, baseline scores from a store, epoch averages, the memorization
comparison and the Feldman & Zhang loaders (on files generated in their format), each against hand-computed
values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from curvature_callback.analysis import (
    align_reference,
    detection_table,
    epoch_average,
    load_feldman_zhang,
    memorization_comparison,
    mislabel_metrics,
    read_scores_csv,
    suspicion_scores,
    write_scores_csv,
)
from curvature_callback.core.store import CurvatureStore

SETTINGS = {"h": 1e-3, "n_vectors": 2, "seed": 0, "loss": "cross_entropy", "fast": False, "pass_kind": "curvature"}
CHANNELS = ("loss", "margin", "confidence", "correct", "forgetting")


# ------------------------------------------------------------------------------------------ detection
@pytest.mark.parametrize(
    ("percent", "precision", "recall"),
    [(20, 1.0, 0.5), (40, 0.5, 0.5), (60, 2 / 3, 1.0), (100, 0.4, 1.0)],
)
def test_precision_and_recall_at_k_percent_inspected(percent, precision, recall):
    # order by score: 0.8 (flipped), 0.4 (clean), 0.35 (flipped), 0.2, 0.1 (clean)
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2])
    flipped = np.array([False, False, True, True, False])
    m = mislabel_metrics(scores, flipped, at_percent=[percent])
    assert m[f"precision@{percent}%"] == pytest.approx(precision)
    assert m[f"recall@{percent}%"] == pytest.approx(recall)


def test_negative_and_huge_scores_rank_like_their_order():
    # torchmetrics' retrieval metrics drop scores <= 0 and its AUROC squashes scores > 17: ranks avoid both
    flipped = np.array([False, False, True, True, False])
    base = mislabel_metrics(np.array([0.1, 0.4, 0.35, 0.8, 0.2]), flipped, at_percent=[40, 60])
    for transformed in (np.array([-9.9, -6.0, -6.5, -2.0, -8.0]), np.array([1e3, 4e6, 3.5e6, 8e9, 2e4])):
        assert mislabel_metrics(transformed, flipped, at_percent=[40, 60]) == pytest.approx(base)


def test_detection_table_keeps_the_order_of_the_scores():
    flipped = np.array([True, False, False, True])
    table = detection_table({"b": np.array([4.0, 3, 2, 1]), "a": np.array([1.0, 2, 3, 4])}, flipped, at_percent=[50])
    assert list(table) == ["b", "a"]
    assert table["b"]["auroc"] == pytest.approx(0.5) and table["b"]["precision@50%"] == pytest.approx(0.5)


@pytest.mark.parametrize("percent", [0, -1, 101, True])
def test_at_percent_must_be_a_percentage(percent):
    with pytest.raises(ValueError, match=r"percentage of samples inspected in \(0, 100\]"):
        mislabel_metrics(np.array([0.1, 0.2]), np.array([True, False]), at_percent=[percent])


# ------------------------------------------------------------------------------------------ scores of a store
def _store(tmp_path, epochs):
    store = CurvatureStore.create(tmp_path / "s", 4, settings=SETTINGS, channels=CHANNELS, keep_history=True)
    for epoch, values in enumerate(epochs):
        store.commit_epoch(epoch, {k: np.asarray(v, dtype=np.float64) for k, v in values.items()})
    store.close()
    return CurvatureStore.open(tmp_path / "s")


def _epoch(curv, correct, forgetting, loss=(1.0, 2.0, 3.0, 4.0)):
    return {"curvature": curv, "loss": loss, "margin": [2.0, 1.0, -1.0, -3.0], "confidence": [0.9, 0.6, 0.3, 0.1],
            "correct": correct, "forgetting": forgetting}


def test_suspicion_scores_orient_every_baseline_higher_is_suspicious(tmp_path):
    store = _store(tmp_path, [
        _epoch([1.0, 2.0, 3.0, 4.0], correct=[1, 1, 0, 0], forgetting=[0, 0, 0, 0]),
        _epoch([3.0, 2.0, 1.0, 8.0], correct=[0, 1, 1, 0], forgetting=[1, 0, 0, 0]),
        _epoch([2.0, 2.0, 2.0, 0.0], correct=[1, 1, 0, 0], forgetting=[0, 0, 1, 0], loss=(0.0, 0.0, 0.0, 1.0)),
    ])
    s = suspicion_scores(store)
    assert list(s) == ["curvature", "loss", "margin", "confidence", "correct", "forgetting"]
    np.testing.assert_allclose(s["curvature"], [2.0, 2.0, 2.0, 4.0])
    np.testing.assert_allclose(s["loss"], [2 / 3, 4 / 3, 2.0, 3.0])
    np.testing.assert_allclose(s["margin"], [-2.0, -1.0, 1.0, 3.0])  # negated: a low margin is suspicious
    np.testing.assert_allclose(s["confidence"], [-0.9, -0.6, -0.3, -0.1])
    np.testing.assert_allclose(s["correct"], [1 / 3, 0.0, 2 / 3, 1.0])  # fraction of epochs misclassified
    # forgetting events 1, 0, 1; sample 3 was never correct: ranked above all (Toneva et al.)
    np.testing.assert_allclose(s["forgetting"], [1.0, 0.0, 1.0, 2.0])
    last = suspicion_scores(store, which="last")
    assert "forgetting" not in last
    np.testing.assert_allclose(last["curvature"], [2.0, 2.0, 2.0, 0.0])
    np.testing.assert_allclose(last["loss"], [0.0, 0.0, 0.0, 1.0])


def test_a_sample_never_scored_is_nan_in_every_score(tmp_path):
    store = CurvatureStore.create(tmp_path / "s", 3, settings=SETTINGS, channels=CHANNELS)
    values = {"curvature": [1.0, 2.0], "loss": [1.0, 2.0], "margin": [0.0, 1.0], "confidence": [0.5, 0.5],
              "correct": [0.0, 1.0], "forgetting": [0.0, 0.0]}
    store.commit_epoch(0, {k: np.array(v) for k, v in values.items()}, indices=np.array([0, 2]))
    for name, score in suspicion_scores(store).items():
        assert np.isnan(score[1]) and np.isfinite(score[[0, 2]]).all(), name


def test_suspicion_scores_of_a_store_without_baselines(tmp_path):
    store = CurvatureStore.create(tmp_path / "s", 2, settings=SETTINGS)
    store.commit_epoch(0, np.array([1.0, 2.0]))
    assert list(suspicion_scores(store)) == ["curvature"]
    with pytest.raises(ValueError, match="`which`"):
        suspicion_scores(store, which="first")


# ------------------------------------------------------------------------------------------ epoch averages
def test_epoch_average_transforms_by_hand():
    h = np.array([[100.0, 1.0, 0.0], [1.0, 4.0, np.nan], [4.0, 16.0, 9.0]])
    np.testing.assert_allclose(epoch_average(h), [35.0, 7.0, 4.5])
    np.testing.assert_allclose(epoch_average(h, transform="sqrt"), [(10 + 1 + 2) / 3, (1 + 2 + 4) / 3, 1.5])
    tiny = np.log10(np.finfo(np.float32).tiny)
    np.testing.assert_allclose(epoch_average(h, transform="log"), [(2 + 0 + np.log10(4)) / 3, np.log10(64) / 3,
                                                                    (tiny + np.log10(9)) / 2])
    # ranks within each epoch: [1, 2/3, 1/3], [1/2, 1, -], [1/3, 1, 2/3]
    np.testing.assert_allclose(epoch_average(h, transform="rank"), [(1 + 0.5 + 1 / 3) / 3, (2 / 3 + 1 + 1) / 3,
                                                                     (1 / 3 + 2 / 3) / 2])
    np.testing.assert_allclose(epoch_average(h, rows=slice(1, None)), [2.5, 10.0, 9.0])
    np.testing.assert_allclose(epoch_average(h, rows=[1]), [1.0, 4.0, np.nan])


@pytest.mark.parametrize(
    ("history", "kwargs", "match"),
    [(np.zeros(3), {}, r"\[epochs, N\]"), (np.zeros((2, 3)), {"rows": []}, "at least one epoch"),
     (np.zeros((2, 3)), {"transform": "square"}, "`transform`")],
)
def test_epoch_average_errors(history, kwargs, match):
    with pytest.raises(ValueError, match=match):
        epoch_average(history, **kwargs)


# ------------------------------------------------------------------------------------------ memorization
def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    r = rng.random(300)
    s = np.exp(3 * r + rng.normal(size=300))
    s[:20] = s[20]  # ties
    m = memorization_comparison(s, r)
    # torchmetrics: Pearson in float64; Spearman's average ranks in the default float32 (exact to 2**24 samples,
    # then rounded) and an eps of 1e-6 in its denominator: both move it by < 1e-6
    assert m["pearson"] == pytest.approx(stats.pearsonr(s, r)[0], abs=1e-12)
    assert m["spearman"] == pytest.approx(stats.spearmanr(s, r)[0], abs=1e-6)


def test_top_k_cosine_and_its_chance_level_by_hand():
    s = np.array([5.0, 1.0, 2.0, 4.0, 3.0])
    r = np.array([0.9, 0.8, 0.1, 0.0, 0.2])
    m = memorization_comparison(s, r, top_k=[2, 5], by="reference")  # reference top 2: samples 0 and 1
    a, b = np.array([5.0, 1.0]), np.array([0.9, 0.8])
    assert m["cosine@2"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert m["cosine@5"] == pytest.approx(s @ r / np.linalg.norm(s) / np.linalg.norm(r))
    by_scores = memorization_comparison(s, r, top_k=[2], by="scores")  # our top 2: samples 0 and 3
    a, b = np.array([5.0, 4.0]), np.array([0.9, 0.0])
    assert by_scores["cosine@2"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    # chance: the exact mean over every shuffle of the scores among the top k
    for k in (2, 5):
        top = np.argsort(-r, kind="stable")[:k]
        a, b = s[top], r[top]
        shuffled = [a[list(p)] @ b / np.linalg.norm(a) / np.linalg.norm(b) for p in itertools.permutations(range(k))]
        assert m[f"cosine_chance@{k}"] == pytest.approx(np.mean(shuffled))


def test_cosine_of_unrelated_nonnegative_scores_is_high_and_chance_says_so():
    rng = np.random.default_rng(1)
    s, r = rng.random(20_000), rng.random(20_000)
    m = memorization_comparison(s, r, top_k=[20_000])
    assert abs(m["spearman"]) < 0.03
    assert m["cosine@20000"] == pytest.approx(0.75, abs=0.01)  # E[ab] / E[a^2] = (1/4) / (1/3)
    assert m["cosine@20000"] == pytest.approx(m["cosine_chance@20000"], abs=0.01)


@pytest.mark.parametrize(
    ("scores", "reference", "kwargs", "match"),
    [([1.0, 2.0], [1.0], {}, "one shape"), ([1.0, np.nan], [1.0, 2.0], {}, "finite"),
     ([1.0, 2.0], [1.0, 2.0], {"top_k": [3]}, r"top_k in \[1, 2\]"),
     ([1.0, 2.0], [1.0, 2.0], {"by": "curvature"}, "`by`")],
)
def test_memorization_comparison_errors(scores, reference, kwargs, match):
    with pytest.raises(ValueError, match=match):
        memorization_comparison(np.array(scores), np.array(reference), **kwargs)


# ------------------------------------------------------------------------------------------ Feldman & Zhang files
def _cifar100_file(path, labels, mem):
    np.savez(path, tr_mem=mem, tr_labels=labels, tt_labels=labels[:5], tt_mem=mem[:5])


def test_cifar100_file_loads_aligned(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 100, 50)
    mem = rng.random(50)
    _cifar100_file(tmp_path / "cifar100_infl_matrix.npz", labels, mem)
    np.testing.assert_array_equal(load_feldman_zhang(tmp_path / "cifar100_infl_matrix.npz", labels), mem)
    # our order is a permutation of the file's: `order` gives each of our samples its row
    perm = rng.permutation(50)
    got = load_feldman_zhang(tmp_path / "cifar100_infl_matrix.npz", labels[perm], order=perm)
    np.testing.assert_array_equal(got, mem[perm])
    # a subset run (source indices)
    rows = np.array([3, 7, 11])
    np.testing.assert_array_equal(load_feldman_zhang(tmp_path / "cifar100_infl_matrix.npz", labels[rows],
                                                     order=rows), mem[rows])


def test_cifar100_file_in_another_order_is_refused_with_the_reason(tmp_path):
    labels = np.arange(50) % 100
    _cifar100_file(tmp_path / "cifar100_infl_matrix.npz", labels, np.linspace(0, 1, 50))
    ours = labels.copy()
    ours[[4, 9, 30]] = [99, 98, 97]
    with pytest.raises(ValueError, match=r"disagree with the dataset's at 3 of 50 samples \(sample 4: 99 here, 4 in "
                                         r"cifar100_infl_matrix.npz.*TensorFlow Datasets' order"):
        load_feldman_zhang(tmp_path / "cifar100_infl_matrix.npz", ours)
    with pytest.raises(ValueError, match="has 50 samples, the dataset 49: pass `order`"):
        load_feldman_zhang(tmp_path / "cifar100_infl_matrix.npz", labels[:49])
    with pytest.raises(ValueError, match="points outside"):
        load_feldman_zhang(tmp_path / "cifar100_infl_matrix.npz", labels[:2], order=np.array([0, 50]))


def test_a_file_without_the_keys_is_refused(tmp_path):
    np.savez(tmp_path / "other.npz", memorization=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks \['tr_mem', 'tr_labels'\]"):
        load_feldman_zhang(tmp_path / "other.npz", np.zeros(3, dtype=int))
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="Cannot read"):
        load_feldman_zhang(tmp_path / "broken.npz", np.zeros(3, dtype=int))


@pytest.mark.parametrize("kind", ["bytes", "unicode"])
def test_imagenet_file_aligns_by_file_name_without_pickle(tmp_path, kind):
    rng = np.random.default_rng(2)
    wnids = ["n01440764", "n01443537", "n01484850"]
    labels = rng.integers(0, 3, 30)
    names = [f"{wnids[c]}_{1000 + i}.JPEG" for i, c in enumerate(labels)]
    mem = rng.random(30)
    perm = rng.permutation(30)  # the file lists the images in another order, with their class folder
    stored = np.array([f"train/{wnids[labels[i]]}/{names[i]}" for i in perm], dtype="U" if kind == "unicode" else "S")
    np.savez(tmp_path / "imagenet_index.npz", tr_filenames=stored, tr_labels=labels[perm], tr_mem=mem[perm])
    ours = [f"/data/imagenet/train/{wnids[c]}/{n}" for c, n in zip(labels, names)]
    np.testing.assert_array_equal(load_feldman_zhang(tmp_path / "imagenet_index.npz", labels, filenames=ours), mem)
    missing = [*ours[:-1], "/data/n09999999_1.JPEG"]
    with pytest.raises(ValueError, match=r"1 of 30 file names are not in it \(e.g. \['n09999999_1.JPEG'\]\)"):
        load_feldman_zhang(tmp_path / "imagenet_index.npz", labels, filenames=missing)
    shifted = (labels + 1) % 3  # e.g. class indices not in sorted-WordNet-id order
    with pytest.raises(ValueError, match="disagree.*sorted WordNet ids"):
        load_feldman_zhang(tmp_path / "imagenet_index.npz", shifted, filenames=ours)


def test_object_arrays_need_allow_pickle(tmp_path):
    names = np.array(["a_1.JPEG", "b_2.JPEG"], dtype=object)
    np.savez(tmp_path / "imagenet_index.npz", tr_filenames=names, tr_labels=np.array([0, 1]), tr_mem=np.array([.5, .1]))
    with pytest.raises(ValueError, match="pickled Python objects.*allow_pickle=True only for a file"):
        load_feldman_zhang(tmp_path / "imagenet_index.npz", np.array([1, 0]), filenames=["b_2.JPEG", "a_1.JPEG"])
    got = load_feldman_zhang(tmp_path / "imagenet_index.npz", np.array([1, 0]), filenames=["b_2.JPEG", "a_1.JPEG"],
                             allow_pickle=True)
    np.testing.assert_array_equal(got, [0.1, 0.5])


def test_align_reference_checks_shapes():
    with pytest.raises(ValueError, match="one shape"):
        align_reference(np.zeros(3), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="`order` as integers"):
        align_reference(np.zeros(3), np.zeros(3), np.zeros(2), order=np.array([0.0, 1.0]))


def test_scores_csv_reads_back_as_typed_columns(tmp_path):
    write_scores_csv(tmp_path / "s.csv", {"label": np.array([3, 1]), "flipped": np.array([True, False]),
                                          "curvature": np.array([1.5e-7, 2.0]), "file": np.array(["a/1.JPEG", "b"])})
    got = read_scores_csv(tmp_path / "s.csv")
    assert list(got) == ["index", "label", "flipped", "curvature", "file"]
    assert got["file"].tolist() == ["a/1.JPEG", "b"]
    assert got["label"].dtype == np.int64 and got["curvature"].dtype == np.float64
    np.testing.assert_array_equal(got["flipped"], [1, 0])
    np.testing.assert_allclose(got["curvature"], [1.5e-7, 2.0])
