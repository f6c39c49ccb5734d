"""BoringModel-sized modules and data for the callback tests (picklable for ddp_spawn)."""

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Blobs(Dataset):
    def __init__(self, n=48, d=6, classes=3, seed=0, transform=None):
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.randint(0, classes, (n,), generator=g)
        self.x = torch.randn(classes, d, generator=g)[self.targets] * 2 + torch.randn(n, d, generator=g)
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


class DictBlobs(Blobs):
    def __getitem__(self, i):
        return {"input": self.x[i], "target": self.targets[i], "index": i}


class Classifier(L.LightningModule):
    def __init__(self, d=6, classes=3, lr=0.1, batchnorm=True, dropout=0.1):
        super().__init__()
        norm = nn.BatchNorm1d(16) if batchnorm else nn.Identity()
        self.net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), norm, nn.Dropout(dropout), nn.Linear(16, classes))
        self.lr = lr
        self.modes_seen = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        self.modes_seen.append(self.training)
        x, y = (batch["input"], batch["target"]) if isinstance(batch, dict) else (batch[0], batch[1])
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Frozen(Classifier):
    """lr 0, no BatchNorm or Dropout: the same function in every process and every epoch."""

    def __init__(self):
        super().__init__(lr=0.0, batchnorm=False)
        self.net[3] = nn.Identity()


class BlobsDM(L.LightningDataModule):
    def __init__(self, n=48, shuffle=False, with_curvature_dataset=False, transform=None):
        super().__init__()
        self.train = Blobs(n, transform=transform)
        self.shuffle = shuffle
        self.with_curvature_dataset = with_curvature_dataset

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=16, shuffle=self.shuffle)

    def __getattr__(self, name):
        if name == "curvature_dataset" and self.__dict__.get("with_curvature_dataset"):
            return lambda: Blobs(20, seed=1)
        return super().__getattr__(name)


class EndsProcessGroup(Callback):
    """Destroys the process group in each rank when its fit ends, so that no rank exits with gloo's threads alive.

    Lightning destroys the group it made only under NCCL (at exit); under gloo it lives on until the interpreter
    finalizes. A gloo worker thread that drops its last tensor then must take the GIL, CPython ends it with
    pthread_exit inside a noexcept destructor, and std::terminate aborts the rank: "terminate called without an
    active exception", SIGABRT, after a fit that passed (6 of 20 runs of two bare gloo ranks on a loaded machine).
    ``destroy_process_group`` shuts the backend down and joins its threads while Python is still whole. Last
    callback, in ``teardown``: after every hook that may call a collective (``on_fit_end`` comes before it).
    """

    def teardown(self, trainer, pl_module, stage):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def trainer(tmp_path, callbacks, max_epochs=2, **kw):
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    kw.setdefault("enable_progress_bar", False)
    devices = kw.pop("devices", 1)
    if devices != 1:  # ranks in processes of their own (ddp_spawn): each ends its gloo group before it exits
        callbacks = [*callbacks, EndsProcessGroup()]
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=devices,
                     enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks, **kw)


class StepClassifier(Classifier):
    """Returns what the callback records training-time signals from (``sample_outputs``); no dropout, so a resumed
    run trains as an uninterrupted one."""

    def __init__(self, lr=0.1):
        super().__init__(lr=lr, dropout=0.0)

    def training_step(self, batch, _):
        from curvature_callback import sample_outputs

        x, y, index = batch
        logits = self(x)
        return sample_outputs(F.cross_entropy(logits, y, reduction="none"), index, logits=logits, targets=y)


class IndexedBlobsDM(BlobsDM):
    """BlobsDM whose training batches are ``(x, y, index)``."""

    def train_dataloader(self):
        from curvature_callback import WithIndex

        return DataLoader(WithIndex(self.train), batch_size=16, shuffle=self.shuffle)
