"""The ETL writer's decisions and files, on Arrow tables (pyarrow only, no Spark)."""
from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.etl.write import (
    INPUT_COLUMNS, TASK_GROUP, DatasetSpec, KeptId, _chunks, check_feature_values, feature_counts, mark_duplicates,
    write_dataset_part,
)


def records(rows: list[tuple]) -> pa.Table:
    """rows of (id, source, label, features, reason) -> a table of INPUT_COLUMNS (split "train")."""
    columns = {
        "split": pa.array(["train"] * len(rows)),
        "id": pa.array([r[0] for r in rows], pa.string()),
        "source": pa.array([r[1] for r in rows], pa.string()),
        "row": pa.array(list(range(len(rows))), pa.int64()),
        "label": pa.array([r[2] for r in rows], pa.string()),
        "features": pa.array([r[3] for r in rows], pa.list_(pa.float32())),
        "reason": pa.array([r[4] for r in rows], pa.string()),
        "detail": pa.array([None if r[4] is None else f"spark said {r[4]}" for r in rows], pa.string()),
    }
    return pa.table(columns).select(INPUT_COLUMNS)


def verdicts(table: pa.Table) -> list[tuple]:
    return list(zip(table["id"].to_pylist(), table["reason"].to_pylist(), table["detail"].to_pylist()))


def test_the_first_passing_record_of_an_id_is_kept_and_failing_ones_do_not_compete():
    table = records([
        ("a", "f0", "1", [1.0], "decode_error"),  # fails: not a competitor
        ("a", "f1", "1", [1.0], None),  # kept
        ("a", "f2", "1", [2.0], None),  # duplicate
        ("b", "f1", "1", [1.0], None),
        ("c", "f3", "1", [1.0], None),
        ("c", "f4", "1", [1.0], "missing_label"),  # already rejected: stays as it is
        ("c", "f5", "1", [1.0], None),  # duplicate of c from f3
    ])
    decided, kept = mark_duplicates(table)
    assert verdicts(decided) == [
        ("a", "decode_error", "spark said decode_error"), ("a", None, None),
        ("a", "duplicate_id", "same id as the record kept from f1"), ("b", None, None), ("c", None, None),
        ("c", "missing_label", "spark said missing_label"), ("c", "duplicate_id", "same id as the record kept from f3"),
    ]
    assert kept == KeptId("c", "f3")


def test_an_id_running_over_a_batch_boundary_is_still_one_record():
    first, kept = mark_duplicates(records([("a", "f1", "1", [1.0], None), ("b", "f2", "1", [1.0], None)]))
    assert [r for _, r, _ in verdicts(first)] == [None, None] and kept == KeptId("b", "f2")
    second, kept = mark_duplicates(records([("b", "f3", "1", [1.0], None), ("b", "f4", "1", [1.0], None),
                                            ("c", "f5", "1", [1.0], None)]), kept)
    assert verdicts(second) == [("b", "duplicate_id", "same id as the record kept from f2"),
                                ("b", "duplicate_id", "same id as the record kept from f2"), ("c", None, None)]
    assert kept == KeptId("c", "f5")
    nothing_passed = records([("d", "f6", "1", [1.0], "wrong_shape")])
    assert mark_duplicates(nothing_passed, kept) == (nothing_passed, kept)


def test_feature_values_are_checked_in_the_order_of_the_reasons():
    table = records([
        ("ok", "f", "1", [1.0, 2.0], None),
        ("nan", "f", "1", [float("nan"), 1.0], None),
        ("pinf", "f", "1", [1.0, float("inf")], None),
        ("ninf", "f", "1", [-float("inf"), 1.0], None),
        ("both", "f", "1", [float("inf"), float("nan")], None),  # NaN is checked first
        ("null", "f", "1", [None, float("nan")], None),  # a missing element comes before NaN
        ("late", "f", "1", [float("nan"), 1.0], "missing_label"),  # a later reason gives way
        ("early", "f", "1", [float("nan"), 1.0], "decode_error"),  # an earlier one stays
        ("shape", "f", "1", [None], "wrong_shape"),
        ("none", "f", "1", None, "wrong_shape"),
    ])
    decided = {i: (r, d) for i, r, d in verdicts(check_feature_values(table, "vec"))}
    assert decided["ok"] == (None, None)
    assert decided["nan"] == decided["both"] == decided["late"] == ("nan_or_inf", "features contain NaN")
    assert decided["pinf"] == ("nan_or_inf", "features contain +inf")
    assert decided["ninf"] == ("nan_or_inf", "features contain -inf")
    assert decided["null"] == ("wrong_shape", "column 'vec' has missing (null) elements")
    assert decided["early"] == ("decode_error", "spark said decode_error")
    assert decided["shape"] == decided["none"] == ("wrong_shape", "spark said wrong_shape")
    clean = records([("ok", "f", "1", [1.0, 2.0], None)])
    assert check_feature_values(clean) is clean  # the usual chunk is handed back untouched


