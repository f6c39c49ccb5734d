"""CurvatureCallback inside a real Trainer (DESIGN §2, §4, §5)."""

import csv
import functools
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from boring import Blobs, BlobsDM, Classifier, DictBlobs, Frozen, trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from torch.utils.data import DataLoader

from curvature_callback import CurvatureCallback, CurvatureStore, input_curvature
from curvature_callback.core.store import StoreMismatchError


def no_dropout():
    return Classifier(dropout=0.0)  # dropout's RNG is not in a checkpoint: resumed runs would differ


def fit(tmp_path, cb, model=Classifier, dm=None, max_epochs=2, ckpt_path=None, **kw):
    torch.manual_seed(0)
    t = trainer(tmp_path, [cb, *kw.pop("callbacks", [])], max_epochs=max_epochs, **kw)
    t.fit(model() if callable(model) and not isinstance(model, torch.nn.Module) else model, dm or BlobsDM(),
          ckpt_path=ckpt_path)
    return t


def blobs64(n=48):
    """Blobs in float64, for comparing a sample's score across batch compositions (fit with precision="64-true":
    model and training batches in float64 too; the estimator keeps float64 inputs in float64).

    Not float32: the score is ||g(x+hv) - g(x)||^2, two gradients of size |g| that differ by |d| ~ h|Hv|. Each
    carries rounding ~ gamma*u*|g| (gamma ~ 8 for these 6-16-3 layers) that a different batch composition
    changes (BLAS blocking), so the score moves by up to 2 * 2*gamma*u*|g|/|d| = 32*u*R, R = |g|/|d| <= 9e3 on
    Blobs (computed in float64): ~2e-2 in float32 (u = 2**-24; 1e-3 seen on AMD EPYC), 3e-11 in float64
    (u = 2**-53; seen <= 1e-12). Hence rtol=1e-9 in float64; a wrong index, vector or epoch moves a score O(1).
    """
    ds = Blobs(n)
    ds.x = ds.x.double()
    return ds


def test_scores_on_schedule_and_counts_every_sample(tmp_path):
    cb = CurvatureCallback(Blobs(), n_vectors=2, every_n_epochs=2, start_epoch=1, directory=tmp_path / "s")
    fit(tmp_path, cb, max_epochs=6)
    s = cb.store
    assert s.epochs == [1, 3, 5] and s.count.tolist() == [3] * 48
    assert np.isfinite(s.mean).all() and (np.asarray(s.mean) > 0).all()


def test_scores_equal_the_estimator_on_the_final_model(tmp_path):
    """Batches of 7 in the callback, one of 48 here: float64 (see blobs64), so the rounding is ~1e-12."""
    cb = CurvatureCallback(blobs64(), n_vectors=3, batch_size=7, seed=4, directory=tmp_path / "s")
    model = Frozen()
    fit(tmp_path, cb, model=model, precision="64-true")  # converts `model` itself to float64
    ds = blobs64()
    want = input_curvature(model, ds.x, ds.targets, n_vectors=3, seed=4, indices=torch.arange(48))
    assert want.dtype == torch.float64
    np.testing.assert_allclose(cb.store.mean, want.numpy(), rtol=1e-9)  # 32*u*R <= 3e-11 (blobs64); seen 1e-12
    with torch.no_grad():
        logits = model(ds.x)
    # logits (|z| ~ 1, untrained) move by ~16*u*|z| ~ 4e-15 with the batch: so do loss, margin and confidence
    loss = torch.nn.functional.cross_entropy(logits, ds.targets, reduction="none")
    np.testing.assert_allclose(cb.store.channel_mean("loss"), loss.numpy(), rtol=1e-10, atol=1e-12)
    top2 = logits.topk(2, 1).values
    given = logits.gather(1, ds.targets[:, None]).squeeze(1)
    margin = torch.where(given == top2[:, 0], given - top2[:, 1], given - top2[:, 0])
    np.testing.assert_allclose(cb.store.channel_mean("margin"), margin.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cb.store.channel_mean("correct"), (margin > 0).double().numpy())
    np.testing.assert_allclose(cb.store.channel_mean("confidence"), logits.softmax(1).gather(1, ds.targets[:, None])
                               .squeeze(1).numpy(), rtol=1e-10, atol=1e-12)
    # the input-gradient norm (CSG's sample gradient), one sample at a time through torch.func: the same ~1e-12
    model.eval()
    one = lambda x, y: torch.nn.functional.cross_entropy(model(x[None]), y[None])  # noqa: E731
    grads = torch.stack([torch.func.grad(one)(x, y).norm() for x, y in zip(ds.x, ds.targets)])
    np.testing.assert_allclose(cb.store.channel_mean("input_grad"), grads.detach().numpy(), rtol=1e-9)


def test_model_trains_in_train_mode_between_passes(tmp_path):
    model = Classifier()
    fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "s"), model=model, max_epochs=3)
    assert len(model.modes_seen) == 9 and all(model.modes_seen)


def test_dataset_from_datamodule_then_training_set(tmp_path):
    cb = CurvatureCallback(n_vectors=1, directory=tmp_path / "a")
    fit(tmp_path, cb, dm=BlobsDM(with_curvature_dataset=True))
    assert cb.store.n == 20
    cb = CurvatureCallback(n_vectors=1, directory=tmp_path / "b")
    fit(tmp_path, cb, dm=BlobsDM(n=40, shuffle=True))
    assert cb.store.n == 40 and cb.store.count.tolist() == [2] * 40


