"""The loader: its pinned-memory path (the Parquet reader replaced by in-memory chunks), and its two
readers (``train.loader``) on small Parquet files written here: the arrow reader gives Petastorm's
batches, row group for row group, without importing Petastorm."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from pipelines import dataset
from pipelines.artifact import Normalizer
from pipelines.choices import LOADER_NAMES
from pipelines.dataset import Normalization, SplitFiles
from pipelines.train import loader
from testkit import REPO_ROOT, needs_petastorm, write_split


@pytest.fixture
def chunks(monkeypatch):
    def passes(split, rank, size, seed, workers, loader_name):
        while True:
            yield np.arange(40 * 4, dtype=np.float32).reshape(40, 4), np.arange(40, dtype=np.int64)

    monkeypatch.setattr(loader, "_shard_passes", passes)


@pytest.fixture
def pinned(monkeypatch):
    calls: list[torch.Size] = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append(self.shape) or self)
    return calls


def _batches(pin: bool) -> list[dict[str, torch.Tensor]]:
    normalize = Normalizer.from_stats(Normalization("global", [0.0], [1.0]), [4])
    return list(loader.epoch_batches(SplitFiles(["/unused"], [[40]]), loader.BatchOrder(batch_size=8, steps=3, seed=0),
                                     rank=0, size=1, normalize=normalize, pin=pin))


def test_batches_for_a_cpu_rank_are_never_pinned(chunks, pinned):
    batches = _batches(pin=False)
    assert len(batches) == 3 and pinned == []
    assert torch.equal(batches[1]["label"], torch.arange(8, 16))


def test_batches_for_a_gpu_rank_are_pinned_in_the_read_ahead_thread(chunks, pinned):
    batches = _batches(pin=True)
    assert pinned == [torch.Size([8, 4]), torch.Size([8])] * 3
    assert torch.equal(batches[2]["features"][0], torch.arange(64, 68, dtype=torch.float32))


# --- the two readers on real Parquet files ----------------------------------------------------------------------

WIDTH = 3  # features per row: (x, x / 2, -x) of the row's label x, the row's number in the split
IDENTITY = Normalizer.from_stats(Normalization("global", [0.0], [1.0]), [WIDTH])
# (rows of each row group) per file: files of different sizes, a short last group, and one empty row group
# (Petastorm publishes none for it, so the readers must agree on the row groups' numbers after it too)
LAYOUT = ((8, 8, 8, 5), (7, 0, 7), (6, 6, 6, 6, 3), (9,))


def _write_split(folder, layout=LAYOUT) -> SplitFiles:
    return write_split(folder, layout)


@pytest.fixture
def split(tmp_path) -> SplitFiles:
    return _write_split(tmp_path)


def _read(reader, split, **args) -> list[tuple[np.ndarray, np.ndarray]]:
    with loader.LOADERS[reader](split, **args) as chunks:
        return [(features.copy(), labels.copy()) for features, labels in chunks]


def _epoch(split, reader, rank, size, seed, skip=0, steps=None, batch_size=4) -> list[dict[str, torch.Tensor]]:
    steps = dataset.steps_per_epoch(split.sizes, size, batch_size) if steps is None else steps
    return list(loader.epoch_batches(split, loader.BatchOrder(batch_size=batch_size, steps=steps, seed=seed, skip=skip),
                                     rank=rank, size=size, normalize=IDENTITY, loader=reader))


def _same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(
        x["features"].dtype == y["features"].dtype and x["label"].dtype == y["label"].dtype
        and np.array_equal(x["features"].numpy(), y["features"].numpy())
        and np.array_equal(x["label"].numpy(), y["label"].numpy()) for x, y in zip(a, b))


def test_the_registry_holds_the_configs_loaders_and_an_unknown_one_is_named():
    assert tuple(loader.LOADERS) == LOADER_NAMES
    with pytest.raises(ValueError, match=r"train.loader='parquet': not one of petastorm, arrow"):
        next(loader.read_all(SplitFiles(["/x.parquet"], [[1]]), rank=0, size=1, batch_size=1, normalize=IDENTITY,
                             loader="parquet"))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("args", [{}, {"seed": 4, "shuffle": True}, {"shard": 1, "shards": 2},
                                  {"shard": 0, "shards": 2, "seed": 11, "shuffle": True},
                                  {"shard": 2, "shards": 3, "seed": 7, "shuffle": True}])
@needs_petastorm
def test_the_arrow_reader_reads_petastorms_row_groups_in_petastorms_order(split, args):
    arrow, petastorm = _read("arrow", split, **args), _read("petastorm", split, **args)
    assert len(arrow) == len(petastorm) > 0
    for (f1, l1), (f2, l2) in zip(arrow, petastorm):
        assert f1.dtype == f2.dtype == np.float32 and l1.dtype == l2.dtype == np.int64
        np.testing.assert_array_equal(f1, f2)
        np.testing.assert_array_equal(l1, l2)
    shards = args.get("shards") or 1
    expected = [g for g in loader.petastorm_order(len(split.sizes), args.get("shard"), args.get("shards"),
                                                  args.get("seed"), args.get("shuffle", False)) if split.sizes[g]]
    starts = np.cumsum([0, *split.sizes])
    assert [int(labels[0]) for _, labels in arrow] == [int(starts[g]) for g in expected]
    assert sum(len(labels) for _, labels in arrow) == dataset.shard_rows(split.sizes, args.get("shard") or 0, shards)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("rank, size, seed, skip", [(0, 1, 3, 0), (0, 2, 5, 0), (1, 2, 5, 3), (0, 3, 9, 0),
                                                     (1, 3, 9, 0), (2, 3, 2, 4)])
@needs_petastorm
def test_epoch_batches_are_the_same_with_either_loader(split, rank, size, seed, skip):
    steps = 2 * dataset.steps_per_epoch(split.sizes, size, 4) + 1  # into a third pass over the shard
    arrow = _epoch(split, "arrow", rank, size, seed, skip, steps)
    assert len(arrow) == steps - skip and _same(arrow, _epoch(split, "petastorm", rank, size, seed, skip, steps))


@needs_petastorm
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("size", [1, 2, 3, 20])
def test_read_all_is_the_same_with_either_loader_and_reads_every_row_once(split, size):
    labels = []
    for rank in range(size):
        batches = {reader: list(loader.read_all(split, rank=rank, size=size, batch_size=5, normalize=IDENTITY,
                                                loader=reader)) for reader in LOADER_NAMES}
        assert _same(batches["arrow"], batches["petastorm"])
        labels += [int(x) for b in batches["arrow"] for x in b["label"]]
    assert sorted(labels) == list(range(split.rows))  # 20 ranks > 12 row groups: rank 0 reads all


@pytest.mark.parametrize("size", [2, 3])
def test_an_epoch_starts_with_every_row_of_the_shard_once_and_no_row_of_another(split, size):
    batch_size, seen = 4, []
    for rank in range(size):
        batches = _epoch(split, "arrow", rank, size, seed=1, batch_size=batch_size)
        first_pass = batches[:dataset.shard_rows(split.sizes, rank, size) // batch_size]
        for b in first_pass:  # the features are the label's row, shuffled together with it
            np.testing.assert_array_equal(b["features"].numpy(), np.stack([b["label"], b["label"] / 2,
                                                                           -b["label"]], 1).astype(np.float32))
        seen += [int(x) for b in first_pass for x in b["label"]]
    assert len(seen) == len(set(seen)) > split.rows - size * batch_size


def test_resuming_with_skip_gives_the_tail_of_the_same_batches(split):
    whole = _epoch(split, "arrow", rank=1, size=2, seed=8)
    assert len(whole) > 5 and _same(_epoch(split, "arrow", rank=1, size=2, seed=8, skip=5), whole[5:])
    assert not _same(_epoch(split, "arrow", rank=1, size=2, seed=9), whole)  # another epoch, another order


def test_a_damaged_file_is_named_by_the_arrow_loader(split):
    damaged = split.files[2]
    with open(damaged, "r+b") as f:  # the footer's last bytes: no Parquet magic
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    with pytest.raises(dataset.DatasetError, match=r"part-00002.parquet: not a readable Parquet file"):
        _epoch(split, "arrow", rank=0, size=1, seed=0)
    with pytest.raises(dataset.DatasetError, match=r"part-00002.parquet: not a readable Parquet file"):
        list(loader.read_all(split, rank=0, size=1, batch_size=4, normalize=IDENTITY, loader="arrow"))


def test_the_arrow_loader_never_imports_petastorm(split):
    script = f"""
import sys
from pipelines.artifact import Normalizer
from pipelines.dataset import Normalization, SplitFiles
from pipelines.train import loader

split = SplitFiles.from_json({split.to_json()!r})
normalize = Normalizer.from_stats(Normalization("global", [0.0], [1.0]), [{WIDTH}])
rows = sum(len(b["label"]) for b in loader.read_all(split, rank=0, size=1, batch_size=4, normalize=normalize,
                                                    loader="arrow"))
rows += sum(len(b["label"]) for b in loader.epoch_batches(split, loader.BatchOrder(4, 10, 0), rank=1, size=2,
                                                          normalize=normalize, loader="arrow"))
print(rows, sorted(m for m in sys.modules if m.split(".")[0] == "petastorm"))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split(None, 1) == [str(split.rows + 40), "[]\n"]
