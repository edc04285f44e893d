"""The ETL's one pass over the data: decide the last thing about every record and write it.

Records arrive in Spark tasks hash-partitioned by id and sorted by id, then by
:data:`pipelines.etl.validate.DUPLICATE_ORDER`, with the per-record verdict already
attached (``reason``/``detail`` from :func:`pipelines.etl.validate.classify`; null reason =
passed). Two things are decided here: the element checks of feature arrays (null, NaN, inf), far
cheaper on the batch's flat values than as per-element Spark expressions, and the duplicate rule,
which needs every copy of an id together (they meet here anyway). Then each task writes

    <split>/part-NNNNN.parquet       its accepted records (exact row groups, :mod:`pipelines.etl.parts`)
    quarantine/part-NNNNN.parquet    its rejected records (:data:`QUARANTINE_SCHEMA`), in id order
    _sources/part-NNNNN.parquet      where each accepted record came from (:data:`SOURCES_SCHEMA`: lineage)

and returns the stats of each file (:class:`pipelines.etl.parts.FileStats`): rows, labels,
the train split's feature moments, the quarantine's reasons; and those of the task
(:data:`TASK_GROUP`): records seen and their feature counts. The driver counts, reconciles and
normalizes from those rows, so the source's values are read and validated once.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray

from pipelines import storage
from pipelines.dataset import QUARANTINE, QUARANTINE_COLUMNS, SOURCES, SOURCES_SCHEMA
from pipelines.etl.parts import FileStats, GroupedParts, PartSpec, StoredParquet, stats_batch
from pipelines.etl.validate import REASONS
from pipelines.preprocess import NONFINITE_DETAILS, null_elements_detail

QUARANTINE_SCHEMA = pa.schema([
    pa.field("id", pa.string()), pa.field("source", pa.string()), pa.field("row", pa.int64()),
    pa.field("label", pa.string()), pa.field("reason", pa.string()), pa.field("detail", pa.string()),
])
assert QUARANTINE_SCHEMA.names == QUARANTINE_COLUMNS
# What the writer tasks are handed, in this order.
INPUT_COLUMNS = ["split", "id", "source", "row", "label", "features", "reason", "detail"]
DUPLICATE_DETAIL = "same id as the record kept from "
CHUNK_ROWS = 8192  # rows decided and written together (see _chunks)
TASK_GROUP = "*task"  # ``grp`` of the FileStats each task adds about itself (no split has this name)
# Records rejected for one of these still get wrong_shape / nan_or_inf when their values fail.
CHECKED_AFTER_VALUES = frozenset(REASONS[REASONS.index("nan_or_inf") + 1:])


@dataclass(frozen=True)
class DatasetSpec:
    """Plain, picklable description of what every writer task writes."""

    out_dir: str
    rows_per_row_group: int
    label_names: tuple[str, ...]  # label -> class index, by position
    train_split: str  # its files also return the features' moments (the normalization statistics)
    feature_column: str = "features"  # named in the detail of a null element
    storage_options: storage.StorageOptions = storage.StorageOptions()  # the driver's, for the executors


@dataclass(frozen=True)
class KeptId:
    """The last id accepted so far in a task, and the source of its kept record."""

    id: str | None = None
    source: str | None = None


def check_feature_values(table: pa.Table, column: str = "features") -> pa.Table:
    """The element checks Spark was spared (``array_value_checks=False``): a null element makes
    the record ``wrong_shape``, else NaN, +inf, -inf (in that order) ``nan_or_inf``, with the
    details ``pipelines.preprocess`` gives; only records that passed the checks before these (or
    failed only later ones) change. Vectorized over the batch's flat values.
    """
    features = table["features"].combine_chunks()
    flat = pc.list_flatten(features)
    values = flat.to_numpy(zero_copy_only=False)  # a null element reads as NaN
    if flat.null_count == 0 and np.isfinite(values).all():  # the usual batch
        return table
    parents = pc.list_parent_indices(features).to_numpy()
    nulls = flat.is_null().to_numpy(zero_copy_only=False)
    found_reason = np.full(table.num_rows, None, dtype=object)
    found_detail = np.full(table.num_rows, None, dtype=object)
    nan, pos_inf, neg_inf = NONFINITE_DETAILS
    checks = [  # the last that applies to a record wins: the first in the order they are checked
        (values == -np.inf, "nan_or_inf", neg_inf), (values == np.inf, "nan_or_inf", pos_inf),
        (np.isnan(values) & ~nulls, "nan_or_inf", nan), (nulls, "wrong_shape", null_elements_detail(column)),
    ]
    for failed, reason, detail in checks:
        rows = parents[failed]
        found_reason[rows], found_detail[rows] = reason, detail
    reasons = table["reason"].to_numpy(zero_copy_only=False).copy()
    open_ = np.array([r is None or r in CHECKED_AFTER_VALUES for r in reasons]) & (found_reason != None)  # noqa: E711 - elementwise on a NumPy object array
    if not open_.any():
        return table
    details = table["detail"].to_numpy(zero_copy_only=False).copy()
    reasons[open_], details[open_] = found_reason[open_], found_detail[open_]
    return _with_verdict(table, reasons, details)


def _with_verdict(table: pa.Table, reasons: NDArray[np.object_], details: NDArray[np.object_]) -> pa.Table:
    """``table`` with these reasons and details (str or None each: object arrays)."""
    table = table.set_column(table.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
    return table.set_column(table.schema.get_field_index("detail"), "detail", pa.array(details, pa.string()))


def mark_duplicates(table: pa.Table, kept: KeptId = KeptId()) -> tuple[pa.Table, KeptId]:
    """Mark ``duplicate_id`` every record that passed the per-record checks but repeats the id of
    an earlier record that passed; the detail names the kept record's source.

    ``table`` is sorted by id and then :data:`~pipelines.etl.validate.DUPLICATE_ORDER`, so the kept
    record is the first passing one of its id (the smallest source reference); records that failed
    a check do not compete. ``kept`` carries the last passing id across the batches of a task.
    """
    passed = np.flatnonzero(pc.is_null(table["reason"]).to_numpy(zero_copy_only=False))
    if len(passed) == 0:
        return table, kept
    ids = table["id"] if len(passed) == table.num_rows else table["id"].take(passed)
    ids = ids.combine_chunks()
    repeats = np.empty(len(ids), dtype=bool)
    repeats[0] = kept.id is not None and ids[0].as_py() == kept.id
    repeats[1:] = pc.equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(~repeats)  # where the passing records of a new id begin
    last_source = table["source"][int(passed[starts[-1]])].as_py() if len(starts) else kept.source
    carried = KeptId(ids[-1].as_py(), last_source)
    if not repeats.any():  # the usual batch
        return table, carried
    # Index of the first record of each run of one id; -1 while a run goes on from the last batch.
    sources = table["source"].take(passed).to_numpy(zero_copy_only=False)
    first = np.maximum.accumulate(np.where(repeats, -1, np.arange(len(ids))))
    # kept.source may be None, which numpy's ArrayLike type leaves out: converted as np.where converts it
    kept_sources = np.where(first >= 0, sources[np.maximum(first, 0)], np.asarray(kept.source, dtype=object))
    duplicates = passed[repeats]
    reasons = table["reason"].to_numpy(zero_copy_only=False).copy()
    details = table["detail"].to_numpy(zero_copy_only=False).copy()
    reasons[duplicates] = "duplicate_id"
    details[duplicates] = [DUPLICATE_DETAIL + str(s) for s in kept_sources[repeats]]
    return _with_verdict(table, reasons, details), carried


class QuarantineFile:
    """One task's rejected records, streamed into a Parquet file opened at the first of them."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._file = StoredParquet(location, lambda sink: pq.ParquetWriter(sink, QUARANTINE_SCHEMA,
                                                                           compression="snappy"))
        self.reasons: Counter[str] = Counter()

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._file.write(table.select(QUARANTINE_COLUMNS).cast(QUARANTINE_SCHEMA))
        self.reasons.update(table["reason"].to_pylist())

    def close(self) -> list[FileStats]:
        """Finish the file; its stats, or none when nothing was rejected."""
        if not self.reasons:
            return []
        self._file.close()
        return [FileStats(QUARANTINE, f"{QUARANTINE}/{storage.name(self.location)}", rows=sum(self.reasons.values()),
                          reasons=dict(self.reasons))]


