"""Reading raw input with Spark, every file and record counted: shared by the ETL and inference.

Two ways in, giving the same records (same ids, sources, counts): Spark's own file readers, where
Hadoop has a filesystem for the location's scheme (local disk, ``hdfs://`` on a cluster, ``s3a``
with hadoop-aws), and ``pipelines.storage`` where it has none (``s3://``, ``gs://``, ``abfs://``
without a connector): the driver lists the files and Spark tasks read them through the storage
layer (``storage.reader``: auto | spark | python).

Spark's file scans skip zero-byte files without a word; :func:`binary_files` and
:func:`empty_files` find them by comparing the listing with what was read, so callers can turn
each into a record (images) or a report line (tables). :func:`load_table` keeps every row of a
CSV / JSON / Parquet input (malformed ones in ``_corrupt_record``) with a reference to its file.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines import storage
from pipelines.preprocess import CORRUPT, INVALID_TEXT
from pipelines.publish import check_committed, committed_folder
from pipelines.tables import read_parquet_through_storage, spark_path, spark_reads

REFERENCE_COLUMNS = ("_file", "_row")  # added by load_table: the file and (Parquet) row of each record
READ_CHUNK = 1 << 20  # the storage reader streams text files in pieces of this many bytes
LINES_PER_BATCH = 8192
REPLACEMENT = "\ufffd"  # what invalid UTF-8 bytes decode to, in Spark's readers as in Python's


class RawInputError(RuntimeError):
    """Raw input cannot be read as configured; the message names the file and the setting."""


@dataclass(frozen=True)
class BinaryFiles:
    """A folder's files as read (path, id, content), the count listed and the ones skipped as empty."""

    frame: DataFrame  # path (as Spark spells it), id (path relative to the folder), content
    listed: int  # files listed (and not skipped)
    empty: list[str]  # zero-byte files (Spark's scan skips them), relative to the folder, sorted
    base: str  # the folder as Spark spells it: ``base + "/" + id`` is a path
    inputs: list[tuple[str, int]] = field(default_factory=list)  # (path relative to the folder, size) read


def resolve_location(path: str, key: str) -> str:
    """A source path as a location: a URI as given; a local path as given if it exists, else under
    the repo root (the bundled data). A dlpipe publication (``dlpipe generate``'s output, saved
    trajectories) resolves to its committed folder. :class:`RawInputError` naming ``key`` when
    nothing is there."""
    from pipelines.session import REPO_ROOT

    if not storage.is_local(path):
        if storage.exists(path):
            return _committed_or_plain(storage.normalize(path), key)
        raise RawInputError(f"{key}={storage.redact(path)} does not exist: point {key} at the folder or file of "
                            "records")
    given = storage.normalize(path)
    bundled = storage.normalize(path, str(REPO_ROOT))
    for candidate in (given, bundled):
        if storage.exists(candidate):
            return _committed_or_plain(candidate, key)
    raise RawInputError(f"{key}={path!r} does not exist (looked in {given} and {bundled}): point {key} at the folder "
                        "or file of records")


def _committed_or_plain(location: str, key: str) -> str:
    """A publication's committed folder, or ``location`` itself when it is a plain folder or file;
    a publication that was never committed is refused (its files may be partial)."""
    committed = committed_folder(location)
    if committed:
        return committed
    check_committed(location, key)
    return location


def _partitions(spark: SparkSession, files: int) -> int:
    """A few streaming tasks per core: small files would otherwise make as many tiny tasks."""
    return max(1, min(files, 4 * spark.sparkContext.defaultParallelism))


# --- binary files -----------------------------------------------------------------------------------

