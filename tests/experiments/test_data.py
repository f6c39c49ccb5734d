"""Data sources of the experiments: the offline CIFAR-10 copy in standard order."""

from __future__ import annotations

import numpy as np
import pytest
from offline import ROOT as OFFLINE
from offline import cache_dir, needs_offline
from PIL import Image

from curvature_callback.experiments.data import (
    CIFAR10_CLASSES,
    cifar10_offline_arrays,
    cifar10_offline_files,
    cifar10_offline_root,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return cache_dir(tmp_path_factory.mktemp("cifar10_cache"))


def test_standard_order_file_names_count_within_each_class():
    y = np.array([6, 9, 9, 4, 1, 1, 2, 7, 8, 3, 6, 9])
    names = cifar10_offline_files(y, "test")
    assert names[:4] == ["test/frog/0000.jpg", "test/truck/0000.jpg", "test/truck/0001.jpg", "test/deer/0000.jpg"]
    assert names[10] == "test/frog/0001.jpg" and names[11] == "test/truck/0002.jpg"
    # a brute-force count agrees on random labels
    y = np.random.default_rng(0).integers(0, 10, 500)
    brute = [f"train/{CIFAR10_CLASSES[c]}/{int((y[:i] == c).sum()):04d}.jpg" for i, c in enumerate(y)]
    assert cifar10_offline_files(y) == brute


@needs_offline
def test_file_names_cover_the_tarball_exactly(tmp_path):
    labels = np.load(OFFLINE / "train_labels.npy")
    assert labels.dtype == np.int64 and labels.shape == (50000,) and np.bincount(labels).tolist() == [5000] * 10
    unpacked = cache_dir(tmp_path) / "cifar10-jpeg"
    listed = {p.relative_to(unpacked).as_posix() for p in unpacked.glob("*/*/*") if p.is_file()}
    names = cifar10_offline_files(labels, "train") + cifar10_offline_files(np.load(OFFLINE / "test_labels.npy"), "test")
    assert len(set(names)) == 60000 and set(names) == listed


@needs_offline
def test_offline_arrays_in_standard_order(cache):
    x, y = cifar10_offline_arrays(split="train", cache_dir=cache, limit=20)
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    # torchvision's CIFAR10(train=True).targets[:10]: frog truck truck deer automobile automobile bird horse ship cat
    assert y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert np.array_equal(y, np.load(OFFLINE / "train_labels.npy")[:20])
    # sample 2 is the second truck: truck/0001.jpg in the unpacked copy
    with Image.open(cache / "cifar10-jpeg" / "train" / "truck" / "0001.jpg") as image:
        assert np.array_equal(x[2], np.asarray(image.convert("RGB")))
    assert 40 < x.mean() < 200 and x.std() > 20  # real photographs, not blank
    assert not (cache / "train_images.npy").exists()  # a prefix is not cached


@needs_offline
def test_offline_arrays_cache_the_whole_split_and_slice_it(cache):
    x, y = cifar10_offline_arrays(split="test", cache_dir=cache)
    assert x.shape == (10000, 32, 32, 3) and y[:4].tolist() == [3, 8, 8, 0]  # cat ship ship airplane
    cached = np.load(cache / "test_images.npy", mmap_mode="r")
    assert np.array_equal(cached, x)
    # later calls read the cache: mark it and see the mark come back, sliced for `limit`
    marked = np.array(cached)
    marked[:, 0, 0, 0] = 7
    np.save(cache / "test_images.npy", marked)
    x2, y2 = cifar10_offline_arrays(split="test", cache_dir=cache, limit=5)
    assert x2.shape == (5, 32, 32, 3) and (x2[:, 0, 0, 0] == 7).all() and np.array_equal(y2, y[:5])


def test_offline_errors_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="CURVATURE_CIFAR10_OFFLINE"):
        cifar10_offline_root(tmp_path)
    monkeypatch.delenv("CURVATURE_CIFAR10_OFFLINE", raising=False)  # no path named: nothing is searched
    with pytest.raises(FileNotFoundError, match="No folder given for the offline CIFAR-10 copy"):
        cifar10_offline_root()
    monkeypatch.setenv("CURVATURE_CIFAR10_OFFLINE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        cifar10_offline_arrays()
    with pytest.raises(ValueError, match="`split` to be 'train' or 'test'"):
        cifar10_offline_arrays(split="val")
    with pytest.raises(ValueError, match="`limit`"):
        cifar10_offline_arrays(limit=-1)
