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


def test_a_view_lists_each_splits_files_in_path_order_with_their_row_groups(tmp_path):
    from testkit import publish_dataset

    publish_dataset(str(tmp_path / "ds"), {"train": 21, "test": 5}, rows_per_row_group=5)
    view = dataset.open_dataset(str(tmp_path / "ds"))
    assert view.splits["train"].sizes == [5, 5, 5, 5, 1] and view.splits["test"].rows == 5
    assert view.counts == {"train": 21, "test": 5} and view.split_names == ["test", "train"]
    with pytest.raises(dataset.ConfigError, match="infer.split='val' is not a split of dataset ds"):
        view.split("val", "infer.split")


def test_row_groups_are_read_from_the_footers_when_a_manifest_did_not_record_them(tmp_path):
    table = pa.table({"x": np.arange(100)})
    pq.write_table(table.slice(0, 30), tmp_path / "part-00001.parquet", row_group_size=20)
    pq.write_table(table, tmp_path / "part-00000.parquet", row_group_size=40)
    assert dataset._footer_row_groups(str(tmp_path / "part-00000.parquet")) == [40, 40, 20]
    assert dataset._footer_row_groups(str(tmp_path / "part-00001.parquet")) == [20, 10]


def test_normalizer_global_and_per_feature():
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    glob = Normalizer.from_stats(dataset.Normalization("global", [1.0], [2.0]), [1, 2, 2])
    assert glob(x).shape == (2, 1, 2, 2)
    np.testing.assert_allclose(glob(x).reshape(2, 4).numpy(), (x - 1) / 2)
    per = Normalizer.from_stats(dataset.Normalization("per_feature", [0, 1, 2, 3], [1, 1, 2, 2]), [4])
    np.testing.assert_allclose(per(x).numpy(), (x - [0, 1, 2, 3]) / np.array([1, 1, 2, 2]))


@pytest.mark.parametrize("path, url", [("/data/x", "file:///data/x"), ("hdfs://nn/x", "hdfs://nn/x")])
def test_petastorm_gets_urls(path, url):
    from pipelines import storage

    assert storage.petastorm_url(path) == url