class NoisyBlobs(Blobs):
    """Blobs whose items get fresh torch noise at every read, as a random transform gives them."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x + 0.1 * torch.randn_like(x), y


def looks_random_warnings(run):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in caught if "look random" in str(w.message)]


def test_augmented_training_set_warns_by_behaviour(tmp_path):
    """Told by reading item 0 twice, not by the transform's name."""
    dm = BlobsDM()
    dm.train = NoisyBlobs()
    with pytest.warns(UserWarning, match=r"items look random \(reading item 0 twice.*`dataset=`.*curvature_dataset"):
        fit(tmp_path, CurvatureCallback(n_vectors=1, directory=tmp_path / "a"), dm=dm, max_epochs=1)

    class RandomCrop:  # a random-sounding name on a dataset that ignores it: its items are the same at each read
        pass

    assert looks_random_warnings(lambda: fit(tmp_path, CurvatureCallback(n_vectors=1, directory=tmp_path / "b"),
                                             dm=BlobsDM(transform=RandomCrop()), max_epochs=1)) == []
    # a dataset given explicitly is the user's choice: not probed
    assert looks_random_warnings(lambda: fit(tmp_path, CurvatureCallback(NoisyBlobs(), n_vectors=1,
                                                                         directory=tmp_path / "c"), max_epochs=1)) == []


def test_fast_dev_run_and_sanity_check_score_nothing(tmp_path):
    """A debug run leaves no store (not even an empty one); the sanity check never scores."""
    from types import SimpleNamespace

    for i, fast_dev_run in enumerate((True, 3)):
        cb = CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / f"s{i}")
        fit(tmp_path, cb, fast_dev_run=fast_dev_run)
        assert not (tmp_path / f"s{i}").exists() and cb._store is None and cb._epochs_done == []
    skip = CurvatureCallback._should_skip_scoring
    assert skip(SimpleNamespace(fast_dev_run=0, sanity_checking=True))
    assert not skip(SimpleNamespace(fast_dev_run=0, sanity_checking=False))
    cb = CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "t")
    fit(tmp_path, cb, max_epochs=1)  # the same callback class scores a real run
    assert cb.store.epochs == [0]


def test_dict_batches_and_batch_to_inputs(tmp_path):
    ds = DictBlobs()
    cb = CurvatureCallback(ds, n_vectors=1, directory=tmp_path / "a")
    dm = BlobsDM()
    dm.train_dataloader = lambda: DataLoader(ds, batch_size=16)
    fit(tmp_path, cb, dm=dm, max_epochs=1)
    assert cb.store.count.tolist() == [1] * 48

    cb = CurvatureCallback([(i, x) for i, x in enumerate(Blobs().x)], n_vectors=1, directory=tmp_path / "b")
    with pytest.raises(TypeError, match="floating.*embedding"):  # (index, x): the default takes the index as input
        fit(tmp_path, cb, max_epochs=1)
    cb = CurvatureCallback([{"pixels": x} for x in Blobs().x], n_vectors=1, directory=tmp_path / "c")
    with pytest.raises(TypeError, match="Cannot take .inputs, targets. from a batch of type dict.*batch_to_inputs"):
        fit(tmp_path, cb, max_epochs=1)


def swap(batch):
    return batch[1], batch[0]


def test_custom_batch_to_inputs_and_loss(tmp_path):
    ds = [(y, x) for x, y in Blobs()]
    cb = CurvatureCallback(ds, n_vectors=1, batch_to_inputs=swap, loss_fn=per_sample_nll, directory=tmp_path / "a")
    fit(tmp_path, cb, max_epochs=1)
    assert cb.channels == ("loss", "input_grad") and cb.store.channels == ["curvature", "loss", "input_grad"]
    assert cb.store.meta["loss"] == "test_callback.per_sample_nll"


def per_sample_nll(out, y):
    return torch.nn.functional.nll_loss(out.log_softmax(1), y, reduction="none")


def test_resume_continues_the_same_mean(tmp_path):
    straight = CurvatureCallback(Blobs(), n_vectors=2, directory=tmp_path / "straight")
    fit(tmp_path, straight, max_epochs=4, model=no_dropout)  # dropout's RNG is not checkpointed
    first = CurvatureCallback(Blobs(), n_vectors=2, directory="curv")  # relative: under the first log dir
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    fit(tmp_path, first, max_epochs=2, callbacks=[ck], model=no_dropout, enable_checkpointing=True,
        logger=CSVLogger(tmp_path / "logs", name="run"))
    saved = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)["callbacks"][first.state_key]
    path = tmp_path / "logs" / "run" / "version_0" / "curv"
    assert saved == {"directory": str(path), "epochs_done": [0, 1], "h": 1e-3, "n_vectors": 2, "seed": 0,
                     "loss": "cross_entropy", "fast": False, "fraction": 1.0, "pass_kind": "curvature"}
    second = CurvatureCallback(Blobs(), n_vectors=2, directory="curv")
    fit(tmp_path, second, max_epochs=4, model=no_dropout, ckpt_path=tmp_path / "ck" / "last.ckpt",
        callbacks=[ModelCheckpoint()],
        enable_checkpointing=True, logger=CSVLogger(tmp_path / "logs", name="run"))  # a new version_1 log dir
    resumed = CurvatureStore.open(path)
    assert resumed.epochs == [0, 1, 2, 3] and resumed.count.tolist() == [4] * 48
    np.testing.assert_allclose(resumed.mean, straight.store.mean, rtol=1e-6)
    np.testing.assert_allclose(resumed.channel_mean("input_grad"), straight.store.channel_mean("input_grad"), rtol=1e-6)
    assert not (tmp_path / "logs" / "run" / "version_1" / "curv").exists()


