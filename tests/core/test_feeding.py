"""How the scoring pass is fed: persistent loader workers, per-rank device caches (issue 5, item 4)."""

import os
import random

import numpy as np
import pytest
import torch
from boring import Blobs
from torch.utils.data import Dataset, get_worker_info

from curvature_callback.core.feeding import BatchFeeder, pass_indices, rank_block, rank_universe, reads_differ


class WhoReads(Dataset):
    """Sample i is (i as a float, pid of the process that read it): shows which worker served it."""

    def __init__(self, n=30):
        self.n, self.reads = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        pid = os.getpid() if get_worker_info() is not None else -1
        return torch.tensor([float(i), float(pid)]), torch.tensor(i % 3)


def to_inputs(batch):
    return batch[0], batch[1]


def pids(feeder, indices):
    seen, order = set(), []
    for idx, x, y in feeder.batches(indices, torch.device("cpu")):
        assert x[:, 0].long().tolist() == idx.tolist() and (y == idx % 3).all()
        order += idx.tolist()
        seen |= set(x[:, 1].long().tolist())
    assert order == list(indices)
    return seen


def test_loader_workers_persist_across_passes():
    feeder = BatchFeeder(WhoReads(), to_inputs, batch_size=4, num_workers=1, cache=False)
    first = pids(feeder, np.arange(0, 30, 2))
    second = pids(feeder, np.arange(1, 30, 2))  # another pass, other indices: the same worker serves it
    assert len(first) == 1 and first == second and -1 not in first
    feeder.close()  # workers stop; a later pass starts a new one
    third = pids(feeder, np.arange(5))
    assert len(third) == 1 and third != first
    feeder.close()


def test_cache_holds_only_the_universe_and_reads_it_once():
    ds = WhoReads()
    feeder = BatchFeeder(ds, to_inputs, batch_size=4, cache=True)
    universe = np.array([3, 5, 7, 9, 11])
    got = [(i.tolist(), x[:, 0].long().tolist()) for i, x, _ in feeder.batches(np.array([9, 3]), torch.device("cpu"),
                                                                               universe=universe)]
    assert got == [([9, 3], [9, 3])] and feeder.cached_count == 5 and ds.reads == 5
    list(feeder.batches(np.array([11, 5, 7]), torch.device("cpu"), universe=universe))
    assert ds.reads == 5  # cached: no further reads
    got = [x[:, 0].long().tolist() for _, x, _ in feeder.batches(np.array([4, 5]), torch.device("cpu"))]
    assert got == [[4, 5]] and ds.reads == 7  # outside the cache: read through the loader, still right


def test_auto_cache_sizes_the_universe_not_the_dataset(monkeypatch):
    import curvature_callback.core.feeding as feeding

    ds = Blobs(n=40)  # 6 float32 per sample: 24 bytes
    monkeypatch.setattr(feeding, "AUTO_CACHE_BYTES", 24 * 10)
    small = BatchFeeder(ds, to_inputs, batch_size=8, cache="auto")
    list(small.batches(np.arange(10), torch.device("cpu"), universe=np.arange(10)))
    assert small.cached_count == 10
    large = BatchFeeder(ds, to_inputs, batch_size=8, cache="auto")
    list(large.batches(np.arange(10), torch.device("cpu")))  # universe: all 40 samples, over the limit
    assert large.cached_count == 0


@pytest.mark.parametrize("n,period,batch,world", [(50, 1, 8, 2), (50, 3, 8, 2), (7, 2, 4, 3), (100, 4, 5, 4)])
def test_rank_universes_cover_every_pass_block_exactly(n, period, batch, world):
    universes = [rank_universe(n, period, batch, world, r) for r in range(world)]
    for p in range(2 * period):
        indices = pass_indices(n, p, period)
        for r in range(world):
            start, stop, _ = rank_block(len(indices), batch, world, r)
            assert np.isin(indices[start:stop], universes[r]).all()
    together = np.concatenate(universes)
    assert sorted(together.tolist()) == list(range(n))  # disjoint, and every sample in one rank's cache


class Drawing(Dataset):
    """Item i is drawn from one global generator at every read (torch, numpy or Python's), or fixed."""

    def __init__(self, source=None):
        self.source = source

    def __len__(self):
        return 4

    def __getitem__(self, i):
        noise = {"torch": lambda: torch.rand(3), "numpy": lambda: torch.from_numpy(np.random.rand(3)),
                 "python": lambda: torch.tensor([random.random()]), None: lambda: torch.zeros(3)}[self.source]()
        return {"image": torch.full((3,), float(i)) + noise, "label": i % 2, "name": f"item{i}"}


