"""Image datamodules: CIFAR from torchvision's own files, Fashion-MNIST idx files, the offline copy, folders."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from offline import cache_dir, needs_offline
from PIL import Image

from curvature_callback.experiments.data.images import (
    CIFARDataModule,
    FashionMNISTDataModule,
    ImageArrayDataset,
    ImageFolderDataModule,
    random_crop_flip,
)
from curvature_callback.experiments.models import resnet_cifar
from curvature_callback.experiments.module import ClassifierModule


def write_cifar_batches(root, name, n_train=60, n_test=20, seed=0):
    """Files in torchvision's pickled batch format (CIFAR-10: 5 train batches + test; CIFAR-100: train + test),
    with torchvision's checksum lists pointed at them. Returns (train images HWC, train labels)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    rng = np.random.default_rng(seed)
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    classes = 10 if name == "cifar10" else 100
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    key = "labels" if name == "cifar10" else "fine_labels"

    def dump(file, n):
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, classes, n).tolist()
        with open(folder / file, "wb") as f:
            pickle.dump({"data": data, key: labels}, f)
        return data, labels, hashlib.md5((folder / file).read_bytes()).hexdigest()

    train_files = [f for f, _ in cls.train_list]
    parts = [dump(f, n_train // len(train_files)) for f in train_files]
    test = dump(cls.test_list[0][0], n_test)
    names = [f"class{i}" for i in range(classes)]
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({cls.meta["key"]: names}, f)
    md5 = {f: p[2] for f, p in zip(train_files, parts)}
    lists = {"train_list": [[f, md5[f]] for f in train_files], "test_list": [[cls.test_list[0][0], test[2]]],
             "meta": {**cls.meta, "md5": hashlib.md5((folder / cls.meta["filename"]).read_bytes()).hexdigest()}}
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return cls, lists, data, np.concatenate([p[1] for p in parts])


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_torchvision_files_keeps_order_and_records_noise(tmp_path, monkeypatch, name):
    cls, lists, images, labels = write_cifar_batches(tmp_path, name)
    for attr, value in lists.items():
        monkeypatch.setattr(cls, attr, value)  # torchvision's integrity check, against our files
    dm = CIFARDataModule(name, root=str(tmp_path), download=False, noise=0.1, seed=3, limit=50,
                         num_classes=10 if name == "cifar10" else 100, in_channels=3)
    dm.prepare_data()  # no download asked: nothing to do
    # download=True with the files in place: torchvision verifies their md5 and fetches nothing
    CIFARDataModule(name, root=str(tmp_path), download=True, limit=50).prepare_data()
    ds = dm.curvature_dataset()
    assert len(ds) == 50 and dm.flipped.sum() == 5
    assert np.array_equal(dm.original_labels, labels[:50])
    assert np.array_equal(ds.targets.numpy(), dm.given_labels)
    assert np.array_equal(dm.given_labels != dm.original_labels, dm.flipped)
    x, y = ds[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and int(y) == dm.given_labels[7]
    # per-channel standardization of sample 7's pixels, in standard order
    raw = torch.as_tensor(images[:50]).double() / 255
    mean, std = raw.mean((0, 1, 2)), raw.std((0, 1, 2))
    want = ((raw[7] - mean) / std).permute(2, 0, 1).float()
    torch.testing.assert_close(x, want, rtol=1e-5, atol=1e-5)
    val_x, val_y = next(iter(dm.val_dataloader()))
    assert len(val_y) == 20  # the test split, original labels (limit 50 > 20)


def test_cifar_without_files_says_where_to_put_them(tmp_path):
    dm = CIFARDataModule("cifar100", root=str(tmp_path), download=False)
    with pytest.raises(RuntimeError, match="cifar-100-python/ under data.root"):
        dm.setup()
    with pytest.raises(ValueError, match="CIFAR-10 only"):
        CIFARDataModule("cifar100", source="offline")


def write_idx(path, array):
    """An idx file (the MNIST format): magic with the type code and rank, big-endian sizes, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_idx_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 10, 30)
    for split, n in (("train", 30), ("t10k", 10)):
        write_idx(raw / f"{split}-images-idx3-ubyte", images[:n])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[:n])
    dm = FashionMNISTDataModule(root=str(tmp_path), download=False, noise=0.2, noise_kind="pair", num_classes=10,
                                in_channels=1)
    ds = dm.curvature_dataset()
    assert len(ds) == 30 and ds[0][0].shape == (1, 28, 28)
    assert np.array_equal(dm.original_labels, labels)
    assert np.array_equal(dm.given_labels[dm.flipped], (labels[dm.flipped] + 1) % 10)
    assert dm.classes[0] == "T-shirt/top"


@needs_offline
def test_cifar10_offline_datamodule_matches_the_arrays(tmp_path):
    dm = CIFARDataModule(source="offline", root=None, cache_dir=str(cache_dir(tmp_path)), limit=40, noise=0.1,
                         validate=False)
    dm.prepare_data()
    ds = dm.curvature_dataset()
    assert len(ds) == 40 and dm.original_labels[:3].tolist() == [6, 9, 9] and dm.flipped.sum() == 4
    assert dm.val_dataloader() == []
    with pytest.raises(ValueError, match="num_classes=10, the config says num_classes=100"):
        CIFARDataModule(source="offline", cache_dir=str(tmp_path), limit=4, num_classes=100, validate=False).setup()


def test_random_crop_flip_shifts_within_the_padding():
    torch.manual_seed(0)
    x = torch.arange(64 * 3 * 8 * 8, dtype=torch.float32).reshape(64, 3, 8, 8)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    y = random_crop_flip(x, 2, fill)
    assert y.shape == x.shape
    for i in range(64):
        kept = y[i][y[i] >= 0]
        assert torch.isin(kept, x[i]).all()  # pixels come from the same image
        for c in range(3):
            pad = y[i, c][y[i, c] < 0]
            assert (pad == fill[c]).all()  # padding has the channel's fill
        assert (y[i] >= 0).sum() >= 3 * 6 * 6  # at most 2 pixels cut per axis
    # some images shifted, some flipped
    assert (y != x).flatten(1).any(1).float().mean() > 0.5


def test_image_array_dataset_checks_inputs():
    with pytest.raises(ValueError, match="uint8"):
        ImageArrayDataset(np.zeros((2, 4, 4), np.float32), np.zeros(2), torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match="one label per image"):
        ImageArrayDataset(np.zeros((2, 4, 4), np.uint8), np.zeros(3), torch.zeros(1), torch.ones(1))


def make_folder(root, classes=("cat", "dog", "eel"), per_class=4, size=20):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for k in range(per_class if split == "train" else 1):
                Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)).save(
                    root / split / c / f"{c}_{k:03d}.png")
    return root


def test_image_folder_keeps_file_names_and_noise(tmp_path):
    make_folder(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), image_size=16, resize=18, noise=0.25, num_workers=0, batch_size=4,
                               num_classes=3)
    ds = dm.curvature_dataset()
    assert dm.filenames == [f"{c}/{c}_{k:03d}.png" for c in ("cat", "dog", "eel") for k in range(4)]
    assert dm.original_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and dm.flipped.sum() == 3
    x, y = ds[5]
    assert x.shape == (3, 16, 16) and y == dm.given_labels[5]
    batches = list(dm.train_dataloader())
    assert batches[0][0].shape == (4, 3, 16, 16)
    # training sees every sample once per epoch, under its given (noisy) label
    assert sorted(y for _, yb, _ in batches for y in yb.tolist()) == sorted(dm.given_labels.tolist())
    for _, yb, index in batches:  # each item carries its index in the scored dataset
        assert yb.tolist() == dm.given_labels[index.numpy()].tolist()
    assert "RandomResizedCrop" in repr(dm._train.transform) and "RandomResizedCrop" not in repr(ds.transform)
    assert len(next(iter(dm.val_dataloader()))[1]) == 3
    with pytest.raises(ValueError, match="num_classes=3, the config says num_classes=1000"):
        ImageFolderDataModule(str(tmp_path), num_classes=1000).setup()
    with pytest.raises(FileNotFoundError, match="train_dir"):
        ImageFolderDataModule(str(tmp_path / "nowhere")).setup()


def test_cifar_resnet_and_multistep_schedule():
    net = resnet_cifar(18, num_classes=10)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and isinstance(net.maxpool, torch.nn.Identity)
    module = ClassifierModule(net, lr=0.1, weight_decay=5e-4, scheduler="multistep", milestones=[2, 4])
    config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    with pytest.raises(ValueError, match="depth"):
        resnet_cifar(20)