def test_other_settings_refused_by_name(tmp_path):
    fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "s"), max_epochs=1)
    with pytest.raises(StoreMismatchError, match=r"made with h=0.001, this run asks h=0.01"):
        fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, h=1e-2, directory=tmp_path / "s"), max_epochs=1)
    with pytest.raises(StoreMismatchError, match=r"n=48, this run asks n=20"):
        fit(tmp_path, CurvatureCallback(Blobs(20), n_vectors=1, directory=tmp_path / "s"), max_epochs=1)
    fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "s"), max_epochs=2)  # lock released
    assert CurvatureStore.open(tmp_path / "s").epochs == [0, 1]


def test_an_epoch_already_in_the_store_is_not_added_again(tmp_path):
    cb = CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "s")
    fit(tmp_path, cb, max_epochs=2)
    before = np.array(cb.store.mean)
    fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "s"), max_epochs=3)  # epochs 0-2 again
    s = CurvatureStore.open(tmp_path / "s")
    assert s.epochs == [0, 1, 2] and s.count.tolist() == [3] * 48
    assert not np.allclose(s.mean, before)


class Recorder(Logger):
    name, version = "recorder", 0

    def __init__(self):
        super().__init__()
        self.calls = []

    def log_metrics(self, metrics, step=None):
        self.calls.append((dict(metrics), step))

    def log_hyperparams(self, *args, **kwargs):
        pass


def test_statistics_logged_at_the_global_step(tmp_path):
    rec = Recorder()
    cb = CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "s", keep_history=True)
    fit(tmp_path, cb, max_epochs=2, logger=rec)
    logged = [(m, s) for m, s in rec.calls if "curvature/p99" in m]
    assert [s for _, s in logged] == [3, 6]  # 48 samples / 16 per batch = 3 steps per epoch
    for (m, _), row in zip(logged, cb.store.history):
        assert m["curvature/mean"] == pytest.approx(float(np.mean(row)), rel=1e-5)
        assert m["curvature/median"] == pytest.approx(float(np.median(row)), rel=1e-5)
        assert m["curvature/p90"] <= m["curvature/p99"] <= float(np.max(row)) * (1 + 1e-6)


def test_csv_logger_gets_the_statistics(tmp_path):
    fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1), max_epochs=2, logger=CSVLogger(tmp_path, name="csv"))
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    assert sum(1 for r in rows if r.get("curvature/p90")) == 2
    assert (tmp_path / "csv" / "version_0" / "curvature" / "meta.json").exists()  # relative: under the log dir


def test_tensorboard_histogram(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    cb = CurvatureCallback(Blobs(), n_vectors=1, keep_history=True)
    fit(tmp_path, cb, max_epochs=2, logger=logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0}).Reload()
    hists = acc.Histograms("curvature/log10_histogram")
    assert [h.step for h in hists] == [3, 6]
    store = CurvatureStore.open(tmp_path / "tb" / "version_0" / "curvature")
    for h, scores in zip(hists, store.history):
        assert h.histogram_value.num == 48
        assert h.histogram_value.sum == pytest.approx(float(np.log10(scores).sum()), rel=1e-4)
    assert "curvature/p99" in acc.Tags()["scalars"]


def test_wandb_offline_run_holds_the_histogram(tmp_path, monkeypatch):
    from wandb_reader import history

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # staged tables stay in tmp_path
    logger = WandbLogger(project="curvature-test", save_dir=str(tmp_path), offline=True)
    cb = CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "s", keep_history=True)
    fit(tmp_path, cb, max_epochs=2, logger=logger)
    logger.experiment.finish()
    rows = [r for r in history(tmp_path) if "curvature/log10_histogram/_type" in r or "curvature/log10_histogram" in r]
    assert len(rows) == 2
    for row, scores in zip(rows, cb.store.history):
        assert row["curvature/log10_histogram/_type"] == "histogram"
        counts, bins = row["curvature/log10_histogram/values"], row["curvature/log10_histogram/bins"]
        assert sum(counts) == 48 and len(bins) == len(counts) + 1 <= 513
        assert bins[0] == pytest.approx(float(np.log10(scores).min()), rel=1e-4)
    stats = [r for r in history(tmp_path) if "curvature/p99" in r]
    assert [r["trainer/global_step"] for r in stats] == [3, 6]


def test_callback_pickles_and_validates_arguments():
    cb = pickle.loads(pickle.dumps(CurvatureCallback(Blobs(), n_vectors=3)))
    assert cb.n_vectors == 3 and cb.state_key.startswith("CurvatureCallback{")
    assert CurvatureCallback(h=1e-2).state_key != CurvatureCallback().state_key
    for kwargs, match in [({"h": 0}, "`h`"), ({"n_vectors": -1}, "`n_vectors` to be an integer >= 1"),
                          ({"every_n_epochs": 0}, "`every_n_epochs`"), ({"start_epoch": -1}, "`start_epoch`"),
                          ({"batch_size": 1.5}, "`batch_size`")]:
        with pytest.raises(ValueError, match=match):
            CurvatureCallback(**kwargs)