def random_states():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def same_states(a, b):
    return a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1], b[1])) and torch.equal(a[2], b[2])


@pytest.mark.parametrize("source", ["torch", "numpy", "python"])
def test_random_items_detected_and_the_random_states_kept(source):
    before = random_states()
    assert reads_differ(Drawing(source))
    assert same_states(random_states(), before)  # training draws what it would have drawn without the probe
    torch.rand(1), np.random.rand(), random.random()
    assert not same_states(random_states(), before)  # (the comparison itself can fail)


def test_deterministic_items_are_not_flagged():
    before = random_states()
    assert not reads_differ(Drawing(None))
    assert not reads_differ(Blobs())
    assert not reads_differ([(np.array([1.0, np.nan]), 3)])  # NaN equals NaN: a fixed item with a hole
    assert not reads_differ([(object(), 1)])  # values it cannot compare count as equal: no false alarm
    assert same_states(random_states(), before)


class Failing(Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        torch.rand(1)
        raise OSError("cannot read item 0")


def test_random_states_kept_when_a_read_fails():
    before = random_states()
    with pytest.raises(OSError, match="cannot read item 0"):
        reads_differ(Failing())
    assert same_states(random_states(), before)


# ------------------------------------------------------------------------------------------ issue 16, items 5 and 7
class Batched(Dataset):
    """A dataset with a batched read of its own (``__getitems__``), which counts its calls."""

    def __init__(self, n=10):
        self.n, self.batched_reads = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i % 3

    def __getitems__(self, indices):
        self.batched_reads += 1
        return [self[i] for i in indices]


@pytest.mark.parametrize("kind", ["Subset", "ConcatDataset", "__getitems__"])
def test_with_index_batches_carry_the_index_whatever_the_dataset_implements(kind):
    from torch.utils.data import ConcatDataset, DataLoader, random_split

    from curvature_callback import WithIndex

    base = Batched(10)
    wrapped = {"Subset": lambda: random_split(base, [0.8, 0.2], generator=torch.Generator().manual_seed(0))[0],
               "ConcatDataset": lambda: ConcatDataset([Batched(4), Batched(6)]), "__getitems__": lambda: base}[kind]()
    ds = WithIndex(wrapped)
    for x, y, index in DataLoader(ds, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(1)):
        for j, i in enumerate(index.tolist()):  # each item's index is its position in the wrapped dataset
            want_x, want_y = wrapped[i]
            assert torch.equal(x[j], want_x) and y[j].item() == want_y
    if kind != "ConcatDataset":
        assert base.batched_reads > 0  # the wrapped dataset's batched read is kept
    assert ds[0][2] == 0 and len(ds) == len(wrapped)


def test_with_index_reads_item_by_item_when_a_batched_read_has_its_own_shape():
    from curvature_callback import WithIndex

    class Columns(Batched):
        def __getitems__(self, indices):  # a batch as columns: not one item per index
            return {"x": [self[i][0] for i in indices]}

    assert [item[2] for item in WithIndex(Columns()).__getitems__([4, 1])] == [4, 1]
    assert WithIndex(Columns()).__getitems__([4, 1])[0][1] == 1  # 4 % 3


def test_rank_universe_is_computed_not_looped():
    """Any period is quick: fraction = 1e-8 (P = 10^8) gives each sample its own pass; equal to a pass-by-pass loop."""
    assert rank_universe(48, 10**8, 16, 1, 0).tolist() == list(range(48))
    assert rank_universe(48, 10**8, 16, 2, 1).tolist() == []  # one sample per pass: rank 0's block
    assert rank_universe(10**6, 10**8, 256, 4, 0).tolist() == list(range(10**6))

    def looped(n, period, batch, world, rank):
        parts = [pass_indices(n, p, period)[slice(*rank_block(len(pass_indices(n, p, period)), batch, world, rank)[:2])]
                 for p in range(period)]
        return sorted(np.concatenate(parts).tolist())

    for n, period, batch, world in [(1, 1, 1, 1), (7, 3, 2, 3), (50, 4, 8, 2), (10, 13, 3, 2), (100, 7, 5, 4)]:
        for rank in range(world):
            assert rank_universe(n, period, batch, world, rank).tolist() == looped(n, period, batch, world, rank)
