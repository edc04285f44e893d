"""``train.loader=arrow`` against ``train.loader=petastorm`` on the real ETL output: the same batches."""
from __future__ import annotations

import numpy as np
import pytest
from testkit import needs_petastorm

from pipelines import dataset
from pipelines.artifact import Normalizer
from pipelines.train import loader

pytestmark = needs_petastorm  # compares with Petastorm


@pytest.fixture(scope="module")
def view(digits_workdir) -> dataset.DatasetView:
    return dataset.open_dataset(str(digits_workdir / "datasets" / "digits"))


def _normalize(view: dataset.DatasetView) -> Normalizer:
    return Normalizer.from_stats(view.manifest.normalization, view.manifest.feature_shape)


def _arrays(batches) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(b["features"].numpy(), b["label"].numpy()) for b in batches]


def _assert_same(arrow, petastorm) -> None:
    assert len(arrow) == len(petastorm) > 0
    for (f1, l1), (f2, l2) in zip(_arrays(arrow), _arrays(petastorm)):
        assert f1.dtype == f2.dtype and l1.dtype == l2.dtype
        np.testing.assert_array_equal(f1, f2)
        np.testing.assert_array_equal(l1, l2)


@pytest.mark.filterwarnings("ignore")  # Petastorm's deprecation chatter
@pytest.mark.parametrize("rank, size, seed, skip", [(0, 1, 1, 0), (1, 2, 1, 0), (0, 2, 7, 5), (0, 3, 2, 0),
                                                     (2, 3, 2, 3)])
def test_epoch_batches_are_the_same_with_either_loader(view, rank, size, seed, skip):
    split = view.splits["train"]
    assert len(split.sizes) > 3  # several row groups: shards and shuffles have something to order
    steps = dataset.steps_per_epoch(split.sizes, size, 32) + 2  # the smaller shards start a second pass
    order = loader.BatchOrder(batch_size=32, steps=steps, seed=seed, skip=skip)
    batches = {name: list(loader.epoch_batches(split, order, rank=rank, size=size, normalize=_normalize(view),
                                               loader=name)) for name in ("arrow", "petastorm")}
    assert len(batches["arrow"]) == steps - skip
    _assert_same(batches["arrow"], batches["petastorm"])


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("split_name", ["train", "val"])
def test_read_all_is_the_same_with_either_loader(view, split_name):
    split = view.splits[split_name]
    for size in (1, 2, 3):
        rows = 0
        for rank in range(size):
            batches = {name: list(loader.read_all(split, rank=rank, size=size, batch_size=32,
                                                  normalize=_normalize(view), loader=name))
                       for name in ("arrow", "petastorm")}
            if batches["petastorm"]:
                _assert_same(batches["arrow"], batches["petastorm"])
            assert len(batches["arrow"]) == len(batches["petastorm"])
            rows += sum(len(b["label"]) for b in batches["arrow"])
        assert rows == split.rows  # every row once across the ranks
