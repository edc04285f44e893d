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
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.config import ConfigError, SourceConfig
from pipelines.session import REPO_ROOT

RECORD_COLUMNS = [
    "id", "source", "row", "label", "features",
    "decode_detail", "null_detail", "nonfinite_detail", "fingerprint",
]
IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"]
# Hadoop's glob is case-sensitive: list both spellings.
IMAGE_GLOB = "*.{" + ",".join(IMAGE_EXTENSIONS + [e.upper() for e in IMAGE_EXTENSIONS]) + "}"
CORRUPT = "_corrupt_record"
TABULAR_KINDS = ("csv", "json", "parquet")


class EtlError(RuntimeError):
    """The ETL cannot produce a trustworthy dataset; the message says which input and what to do."""


@dataclass(frozen=True)
class Extracted:
    """What a reader hands to the validation step."""

    records: DataFrame  # RECORD_COLUMNS
    path: Path  # resolved source path
    num_features: int | None  # fixed by the source layout; None = one array column, length read from the data
    image_shape: list[int] | None  # [C, H, W] when the source is an image folder
    files: "InputFiles"  # every input file listed, and the empty ones


@dataclass(frozen=True)
class InputFiles:
    """The input files a source listed. Spark's file scans skip zero-byte files, so they are found
    here by comparing the listing with what the scan read (images: each is also a quarantined record)."""

    listed: int
    empty: list[str]  # paths relative to the source path, sorted

    def summary(self, examples: int = 20) -> dict:
        """For the manifest: counts and the first few empty files."""
        return {"listed": self.listed, "empty": len(self.empty), "empty_examples": self.empty[:examples]}


def resolve_source_path(path: str) -> Path:
    """``etl.source.path`` as an absolute path: as given if it exists, else under the repo root."""
    given = Path(path).expanduser()
    for candidate in (given, REPO_ROOT / given):
        if candidate.exists():
            return candidate.resolve()
    raise EtlError(
        f"etl.source.path={path!r} does not exist (looked in {given.resolve()} and {REPO_ROOT / given}); "
        "point etl.source.path at the image folder or tabular file/folder"
    )


def read_records(spark: SparkSession, source: SourceConfig) -> Extracted:
    """Extract: read ``source`` (kind images | csv | json | parquet) into :data:`RECORD_COLUMNS`."""
    root = resolve_source_path(source.path)
    if source.kind == "images":
        records, files = read_images(spark, source, root)
        shape = [source.channels, *source.image_shape]
        return Extracted(records, root, int(np.prod(shape)), shape, files)
    if source.kind in TABULAR_KINDS:
        records, num_features, files = read_tabular(spark, source, root)
        return Extracted(records, root, num_features, None, files)
    raise ConfigError(f"etl.source.kind={source.kind!r} is not one of images, {', '.join(TABULAR_KINDS)}")


def _finish(df: DataFrame) -> DataFrame:
    """Common tail of every reader: the fingerprint and the fixed column order."""
    return df.withColumn("fingerprint", F.xxhash64("features", "label")).select(*RECORD_COLUMNS)


# --- images -----------------------------------------------------------------------------------

