"""Write ``id, label, features`` Parquet part files from Spark executors with exact row groups.

Spark's own Parquet writer cannot promise a row-group size in rows (it cuts by bytes), and
Horovod ranks are handed whole row groups, so dlpipe writes its datasets with pyarrow inside
``mapInArrow``: each task streams its Arrow batches into ``part-NNNNN.parquet`` files whose row
groups hold exactly ``rows_per_row_group`` rows (the last one of a file may hold fewer). A file is
only opened when its first row arrives, so empty partitions leave no empty files.

Files are written through ``pipelines.storage`` (any store: no Hadoop connector needed), each
one a single upload or a renamed temp file, so a retried task replaces its file whole. They go
into a folder no reader trusts until the job commits it (``pipelines.publish``, ``pipelines.dataset``).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import dataset, storage
from pipelines.dataset import RECORD_SCHEMA

# One row per written file, returned by the Spark job to the driver (never the data itself).
# ``row_groups``: the rows of each row group, JSON. The ETL's writer also fills ``reasons`` (a
# quarantine file's records per reason) and ``lengths`` (a task's readable records per feature
# count), both JSON; else they are "".
FILE_STATS_DDL = ("grp string, file string, rows long, row_groups string, label_counts string, moments string, "
                  "reasons string, lengths string")


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per feature, merged exactly across row groups and
    files (Chan et al.'s pairwise update): the normalization statistics, made while writing."""

    n: int = 0
    mean: np.ndarray | None = None  # (F,) float64
    m2: np.ndarray | None = None  # (F,) float64

    def add(self, features: np.ndarray) -> None:
        """Take in a (rows, F) block."""
        x = features.astype(np.float64, copy=False)
        mean = x.mean(axis=0)
        self.merge(Moments(len(x), mean, ((x - mean) ** 2).sum(axis=0)))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, m2) of moments that took in rows (``n > 0``: both are set)."""
        assert self.mean is not None and self.m2 is not None, "no rows, no moments"
        return self.mean, self.m2

    def merge(self, other: Moments) -> None:
        if other.n == 0:
            return
        other_mean, other_m2 = other.arrays()
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other_mean.copy(), other_m2.copy()
            return
        mean, m2 = self.arrays()
        n = self.n + other.n
        delta = other_mean - mean
        self.mean = mean + delta * (other.n / n)
        self.m2 = m2 + other_m2 + delta ** 2 * (self.n * other.n / n)
        self.n = n

    def to_json(self) -> str:
        if self.n == 0:
            return ""
        mean, m2 = self.arrays()
        return json.dumps({"n": self.n, "mean": mean.tolist(), "m2": m2.tolist()})

    @classmethod
    def from_json(cls, text: str) -> Moments:
        if not text:
            return cls()
        d = json.loads(text)
        return cls(d["n"], np.asarray(d["mean"], np.float64), np.asarray(d["m2"], np.float64))

    def to_record(self) -> dataset.Moments:
        """As the manifest stores them (a later version merges them without re-reading the data)."""
        if self.n == 0:
            return dataset.Moments()
        mean, m2 = self.arrays()
        return dataset.Moments(self.n, mean.tolist(), m2.tolist())

    @classmethod
    def from_record(cls, record: dataset.Moments) -> Moments:
        if record.n == 0:
            return cls()
        return cls(record.n, np.asarray(record.mean, np.float64), np.asarray(record.m2, np.float64))


GROUPS_PER_RANK = 4  # row groups each training rank gets at least, when the split is large enough
FEATURE_BYTES = 4  # float32


def streaming_rows_per_row_group(train_rows: int, num_features: int, num_workers: int, target_mib: float) -> int:
    """Rows per row group for ``etl.rows_per_row_group=0``: about ``target_mib`` of features (a
    reader's per-row-group cost is then small beside the data), but at most what gives each of
    ``num_workers`` ranks :data:`GROUPS_PER_RANK` row groups of the train split (ranks are handed
    whole row groups, and a small dataset must still shard and shuffle)."""
    by_bytes = int(target_mib * 2**20) // max(1, num_features * FEATURE_BYTES)
    by_ranks = train_rows // (max(1, num_workers) * GROUPS_PER_RANK)
    return max(1, min(by_bytes, by_ranks))


@dataclass(frozen=True)
class PartSpec:
    """Plain, picklable description of what one task writes.

    ``group_column``: when set, rows go to ``<out_dir>/<group value>/part-NNNNN.parquet`` and the
    column itself is not written.
    """

    out_dir: str
    rows_per_row_group: int
    group_column: str = ""
    moments_group: str = ""  # files of this group also return the features' Moments (the train split)
    storage_options: storage.StorageOptions = storage.StorageOptions()  # the driver's, for the executors


def _record_writer(sink: Any) -> pq.ParquetWriter:
    """How every dataset file is written."""
    return pq.ParquetWriter(
        sink,
        RECORD_SCHEMA,
        compression="snappy",
        use_dictionary=["label"],  # ids are unique, features are floats: no dictionary
        write_statistics=["id", "label"],
    )


class StoredParquet:
    """A Parquet file in any store, opened on the first write and made visible whole on close."""

    def __init__(self, location: str, make_writer: Callable[[Any], pq.ParquetWriter]) -> None:
        self.location = location
        self._make_writer = make_writer
        self._stack = ExitStack()
        self.writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table, **options: Any) -> None:
        if self.writer is None:
            self.writer = self._make_writer(self._stack.enter_context(storage.open_output(self.location)))
        self.writer.write_table(table, **options)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self._stack.close()


def rewrite_labels(location: str, new_index: np.ndarray) -> None:
    """Replace every label ``i`` of a part file by ``new_index[i]``, keeping its row groups."""
    with storage.open_input(location) as f:
        source = pq.ParquetFile(f)
        groups = [source.read_row_group(i) for i in range(source.metadata.num_row_groups)]
    out = StoredParquet(location, _record_writer)
    for group in groups:
        labels = pa.array(new_index[group.column("label").to_numpy()], pa.int64())
        out.write(group.set_column(group.schema.get_field_index("label"), "label", labels),
                  row_group_size=group.num_rows)
    out.close()


class _RowGroupFile:
    """One Parquet file filled in row groups of exactly ``rows_per_group`` rows."""

    def __init__(self, location: str, rows_per_group: int, moments: bool = False) -> None:
        self.location = location
        self.moments = Moments() if moments else None
        self._rows_per_group = rows_per_group
        self._file = StoredParquet(location, _record_writer)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0
        self.group_rows: list[int] = []  # rows of each row group written
        self.label_counts: Counter[int] = Counter()

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        full = (self._pending_rows // self._rows_per_group) * self._rows_per_group
        if full:
            buffered = pa.concat_tables(self._pending)
            self._flush(buffered.slice(0, full))
            rest = buffered.slice(full)
            self._pending = [rest] if rest.num_rows else []
            self._pending_rows = rest.num_rows

    def _flush(self, table: pa.Table) -> None:
        table = table.cast(RECORD_SCHEMA)
        self._file.write(table, row_group_size=self._rows_per_group)
        self.rows += table.num_rows
        full, rest = divmod(table.num_rows, self._rows_per_group)
        self.group_rows += [self._rows_per_group] * full + ([rest] if rest else [])
        labels, counts = np.unique(table.column("label").to_numpy(), return_counts=True)
        self.label_counts.update(dict(zip(labels.tolist(), counts.tolist())))
        if self.moments is not None:
            values = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            self.moments.add(values.reshape(table.num_rows, -1))

    def close(self) -> None:
        if self._pending_rows:
            self._flush(pa.concat_tables(self._pending))
            self._pending, self._pending_rows = [], 0
        self._file.close()


class GroupedParts:
    """The part files one task writes: ``part-NNNNN.parquet`` per value of ``spec.group_column``
    (or one file), each opened when its first row arrives."""

    def __init__(self, spec: PartSpec, part_index: int) -> None:
        self.spec = spec
        self.name = f"part-{part_index:05d}.parquet"
        self.files: dict[str, _RowGroupFile] = {}

    def write(self, table: pa.Table) -> None:
        """Take in rows (columns id, label, features [, group]) in the order they are to be written."""
        spec = self.spec
        for group, rows in _split_by_group(table, spec.group_column):
            rel = f"{group}/{self.name}" if spec.group_column else self.name
            if rel not in self.files:
                self.files[rel] = _RowGroupFile(storage.join(spec.out_dir, rel), spec.rows_per_row_group,
                                                moments=bool(spec.moments_group) and group == spec.moments_group)
            self.files[rel].write(rows.select(["id", "label", "features"]))

    def close(self) -> list[dict[str, Any]]:
        """Finish every file; one stats row (:data:`FILE_STATS_DDL`) per file written."""
        stats = []
        for rel, f in self.files.items():
            f.close()
            if f.rows:
                stats.append(
                    {
                        "grp": rel.split("/")[0] if self.spec.group_column else "",
                        "file": rel,
                        "rows": f.rows,
                        "row_groups": json.dumps(f.group_rows),
                        "label_counts": json.dumps({str(k): v for k, v in sorted(f.label_counts.items())}),
                        "moments": f.moments.to_json() if f.moments is not None else "",
                        "reasons": "",
                        "lengths": "",
                    }
                )
        return stats


def write_parts(batches: Iterable[pa.RecordBatch], spec: PartSpec, part_index: int) -> list[dict[str, Any]]:
    """Stream ``batches`` (columns id, label, features [, group]) into part files; return per-file stats.

    Runs inside a Spark task (or anywhere): memory stays bounded by one batch plus less than one
    row group per open file.
    """
    parts = GroupedParts(spec, part_index)
    for batch in batches:
        if batch.num_rows:
            parts.write(pa.Table.from_batches([batch]))
    return parts.close()


def _split_by_group(table: pa.Table, column: str) -> Iterator[tuple[str, pa.Table]]:
    if not column:
        yield "", table
        return
    values = table.column(column).to_numpy(zero_copy_only=False)
    groups = dict.fromkeys(values.tolist())  # first-seen order
    if len(groups) == 1:  # the usual batch: no copy
        yield str(values[0]), table
        return
    for value in groups:
        yield str(value), table.filter(pa.array(values == value))


def stats_batch(stats: list[dict[str, Any]]) -> pa.RecordBatch:
    """The per-file stats as one Arrow batch matching :data:`FILE_STATS_DDL`."""
    columns = ["grp", "file", "rows", "row_groups", "label_counts", "moments", "reasons", "lengths"]
    types = [pa.string(), pa.string(), pa.int64(), pa.string(), pa.string(), pa.string(), pa.string(), pa.string()]
    return pa.RecordBatch.from_arrays(
        [pa.array([s[c] for s in stats], type=t) for c, t in zip(columns, types)], names=columns
    )