def binary_files(spark: SparkSession, root: str, extensions: list[str] | None = None, reader: str = "auto",
                 skip: dict[str, int] | None = None) -> BinaryFiles:
    """Every file under ``root`` (recursively; ``extensions`` filters names, any case), with its id and
    bytes; a file whose (relative path, size) is in ``skip`` is left out (already ingested)."""
    suffixes = tuple(f".{e}" for e in extensions) + tuple(f".{e.upper()}" for e in extensions) if extensions else None
    base = spark_path(root).rstrip("/")
    entries = [e for e in storage.list_files(root, suffix=suffixes)
               if (skip or {}).get(storage.relative(e.location, root)) != e.size]
    inputs = [(storage.relative(e.location, root), e.size) for e in entries]
    empty = sorted(rel for rel, size in inputs if size == 0)
    if spark_reads(spark, root, reader):
        raw = spark.read.format("binaryFile").option("recursiveFileLookup", "true")  # no partition discovery
        if skip:
            loaded = raw.load([spark_path(e.location) for e in entries if e.size > 0] or [spark_path(root)])
            if not any(e.size > 0 for e in entries):
                loaded = loaded.limit(0)
        else:
            if suffixes:
                raw = raw.option("pathGlobFilter", "*.{" + ",".join(s[1:] for s in suffixes) + "}")
            loaded = raw.load(spark_path(root))
        frame = loaded.select("path", F.col("path").substr(len(base) + 2, 1 << 30).alias("id"), "content")
        return BinaryFiles(frame, len(entries), empty, base, inputs)
    full = [(spark_path(e.location), rel) for e, (rel, size) in zip(entries, inputs) if size > 0]
    options = storage.current_options()

    def read(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        with storage.using_options(options):
            for batch in batches:
                paths = batch.column(0).to_pylist()
                contents = [storage.read_bytes(p[len("file:"):] if p.startswith("file:") else p) for p in paths]
                yield pa.RecordBatch.from_arrays([batch.column(0), batch.column(1), pa.array(contents, pa.binary())],
                                                 names=["path", "id", "content"])

    listing = spark.createDataFrame(full, "path string, id string") if full else \
        spark.createDataFrame([], "path string, id string")
    frame = listing.repartition(_partitions(spark, len(full))).mapInArrow(read,
                                                                         "path string, id string, content binary")
    return BinaryFiles(frame, len(entries), empty, base, inputs)


def _plain_spelling(path: str) -> str:
    """Spark's listing spells local paths ``file:///x``, its scans ``file:/x``: the latter."""
    return "file:/" + path[len("file:"):].lstrip("/") if path.startswith("file:") else path


def empty_files(listed: list[str], root: str) -> list[str]:
    """The zero-byte files among ``listed`` (Spark's spelling), relative to ``root``, sorted."""
    base = spark_path(root).rstrip("/")
    sizes = {spark_path(e.location): e.size for e in storage.list_files(root, include_hidden=True)}
    empty = []
    for path in (_plain_spelling(p) for p in listed):
        if sizes.get(path) == 0:
            empty.append(path[len(base) + 1:] if path.startswith(base + "/") else path)
    return sorted(empty)


# --- tables -----------------------------------------------------------------------------------------

def table_files(kind: str, root: str, skip: dict[str, int] | None = None) -> list[storage.FileEntry]:
    """The data files of a table at ``root`` (a file, or a folder: every file not hidden; ``.parquet``
    ones for Parquet), without those whose (relative path, size) is in ``skip``."""
    entries = storage.list_files(root, suffix=".parquet" if kind == "parquet" and not storage.is_file(root) else None)
    return [e for e in entries if (skip or {}).get(input_key(e.location, root)) != e.size]


def unreadable_parquet(spark: SparkSession, entries: list[storage.FileEntry]) -> dict[str, str]:
    """The Parquet files among ``entries`` whose footer cannot be read (truncated, not Parquet):
    location -> the problem. Checked in Spark tasks (one footer read each), so one bad file becomes
    a quarantined file instead of the whole read failing."""
    if not entries:
        return {}
    options = storage.current_options()

    def check(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        bad: list[tuple[str, str]] = []
        with storage.using_options(options):
            for batch in batches:
                for location in batch.column(0).to_pylist():
                    try:
                        with storage.open_input(location) as f:
                            pq.read_metadata(f)
                    except FileNotFoundError:
                        bad.append((location, "the file disappeared while the job read it"))
                    except Exception as e:  # noqa: BLE001 - whatever pyarrow says, this file cannot be read
                        bad.append((location, f"unreadable Parquet file: {str(e).splitlines()[0][:200]}"))
        yield pa.RecordBatch.from_arrays([pa.array([b[0] for b in bad], pa.string()),
                                          pa.array([b[1] for b in bad], pa.string())], names=["location", "problem"])

    frame = spark.createDataFrame([(e.location,) for e in entries], "location string").repartition(
        _partitions(spark, len(entries)))
    return {r["location"]: r["problem"] for r in frame.mapInArrow(check, "location string, problem string").collect()}


def input_key(location: str, root: str) -> str:
    """A file's identity in its source: its path relative to the source folder (its name for a file source)."""
    return storage.name(location) if storage.normalize(location) == storage.normalize(root) \
        else storage.relative(location, root)


def load_table(spark: SparkSession, kind: str, root: str, reader: str = "auto",
               files: list[storage.FileEntry] | None = None) -> tuple[DataFrame, list[str]]:
    """Read a CSV (header) / JSON lines / Parquet table with every record kept (PERMISSIVE), plus
    ``_file`` and ``_row`` references (``_row``: the row index in a Parquet file, else null); and
    the files it read (Spark's spelling). ``files``: read only these (default: every data file)."""
    if not spark_reads(spark, root, reader):
        return _load_table_through_storage(spark, kind, root, files)
    path = [spark_path(e.location) for e in files] if files is not None else spark_path(root)
    if isinstance(path, list) and not path:
        raise RawInputError(f"{storage.redact(root)}: no new {kind} data files to read")
    if kind == "csv":
        header = spark.read.option("header", "true").csv(path).columns
        # All columns as strings: a non-number is then seen (and named) instead of silently nulled.
        df = (
            spark.read.option("header", "true").option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT).schema(_csv_schema(header)).csv(path)
        )
    elif kind == "json":
        df = spark.read.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT).json(path)
    else:
        reader_ = spark.read
        if files is None and storage.is_dir(root):  # only the data files: a folder may hold _SUCCESS, notes...
            reader_ = reader_.option("pathGlobFilter", "*.parquet")
        df = reader_.parquet(*path) if isinstance(path, list) else reader_.parquet(path)  # varargs, not a list
    row = F.col("_metadata.row_index") if kind == "parquet" else F.lit(None).cast("bigint")
    table = df.select("*", F.col("_metadata.file_path").alias("_file"), row.alias("_row"))
    return _flag_invalid_text(table, kind), df.inputFiles()