def test_store_before_fit_says_what_to_do():
    with pytest.raises(RuntimeError, match="not known yet.*absolute `directory`"):
        _ = CurvatureCallback().store


class TellsCache(CurvatureCallback):
    """Writes how many samples this rank's device cache holds (spawned ranks are copies: a file tells)."""

    def on_fit_end(self, trainer, pl_module):
        (self.store_directory() / f"cached_{trainer.global_rank}").write_text(str(self._scoring.cached_count))
        super().on_fit_end(trainer, pl_module)

    def store_directory(self):
        return self._path


@pytest.mark.slow
def test_ddp_spawn_two_processes_equal_one(tmp_path):
    """With a rotating half of the samples per pass and gathers in pieces smaller than a block."""
    one = CurvatureCallback(Blobs(50), n_vectors=2, batch_size=8, fraction=0.5, directory=tmp_path / "one")
    fit(tmp_path, one, model=Frozen, dm=BlobsDM(50), max_epochs=4)
    two = TellsCache(Blobs(50), n_vectors=2, batch_size=8, fraction=0.5, directory=tmp_path / "two")
    two.GATHER_COLUMNS = 9
    fit(tmp_path, two, model=Frozen, dm=BlobsDM(50), devices=2, strategy="ddp_spawn", max_epochs=4)
    a, b = CurvatureStore.open(tmp_path / "one"), CurvatureStore.open(tmp_path / "two")
    assert b.count.tolist() == [2] * 50 and b.epochs == [0, 1, 2, 3]
    np.testing.assert_allclose(b.mean, a.mean, rtol=1e-5)  # aligned blocks: the same batches
    np.testing.assert_allclose(b.channel_mean("margin"), a.channel_mean("margin"), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.channel_mean("input_grad"), a.channel_mean("input_grad"), rtol=1e-5)
    # each rank caches only the samples it scores: 2 blocks of 16 on rank 0, 9 + 9 on rank 1
    assert [int((tmp_path / "two" / f"cached_{r}").read_text()) for r in (0, 1)] == [32, 18]


class Flipping(Frozen):
    """Negated logits on odd epochs: predictions change between epochs, so samples get forgotten."""

    def forward(self, x):
        sign = -1.0 if self.trainer is not None and self.current_epoch % 2 else 1.0
        return sign * self.net(x)


def test_forgetting_events_counted_between_scored_epochs(tmp_path):
    cb = CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "s", keep_history=True)
    fit(tmp_path, cb, model=Flipping, max_epochs=4)
    correct = np.asarray(cb.store.channel_history("correct"))
    want = ((correct[:-1] == 1) & (correct[1:] == 0)).sum(0)
    assert want.sum() > 10  # the test means something: many samples were forgotten
    np.testing.assert_array_equal(np.asarray(cb.store.sum_of("forgetting")), want)


def test_other_labels_refused(tmp_path):
    from torch.utils.data import TensorDataset

    ds = Blobs()
    fit(tmp_path, CurvatureCallback(TensorDataset(ds.x, ds.targets), n_vectors=1, directory=tmp_path / "s"),
        max_epochs=1)
    noisy = ds.targets.clone()
    noisy[0] = (noisy[0] + 1) % 3
    with pytest.raises(StoreMismatchError, match="another dataset.*labels_sha1"):
        fit(tmp_path, CurvatureCallback(TensorDataset(ds.x, noisy), n_vectors=1, directory=tmp_path / "s"),
            max_epochs=1)


@pytest.mark.parametrize(("fraction", "epochs", "counts"), [(0.5, 4, [2, 2, 2]), (1 / 3, 4, [2, 1, 1])])
def test_rotating_fraction_scores_every_sample_in_turn(tmp_path, fraction, epochs, counts):
    cb = CurvatureCallback(blobs64(), n_vectors=1, fraction=fraction, keep_history=True, directory=tmp_path / "s")
    fit(tmp_path, cb, model=Frozen, max_epochs=epochs, precision="64-true")
    count = np.asarray(cb.store.count)
    assert count[:3].tolist() == counts and count.sum() == sum(len(range(e % round(1 / fraction), 48,
                                                                           round(1 / fraction)))
                                                              for e in range(epochs))
    full = CurvatureCallback(blobs64(), n_vectors=1, directory=tmp_path / "full")
    fit(tmp_path, full, model=Frozen, max_epochs=1, precision="64-true")
    # frozen model: the same per-sample mean, from batches of 48/P instead of 48 (float64: see blobs64)
    np.testing.assert_allclose(cb.store.mean, full.store.mean, rtol=1e-9)
    scored = ~np.isnan(np.asarray(cb.store.history))
    assert scored.sum(1).tolist() == [len(range(e % round(1 / fraction), 48, round(1 / fraction)))
                                      for e in range(epochs)]


