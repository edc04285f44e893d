"""The rank-side loader against real Petastorm on the real ETL output (the loader's own checks run
with train.loader=auto: Petastorm where it can run, else the arrow loader)."""
from __future__ import annotations

import numpy as np
import torch
from testkit import needs_petastorm

from pipelines import dataset, storage
from pipelines.artifact import Normalizer
from pipelines.train import loader


def _view(digits_workdir) -> dataset.DatasetView:
    return dataset.open_dataset(str(digits_workdir / "datasets" / "digits"))


@needs_petastorm
def test_computed_shard_sizes_match_what_petastorm_reads_from_the_listed_files(digits_workdir):
    from petastorm import make_batch_reader

    split = _view(digits_workdir).splits["train"]
    urls = [storage.petastorm_url(f) for f in split.files]
    for size in (1, 2, 3):
        for rank in range(size):
            with make_batch_reader(urls, schema_fields=["label"], cur_shard=rank, shard_count=size, num_epochs=1,
                                   workers_count=1) as reader:
                read = sum(len(chunk.label) for chunk in reader)
            assert read == dataset.shard_rows(split.sizes, rank, size), (rank, size)


def test_epoch_batches_are_exact_reproducible_and_change_by_epoch(digits_workdir):
    view = _view(digits_workdir)
    split = view.splits["train"]
    normalize = Normalizer.from_stats(view.manifest.normalization, view.manifest.feature_shape)
    steps = dataset.steps_per_epoch(split.sizes, 2, 32)

    def ids_of(seed, rank):
        batches = list(loader.epoch_batches(split, loader.BatchOrder(batch_size=32, steps=steps, seed=seed), rank=rank,
                                            size=2, normalize=normalize, loader="auto"))
        assert len(batches) == steps
        assert all(b["features"].shape == (32, 1, 8, 8) and b["features"].dtype == torch.float32 for b in batches)
        return torch.cat([b["features"].reshape(32, -1).sum(1) for b in batches]).numpy()

    first, again, other_epoch = ids_of(1, 0), ids_of(1, 0), ids_of(2, 0)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other_epoch)
    # both ranks run the same number of steps even though their shards differ in size
    assert len(ids_of(1, 1)) == len(first)
