"""ETL extract step: read raw records of any source kind into one uniform DataFrame.

Every reader returns the columns of :data:`RECORD_COLUMNS`, one row per raw record, without
dropping anything: problems are recorded in the ``*_detail`` columns and turned into quarantine
reasons by ``pipelines.etl.validate``.

    id               string        stable record id (image path relative to source.path, id column, or content hash)
    source           string        file the record came from
    row              bigint        row index inside that file (Parquet), else null
    label            string        raw label, trimmed; null when missing
    features         array<float>  feature values as read (null when they cannot be decoded)
    decode_detail    string        set when the image cannot be decoded or a value is not a number
    null_detail      string        set when a feature is missing / the row has the wrong number of fields
    nonfinite_detail string        set when a feature is NaN or +-inf
    fingerprint      bigint        hash of features + label: the last tie-break between duplicates
                                   (null when ``row`` is set: source + row already tell records apart)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines import storage
from pipelines.artifact import TABULAR_KINDS, Preprocessing
from pipelines.config import SourceConfig
from pipelines.errors import ConfigError
from pipelines.preprocess import (
    PreprocessError,
    image_decoder,
    nonfinite_detail,
    raw_label,
    tabular_features,
)
from pipelines.raw import (
    RawInputError,
    binary_files,
    empty_files,
    input_key,
    load_table,
    read_labels_csv,
    resolve_location,
    table_columns,
    table_files,
    unreadable_parquet,
)
from pipelines.tables import spark_path

RECORD_COLUMNS = [
    "id", "source", "row", "label", "features",
    "decode_detail", "null_detail", "nonfinite_detail", "fingerprint",
]
IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"]


class EtlError(RuntimeError):
    """The ETL cannot produce a trustworthy dataset; the message says which input and what to do."""


class NothingNew(Exception):
    """An append found no input file that earlier versions have not read: a success, nothing to publish."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.root = root


@dataclass(frozen=True)
class Extracted:
    """What a reader hands to the validation step."""

    records: DataFrame  # RECORD_COLUMNS
    path: str  # resolved source location
    num_features: int | None  # fixed by the source layout; None = one array column, length read from the data
    image_shape: list[int] | None  # [C, H, W] when the source is an image folder
    files: InputFiles  # every input file listed, and the empty ones
    feature_columns: list[str] | None = None  # tabular: the feature columns as resolved, in order


@dataclass(frozen=True)
class InputFiles:
    """The input files a source listed (and read). Spark's file scans skip zero-byte files, so they
    are found here by their size (images: each is also a quarantined record). ``read``: each file's
    identity in the source, (path relative to the source path, size): an append skips these later."""

    listed: int
    empty: list[str]  # paths relative to the source path, sorted
    read: list[tuple[str, int]] = field(default_factory=list)

    @property
    def nothing(self) -> bool:
        return self.listed == 0

    def summary(self, examples: int = 20) -> dict[str, Any]:
        """For the manifest: counts and the first few empty files."""
        return {"listed": self.listed, "empty": len(self.empty), "empty_examples": self.empty[:examples]}


def resolve_source_path(path: str, key: str = "etl.source.path") -> str:
    """``etl.source.path`` as a location (see ``pipelines.raw.resolve_source_path``)."""
    try:
        return resolve_location(path, key)
    except RawInputError as e:
        raise EtlError(str(e)) from None


def read_records(spark: SparkSession, source: SourceConfig, array_value_checks: bool = True,
                 reader: str = "auto", skip: dict[str, int] | None = None) -> Extracted:
    """Extract: read ``source`` (kind images | csv | json | parquet) into :data:`RECORD_COLUMNS`.

    ``array_value_checks=False``: features read as one array (images, an array column) get no
    element checks here (null elements, NaN/inf): the caller makes them on the values
    (``pipelines.etl.write.check_feature_values``), where they cost far less than per-element
    Spark expressions. ``reader``: ``storage.reader`` (``pipelines.raw``: Spark's readers or the storage layer).
    ``skip``: files already ingested, by (path relative to the source, size): not read (``etl.mode=append``);
    :class:`NothingNew` when that leaves no file, for every source kind and reader.
    """
    root = resolve_source_path(source.path)
    if source.kind == "images":
        records, files = read_images(spark, source, root, array_value_checks, reader, skip)
        if skip is not None and files.nothing:
            raise NothingNew(root)
        shape = [source.channels, *source.image_shape]
        return Extracted(records, root, int(np.prod(shape)), shape, files)
    if source.kind in TABULAR_KINDS:
        records, num_features, files, columns = read_tabular(spark, source, root, array_value_checks, reader, skip)
        return Extracted(records, root, num_features, None, files, columns)
    raise ConfigError(f"etl.source.kind={source.kind!r} is not one of images, {', '.join(TABULAR_KINDS)}")