def test_fraction_must_be_one_over_a_whole_number():
    with pytest.raises(ValueError, match=r"`fraction` = 1/P.*got 0.3. Use 1/3"):
        CurvatureCallback(fraction=0.3)
    with pytest.raises(ValueError, match=r"`fraction` to be a float in \(0, 1\], got 0"):
        CurvatureCallback(fraction=0)
    with pytest.raises(ValueError, match="`cache`"):
        CurvatureCallback(cache="yes")


class Counting(Blobs):
    def __init__(self):
        super().__init__()
        self.reads = 0

    def __getitem__(self, i):
        self.reads += 1
        return super().__getitem__(i)


@pytest.mark.parametrize("cache", [True, False])
def test_cached_dataset_is_read_once_and_scores_the_same(tmp_path, cache):
    ds = Counting()
    cb = CurvatureCallback(ds, n_vectors=1, cache=cache, batch_size=10, directory=tmp_path / "s")
    fit(tmp_path, cb, model=Frozen, max_epochs=3)
    assert ds.reads == (48 if cache else 3 * 48)
    ref = CurvatureCallback(Blobs(), n_vectors=1, cache=not cache, batch_size=10, directory=tmp_path / "r")
    fit(tmp_path, ref, model=Frozen, max_epochs=3)
    np.testing.assert_allclose(cb.store.mean, ref.store.mean, rtol=1e-6)


def test_error_messages_of_the_pass(tmp_path):
    from curvature_callback.core.channels import classification_values

    with pytest.raises(ValueError, match=r"logits \[B, classes\].*record_outputs=False"):
        classification_values(torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4))
    cb = CurvatureCallback(n_vectors=2)
    with pytest.raises(ValueError, match=r"checkpoint's CurvatureCallback used n_vectors=3, this one has n_vectors=2"):
        cb.load_state_dict({"h": 1e-3, "n_vectors": 3, "seed": 0, "loss": "cross_entropy"})

    class NoDataset(BlobsDM):
        def train_dataloader(self):
            return {"a": DataLoader(self.train, batch_size=16), "b": DataLoader(self.train, batch_size=16)}

    with pytest.raises(ValueError, match=r"Cannot find the training dataset to score.*dataset=\.\.\."):
        fit(tmp_path, CurvatureCallback(n_vectors=1, directory=tmp_path / "s"), dm=NoDataset(), max_epochs=1)


def test_progress_bar_off_by_default_and_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    """Lightning's bar already shows the run: the pass's own bar is off unless asked for. Asked for, it shows with
    the Trainer's bar on a terminal; written to a file or pipe it would be one line per batch, so there it stays
    off (tqdm's disable=None)."""
    import sys

    import curvature_callback.integration.scoring_pass as scoring_module

    real, seen = scoring_module.tqdm, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("disable"))
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring_module, "tqdm", spy)
    fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "d"), model=Frozen, max_epochs=1,
        enable_progress_bar=True)
    assert seen == []  # the default: no bar of ours, even beside the Trainer's
    fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, progress_bar=True, directory=tmp_path / "s"), model=Frozen,
        max_epochs=1, enable_progress_bar=True)
    assert seen == [None]  # asked for, with the Trainer's bar: tqdm decides by the stream
    assert not sys.stderr.isatty() and "curvature (epoch 0)" not in capsys.readouterr().err
    fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, progress_bar=True, directory=tmp_path / "t"), model=Frozen,
        max_epochs=1)
    assert seen == [None]  # no Trainer bar: none of ours either
    with pytest.raises(ValueError, match=r"`progress_bar` to be True or False, got 'yes'"):
        CurvatureCallback(progress_bar="yes")


# ------------------------------------------------------------------------------------------ what a score means
def ce_smooth_00():
    return functools.partial(F.cross_entropy, reduction="none", label_smoothing=0.0)


def test_loss_with_other_arguments_refused_on_resume(tmp_path):
    fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, loss_fn=ce_smooth_00(), directory=tmp_path / "s"),
        max_epochs=1)
    assert CurvatureStore.open(tmp_path / "s").meta["loss"] == (
        "functools.partial(torch.nn.functional.cross_entropy, label_smoothing=0.0, reduction='none')")
    other = functools.partial(F.cross_entropy, reduction="none", label_smoothing=0.3)
    with pytest.raises(StoreMismatchError, match=r"label_smoothing=0.0.*this run asks.*label_smoothing=0.3.*loss_id"):
        fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, loss_fn=other, directory=tmp_path / "s"), max_epochs=2)
    module = torch.nn.CrossEntropyLoss(reduction="none", label_smoothing=0.3)
    with pytest.raises(StoreMismatchError, match=r"CrossEntropyLoss\(ignore_index=-100, label_smoothing=0.3"):
        fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, loss_fn=module, directory=tmp_path / "s"), max_epochs=2)
    fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, loss_fn=ce_smooth_00(), directory=tmp_path / "s"),
        max_epochs=2)  # the same arguments in a new partial: resumed
    assert CurvatureStore.open(tmp_path / "s").epochs == [0, 1]