def decode_image(data: bytes, channels: int, height: int, width: int) -> np.ndarray:
    """Decode one image file's bytes into float32 C,H,W values in [0, 1], flattened.

    Raises whatever Pillow raises for a file it cannot read.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.draft("L" if channels == 1 else "RGB", (width, height))  # JPEG: decode at reduced size
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        pixels = np.asarray(img, dtype=np.float32) / 255.0
    if channels == 1:
        return pixels.reshape(-1)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)).reshape(-1)  # H,W,C -> C,H,W


def make_image_decoder(channels: int, height: int, width: int):
    """A vectorized (pandas) UDF: binary content -> struct<features array<float>, error string>."""

    @F.pandas_udf("features array<float>, error string")
    def decode(content: pd.Series) -> pd.DataFrame:
        features, errors = [], []
        for data in content:
            try:
                features.append(decode_image(data, channels, height, width))
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - any failure to decode is a quarantine reason
                features.append(None)
                errors.append(f"cannot decode image: {type(e).__name__}: {e}"[:500])
        return pd.DataFrame({"features": features, "error": errors})

    return decode


def read_images(spark: SparkSession, source: SourceConfig, root: Path) -> tuple[DataFrame, InputFiles]:
    """Image folder -> records. id = path relative to ``root``; label from labels.csv or sub-folder.

    Every listed image file is a record: an empty (0-byte) one, which Spark's scan skips, becomes a
    ``decode_error`` record with the detail ``empty file (0 bytes)``.
    """
    if not root.is_dir():
        raise EtlError(f"etl.source.path={root} is not a folder; source.kind=images reads a folder of images")
    base = _qualified(spark, root)  # binaryFile spells paths this way, e.g. file:/abs/folder
    raw = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")  # also: no partition discovery from folder names
        .option("pathGlobFilter", IMAGE_GLOB)
        .load(str(root))
    )
    relative = F.col("path").substr(len(base) + 2, 1 << 30)
    files = (
        # Small files are packed ~32 per scan task; that many Python UDF tasks cost more than the
        # decoding. A few streaming tasks per core are plenty.
        raw.coalesce(max(1, 4 * spark.sparkContext.defaultParallelism))
        .select(F.col("path").alias("source"), relative.alias("id"), "content")
    )
    listed = raw.inputFiles()
    empty = _unscanned(spark, listed, raw.select("path"), base)
    height, width = source.image_shape
    decoder = make_image_decoder(source.channels, height, width)
    decoded = files.select("id", "source", decoder("content").alias("img")).select(
        "id",
        "source",
        F.lit(None).cast("bigint").alias("row"),
        F.col("img.features").alias("features"),
        F.col("img.error").alias("decode_detail"),
        F.lit(None).cast("string").alias("null_detail"),
    )
    decoded = decoded.withColumn("nonfinite_detail", nonfinite_detail(F.col("features")))
    ids = files.select("id")  # every listed file, empty ones included (no decoding needed for this)
    if empty:
        empty_records = spark.createDataFrame([(p, f"{base}/{p}") for p in empty], "id string, source string").select(
            "id", "source", F.lit(None).cast("bigint").alias("row"), F.lit(None).cast("array<float>").alias("features"),
            F.lit("empty file (0 bytes)").alias("decode_detail"), F.lit(None).cast("string").alias("null_detail"),
            F.lit(None).cast("string").alias("nonfinite_detail"))
        decoded = decoded.unionByName(empty_records)
        ids = ids.unionByName(empty_records.select("id"))
    found = InputFiles(len(listed), empty)
    if not source.labels_csv:
        # label = name of the folder holding the file; files directly in root have none.
        folder = F.regexp_extract("id", r"([^/]+)/[^/]+$", 1)
        return _finish(decoded.withColumn("label", F.when(folder != "", folder))), found
    labels_path = root / source.labels_csv
    labels = _read_labels_csv(spark, labels_path)
    labelled = decoded.join(labels, "id", "left")  # a file listed twice -> two records, one id
    # Rows of labels.csv naming no image file are records too: they must not vanish silently.
    orphans = labels.join(ids, "id", "left_anti").select(
        "id",
        F.lit(str(labels_path)).alias("source"),
        F.lit(None).cast("bigint").alias("row"),
        F.lit(None).cast("array<float>").alias("features"),
        F.lit(f"listed in {source.labels_csv} but no image file ({', '.join(IMAGE_EXTENSIONS)}) "
              f"with that path under {root}").alias("decode_detail"),
        F.lit(None).cast("string").alias("null_detail"),
        F.lit(None).cast("string").alias("nonfinite_detail"),
        "label",
    )
    return _finish(labelled.unionByName(orphans)), found


def _unscanned(spark: SparkSession, listed: list[str], scanned: DataFrame, base: str) -> list[str]:
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


def _empty_files(spark: SparkSession, listed: list[str], root: Path) -> list[str]:
    """The zero-byte files among ``listed`` (tabular sources: few files), relative to ``root``, sorted."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    base = _qualified(spark, root)
    empty = []
    for path in listed:
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        if hpath.getFileSystem(conf).getFileStatus(hpath).getLen() == 0:
            qualified = hpath.getFileSystem(conf).makeQualified(hpath).toString()
            empty.append(qualified[len(base) + 1:] if qualified.startswith(base + "/") else qualified)
    return sorted(empty)


