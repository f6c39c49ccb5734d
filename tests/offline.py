"""The offline CIFAR-10 copy for tests: its folder (or None) and cache folders that share one unpacked tree."""

import os

import pytest

from curvature_callback.experiments.data import CIFAR10_TARBALL, cifar10_offline_root, data_cache_dir, unpack

try:
    ROOT = cifar10_offline_root()
except FileNotFoundError:
    ROOT = None

needs_offline = pytest.mark.skipif(ROOT is None, reason="no offline CIFAR-10 copy: set $CURVATURE_CIFAR10_OFFLINE "
                                   "to its folder")


def cache_dir(path):
    """A fresh cache folder at ``path`` whose unpacked tree links to the default cache's (unpacked once per
    machine, in $CURVATURE_DATA_CACHE or ~/.cache): decoded arrays written there stay private to the test."""
    shared = unpack(ROOT / CIFAR10_TARBALL, data_cache_dir(None))
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "cifar10-jpeg").exists():
        os.symlink(shared, path / "cifar10-jpeg")
    return path