def test_lambda_and_closure_losses_need_a_loss_id(tmp_path):
    def closure_loss(out, y):
        return F.cross_entropy(out, y, reduction="none") * scale

    scale = 2.0
    for loss_fn, kind in [(lambda out, y: F.cross_entropy(out, y, reduction="none"), "a lambda"),
                          (closure_loss, "a closure")]:
        with pytest.raises(ValueError, match=rf"`loss_fn` \({kind}\).*loss_id=\"my_loss_v1\".*named module-level "
                                             r"function or a functools.partial"):
            CurvatureCallback(loss_fn=loss_fn)
    cb = CurvatureCallback(Blobs(), n_vectors=1, loss_fn=closure_loss, loss_id="ce_times_2", directory=tmp_path / "s")
    assert cb.settings()["loss"] == "ce_times_2"
    fit(tmp_path, cb, max_epochs=1)
    assert CurvatureStore.open(tmp_path / "s").meta["loss"] == "ce_times_2"
    with pytest.raises(StoreMismatchError, match=r"loss='ce_times_2', this run asks loss='ce_times_3'"):
        fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, loss_fn=closure_loss, loss_id="ce_times_3",
                                        directory=tmp_path / "s"), max_epochs=2)
    unrenderable = functools.partial(per_sample_nll, weight={1: 2.0})  # a dict with int keys: no stable rendering
    for loss_fn, kind in [(unrenderable, r"an object of type partial whose state cannot be written down"),
                          (Frozen().training_step, r"a bound method")]:
        with pytest.raises(ValueError, match=rf"`loss_fn` \({kind}.*loss_id="):
            CurvatureCallback(loss_fn=loss_fn)
    with pytest.raises(ValueError, match=r"`loss_id` to be a non-empty string.*got ''"):
        CurvatureCallback(loss_fn=closure_loss, loss_id="")
    assert CurvatureCallback().settings()["loss"] == "cross_entropy"  # the default keeps its name


def test_fast_is_part_of_the_meaning(tmp_path):
    from curvature_callback.core.settings import MEANING_KEYS

    assert "fast" in MEANING_KEYS
    fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "s"), max_epochs=1)
    with pytest.raises(StoreMismatchError, match=r"made with fast=False, this run asks fast=True.*set fast=False"):
        fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, fast=True, directory=tmp_path / "s"), max_epochs=2)
    fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, fast=True, directory=tmp_path / "f"), max_epochs=1)
    with pytest.raises(StoreMismatchError, match=r"made with fast=True, this run asks fast=False"):
        fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "f"), max_epochs=2)
    # a checkpoint is held to the store's keys: fast too, and the loss by its arguments
    saved = CurvatureCallback(fast=True).state_dict()
    with pytest.raises(ValueError, match=r"checkpoint's CurvatureCallback used fast=True, this one has fast=False"):
        CurvatureCallback().load_state_dict(saved)
    saved = CurvatureCallback(loss_fn=ce_smooth_00()).state_dict()
    with pytest.raises(ValueError, match=r"used loss=.*label_smoothing=0.0.*this one has loss=.*label_smoothing=0.3"):
        CurvatureCallback(loss_fn=functools.partial(F.cross_entropy, reduction="none", label_smoothing=0.3)
                          ).load_state_dict(saved)


def test_numpy_scalars_are_settings_like_python_numbers(tmp_path):
    import json

    plain = dict(h=1e-3, n_vectors=2, seed=0, batch_size=32, every_n_epochs=1, start_epoch=0, num_workers=0,
                 chunk_size=64, fraction=0.5, fast=False, keep_history=True)
    numpy = dict(h=np.float32(1e-3), n_vectors=np.int64(2), seed=np.int64(0), batch_size=np.int64(32),
                 every_n_epochs=np.int32(1), start_epoch=np.int64(0), num_workers=np.int64(0),
                 chunk_size=np.int64(64), fraction=np.float32(0.5), fast=np.bool_(False), keep_history=np.bool_(True))
    a, b = CurvatureCallback(**plain), CurvatureCallback(**numpy)
    assert b.settings() == a.settings() and b.state_key == a.state_key
    assert all(type(getattr(b, k)) is type(v) for k, v in plain.items())  # Python numbers: JSON writes them
    json.dumps(b.state_dict())
    fit(tmp_path, CurvatureCallback(Blobs(), directory=tmp_path / "s", **plain), model=Frozen, max_epochs=1)
    fit(tmp_path, CurvatureCallback(Blobs(), directory=tmp_path / "s", **numpy), model=Frozen, max_epochs=2)
    assert CurvatureStore.open(tmp_path / "s").epochs == [0, 1]  # h=np.float32(1e-3) resumed h=1e-3
    for kwargs, match in [({"fast": 1}, r"`fast` to be True or False, got 1"),
                          ({"keep_history": "no"}, r"`keep_history` to be True or False"),
                          ({"chunk_size": 0}, r"`chunk_size` to be an integer >= 1, got 0"),
                          ({"n_vectors": np.float64(2.0)}, r"`n_vectors` to be an integer >= 1 .*got np.float64"),
                          ({"seed": True}, r"`seed` to be an integer in \[0, 2\*\*64\), got True")]:
        with pytest.raises(ValueError, match=match):
            CurvatureCallback(**kwargs)


class EmptyCurvatureDM(BlobsDM):
    def curvature_dataset(self):
        return Blobs(0)


