"""The saved Feldman & Zhang memorization estimate on digits (benchmarks/memorization_digits.py) is well formed."""

from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "fz_digits.npz"
N = 1797


@pytest.fixture(scope="module")
def data():
    with np.load(PATH, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_shapes_and_dtypes(data):
    assert data["mem"].dtype == np.float64 and data["mem"].shape == (N,)
    for name in ("with_count", "without_count", "given_labels", "original_labels", "source_indices"):
        assert data[name].shape == (N,) and np.issubdtype(data[name].dtype, np.integer), name
    assert data["flipped"].dtype == bool and data["flipped"].shape == (N,)
    assert np.array_equal(data["flipped"], data["given_labels"] != data["original_labels"])
    assert int(data["flipped"].sum()) == 180  # 10 % symmetric noise, DigitsDataModule(noise=0.1, seed=0)
    for name in ("models", "subset_fraction", "epochs", "seed"):
        assert data[name].shape == (), name
    assert int(data["models"]) >= 50 and 0 < float(data["subset_fraction"]) < 1


def test_counts_and_range(data):
    assert (data["with_count"] > 0).all() and (data["without_count"] > 0).all()
    assert (data["with_count"] + data["without_count"] == int(data["models"])).all()
    assert np.isfinite(data["mem"]).all()
    assert (data["mem"] >= -1).all() and (data["mem"] <= 1).all()


def test_flipped_samples_are_memorized_more(data):
    mem, flipped = data["mem"], data["flipped"]
    assert mem[flipped].mean() > mem[~flipped].mean()