def _finish(df: DataFrame) -> DataFrame:
    """Common tail of every reader: the fingerprint and the fixed column order. Hashing every
    feature value is costly, so only records without a row number (CSV, JSON, images) get one."""
    fingerprint = F.when(F.col("row").isNull(), F.xxhash64("features", "label"))
    return df.withColumn("fingerprint", fingerprint).select(*RECORD_COLUMNS)


# --- images -----------------------------------------------------------------------------------

def read_images(spark: SparkSession, source: SourceConfig, root: str, value_checks: bool = True,
                reader: str = "auto", skip: dict[str, int] | None = None) -> tuple[DataFrame, InputFiles]:
    """Image folder -> records. id = path relative to ``root``; label from labels.csv or sub-folder.

    Every listed image file is a record: an empty (0-byte) one, which Spark's scan skips, becomes a
    ``decode_error`` record with the detail ``empty file (0 bytes)``.
    """
    if not storage.is_dir(root):
        raise EtlError(f"etl.source.path={storage.redact(root)} is not a folder; source.kind=images reads a folder "
                       "of images")
    listing = binary_files(spark, root, IMAGE_EXTENSIONS, reader, skip)
    base, empty = listing.base, listing.empty
    # Small files are packed ~32 per scan task; that many Python UDF tasks cost more than the
    # decoding. A few streaming tasks per core are plenty.
    files = listing.frame.coalesce(max(1, 4 * spark.sparkContext.defaultParallelism)).withColumnRenamed(
        "path", "source")
    decoder = image_decoder(Preprocessing.from_source(source))  # the preprocessing inference applies too
    decoded = files.select("id", "source", decoder("content").alias("img")).select(
        "id",
        "source",
        F.lit(None).cast("bigint").alias("row"),
        F.col("img.features").alias("features"),
        F.concat(F.lit("cannot decode image: "), F.col("img.error")).alias("decode_detail"),
        F.lit(None).cast("string").alias("null_detail"),
    )
    nonfinite = nonfinite_detail(F.col("features")) if value_checks else F.lit(None).cast("string")
    decoded = decoded.withColumn("nonfinite_detail", nonfinite)
    ids = files.select("id")  # every listed file, empty ones included (no decoding needed for this)
    if empty:
        empty_records = spark.createDataFrame([(p, f"{base}/{p}") for p in empty], "id string, source string").select(
            "id", "source", F.lit(None).cast("bigint").alias("row"), F.lit(None).cast("array<float>").alias("features"),
            F.lit("empty file (0 bytes)").alias("decode_detail"), F.lit(None).cast("string").alias("null_detail"),
            F.lit(None).cast("string").alias("nonfinite_detail"))
        decoded = decoded.unionByName(empty_records)
        ids = ids.unionByName(empty_records.select("id"))
    found = InputFiles(listing.listed, empty, listing.inputs)
    if not source.labels_csv:
        # label = name of the folder holding the file; files directly in root have none.
        folder = F.regexp_extract("id", r"([^/]+)/[^/]+$", 1)
        return _finish(decoded.withColumn("label", F.when(folder != "", folder))), found
    labels_path = storage.join(root, source.labels_csv)
    labels = _read_labels_csv(spark, labels_path)
    labelled = decoded.join(labels, "id", "left")  # a file listed twice -> two records, one id
    if skip:  # files ingested before are not orphans: labels.csv names them too
        ids = ids.unionByName(spark.createDataFrame([(k,) for k in skip], "id string"))
    # Rows of labels.csv naming no image file are records too: they must not vanish silently.
    orphans = labels.join(ids, "id", "left_anti").select(
        "id",
        F.lit(storage.redact(labels_path)).alias("source"),
        F.lit(None).cast("bigint").alias("row"),
        F.lit(None).cast("array<float>").alias("features"),
        F.lit(f"listed in {source.labels_csv} but no image file ({', '.join(IMAGE_EXTENSIONS)}) "
              f"with that path under {storage.redact(root)}").alias("decode_detail"),
        F.lit(None).cast("string").alias("null_detail"),
        F.lit(None).cast("string").alias("nonfinite_detail"),
        "label",
    )
    return _finish(labelled.unionByName(orphans)), found


def _read_labels_csv(spark: SparkSession, path: str) -> DataFrame:
    try:
        return read_labels_csv(spark, path, "etl.source.labels_csv",
                               "or set etl.source.labels_csv='' to take each label from the image's sub-folder name")
    except RawInputError as e:
        raise EtlError(str(e)) from None


# --- tabular ----------------------------------------------------------------------------------