def _flag_invalid_text(table: DataFrame, kind: str) -> DataFrame:
    """Spark's readers decode invalid UTF-8 bytes as U+FFFD and go on: a record holding one gets
    :data:`INVALID_TEXT` (the storage reader says where the bytes were), so it is quarantined as a
    decode error under either reader instead of entering the dataset with mangled text."""
    if kind == "parquet":
        return table
    texts = [F.col(f"`{f.name}`") for f in table.schema.fields
             if isinstance(f.dataType, T.StringType) and f.name not in REFERENCE_COLUMNS]
    if not texts:
        return table
    joined = F.concat_ws("", *texts)
    return table.withColumn(INVALID_TEXT, F.when(joined.contains(REPLACEMENT), F.lit(
        "invalid UTF-8 bytes in the record (read as U+FFFD)")))


def _csv_schema(header: list[str]) -> T.StructType:
    return T.StructType([T.StructField(c, T.StringType()) for c in header] + [T.StructField(CORRUPT, T.StringType())])


def _load_table_through_storage(spark: SparkSession, kind: str, root: str,
                                files: list[storage.FileEntry] | None) -> tuple[DataFrame, list[str]]:
    """:func:`load_table` for a store Spark has no connector for: the driver lists the files, tasks
    read them through ``pipelines.storage``, and Spark parses CSV / JSON lines with the options its
    own readers use (``from_csv`` / ``from_json``, PERMISSIVE), so both ways give the same records."""
    entries = files if files is not None else table_files(kind, root)
    locations = [e.location for e in entries]
    listed = [spark_path(x) for x in locations]
    readable = [x for x, e in zip(locations, entries) if e.size > 0]
    if not readable:
        raise RawInputError(f"{storage.redact(root)} holds no {kind} data files (every file is empty or none is there)")
    if kind == "parquet":
        return read_parquet_through_storage(spark, readable, references=True), listed
    options = storage.current_options()
    listing = spark.createDataFrame([(x,) for x in readable], "location string").repartition(
        _partitions(spark, len(readable)))
    lines = listing.mapInArrow(_text_lines(options, skip_header=kind == "csv"),
                               f"value string, _file string, {INVALID_TEXT} string")
    if kind == "csv":
        header = next(csv.reader(io.StringIO(_first_line(readable[0]))))
        ddl = ", ".join(f"`{c.replace('`', '``')}` STRING" for c in [*header, CORRUPT])
        parsed = F.from_csv("value", ddl, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT})
    else:
        inferred = spark.read.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT).json(
            lines.select("value").rdd.map(lambda r: r.value))
        parsed = F.from_json("value", inferred.schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT})
    table = lines.select(parsed.alias("r"), "_file", INVALID_TEXT).select(
        "r.*", "_file", F.lit(None).cast("bigint").alias("_row"), INVALID_TEXT)
    return table, listed


