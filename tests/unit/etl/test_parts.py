"""The Parquet part writer: exact row groups, grouping by split, relabelling (pyarrow only, no Spark)."""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.dataset import RECORD_SCHEMA
from pipelines import dataset
from pipelines.etl.parts import FILE_STATS_DDL, FileStats, PartSpec, stats_batch, write_parts


def row_group_sizes(folder) -> list[int]:
    """Rows of every row group of the Parquet files under ``folder``, in path order (from the footers)."""
    sizes = []
    for f in sorted(folder.rglob("*.parquet")):
        meta = pq.ParquetFile(f).metadata
        sizes += [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return sizes


def _batch(ids: list[str], labels: list[int], group: list[str] | None = None) -> pa.RecordBatch:
    features = pa.array([[float(i)] * 3 for i in range(len(ids))], type=pa.list_(pa.float32()))
    columns = [pa.array(ids), pa.array(labels, type=pa.int64()), features]
    names = ["id", "label", "features"]
    if group is not None:
        columns.append(pa.array(group))
        names.append("split")
    return pa.RecordBatch.from_arrays(columns, names=names)


def test_row_groups_hold_exactly_the_configured_rows_across_batches(tmp_path):
    batches = [_batch([f"r{i:03d}" for i in range(k, k + 7)], [i % 3 for i in range(k, k + 7)]) for k in (0, 7, 14)]
    stats = write_parts(batches, PartSpec(str(tmp_path), rows_per_row_group=5), part_index=3)
    assert [s.file for s in stats] == ["part-00003.parquet"]
    assert row_group_sizes(tmp_path) == [5, 5, 5, 5, 1]  # 21 rows: only the last group is short
    table = pq.read_table(tmp_path / "part-00003.parquet")
    assert table.schema.equals(RECORD_SCHEMA, check_metadata=False)
    assert table.column("id").to_pylist() == [f"r{i:03d}" for i in range(21)]
    assert stats[0].rows == 21 and stats[0].row_groups == [5, 5, 5, 5, 1]
    assert stats[0].label_counts == {0: 7, 1: 7, 2: 7}


def test_group_column_writes_one_folder_per_split(tmp_path):
    batch = _batch(["a", "b", "c", "d", "e", "f"], [0, 1, 0, 1, 1, 0], ["train", "test", "train", "test", "test", "train"])
    spec = PartSpec(str(tmp_path), rows_per_row_group=64, group_column="split")
    stats = write_parts([batch], spec, part_index=0)
    assert sorted((s.grp, s.file, s.rows) for s in stats) == [
        ("test", "test/part-00000.parquet", 3), ("train", "train/part-00000.parquet", 3)]
    assert pq.read_table(tmp_path / "train").column("id").to_pylist() == ["a", "c", "f"]
    assert pq.read_table(tmp_path / "train").column("label").to_pylist() == [0, 0, 0]
    assert "split" not in pq.read_table(tmp_path / "test").column_names


def test_rewrite_labels_keeps_rows_and_row_groups(tmp_path):
    from pipelines.etl.parts import rewrite_labels

    batch = _batch([f"r{i}" for i in range(7)], [0, 2, 2, 0, 2, 0, 0])
    write_parts([batch], PartSpec(str(tmp_path), rows_per_row_group=3), part_index=0)
    path = tmp_path / "part-00000.parquet"
    rewrite_labels(str(path), np.array([0, -1, 1]))  # label 1 no longer exists: 2 -> 1
    assert pq.read_table(path).column("label").to_pylist() == [0, 1, 1, 0, 1, 0, 0]
    assert row_group_sizes(tmp_path) == [3, 3, 1]
    assert pq.read_table(path).column("id").to_pylist() == [f"r{i}" for i in range(7)]


def test_an_empty_partition_writes_no_file_and_stats_match_their_ddl(tmp_path):
    assert write_parts([_batch([], [])], PartSpec(str(tmp_path), 8), part_index=0) == []
    assert list(tmp_path.iterdir()) == []
    stats = [FileStats("", "f", 3, row_groups=[3])]
    batch = stats_batch(stats)
    assert batch.schema.names == ["grp", "file", "rows", "row_groups", "label_counts", "moments", "reasons", "lengths"]
    assert batch.column("rows").to_pylist() == [3] and batch.column("rows").type == pa.int64()
    assert batch.column("row_groups").to_pylist() == ["[3]"]
    assert FILE_STATS_DDL == ("grp string, file string, rows long, row_groups string, label_counts string, "
                              "moments string, reasons string, lengths string")


def test_file_stats_travel_as_one_arrow_row_and_come_back_the_same():
    full = FileStats("train", "train/part-00001.parquet", 5, [4, 1], {2: 3, 10: 2}, dataset.Moments(5, [0.1], [2.5]),
                     {"nan_or_inf": 1}, {64: 5})
    empty = FileStats("*task", "", 0)
    batch = stats_batch([full, empty])
    assert batch.to_pylist()[0] == {  # the structured fields as JSON text, counts in key order
        "grp": "train", "file": "train/part-00001.parquet", "rows": 5, "row_groups": "[4, 1]",
        "label_counts": '{"2": 3, "10": 2}', "moments": '{"n": 5, "mean": [0.1], "m2": [2.5]}',
        "reasons": '{"nan_or_inf": 1}', "lengths": '{"64": 5}'}
    assert batch.to_pylist()[1] == {"grp": "*task", "file": "", "rows": 0, "row_groups": "[]", "label_counts": "",
                                    "moments": "", "reasons": "", "lengths": ""}
    assert [FileStats.from_row(row) for row in batch.to_pylist()] == [full, empty]


def test_streaming_row_groups_hold_the_byte_target_on_large_splits():
    from pipelines.etl.parts import streaming_rows_per_row_group

    # 28x28 float32 images = 3,136 bytes a row: 4 MiB is 1,337 rows; a million rows shard easily
    assert streaming_rows_per_row_group(1_000_000, 784, num_workers=2, target_mib=4.0) == 1337
    assert streaming_rows_per_row_group(1_000_000, 784, num_workers=2, target_mib=1.0) == 334


def test_streaming_row_groups_still_give_every_rank_several_on_small_splits():
    from pipelines.etl.parts import GROUPS_PER_RANK, streaming_rows_per_row_group

    rows = streaming_rows_per_row_group(1258, 64, num_workers=2, target_mib=4.0)  # the bundled digits
    assert rows == 157 and 1258 // rows >= 2 * GROUPS_PER_RANK
    assert streaming_rows_per_row_group(1258, 64, num_workers=8, target_mib=4.0) == 39
    assert streaming_rows_per_row_group(5, 64, num_workers=4, target_mib=4.0) == 1  # never 0


def test_moments_merged_over_blocks_equal_numpy_on_the_whole():
    from pipelines.etl.parts import Moments

    x = np.random.default_rng(0).normal(loc=1e3, scale=2.0, size=(1000, 6))  # a large mean: the stable form matters
    whole, merged = Moments(), Moments()
    whole.add(x)
    for block in np.array_split(x, [1, 10, 300, 301, 999]):
        part = Moments()
        part.add(block)
        row = FileStats("train", "f", part.n, moments=part.to_record()).to_row()
        merged.merge(Moments.from_record(FileStats.from_row(row).moments))  # as the files' stats travel to the driver
    for m in (whole, merged):
        assert m.n == 1000
        np.testing.assert_allclose(m.mean, x.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(m.m2 / m.n, x.var(axis=0), rtol=1e-9)


def test_the_train_group_files_report_their_moments(tmp_path):
    from pipelines.etl.parts import Moments

    batch = _batch(["a", "b", "c", "d"], [0, 1, 0, 1], ["train", "test", "train", "train"])
    spec = PartSpec(str(tmp_path), rows_per_row_group=2, group_column="split", moments_group="train")
    stats = {s.grp: s for s in write_parts([batch], spec, part_index=0)}
    assert stats["test"].moments == dataset.Moments()
    moments = Moments.from_record(stats["train"].moments)
    assert moments.n == 3 and moments.mean == pytest.approx([5 / 3] * 3)  # the train rows hold 0s, 2s, 3s
    assert moments.m2 / moments.n == pytest.approx([np.var([0.0, 2.0, 3.0])] * 3)
