"""Duplicates with conflicting labels: features invariant to brightness and layout, planted pairs found (on random
images and on real CIFAR-10), same-label copies and different images left alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curvature_callback.analysis.duplicates import find_conflicting_duplicates, pair_precision_recall, pixel_features


def test_pixel_features_ignore_brightness_contrast_and_layout():
    rng = np.random.default_rng(0)
    chw = rng.random((4, 3, 16, 16)).astype(np.float32)
    f = pixel_features(chw, size=4)
    assert f.shape == (4, 48) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(pixel_features(3.0 * chw - 7.0, size=4), f, atol=1e-5)  # affine: same feature
    hwc = (255 * chw.transpose(0, 2, 3, 1)).astype(np.uint8)  # the same images as uint8 [N, H, W, C]
    np.testing.assert_allclose(pixel_features(hwc, size=4), f, atol=0.02)
    as_list = [torch.as_tensor(x) for x in chw]  # a dataset-like view, read item by item
    np.testing.assert_allclose(pixel_features(as_list, size=4, batch_size=3), f, atol=1e-6)
    flat = pixel_features(np.full((2, 1, 8, 8), 0.5), size=4)  # constant images have no direction
    assert np.array_equal(flat, np.zeros((2, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="`size`"):
        pixel_features(chw, size=0)
    with pytest.raises(ValueError, match=r"Expected images \[N, C, H, W\]"):
        pixel_features(np.zeros((2, 3, 4, 4, 4)))


def _planted(n=300, seed=0):
    """Random images; 6 conflicting copies (3 exact, 3 with noise), 3 copies that keep the label."""
    rng = np.random.default_rng(seed)
    images = rng.random((n, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    conflicting, same = [], []
    for k, (a, b) in enumerate(rng.choice(n, size=(9, 2), replace=False)):
        images[b] = images[a] + (rng.normal(0, 0.02, images[a].shape) if k % 2 else 0)  # near or exact copy
        if k < 6:
            labels[b] = (labels[a] + 1 + rng.integers(0, 9)) % 10
            conflicting.append((int(a), int(b)))
        else:
            labels[b] = labels[a]
            same.append((int(a), int(b)))
    return images, labels, conflicting, same


def test_planted_conflicting_duplicates_are_found_and_nothing_else():
    images, labels, conflicting, same = _planted()
    feats = pixel_features(images)
    pairs = find_conflicting_duplicates(feats, labels, np.arange(len(labels)), threshold=0.95)
    assert pair_precision_recall([(p.i, p.j) for p in pairs], conflicting) == {
        "precision": 1.0, "recall": 1.0, "found": 6, "planted": 6, "true": 6}
    for p in pairs:
        assert p.i < p.j and p.similarity > 0.98 and p.label_i == labels[p.i] != p.label_j == labels[p.j]
    assert [p.similarity for p in pairs] == sorted((p.similarity for p in pairs), reverse=True)
    # chunking changes nothing
    assert find_conflicting_duplicates(feats, labels, np.arange(len(labels)), chunk=7) == pairs


def test_candidates_restrict_the_search_unless_against_all():
    images, labels, conflicting, _ = _planted()
    feats = pixel_features(images)
    a, b = conflicting[0]
    others = [i for i in range(len(labels)) if i != b]
    only_a = find_conflicting_duplicates(feats, labels, others)  # b is not a candidate: its pair is not inspected
    assert (min(a, b), max(a, b)) not in {(p.i, p.j) for p in only_a}
    found = find_conflicting_duplicates(feats, labels, [a], against="all")
    assert [(p.i, p.j) for p in found] == [(min(a, b), max(a, b))]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"threshold": 1.5}, "`threshold`"), ({"against": "some"}, "`against`"),
     ({"candidates": [0, 99]}, r"candidate indices in \[0, 4\)"), ({"labels": np.zeros(3)}, r"`labels` \[N\]")],
)
def test_find_errors(kwargs, match):
    args = {"features": np.eye(4, dtype=np.float32), "labels": np.arange(4), "candidates": [0, 1], **kwargs}
    with pytest.raises(ValueError, match=match):
        find_conflicting_duplicates(**args)


def test_planted_duplicates_in_real_cifar10():
    """Real images are correlated (skies, backgrounds): the threshold must still keep different images apart."""
    from curvature_callback.experiments.data import cifar10_offline_arrays

    try:
        images, labels = cifar10_offline_arrays(limit=1000)
    except FileNotFoundError as e:
        pytest.skip(f"offline CIFAR-10 copy not found: {e}")
    images, labels = images.copy(), labels.copy()
    rng = np.random.default_rng(0)
    planted = []
    for a, b in rng.choice(len(labels), size=(20, 2), replace=False):
        shifted = np.clip(images[a].astype(np.int16) + rng.integers(-8, 9), 0, 255)  # a brightness change too
        images[b] = shifted.astype(np.uint8)
        labels[b] = (labels[a] + rng.integers(1, 10)) % 10
        planted.append((int(a), int(b)))
    pairs = find_conflicting_duplicates(pixel_features(images), labels, np.arange(len(labels)))
    result = pair_precision_recall([(p.i, p.j) for p in pairs], planted)
    assert result["recall"] == 1.0 and result["precision"] == 1.0, (result, pairs[:25])