def _first_line(location: str) -> str:
    for line in _file_lines(location):
        return line.decode("utf-8", errors="replace")
    return ""


def _file_lines(location: str) -> Iterator[bytes]:
    """The lines of a text file, streamed in :data:`READ_CHUNK` pieces (never held whole), split on
    ``\n`` only with a ``\r`` before it dropped: a form feed or U+2028 inside a field stays in its
    record, as in Spark's readers."""
    rest = b""
    with storage.open_input(location) as f:
        while chunk := f.read(READ_CHUNK):
            *whole, rest = (rest + chunk).split(b"\n")
            for line in whole:
                yield line[:-1] if line.endswith(b"\r") else line
    if rest:
        yield rest[:-1] if rest.endswith(b"\r") else rest


def _text_lines(options: storage.StorageOptions,
                skip_header: bool) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A ``mapInArrow`` function: file locations in, their non-blank lines (and the file, and why a
    line is not valid UTF-8: decoded with U+FFFD as Spark does, and flagged) out, in batches."""

    def read(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        with storage.using_options(options):
            for batch in batches:
                for location in batch.column(0).to_pylist():
                    yield from _line_batches(location, skip_header)
    return read


def _line_batches(location: str, skip_header: bool) -> Iterator[pa.RecordBatch]:
    """The batches :func:`_text_lines` makes of one file."""
    schema = pa.schema([("value", pa.string()), ("_file", pa.string()), (INVALID_TEXT, pa.string())])
    rows: list[tuple[str, str, str | None]] = []
    for number, raw in enumerate(_file_lines(location), start=1):
        if skip_header and number == 1:
            continue
        try:
            text, invalid = raw.decode("utf-8"), None
        except UnicodeDecodeError as e:
            text = raw.decode("utf-8", errors="replace")
            invalid = f"invalid UTF-8 bytes in the record (line {number}, byte {e.start + 1})"
        if text.strip():  # Spark's readers skip blank lines too
            rows.append((text, spark_path(location), invalid))
        if len(rows) >= LINES_PER_BATCH:
            yield pa.RecordBatch.from_arrays([pa.array(c, pa.string()) for c in zip(*rows)], schema=schema)
            rows = []
    if rows:
        yield pa.RecordBatch.from_arrays([pa.array(c, pa.string()) for c in zip(*rows)], schema=schema)


def table_columns(table: DataFrame) -> list[str]:
    """The input's own columns (without Spark's corrupt-record column and load_table's references)."""
    return [c for c in table.columns if c not in (CORRUPT, INVALID_TEXT, *REFERENCE_COLUMNS)]


def read_labels_csv(spark: SparkSession, path: str, key: str, hint: str = "") -> DataFrame:
    """An image folder's labels file (columns file,label) as ``id`` (the file's relative path), ``label``.
    Read on the driver through ``pipelines.storage`` (one small file, from any store)."""
    if not storage.is_file(path):
        raise RawInputError(f"labels file {storage.redact(path)} ({key}) does not exist; create it with columns "
                            f"file,label" + (f" {hint}" if hint else ""))
    rows = list(csv.reader(io.StringIO(storage.read_text(path))))
    header = [c.strip() for c in rows[0]] if rows else []
    missing = {"file", "label"} - set(header)
    if missing:
        raise RawInputError(f"labels file {storage.redact(path)} ({key}) lacks column(s) {sorted(missing)}; it has "
                            f"{header}, needs file,label")
    at_file, at_label = header.index("file"), header.index("label")
    records = [(r[at_file] if len(r) > at_file else None, r[at_label] if len(r) > at_label else None)
               for r in rows[1:] if r]
    raw = spark.createDataFrame(records, "file string, label string")
    file = F.regexp_replace(F.trim("file"), r"^\./", "")
    label = F.trim("label")
    return raw.select(file.alias("id"), F.when(label != "", label).alias("label"))
