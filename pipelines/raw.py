"""Reading raw input with Spark, every file and record counted: shared by the ETL and inference.

Spark's file scans skip zero-byte files without a word; :func:`binary_files` and :func:`empty_files`
find them by comparing the listing (``inputFiles()``) with what the scan read, so callers can turn
each into a record (images) or a report line (tables). :func:`load_table` keeps every row of a
CSV / JSON / Parquet input (malformed ones in ``_corrupt_record``) with a reference to its file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.preprocess import CORRUPT

REFERENCE_COLUMNS = ("_file", "_row")  # added by load_table: the file and (Parquet) row of each record


class RawInputError(RuntimeError):
    """Raw input cannot be read as configured; the message names the file and the setting."""


@dataclass(frozen=True)
class BinaryFiles:
    """A folder's files as Spark's ``binaryFile`` source reads them, and the ones it skipped."""

    frame: DataFrame  # path (as Spark spells it), id (path relative to the folder), content
    listed: int  # files listed
    empty: list[str]  # zero-byte files (the scan skips them), relative to the folder, sorted
    base: str  # the folder, fully qualified (``file:/abs/folder``): ``base + "/" + id`` is a path


def binary_files(spark: SparkSession, root: Path, glob: str | None = None) -> BinaryFiles:
    """Every file under ``root`` (recursively; ``glob`` filters names), with its id and bytes."""
    base = qualified(spark, root)
    reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")  # no partition discovery
    if glob:
        reader = reader.option("pathGlobFilter", glob)
    raw = reader.load(str(root))
    listed = raw.inputFiles()
    frame = raw.select("path", F.col("path").substr(len(base) + 2, 1 << 30).alias("id"), "content")
    return BinaryFiles(frame, len(listed), unscanned(spark, listed, raw.select("path"), base), base)


def unscanned(spark: SparkSession, listed: list[str], scanned: DataFrame, base: str) -> list[str]:
    """Listed files the scan did not read (Spark skips zero-byte files), relative to ``base``, sorted.

    The listing spells local paths ``file:///x``, the scan ``file:/x``: both are brought to the latter.
    """
    def plain(column: str) -> Column:
        return F.regexp_replace(F.col(column), "^file:/+", "file:/")

    if not listed:
        return []
    listing = spark.createDataFrame([(p,) for p in listed], "path string").select(plain("path").alias("p"))
    missing = listing.join(scanned.select(plain("path").alias("p")), "p", "left_anti").collect()
    return sorted(row.p[len(base) + 1:] for row in missing)


def empty_files(spark: SparkSession, listed: list[str], root: Path) -> list[str]:
    """The zero-byte files among ``listed`` (tabular sources: few files), relative to ``root``, sorted."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    base = qualified(spark, root)
    empty = []
    for path in listed:
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        if hpath.getFileSystem(conf).getFileStatus(hpath).getLen() == 0:
            full = hpath.getFileSystem(conf).makeQualified(hpath).toString()
            empty.append(full[len(base) + 1:] if full.startswith(base + "/") else full)
    return sorted(empty)


def qualified(spark: SparkSession, path: Path) -> str:
    """``path`` fully qualified by Hadoop (scheme included), as Spark's file sources report it."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(str(path))
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs.makeQualified(hpath).toString().rstrip("/")


def load_table(spark: SparkSession, kind: str, root: Path) -> DataFrame:
    """Read a CSV (header) / JSON lines / Parquet table with every record kept (PERMISSIVE), plus
    ``_file`` and ``_row`` references (``_row``: the row index in a Parquet file, else null)."""
    path = str(root)
    if kind == "csv":
        header = spark.read.option("header", "true").csv(path).columns
        # All columns as strings: a non-number is then seen (and named) instead of silently nulled.
        schema = T.StructType([T.StructField(c, T.StringType()) for c in header]
                              + [T.StructField(CORRUPT, T.StringType())])
        df = (
            spark.read.option("header", "true").option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT).schema(schema).csv(path)
        )
    elif kind == "json":
        df = spark.read.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT).json(path)
    else:
        reader = spark.read
        if root.is_dir():  # only the data files: a folder may also hold _SUCCESS, *.json notes, ...
            reader = reader.option("pathGlobFilter", "*.parquet")
        df = reader.parquet(path)
    row = F.col("_metadata.row_index") if kind == "parquet" else F.lit(None).cast("bigint")
    return df.select("*", F.col("_metadata.file_path").alias("_file"), row.alias("_row"))


def table_columns(table: DataFrame) -> list[str]:
    """The input's own columns (without Spark's corrupt-record column and load_table's references)."""
    return [c for c in table.columns if c not in (CORRUPT, *REFERENCE_COLUMNS)]


def read_labels_csv(spark: SparkSession, path: Path, key: str, hint: str = "") -> DataFrame:
    """An image folder's labels file (columns file,label) as ``id`` (the file's relative path), ``label``."""
    if not path.is_file():
        raise RawInputError(f"labels file {path} ({key}) does not exist; create it with columns file,label"
                            + (f" {hint}" if hint else ""))
    raw = spark.read.option("header", "true").csv(str(path))
    missing = {"file", "label"} - set(raw.columns)
    if missing:
        raise RawInputError(f"labels file {path} ({key}) lacks column(s) {sorted(missing)}; it has {raw.columns}, "
                            "needs file,label")
    file = F.regexp_replace(F.trim("file"), r"^\./", "")
    label = F.trim("label")
    return raw.select(file.alias("id"), F.when(label != "", label).alias("label"))