class SourcesFile:
    """One task's accepted records' raw file and row (``dlpipe lineage`` reads them), in id order."""

    def __init__(self, location: str) -> None:
        self._file = StoredParquet(location, lambda sink: pq.ParquetWriter(sink, SOURCES_SCHEMA, compression="snappy"))
        self.name = f"{SOURCES}/{storage.name(location)}"
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._file.write(table.select(SOURCES_SCHEMA.names).cast(SOURCES_SCHEMA))
            self.rows += table.num_rows

    def close(self) -> list[FileStats]:
        if not self.rows:
            return []
        self._file.close()
        return [FileStats(SOURCES, self.name, rows=self.rows)]


def write_dataset_part(batches: Iterable[pa.RecordBatch], spec: DatasetSpec, part_index: int) -> list[FileStats]:
    """Decide and write one task's records (:data:`INPUT_COLUMNS`, sorted as
    :func:`mark_duplicates` needs); return the stats of each file written, then the task's own.

    Memory stays bounded by one chunk of :data:`CHUNK_ROWS` plus less than one row group per split.
    """
    parts = GroupedParts(PartSpec(spec.out_dir, spec.rows_per_row_group, group_column="split",
                                  moments_group=spec.train_split, storage_options=spec.storage_options), part_index)
    quarantine = QuarantineFile(storage.join(spec.out_dir, QUARANTINE, parts.name))
    sources = SourcesFile(storage.join(spec.out_dir, SOURCES, parts.name))
    label_names = pa.array(spec.label_names, pa.string())
    kept = KeptId()
    seen = 0
    lengths: Counter[int] = Counter()
    for table in _chunks(batches, CHUNK_ROWS):
        seen += table.num_rows
        lengths.update(feature_counts(table))
        table = check_feature_values(table, spec.feature_column)
        table, kept = mark_duplicates(table, kept)
        good = table
        if table["reason"].null_count < table.num_rows:  # some rejected
            accepted = pc.is_null(table["reason"])
            quarantine.write(table.filter(pc.invert(accepted)))
            good = table.filter(accepted)
        index = pc.index_in(good["label"], value_set=label_names)
        if index.null_count:
            unknown = good["label"].filter(pc.is_null(index))[0].as_py()
            raise RuntimeError(
                f"label {unknown!r} was not among the labels the ETL surveyed first {list(spec.label_names)}: "
                "did the source change while the ETL ran? Re-run it.")
        parts.write(pa.table({"split": good["split"], "id": good["id"], "label": index.cast(pa.int64()),
                              "features": good["features"]}))
        sources.write(good)
    if not seen:
        return []
    return [*parts.close(), *quarantine.close(), *sources.close(),
            FileStats(TASK_GROUP, "", rows=seen, lengths=dict(lengths))]