def test_empty_dataset_named_with_where_it_came_from(tmp_path):
    with pytest.raises(ValueError, match=r"at least one sample.*got an empty Blobs \(from `CurvatureCallback\("
                                         r"dataset=\.\.\.\)`\)"):
        fit(tmp_path, CurvatureCallback(Blobs(0), n_vectors=1, directory=tmp_path / "a"), max_epochs=1)
    with pytest.raises(ValueError, match=r"empty Blobs \(from `EmptyCurvatureDM.curvature_dataset\(\)`\)"):
        fit(tmp_path, CurvatureCallback(n_vectors=1, directory=tmp_path / "b"), dm=EmptyCurvatureDM(), max_epochs=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before a store is made


def test_float64_dataset_with_a_float32_model_says_how_to_fix(tmp_path):
    from torch.utils.data import TensorDataset

    ds = Blobs()
    cb = CurvatureCallback(TensorDataset(ds.x.double(), ds.targets), n_vectors=1, directory=tmp_path / "s")
    with pytest.raises(TypeError, match=r"parameter dtype torch.float32, got torch.float64.*Cast the dataset's "
                                        r"inputs to torch.float32.*model.double\(\)"):
        fit(tmp_path, cb, max_epochs=1)


class Detaching(Frozen):
    def forward(self, x):
        return self.net(x.detach())


def test_model_without_a_gradient_path_to_its_input(tmp_path):
    cb = CurvatureCallback(Blobs(), n_vectors=1, batch_size=10, directory=tmp_path / "s")
    with pytest.raises(ValueError, match=r"samples with dataset indices \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] has no "
                                         r"gradient path to the inputs.*x.detach\(\)"):
        fit(tmp_path, cb, model=Detaching, max_epochs=1)


def test_mismatch_message_is_not_prefixed_twice(tmp_path):
    fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=1, directory=tmp_path / "s"), max_epochs=1)
    with pytest.raises(StoreMismatchError) as info:
        fit(tmp_path, CurvatureCallback(Blobs(), n_vectors=2, directory=tmp_path / "s"), max_epochs=1)
    assert "n_vectors=1" in str(info.value) and "StoreMismatchError" not in str(info.value)


class OtherRank:
    """A rank other than 0, to whom rank 0 broadcasts what it caught."""

    def __init__(self, sent):
        self.strategy = self
        self.sent = sent

    def broadcast(self, obj, src=0):
        assert obj is None  # only rank 0 sends
        return self.sent


def test_other_ranks_raise_rank_zeros_error_by_type_and_plain_message():
    from curvature_callback.integration.collectives import raise_together as _raise_together

    with pytest.raises(StoreMismatchError, match=r"^The store at /x was made with h=0.001\.$"):
        _raise_together(OtherRank(("StoreMismatchError", "The store at /x was made with h=0.001.")), None)
    with pytest.raises(FileExistsError, match=r"^exists$"):
        _raise_together(OtherRank(("FileExistsError", "exists")), None)
    _raise_together(OtherRank(None), None)  # nothing caught: nothing raised
    zero = OtherRank(None)
    zero.broadcast = lambda obj, src=0: obj
    with pytest.raises(KeyError):  # rank 0 re-raises its own exception; the others get a RuntimeError
        _raise_together(zero, KeyError("k"))


# ------------------------------------------------------------------------------------------ labels
def test_label_keys_of_class_labels_and_other_targets():
    from curvature_callback.integration.scoring_pass import label_keys as _label_keys

    labels = torch.tensor([0, 7, 2**40, -1])
    assert _label_keys(labels).tolist() == labels.tolist()
    soft = torch.rand(5, 3, dtype=torch.float64)
    keys = _label_keys(soft)
    assert keys.dtype == torch.int64 and (keys >= 0).all() and len(set(keys.tolist())) == 5
    changed = soft.clone()
    changed[3, 1] += 1e-12
    assert (_label_keys(changed) != keys).tolist() == [False, False, False, True, False]
    assert not torch.equal(_label_keys(soft.float()), _label_keys(soft.float().double()))  # dtype counts
    assert torch.equal(_label_keys(soft[1:3]), keys[1:3])  # a sample's key does not depend on its batch


class GatherRank:
    """One of two ranks: all_gather returns what both ranks sent in the same call (recorded by a first run)."""

    def __init__(self, rank, calls):
        self.strategy, self.world_size, self.global_rank, self.calls, self.n = self, 2, rank, calls, 0

    def all_gather(self, tensor):
        self.calls.setdefault(self.n, {})[self.global_rank] = tensor.clone()
        both = self.calls[self.n]
        self.n += 1
        return torch.stack([both.get(r, torch.zeros_like(tensor)) for r in (0, 1)])


def test_gather_keeps_int64_label_keys_exact():
    from curvature_callback.integration.scoring_pass import gather

    keys = torch.arange(50, dtype=torch.int64) + (2**62 + 1)  # not representable in float64
    scores = torch.rand(50, dtype=torch.float64)
    calls = {}
    shards = [(0, slice(0, 32)), (1, slice(32, 50))]
    for _ in range(2):  # the first round records each rank's pieces, the second gathers them
        out = [gather(GatherRank(r, calls), {"curvature": scores[s], "label_keys": keys[s]}, count=50, batch_size=8,
                      columns=9) for r, s in shards]
    for o in out:
        assert o["label_keys"].dtype == torch.int64 and torch.equal(o["label_keys"], keys)
        assert torch.equal(o["curvature"], scores) and list(o) == ["curvature", "label_keys"]


