"""The experiments' data: seeded label noise, the default digits, the offline CIFAR-10 copy, image datamodules.

Every datamodule scores the training set in its standard order, without augmentation, with the *given* (noisy)
labels: the labels the network is asked to fit.
"""

from curvature_callback.experiments.data.base import NoisyDataModule
from curvature_callback.experiments.data.cifar10_offline import (
    CIFAR10_CLASSES,
    CIFAR10_TARBALL,
    cifar10_offline_arrays,
    cifar10_offline_files,
    cifar10_offline_root,
    data_cache_dir,
    unpack,
)
from curvature_callback.experiments.data.digits import DigitsDataModule, standardize
from curvature_callback.experiments.data.images import (
    ArrayDataModule,
    CIFARDataModule,
    FashionMNISTDataModule,
    ImageArrayDataset,
    ImageFolderDataModule,
    channel_stats,
    random_crop_flip,
)
from curvature_callback.experiments.data.noise import NoiseKind, inject_label_noise

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_TARBALL", "ArrayDataModule", "CIFARDataModule", "DigitsDataModule",
    "FashionMNISTDataModule", "ImageArrayDataset", "ImageFolderDataModule", "NoiseKind", "NoisyDataModule",
    "channel_stats", "cifar10_offline_arrays", "cifar10_offline_files", "cifar10_offline_root", "data_cache_dir",
    "inject_label_noise", "random_crop_flip", "standardize", "unpack",
]