def feature_counts(table: pa.Table) -> Counter[int]:
    """Readable records (features not null, no decode_error) per feature count: the job checks
    the array length it guessed from a sample against these."""
    lengths = pc.list_value_length(table["features"]).to_numpy(zero_copy_only=False)  # null -> NaN
    readable = ~np.isnan(lengths) if lengths.dtype.kind == "f" else np.ones(len(lengths), dtype=bool)
    if table["reason"].null_count < table.num_rows:
        readable &= ~pc.fill_null(pc.equal(table["reason"], "decode_error"), False).to_numpy(zero_copy_only=False)
    values, counts = np.unique(lengths[readable].astype(np.int64), return_counts=True)
    return Counter(dict(zip(values.tolist(), counts.tolist())))


def _chunks(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """The batches as contiguous tables of at least ``rows`` rows (but the last): Spark hands
    Python small batches (``spark.sql.execution.arrow.maxRecordsPerBatch``), and the work per
    table here has a fixed cost."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows:
            pending.append(batch)
            count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(pending).combine_chunks()
            pending, count = [], 0
    if pending:
        yield pa.Table.from_batches(pending).combine_chunks()


def dataset_writer(spec: DatasetSpec) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A ``mapInArrow`` function that decides and writes its partition with :func:`write_dataset_part`."""

    def write_partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        assert context is not None  # a mapInArrow function runs in a Spark task
        with storage.using_options(spec.storage_options):
            stats = write_dataset_part(batches, spec, context.partitionId())
        yield stats_batch(stats)

    return write_partition
