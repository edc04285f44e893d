"""Spark DataFrames to and from Parquet files in any store, with no Hadoop connector needed.

:func:`write_parquet` writes a frame's partitions from the Spark tasks through
``pipelines.storage`` (one ``part-NNNNN.parquet`` per task, each one atomic upload) and returns
what each file holds; :func:`read_parquet` reads a list of Parquet files back into a frame, with
Spark's own reader where Hadoop has a filesystem for the scheme, else through the storage layer
inside Spark tasks. Callers commit what they wrote with ``pipelines.publish``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

from pipelines import storage
from pipelines.formats import Record

WRITTEN_DDL = "file string, rows long, nulls long"


@dataclass(frozen=True)
class WrittenFile(Record):
    file: str  # location
    rows: int
    nulls: int  # rows whose ``count_nulls_of`` column is null (e.g. predictions without an error)


def write_parquet(frame: DataFrame, folder: str, count_nulls_of: str = "",
                  transform: Callable[[Iterable[pa.RecordBatch]], Iterable[pa.RecordBatch]] | None = None,
                  schema: T.StructType | None = None) -> list[WrittenFile]:
    """Write ``frame`` as ``folder/part-NNNNN.parquet`` (a task with no rows writes no file); one
    :class:`WrittenFile` per file. ``count_nulls_of``: a column whose nulls each file counts.
    ``transform`` (with its output ``schema``): applied to each task's batches before they are
    written, in the same Python worker (e.g. the scorer: predictions never go back to the JVM)."""
    from pyspark import TaskContext

    options = storage.current_options()
    arrow_schema = to_arrow_schema(schema or frame.schema)

    def write(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        with storage.using_options(options):
            if transform is not None:
                batches = transform(batches)
            context = TaskContext.get()
            assert context is not None  # a mapInArrow function runs in a Spark task
            location = storage.join(folder, f"part-{context.partitionId():05d}.parquet")
            rows, nulls = _write_part(batches, location, arrow_schema, count_nulls_of)
        if rows:
            yield pa.RecordBatch.from_pylist([{"file": location, "rows": rows, "nulls": nulls}],
                                             schema=pa.schema([("file", pa.string()), ("rows", pa.int64()),
                                                               ("nulls", pa.int64())]))

    return [WrittenFile(r["file"], r["rows"], r["nulls"]) for r in frame.mapInArrow(write, WRITTEN_DDL).collect()]


def _write_part(batches: Iterable[pa.RecordBatch], location: str, arrow_schema: pa.Schema,
                count_nulls_of: str) -> tuple[int, int]:
    """Write one task's ``batches`` to ``location`` (no file when they hold no rows); its rows and the
    nulls of ``count_nulls_of``."""
    rows = nulls = 0
    with contextlib.ExitStack() as stack:
        writer = None
        for batch in batches:
            if not batch.num_rows:
                continue
            if writer is None:
                writer = stack.enter_context(pq.ParquetWriter(stack.enter_context(storage.open_output(location)),
                                                              arrow_schema, compression="snappy"))
            writer.write_batch(batch)
            rows += batch.num_rows
            if count_nulls_of:
                nulls += batch.column(batch.schema.get_field_index(count_nulls_of)).null_count
    return rows, nulls


def spark_path(location: str) -> str:
    """``location`` as Spark's file sources spell it (``file:/abs`` for local files)."""
    return "file:" + storage.normalize(location) if storage.is_local(location) else storage.normalize(location)


def spark_reads(spark: SparkSession, location: str, reader: str = "auto") -> bool:
    """Whether Spark's own readers read ``location`` (``storage.reader``): ``auto`` = when Hadoop
    has a filesystem for its scheme (always for local files)."""
    if reader != "auto":
        return reader == "spark"
    if storage.is_local(location):
        return True
    jvm = spark.sparkContext._jvm
    if jvm is None:  # no JVM gateway: the lookup below would raise, and answer the same
        return False
    try:
        jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass(storage.scheme(location),
                                                                spark.sparkContext._jsc.hadoopConfiguration())
        return True
    except Exception:  # noqa: BLE001 - Py4J raises the JVM's UnsupportedFileSystemException as a Py4JJavaError
        return False


def read_parquet(spark: SparkSession, files: list[str], reader: str = "auto") -> DataFrame:
    """The rows of Parquet ``files`` (locations, all of one schema) as one frame."""
    if not files:
        raise ValueError("read_parquet: no files to read")
    if spark_reads(spark, files[0], reader):
        return spark.read.parquet(*[spark_path(f) for f in files])
    return read_parquet_through_storage(spark, files)


def read_parquet_through_storage(spark: SparkSession, files: list[str],
                                 references: bool = False) -> DataFrame:
    """:func:`read_parquet` by Spark tasks reading through ``pipelines.storage``; ``references``:
    add ``_file`` (Spark's spelling) and ``_row`` (the row index in its file), as ``load_table`` does."""
    with storage.open_input(files[0]) as f:
        arrow_schema = pq.read_schema(f)
    fields = list(from_arrow_schema(arrow_schema).fields)
    if references:
        fields += [T.StructField("_file", T.StringType()), T.StructField("_row", T.LongType())]
    options = storage.current_options()

    def read(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        with storage.using_options(options):
            for batch in batches:
                for location in batch.column(0).to_pylist():
                    with storage.open_input(location) as f:
                        table = pq.read_table(f).cast(arrow_schema)
                    if references:
                        n = table.num_rows
                        table = table.append_column("_file", pa.array([spark_path(location)] * n, pa.string()))
                        table = table.append_column("_row", pa.array(range(n), pa.int64()))
                    yield from table.to_batches()

    listing = spark.createDataFrame([(f,) for f in files], "location string")
    parallel = max(1, min(len(files), 4 * spark.sparkContext.defaultParallelism))
    return listing.repartition(parallel).mapInArrow(read, T.StructType(fields))
