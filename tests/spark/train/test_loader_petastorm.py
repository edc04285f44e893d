"""The rank-side loader against real Petastorm on the real ETL output."""
from __future__ import annotations

import json

import numpy as np
import torch
from petastorm import make_batch_reader

from pipelines import dataset
from pipelines.artifact import Normalizer
from pipelines.train import loader


def _split(digits_workdir, name="train"):
    root = digits_workdir / "datasets" / "digits"
    return str(root / name), json.loads((root / "manifest.json").read_text())


def test_computed_shard_sizes_match_what_petastorm_reads(digits_workdir):
    path, _ = _split(digits_workdir)
    sizes = dataset.row_group_sizes(path)
    for size in (1, 2, 3):
        for rank in range(size):
            with make_batch_reader(dataset.dataset_url(path), schema_fields=["label"], cur_shard=rank,
                                   shard_count=size, num_epochs=1, workers_count=1) as reader:
                read = sum(len(chunk.label) for chunk in reader)
            assert read == dataset.shard_rows(sizes, rank, size), (rank, size)


def test_epoch_batches_are_exact_reproducible_and_change_by_epoch(digits_workdir):
    path, manifest = _split(digits_workdir)
    normalize = Normalizer.from_stats(manifest["normalization"], manifest["feature_shape"])
    sizes = dataset.row_group_sizes(path)
    steps = dataset.steps_per_epoch(sizes, 2, 32)

    def ids_of(seed, rank):
        batches = list(loader.epoch_batches(dataset.dataset_url(path), rank=rank, size=2, batch_size=32,
                                            steps=steps, seed=seed, normalize=normalize))
        assert len(batches) == steps
        assert all(b["features"].shape == (32, 1, 8, 8) and b["features"].dtype == torch.float32 for b in batches)
        return torch.cat([b["features"].reshape(32, -1).sum(1) for b in batches]).numpy()

    first, again, other_epoch = ids_of(1, 0), ids_of(1, 0), ids_of(2, 0)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other_epoch)
    # both ranks run the same number of steps even though their shards differ in size
    assert len(ids_of(1, 1)) == len(first)