def test_feature_counts_leave_out_unreadable_records():
    table = records([
        ("a", "f", "1", [1.0, 2.0], None), ("b", "f", "1", [1.0, 2.0], "missing_label"),
        ("c", "f", "1", [1.0], None), ("d", "f", "1", [1.0, 2.0, 3.0], "decode_error"), ("e", "f", "1", None, "wrong_shape"),
    ])
    assert feature_counts(table) == {2: 2, 1: 1}


def test_small_batches_are_decided_in_chunks():
    batches = [b for t in [records([(f"r{i}", "f", "1", [1.0], None)]) for i in range(5)] for b in t.to_batches()]
    chunks = list(_chunks(batches, 2))
    assert [c.num_rows for c in chunks] == [2, 2, 1]
    assert all(c["id"].num_chunks == 1 for c in chunks)
    assert [i for c in chunks for i in c["id"].to_pylist()] == [f"r{i}" for i in range(5)]


def test_a_task_writes_splits_quarantine_and_its_own_stats(tmp_path):
    table = records([
        ("a", "f1", "cat", [1.0, 2.0], None),
        ("a", "f2", "cat", [1.0, 2.0], None),  # duplicate_id
        ("b", "f1", "dog", [3.0, float("nan")], None),  # nan_or_inf
        ("c", "f1", None, [1.0, 2.0], "missing_label"),
        ("d", "f1", "dog", [5.0, 6.0], None),
    ])
    table = table.set_column(0, "split", pa.array(["train", "train", "train", "train", "val"]))
    spec = DatasetSpec(str(tmp_path), rows_per_row_group=1, label_names=("cat", "dog"), train_split="train")
    stats = {s.grp: s for s in write_dataset_part(table.to_batches(max_chunksize=2), spec, part_index=7)}
    assert set(stats) == {"train", "val", "quarantine", "_sources", TASK_GROUP}
    assert stats[TASK_GROUP].rows == 5 and stats[TASK_GROUP].lengths == {2: 5}
    train, val = pq.read_table(tmp_path / "train"), pq.read_table(tmp_path / "val")
    assert train.to_pydict() == {"id": ["a"], "label": [0], "features": [[1.0, 2.0]]}
    assert val.to_pydict() == {"id": ["d"], "label": [1], "features": [[5.0, 6.0]]}
    assert stats["train"].file == "train/part-00007.parquet" and stats["val"].label_counts == {1: 1}
    quarantine = pq.read_table(tmp_path / "quarantine" / "part-00007.parquet")
    assert quarantine.column_names == ["id", "source", "row", "label", "reason", "detail"]
    assert list(zip(quarantine["id"].to_pylist(), quarantine["reason"].to_pylist())) == [
        ("a", "duplicate_id"), ("b", "nan_or_inf"), ("c", "missing_label")]
    assert stats["quarantine"].reasons == {"duplicate_id": 1, "missing_label": 1, "nan_or_inf": 1}
    moments = stats["train"].moments
    assert moments.n == 1 and moments.mean == [1.0, 2.0] and not any(math.isnan(m) for m in moments.m2)
    sources = pq.read_table(tmp_path / "_sources" / "part-00007.parquet")  # lineage: the accepted records' origin
    assert sources.to_pydict() == {"id": ["a", "d"], "split": ["train", "val"], "source": ["f1", "f1"],
                                   "row": [0, 4]} and stats["_sources"].rows == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["train", "val", "quarantine", "_sources"] + ["part-00007.parquet"] * 4)


def test_an_empty_task_writes_nothing_and_a_label_it_was_not_told_of_is_an_error(tmp_path):
    spec = DatasetSpec(str(tmp_path), rows_per_row_group=4, label_names=("cat",), train_split="train")
    assert write_dataset_part([], spec, part_index=0) == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match=r"label 'cow' was not among the labels .*did the source change"):
        write_dataset_part(records([("a", "f", "cow", [1.0], None)]).to_batches(), spec, part_index=0)