def _read_labels_csv(spark: SparkSession, path: Path) -> DataFrame:
    if not path.is_file():
        raise EtlError(
            f"labels file {path} (etl.source.labels_csv) does not exist; create it with columns file,label "
            "or set etl.source.labels_csv='' to take each label from the image's sub-folder name"
        )
    raw = spark.read.option("header", "true").csv(str(path))
    missing = {"file", "label"} - set(raw.columns)
    if missing:
        raise EtlError(f"labels file {path} lacks column(s) {sorted(missing)}; it has {raw.columns}, needs file,label")
    file = F.regexp_replace(F.trim("file"), r"^\./", "")
    label = F.trim("label")
    return raw.select(file.alias("id"), F.when(label != "", label).alias("label"))


def _qualified(spark: SparkSession, path: Path) -> str:
    """``path`` fully qualified by Hadoop (scheme included), as Spark's file sources report it."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(str(path))
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs.makeQualified(hpath).toString().rstrip("/")


# --- tabular ----------------------------------------------------------------------------------

def read_tabular(spark: SparkSession, source: SourceConfig,
                 root: Path) -> tuple[DataFrame, int | None, InputFiles]:
    """CSV (header) / JSON lines / Parquet -> records; returns them, the fixed feature count (None =
    array) and the input files (an empty file holds no records; it is reported, not an error)."""
    raw = _load_table(spark, source.kind, root)
    listed = raw.inputFiles()
    files = InputFiles(len(listed), _empty_files(spark, listed, root))
    columns = [c for c in raw.columns if c not in (CORRUPT, "_file", "_row")]
    label_col = _require_column(columns, source.label_column, "etl.source.label_column", root)
    id_col = _require_column(columns, source.id_column, "etl.source.id_column", root) if source.id_column else ""
    feature_cols = list(source.feature_columns) or [c for c in columns if c not in (label_col, id_col)]
    for c in feature_cols:
        _require_column(columns, c, "etl.source.feature_columns", root)
    if not feature_cols:
        raise EtlError(f"{root} has no feature columns besides the label/id; set etl.source.feature_columns")
    fields = {f.name: f.dataType for f in raw.schema.fields}
    if len(feature_cols) == 1 and isinstance(fields[feature_cols[0]], T.ArrayType):
        feats, num_features = _array_features(feature_cols[0], fields[feature_cols[0]]), None
    else:
        feats, num_features = _scalar_features(feature_cols, fields, root), len(feature_cols)
    corrupt = F.col(CORRUPT) if CORRUPT in raw.columns else F.lit(None).cast("string")
    snippet = F.substring(corrupt, 1, 200)
    decode_detail, null_detail = feats["decode_detail"], feats["null_detail"]
    if source.kind == "json":  # unparsable line
        decode_detail = F.when(corrupt.isNotNull(), F.concat(F.lit("malformed JSON line: "), snippet)).otherwise(decode_detail)
    else:  # CSV: more or fewer fields than the header
        null_detail = F.when(
            corrupt.isNotNull(),
            F.concat(F.lit("row has a different number of fields than the header: "), snippet),
        ).otherwise(null_detail)
    if id_col:
        ident = F.trim(F.col(id_col).cast("string"))
        ident = F.when(ident != "", ident)
    else:
        # No id column: the id is a hash of the record's content (features + label), so it is stable
        # across runs and partitionings, and identical records get the same id (-> duplicate_id).
        ident = F.sha1(F.to_json(F.struct(*[F.col(c) for c in feature_cols], F.col(label_col))))
    records = raw.select(
        ident.alias("id"),
        F.col("_file").alias("source"),
        F.col("_row").alias("row"),
        _label(F.col(label_col), fields[label_col]).alias("label"),
        feats["features"].alias("features"),
        decode_detail.alias("decode_detail"),
        null_detail.alias("null_detail"),
        feats["nonfinite_detail"].alias("nonfinite_detail"),
    )
    return _finish(records), num_features, files


def _load_table(spark: SparkSession, kind: str, root: Path) -> DataFrame:
    """Read the table with every record kept (PERMISSIVE), plus ``_file`` and ``_row`` references."""
    path = str(root)
    if kind == "csv":
        header = spark.read.option("header", "true").csv(path).columns
        # All columns as strings: a non-number is then seen (and named) instead of silently nulled.
        schema = T.StructType([T.StructField(c, T.StringType()) for c in header] + [T.StructField(CORRUPT, T.StringType())])
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


def _require_column(columns: list[str], name: str, key: str, root: Path) -> str:
    if name not in columns:
        raise EtlError(f"{key}={name!r}: no such column in {root}; its columns are {columns}")
    return name


_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


def _scalar_features(cols: list[str], fields: dict[str, T.DataType], root: Path) -> dict[str, Column]:
    """One numeric (or numeric-text) column per feature."""
    values, bad, missing, nonfinite = [], [], [], []
    for c in cols:
        col, dtype = F.col(c), fields[c]
        if isinstance(dtype, T.StringType):
            text = F.trim(col)
            is_missing = col.isNull() | (text == "")
            number = text.cast("double")
            bad.append(F.when(~is_missing & number.isNull(), F.concat(F.lit(f"column '{c}' value '"), col, F.lit("' is not a number"))))
        elif isinstance(dtype, _NUMERIC):
            is_missing, number = col.isNull(), col.cast("double")
        else:
            raise EtlError(f"etl.source.feature_columns: column '{c}' in {root} has type {dtype.simpleString()}, not numbers")
        value = number.cast("float")  # beyond float32 range -> inf -> nan_or_inf
        values.append(value)
        missing.append(F.when(is_missing, F.lit(c)))
        nonfinite.append(F.when(F.isnan(value) | (F.abs(value) == float("inf")), F.concat(F.lit(f"{c}="), value.cast("string"))))
    return {
        "features": F.array(*values),
        "decode_detail": _nonempty(F.concat_ws("; ", *bad)) if bad else F.lit(None).cast("string"),
        "null_detail": _prefixed("missing value in column(s): ", F.concat_ws(", ", *missing)),
        "nonfinite_detail": _prefixed("not finite: ", F.concat_ws(", ", *nonfinite)),
    }


def _array_features(c: str, dtype: T.ArrayType) -> dict[str, Column]:
    """One array column holding the whole feature vector (what pipelines.etl.generate writes)."""
    col = F.col(c)
    if isinstance(dtype.elementType, _NUMERIC):
        values, decode_detail = col.cast("array<float>"), F.lit(None).cast("string")
    elif isinstance(dtype.elementType, T.StringType):  # e.g. JSON arrays mixing numbers and text
        values = F.transform(col, lambda x: F.trim(x).cast("float"))
        not_number = F.exists(col, lambda x: x.isNotNull() & (F.trim(x) != "") & F.trim(x).cast("double").isNull())
        decode_detail = F.when(not_number, F.lit(f"column '{c}' holds a value that is not a number"))
    else:
        raise EtlError(f"etl.source.feature_columns: column '{c}' is an array of {dtype.elementType.simpleString()}, not numbers")
    null_detail = F.when(col.isNull(), F.lit(f"column '{c}' is null")).when(
        contains_null(values), F.lit(f"column '{c}' has missing (null) elements")
    )
    return {
        "features": values,
        "decode_detail": decode_detail,
        "null_detail": null_detail,
        "nonfinite_detail": nonfinite_detail(values),
    }


def contains_null(values: Column) -> Column:
    """True when the float array has a null element.

    ``exists(x -> x is null)`` is an interpreted lambda (slow on wide vectors); ``arrays_overlap``
    with [NaN] is compiled and returns null exactly when the array holds a null and no NaN (Spark
    treats NaN = NaN as true). Only rows holding a NaN pay for the lambda.
    """
    overlap = F.arrays_overlap(values, F.array(F.lit(float("nan")).cast("float")))
    return F.when(overlap.isNull(), True).when(overlap, F.exists(values, lambda x: x.isNull())).otherwise(False)


def nonfinite_detail(values: Column) -> Column:
    """Non-null when a float array holds NaN or +-inf (array_max sorts NaN above everything)."""
    top, bottom = F.array_max(values), F.array_min(values)
    return (
        F.when(F.isnan(top), F.lit("features contain NaN"))
        .when(top == float("inf"), F.lit("features contain +inf"))
        .when(bottom == float("-inf"), F.lit("features contain -inf"))
    )


def _label(col: Column, dtype: T.DataType) -> Column:
    """Raw label as a trimmed string; whole floats (3.0) read as integers ("3"); NaN/"" -> null."""
    if isinstance(dtype, (T.FloatType, T.DoubleType)):
        return F.when(F.isnan(col), None).when(col == F.floor(col), col.cast("bigint").cast("string")).otherwise(col.cast("string"))
    text = F.trim(col.cast("string"))
    return F.when(text != "", text)


def _nonempty(text: Column) -> Column:
    return F.when(text != "", text)


def _prefixed(prefix: str, text: Column) -> Column:
    return F.when(text != "", F.concat(F.lit(prefix), text))