def read_tabular(spark: SparkSession, source: SourceConfig, root: str, array_value_checks: bool = True,
                 reader: str = "auto", skip: dict[str, int] | None = None
                 ) -> tuple[DataFrame, int | None, InputFiles, list[str]]:
    """CSV (header) / JSON lines / Parquet -> records; returns them, the fixed feature count (None =
    array), the input files (an empty file holds no records; it is reported, not an error) and the
    feature columns in order (the model artifact records them)."""
    raw, files, unreadable = _load_tabular(spark, source, root, reader, skip)
    label_col, id_col, feature_cols = _tabular_columns(table_columns(raw), source, root)
    try:  # the preprocessing inference applies too
        feats = tabular_features(raw, source.kind, feature_cols,
                                 f"etl.source.feature_columns (in {storage.redact(root)})",
                                 array_value_checks)
    except PreprocessError as e:
        raise EtlError(str(e)) from None
    array_column = len(feature_cols) == 1 and raw.schema[feature_cols[0]].dataType.typeName() == "array"
    num_features = None if array_column else len(feature_cols)
    records = raw.select(
        _record_id(id_col, feature_cols, label_col).alias("id"),
        F.col("_file").alias("source"),
        F.col("_row").alias("row"),
        raw_label(F.col(label_col), raw.schema[label_col].dataType).alias("label"),
        feats["features"].alias("features"),
        feats["decode_detail"].alias("decode_detail"),
        feats["null_detail"].alias("null_detail"),
        feats["nonfinite_detail"].alias("nonfinite_detail"),
    )
    if unreadable:
        records = _with_unreadable(spark, records, unreadable, root)
    return _finish(records), num_features, files, feature_cols


def _load_tabular(spark: SparkSession, source: SourceConfig, root: str, reader: str,
                  skip: dict[str, int] | None) -> tuple[DataFrame, InputFiles, dict[str, str]]:
    """The source's table (the files ``skip`` does not name; Parquet files that do not read left
    out), its input files, and those unreadable files with their problem."""
    entries = table_files(source.kind, root, skip)
    if skip is not None and not entries:
        raise NothingNew(root)  # before any reader: Spark's and the storage layer's alike refuse an empty list
    unreadable = unreadable_parquet(spark, [e for e in entries if e.size]) if source.kind == "parquet" else {}
    readable = [e for e in entries if e.location not in unreadable]
    if unreadable and not [e for e in readable if e.size]:
        raise EtlError(f"etl.source.path={storage.redact(root)}: none of its {len(entries)} Parquet file(s) "
                       "can be read, "
                       f"e.g. {storage.redact(next(iter(unreadable)))}: {next(iter(unreadable.values()))}")
    try:
        raw, listed = load_table(spark, source.kind, root, reader,
                                 readable if skip is not None or unreadable else None)
    except RawInputError as e:
        raise EtlError(f"etl.source.path: {e}") from None
    files = InputFiles(len(listed) + len(unreadable), empty_files(listed, root),
                       [(input_key(e.location, root), e.size) for e in entries])
    return raw, files, unreadable


def _tabular_columns(columns: list[str], source: SourceConfig, root: str) -> tuple[str, str, list[str]]:
    """The label column, the id column ("" = none) and the feature columns, each checked to exist."""
    label_col = _require_column(columns, source.label_column, "etl.source.label_column", root)
    id_col = _require_column(columns, source.id_column, "etl.source.id_column", root) if source.id_column else ""
    feature_cols = list(source.feature_columns) or [c for c in columns if c not in (label_col, id_col)]
    for c in feature_cols:
        _require_column(columns, c, "etl.source.feature_columns", root)
    if not feature_cols:
        raise EtlError(f"{storage.redact(root)} has no feature columns besides the label/id; set "
                       "etl.source.feature_columns")
    return label_col, id_col, feature_cols


def _record_id(id_col: str, feature_cols: list[str], label_col: str) -> Column:
    """A record's id: the id column's value, trimmed (empty = null), or without one a content hash."""
    if id_col:
        ident = F.trim(F.col(id_col).cast("string"))
        return F.when(ident != "", ident)
    # No id column: the id is a hash of the record's content (features + label), so it is stable
    # across runs and partitionings, and identical records get the same id (-> duplicate_id).
    return F.sha1(F.to_json(F.struct(*[F.col(c) for c in feature_cols], F.col(label_col))))


def _with_unreadable(spark: SparkSession, records: DataFrame, unreadable: dict[str, str], root: str) -> DataFrame:
    """``records`` and one quarantined record per unreadable file naming it, so the counts reconcile."""
    print(f"etl: {len(unreadable)} Parquet file(s) cannot be read and are quarantined as files: "
          + ", ".join(storage.redact(x) for x in list(unreadable)[:5]), flush=True)
    return records.unionByName(spark.createDataFrame(
        [(input_key(loc, root), spark_path(loc), None, None, None, problem, None, None)
         for loc, problem in unreadable.items()], T.StructType([T.StructField(f.name, f.dataType, True)
                                                               for f in records.schema])))


def _require_column(columns: list[str], name: str, key: str, root: str) -> str:
    if name not in columns:
        raise EtlError(f"{key}={name!r}: no such column in {storage.redact(root)}; its columns are {columns}")
    return name
