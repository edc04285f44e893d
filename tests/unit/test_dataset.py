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


# --- numbered heads: a commit creates the next head only if it is absent ---------------------------

def test_two_jobs_that_built_on_the_same_head_cannot_both_commit(tmp_path):
    from testkit import publish_dataset

    root = str(tmp_path / "ds")
    publish_dataset(root, {"train": 8}, rows_per_row_group=4)
    base = dataset.read_head(root)
    assert base.number == 1
    mine = dataset.VersionEntry(2, "v000002-mine", "t")
    theirs = dataset.VersionEntry(2, "v000002-theirs", "t")
    dataset.write_head(root, [*base.versions, theirs], after=base.number)
    with pytest.raises(dataset.DatasetError, match="another job committed head 2 of this dataset .* nothing was "
                                                   "published by this job. Re-run it"):
        dataset.write_head(root, [*base.versions, mine], after=base.number)
    head = dataset.read_head(root)
    assert head.number == 2 and [v.folder for v in head.versions][-1] == "v000002-theirs"  # the winner's, whole


def test_a_head_is_never_absent_and_only_the_last_few_are_kept(tmp_path):
    from testkit import publish_dataset

    root = str(tmp_path / "ds")
    publish_dataset(root, {"train": 8}, rows_per_row_group=4)
    versions = dataset.read_head(root).versions
    for number in range(2, dataset.KEEP_HEADS + 4):
        dataset.write_head(root, versions, after=number - 1)
        assert dataset.read_head(root).number == number  # the new head exists before any old one goes
    kept = [n for n, _ in dataset.head_files(root)]
    assert kept == list(range(4, dataset.KEEP_HEADS + 4))


def test_an_older_dlpipes_single_head_reads_as_head_0_and_the_next_commit_is_head_1(tmp_path):
    from testkit import publish_dataset

    root = tmp_path / "ds"
    publish_dataset(str(root), {"train": 8}, rows_per_row_group=4)
    (_, first), = dataset.head_files(str(root))
    (root / dataset.HEAD_FILE).write_text((root / dataset.head_name(1)).read_text().replace('"number": 1', '"number": 0'))
    (root / dataset.head_name(1)).unlink()
    legacy = dataset.read_head(str(root))
    assert legacy.number == 0 and dataset.open_dataset(str(root)).splits["train"].rows == 8
    dataset.write_head(str(root), legacy.versions, after=legacy.number)
    assert dataset.read_head(str(root)).number == 1


def test_a_job_whose_dataset_lease_was_taken_over_cannot_commit(tmp_path):
    from testkit import publish_dataset
    from pipelines import storage
    from pipelines.lease import Lease, LeaseLost

    root = str(tmp_path / "ds")
    publish_dataset(root, {"train": 8}, rows_per_row_group=4)
    head = dataset.read_head(root)
    held = Lease(root, "dlpipe etl (run a)", key="dataset").acquire()
    try:
        thief = Lease(root, "dlpipe etl (run b)", key="dataset")
        assert thief._take(held.fence + 1, storage.read_versioned(thief.path)[1])  # as after an expiry
        with pytest.raises(LeaseLost, match=r"taken over by dlpipe etl \(run b\)"):
            dataset.write_head(root, head.versions, after=head.number)
        assert dataset.read_head(root).number == 1  # nothing committed
    finally:
        held.release()
