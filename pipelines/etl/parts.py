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
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from pipelines import dataset, storage
from pipelines.dataset import RECORD_SCHEMA
from pipelines.formats import Record

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class FileStats(Record):
    """What a writer task returns to the driver about one file it wrote (never the data itself).

    The ETL's writer also returns one about each quarantine file (``reasons``) and one about the
    task itself (``grp`` = :data:`pipelines.etl.write.TASK_GROUP`: ``rows`` seen and ``lengths``).
    """

    grp: str  # the file's split, or its group; "" when the task writes ungrouped files
    file: str  # relative to the output folder; "" for a task's own stats
    rows: int
    row_groups: list[int] = field(default_factory=list)  # rows of each row group
    label_counts: dict[int, int] = field(default_factory=dict)  # label index -> rows
    moments: dataset.Moments = field(default_factory=dataset.Moments)  # the features', for the moments group only
    reasons: dict[str, int] = field(default_factory=dict)  # a quarantine file's records per reason
    lengths: dict[int, int] = field(default_factory=dict)  # a task's readable records per feature count

    def to_row(self) -> dict[str, Any]:
        """As one row of :data:`FILE_STATS_SCHEMA`: structured fields as JSON text, an empty one as ""."""
        return {
            "grp": self.grp, "file": self.file, "rows": self.rows, "row_groups": json.dumps(self.row_groups),
            "label_counts": _counts_text(self.label_counts),
            "moments": json.dumps(self.moments.to_dict()) if self.moments.n else "",
            "reasons": _counts_text(self.reasons), "lengths": _counts_text(self.lengths),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> FileStats:
        """A row of :data:`FILE_STATS_SCHEMA` (as the driver collects it) back as the record, type-checked."""
        plain = {
            **row, "row_groups": json.loads(row["row_groups"] or "[]"),
            "label_counts": _int_keys(_parse(row["label_counts"])), "moments": _parse(row["moments"]),
            "reasons": _parse(row["reasons"]), "lengths": _int_keys(_parse(row["lengths"])),
        }
        return cls.from_dict(plain, where="a writer task's file stats")


def _counts_text(counts: Mapping[Any, int]) -> str:
    """Counts as JSON text, keys in order (JSON keys are strings); no counts as ""."""
    return json.dumps({str(k): n for k, n in sorted(counts.items())}) if counts else ""


def _parse(text: str) -> dict[str, Any]:
    """A JSON object's text; "" (nothing to say) as {}."""
    return json.loads(text) if text else {}


def _int_keys(counts: dict[str, Any]) -> dict[int, Any]:
    """Counts keyed by numbers, read back from JSON (whose keys are strings)."""
    return {int(k): n for k, n in counts.items()}


def _row_schema(record: type[FileStats]) -> pa.Schema:
    """One column per field, in order: ints as int64, everything else as text (see :meth:`FileStats.to_row`)."""
    hints = typing.get_type_hints(record)
    return pa.schema([(f.name, pa.int64() if hints[f.name] is int else pa.string()) for f in fields(record)])


# The Arrow row a Spark task returns per file, derived from FileStats so that its columns are spelled once.
FILE_STATS_SCHEMA = _row_schema(FileStats)
FILE_STATS_DDL = ", ".join(f"{f.name} {'long' if f.type == pa.int64() else 'string'}" for f in FILE_STATS_SCHEMA)


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per feature, merged exactly across row groups and
    files (Chan et al.'s pairwise update): the normalization statistics, made while writing."""

    n: int = 0
    mean: NDArray[np.float64] | None = None  # (F,)
    m2: NDArray[np.float64] | None = None  # (F,)

    def add(self, features: NDArray[np.float32]) -> None:
        """Take in a (rows, F) block."""
        x = features.astype(np.float64, copy=False)
        mean = x.mean(axis=0)
        self.merge(Moments(len(x), mean, ((x - mean) ** 2).sum(axis=0)))

    def arrays(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
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

    def to_record(self) -> dataset.Moments:
        """As the manifest and :class:`FileStats` store them (a later version merges them without
        re-reading the data)."""
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


def rewrite_labels(location: str, new_index: NDArray[np.int64]) -> None:
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

    def close(self) -> list[FileStats]:
        """Finish every file; the stats of each file written."""
        stats = []
        for rel, f in self.files.items():
            f.close()
            if f.rows:
                stats.append(FileStats(
                    grp=rel.split("/")[0] if self.spec.group_column else "", file=rel, rows=f.rows,
                    row_groups=f.group_rows, label_counts=dict(f.label_counts),
                    moments=f.moments.to_record() if f.moments is not None else dataset.Moments()))
        return stats


def write_parts(batches: Iterable[pa.RecordBatch], spec: PartSpec, part_index: int) -> list[FileStats]:
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


def stats_batch(stats: list[FileStats]) -> pa.RecordBatch:
    """The per-file stats as the one Arrow batch a Spark task returns (:data:`FILE_STATS_SCHEMA`)."""
    return pa.RecordBatch.from_pylist([s.to_row() for s in stats], schema=FILE_STATS_SCHEMA)


def collect_stats(frame: DataFrame, task: Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]
                  ) -> list[FileStats]:
    """Run ``task`` (a ``mapInArrow`` function yielding :func:`stats_batch` batches) over ``frame``'s
    partitions; the stats it returned, on the driver."""
    return [FileStats.from_row(row.asDict()) for row in frame.mapInArrow(task, FILE_STATS_DDL).collect()]
