"""The dataset format's pure helpers: shard arithmetic, footers, URLs, the manifest (no Spark)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import dataset
from pipelines.artifact import Normalizer


def test_shards_follow_petastorms_index_modulo_rule():
    sizes = [64, 64, 64, 10, 64]
    assert dataset.shard_rows(sizes, 0, 2) == 64 + 64 + 64
    assert dataset.shard_rows(sizes, 1, 2) == 64 + 10


def test_steps_cover_the_largest_shard_dropping_less_than_a_batch():
    sizes = [64, 64, 64, 10, 64]
    assert dataset.steps_per_epoch(sizes, 2, 32) == 192 // 32
    assert dataset.steps_per_epoch(sizes, 2, 50) == 3  # 192 rows: 3 full batches, 42 dropped
    assert dataset.steps_per_epoch(sizes, 1, 1000) == 0


def test_row_group_sizes_read_footers_in_path_order(tmp_path):
    table = pa.table({"x": np.arange(100)})
    pq.write_table(table.slice(0, 30), tmp_path / "part-00001.parquet", row_group_size=20)
    pq.write_table(table, tmp_path / "part-00000.parquet", row_group_size=40)
    assert dataset.row_group_sizes(tmp_path) == [40, 40, 20, 20, 10]


def test_normalizer_global_and_per_feature():
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    glob = Normalizer.from_stats({"mean": [1.0], "std": [2.0]}, [1, 2, 2])
    assert glob(x).shape == (2, 1, 2, 2)
    np.testing.assert_allclose(glob(x).reshape(2, 4).numpy(), (x - 1) / 2)
    per = Normalizer.from_stats({"mean": [0, 1, 2, 3], "std": [1, 1, 2, 2]}, [4])
    np.testing.assert_allclose(per(x).numpy(), (x - [0, 1, 2, 3]) / np.array([1, 1, 2, 2]))


@pytest.mark.parametrize("path, url", [("/data/x", "file:///data/x"), ("hdfs://nn/x", "hdfs://nn/x")])
def test_dataset_url(path, url):
    assert dataset.dataset_url(path) == url