def test_label_keys_reach_the_store_commit(tmp_path, monkeypatch):
    """Each scored sample's label key goes to ``commit_epoch(..., labels=)`` aligned with ``indices``."""
    real, seen = CurvatureStore.commit_epoch, []

    def spy(self, epoch, values, indices=None, labels=None, **steps):
        seen.append((np.asarray(indices).copy(), np.asarray(labels).copy()))
        return real(self, epoch, values, indices, labels=labels, **steps)

    monkeypatch.setattr(CurvatureStore, "commit_epoch", spy)
    ds = NoTargets(Blobs().targets.tolist())
    fit(tmp_path, CurvatureCallback(ds, n_vectors=1, fraction=0.5, batch_size=5, directory=tmp_path / "s"),
        model=Frozen, max_epochs=2)
    assert len(seen) == 2
    for indices, labels in seen:
        assert labels.dtype == np.int64 and labels.tolist() == [ds.labels[i] for i in indices]


class NoTargets(torch.utils.data.Dataset):
    """Blobs' inputs with labels of one's own, under a name that is not ``targets``."""

    def __init__(self, labels):
        self.x, self.labels = Blobs().x, list(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], self.labels[i]


def test_other_labels_refused_without_targets(tmp_path):
    labels = Blobs().targets.tolist()
    fit(tmp_path, CurvatureCallback(NoTargets(labels), n_vectors=1, directory=tmp_path / "s"), model=Frozen,
        max_epochs=1)
    before = np.array(CurvatureStore.open(tmp_path / "s").sum)
    labels[5] = (labels[5] + 1) % 3
    with pytest.raises(StoreMismatchError, match=r"\b5\b"):
        fit(tmp_path, CurvatureCallback(NoTargets(labels), n_vectors=1, directory=tmp_path / "s"), model=Frozen,
            max_epochs=2)
    s = CurvatureStore.open(tmp_path / "s")
    assert s.epochs == [0] and np.array_equal(np.asarray(s.sum), before)


def test_one_label_reader_and_one_digest():
    """The callback's fingerprint and report_cli read labels with one precedence (a TensorDataset's second tensor,
    else ``targets``) and hash them one way (RecordLabels' rank check in experiments/callbacks.py too)."""
    import hashlib

    from torch.utils.data import TensorDataset

    from curvature_callback.core.numeric import dataset_labels, labels_digest
    from curvature_callback.integration.scored_dataset import labels_digest_of as _labels_digest

    ds = Blobs()
    both = TensorDataset(ds.x, ds.targets.flip(0))
    both.targets = ds.targets  # both present: the tensor wins, as in report_cli
    assert dataset_labels(both).tolist() == ds.targets.flip(0).tolist()
    assert dataset_labels(ds).tolist() == ds.targets.tolist() and dataset_labels(NoTargets([0])) is None
    want = hashlib.sha1(ds.targets.numpy().astype(np.int64).tobytes()).hexdigest()  # what stores have recorded
    assert labels_digest(ds.targets.numpy()) == labels_digest(ds.targets.tolist()) == _labels_digest(ds) == want
    assert _labels_digest(TensorDataset(ds.x, ds.targets.int())) == want
    grad = TensorDataset(ds.x, ds.targets.double().requires_grad_())  # a tensor that requires grad still reads
    assert _labels_digest(grad) == want

    class Named:
        targets = ["cat", "dog"]

    assert _labels_digest(Named()) is None  # not int64-like: no digest (the per-sample label keys still check)


# ----------------------------------------------------------------------------------------- arguments (issue 16, item 7)
def test_arguments_of_the_wrong_kind_refused_at_construction_by_name():
    with pytest.raises(TypeError, match=r"`loss_fn` to be a callable or None, got str 'cross_entropy'\. Pass a "
                                        r"function loss_fn\(outputs, targets\)"):
        CurvatureCallback(loss_fn="cross_entropy")
    with pytest.raises(TypeError, match=r"`batch_to_inputs` to be a callable or None, got str 'x'\. Pass a named "
                                        r"function fn\(batch\) -> \(x, y\)"):
        CurvatureCallback(batch_to_inputs="x")
    with pytest.raises(TypeError, match=r"`dataset` to be a map-style dataset .*got int 5\. Pass a "
                                        r"torch.utils.data.Dataset"):
        CurvatureCallback(dataset=5)
    with pytest.raises(TypeError, match=r"`directory` to be a folder path \(str or os.PathLike\), got int 5\. Pass"):
        CurvatureCallback(directory=5)
    from pathlib import Path

    assert CurvatureCallback(dataset=[(torch.zeros(2), 0)], directory=Path("x")).directory == "x"


def test_any_fraction_is_quick():
    """fraction = 1e-8: a period of 10^8 passes, its rank universe computed, not looped over (it took minutes)."""
    from curvature_callback.core.feeding import rank_universe

    cb = CurvatureCallback(Blobs(), fraction=1e-8)
    assert cb._period == 10**8
    assert rank_universe(48, cb._period, cb.batch_size, 1, 0).tolist() == list(range(48))


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="Linux's /proc")
def test_a_store_directory_that_cannot_be_made_is_named_as_given(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Cannot create the store folder /proc/curvature_store: /proc takes no "
                       r"new folder: not a real filesystem .*Pass a `directory` on a writable disk"):
        fit(tmp_path, CurvatureCallback(directory="/proc/curvature_store", n_vectors=2), max_epochs=1)
