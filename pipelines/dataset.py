"""The dlpipe dataset format, in one place: what the ETL writes and every later stage reads.

    <workdir>/datasets/<dataset>/               (a local folder or a URI: s3://, gs://, hdfs://, abfs://)
      _head-00000007.json                        HEAD number 7: the committed versions, oldest first (written last)
      v000001-<token>/                           one version, written whole before the head names it
        manifest.json                            Manifest: counts, splits and their files, shapes, stats
        <split>/part-NNNNN.parquet               RECORD_SCHEMA: id string, label int64, features list<float32>
        quarantine/part-NNNNN.parquet            rejected records (QUARANTINE_COLUMNS)
        _sources/part-NNNNN.parquet              each accepted record's raw file and row (SOURCES_SCHEMA)
      v000002-<token>/ ...                       a later version (``etl.mode=append``)

Readers trust only what the newest head names: a version folder it does not name (a killed ETL)
is invisible and removed by the next ETL. A commit never replaces a head: it creates the next
numbered one only if it is absent (``pipelines.storage.create_if_absent``), after checking that
this job still holds the dataset's lease, so a head is never missing (no delete-then-rename) and
of two jobs that built on head N, only one commits N+1; the other is refused and publishes
nothing. The last :data:`KEEP_HEADS` heads are kept. A dataset of an older dlpipe (one
``_head.json``) reads as head number 0. A dataset written before versions existed
(``manifest.json`` + ``_SUCCESS`` at the top, split folders beside them) reads as version 1.

A dataset *view* (:class:`DatasetView`, :func:`open_dataset`) is the union of versions 1..N: each
split's files of every version, in Petastorm's order (sorted by path; version folders sort by
number). Its normalization statistics and label names are those of version N's manifest, which
the ETL merged over every version. Shard order is Petastorm's: rank ``r`` of ``n`` gets the row
groups ``i % n == r`` of the split's files, listed in that order.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from pipelines import storage
from pipelines.drift import DriftReport, Summary, merge
from pipelines.errors import ConfigError
from pipelines.formats import FormatError, Record

TRAIN_SPLIT = "train"  # the one split every dataset has (normalization is computed on it)
VALIDATION_SPLIT = "val"  # used for per-epoch validation when the dataset has it
QUARANTINE = "quarantine"  # folder of rejected records; never a split name
MANIFEST_FILE = "manifest.json"
HEAD_FILE = "_head.json"  # the one head of a dataset written before numbered heads: number 0
HEAD_PREFIX = "_head-"  # _head-00000001.json, _head-00000002.json, ...
KEEP_HEADS = 5
LEGACY_SUCCESS = "_SUCCESS"  # a dataset written before versions: its root is version 1
FORMAT = "dlpipe-dataset/2"
HEAD_FORMAT = "dlpipe-dataset-head/1"

# What every dataset file holds; petastorm's make_batch_reader and pyarrow read it as is.
RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("label", pa.int64()),
        pa.field("features", pa.list_(pa.float32())),
    ]
)
RECORD_COLUMNS = {"id": "string", "label": "int64", "features": "list<float32>"}  # as the manifest says
QUARANTINE_COLUMNS = ["id", "source", "row", "label", "reason", "detail"]
SOURCES = "_sources"  # folder of lineage records ("_": Spark and Petastorm skip it; never a split name)
# Where each accepted record came from: its raw file (credentials redacted) and row (null for a file per record).
SOURCES_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("split", pa.string()),
                            pa.field("source", pa.string()), pa.field("row", pa.int64())])


class DatasetError(RuntimeError):
    """The dataset a job needs is missing or incomplete; the message says how to make it."""


# --- the manifest -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PartFile(Record):
    """One Parquet file of a split: its path relative to the version folder and its row groups' rows."""

    path: str
    row_groups: list[int]

    @property
    def rows(self) -> int:
        return sum(self.row_groups)


@dataclass(frozen=True)
class SplitInfo(Record):
    count: int
    per_class: dict[str, int]
    row_groups: int
    files: list[PartFile]


@dataclass(frozen=True)
class Normalization(Record):
    """``(x - mean) / std`` of the train split: one value (``global``) or one per feature."""

    mode: str
    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class Moments(Record):
    """Count, mean and sum of squared deviations per feature: merged exactly across files and versions."""

    n: int = 0
    mean: list[float] = field(default_factory=list)
    m2: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SourceRecord(Record):
    """The ETL's source as it was resolved (the model artifact records it for inference)."""

    kind: str
    path: str
    feature_columns: list[str] | None = None  # tables: the feature columns in order
    label_column: str = ""
    id_column: str = ""


@dataclass(frozen=True)
class InputFilesSummary(Record):
    listed: int
    empty: int
    empty_examples: list[str]


@dataclass(frozen=True)
class Manifest(Record):
    """One dataset version: what it added (counts, quarantine, files) and the view's statistics
    up to it (normalization, label names), so a reader of version N needs only N's manifest for those."""

    records_in: int
    accepted: int
    quarantined: int
    quarantine_by_reason: dict[str, int]
    splits: dict[str, SplitInfo]
    feature_shape: list[int]
    normalization: Normalization
    label_names: list[str]
    source: SourceRecord
    input_files: InputFilesSummary
    config_hash: str
    created_at: str
    rows_per_row_group: int
    row_group_rule: str
    version: int = 1
    train_moments: Moments = field(default_factory=Moments)  # this version's train rows (merged into later ones)
    dtype: str = "float32"
    columns: dict[str, str] = field(default_factory=lambda: dict(RECORD_COLUMNS))
    format: str = FORMAT
    legacy_identity: str = ""  # a first-format manifest's identity, as its checkpoints recorded it
    summary: Summary | None = None  # this version's records: feature-block histograms, labels (drift gates)
    drift: DriftReport | None = None  # this version against the earlier ones (an append)
    drift_problems: list[str] = field(default_factory=list)  # the drift gates above their thresholds

    @property
    def split_names(self) -> list[str]:
        """The split names, sorted (train first is not implied)."""
        return sorted(self.splits)

    @classmethod
    def from_dict(cls, value: Any, where: str = "", key: str = "") -> Manifest:
        if isinstance(value, dict) and "format" not in value:  # the first format: files by name only
            value = _upgrade_v1(value)
        return super().from_dict(value, where or MANIFEST_FILE, key)

    def to_dict(self) -> dict[str, Any]:
        value = super().to_dict()
        for key in ("legacy_identity", "summary", "drift", "drift_problems"):  # absent in older manifests
            if not value[key]:
                del value[key]
        return value

    def identity(self) -> str:
        """What the data is, not when or by which config it was made: a re-run of the ETL on the
        same input gives the same identity, so checkpoints made on it stay valid."""
        return self.legacy_identity or _stable_hash(self.to_dict())


def _upgrade_v1(old: dict[str, Any]) -> dict[str, Any]:
    """A manifest of the first format (no ``format`` key; a split's ``files`` were names in its folder)."""
    value = dict(old)
    value["legacy_identity"] = _stable_hash(old)  # what checkpoints made on it recorded
    value["format"] = "dlpipe-dataset/1"
    splits = {}
    for name, info in old.get("splits", {}).items():
        info = dict(info)
        info["files"] = [{"path": f"{name}/{f}", "row_groups": []} for f in info.get("files", [])]
        splits[name] = info
    value["splits"] = splits
    return value


def _stable_hash(value: dict[str, Any]) -> str:
    # what the data is: not when or by which config, nor the drift figures measured about it
    stable = {k: v for k, v in value.items() if k not in ("created_at", "config_hash", "summary", "drift",
                                                           "drift_problems")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


# --- the head -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class VersionEntry(Record):
    version: int
    folder: str  # relative to the dataset folder
    created_at: str


@dataclass(frozen=True)
class Head(Record):
    versions: list[VersionEntry]
    format: str = HEAD_FORMAT
    number: int = 0  # which head this is (its file name says the same): a commit creates number + 1


def head_name(number: int) -> str:
    return f"{HEAD_PREFIX}{number:08d}.json"


def _head_number(location: str) -> int | None:
    name = storage.name(location)
    digits = name[len(HEAD_PREFIX):-len(".json")]
    return int(digits) if name.startswith(HEAD_PREFIX) and name.endswith(".json") and digits.isdigit() else None


def head_files(dataset_dir: str) -> list[tuple[int, str]]:
    """(number, location) of every numbered head, oldest first."""
    if not storage.is_dir(dataset_dir):
        return []
    found = [(_head_number(f.location), f.location)
             for f in storage.list_files(dataset_dir, recursive=False, include_hidden=True)]
    return sorted((n, loc) for n, loc in found if n is not None)


def read_head(dataset_dir: str) -> Head | None:
    """The newest head of the dataset at ``dataset_dir`` (the committed versions); None when none is published."""
    heads = head_files(dataset_dir)
    if heads:
        number, location = heads[-1]
        head = Head.from_json(storage.read_text(location), storage.redact(location))
        return replace(head, number=number)
    legacy = storage.join(dataset_dir, HEAD_FILE)
    if storage.exists(legacy):
        return Head.from_json(storage.read_text(legacy), storage.redact(legacy))
    if storage.exists(storage.join(dataset_dir, LEGACY_SUCCESS)):
        return Head([VersionEntry(1, "", "")])
    return None


def write_head(dataset_dir: str, versions: list[VersionEntry], after: int) -> Head:
    """Commit: create head number ``after + 1`` naming ``versions`` (one atomic write, after their
    files), only if no other job created it first and this job still holds its leases; then drop
    heads older than the last :data:`KEEP_HEADS`. :class:`DatasetError` when another job committed."""
    from pipelines.lease import verify_leases

    head = Head(versions, number=after + 1)
    verify_leases()  # a job whose lease was taken over must not commit (it names the new holder)
    location = storage.join(dataset_dir, head_name(head.number))
    try:
        storage.create_if_absent(location, head.to_json().encode("utf-8"))
    except storage.WriteConflict:
        raise DatasetError(f"{storage.redact(dataset_dir)}: another job committed head {head.number} of this dataset "
                           f"while this job was writing (both built on head {after}): nothing was published by this "
                           "job. Re-run it; an append then builds on the new head") from None
    for _, old in head_files(dataset_dir)[:-KEEP_HEADS]:
        storage.delete(old)
    return head


# --- reading a dataset ------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitFiles(Record):
    """A split's files in a view, in Petastorm's order, with their row groups' rows."""

    files: list[str]  # locations
    row_groups: list[list[int]]  # per file

    @property
    def sizes(self) -> list[int]:
        """Rows of every row group, in Petastorm's order."""
        return [n for groups in self.row_groups for n in groups]

    @property
    def rows(self) -> int:
        return sum(self.sizes)


@dataclass(frozen=True)
class VersionRef(Record):
    """One version of a view, as a model records what it trained on (lineage)."""

    version: int
    folder: str  # relative to the dataset folder ("" = a dataset written before versions)
    identity: str  # the version's content digest (its manifest's identity)


@dataclass(frozen=True)
class DatasetView(Record):
    """Versions 1..``version`` of a dataset: what training, inference and the report read."""

    location: str
    version: int
    manifest: Manifest  # version ``version``'s (normalization, labels, shape of the whole view)
    splits: dict[str, SplitFiles]
    identity: str  # changes whenever the data does: checkpoints made on other data are refused
    counts: dict[str, int] = field(default_factory=dict)  # rows per split over every version
    versions: list[VersionRef] = field(default_factory=list)  # 1..version, oldest first
    summary: Summary | None = None  # every version's summary merged (None when one lacks it)

    @property
    def name(self) -> str:
        return storage.name(self.location)

    @property
    def split_names(self) -> list[str]:
        return sorted(self.splits)

    def split(self, name: str, key: str) -> SplitFiles:
        """The files of split ``name``; a :class:`ConfigError` naming config ``key`` when there is none."""
        if name not in self.splits:
            raise ConfigError(f"{key}={name!r} is not a split of dataset {self.name} (its splits: "
                              f"{', '.join(self.split_names)}): set {key} to one of them", key=key)
        return self.splits[name]


def open_dataset(dataset_dir: str, version: int = 0, key: str = "dataset_version") -> DatasetView:
    """The view of versions 1..``version`` (0 = the newest) of the published dataset at ``dataset_dir``."""
    head = read_head(dataset_dir)
    if head is None or not head.versions:
        raise DatasetError(f"no published dataset at {storage.redact(dataset_dir)}: run `dlpipe etl` with the same "
                           f"workdir and dataset first")
    numbers = [v.version for v in head.versions]
    wanted = version or numbers[-1]
    if wanted not in numbers:
        raise ConfigError(f"{key}={version}: dataset {storage.name(dataset_dir)} has versions "
                          f"{', '.join(map(str, numbers))}", key=key)
    manifests = [(v, read_manifest(storage.join(dataset_dir, v.folder) if v.folder else dataset_dir))
                 for v in head.versions if v.version <= wanted]
    splits: dict[str, list[tuple[str, list[int]]]] = {}
    counts: dict[str, int] = {}
    for entry, manifest in manifests:
        root = storage.join(dataset_dir, entry.folder) if entry.folder else dataset_dir
        for name, info in manifest.splits.items():
            counts[name] = counts.get(name, 0) + info.count
            for part in info.files:
                location = storage.join(root, part.path)
                splits.setdefault(name, []).append((location, part.row_groups or _footer_row_groups(location)))
    ordered = {name: SplitFiles(*map(list, zip(*sorted(files)))) if files else SplitFiles([], [])
               for name, files in splits.items()}
    for name in manifests[-1][1].splits:
        ordered.setdefault(name, SplitFiles([], []))
    latest = manifests[-1][1]
    identity = latest_identity(manifests)
    refs = [VersionRef(entry.version, entry.folder, manifest.identity()) for entry, manifest in manifests]
    return DatasetView(dataset_dir, wanted, latest, ordered, identity, counts, refs,
                       merged_summary([m for _, m in manifests]))


def merged_summary(manifests: list[Manifest]) -> Summary | None:
    """The summaries of ``manifests`` merged; None when one has none (written before drift summaries)
    or they were made with other bins (a dataset re-created with other ``drift`` settings)."""
    summaries = [m.summary for m in manifests]
    if not summaries or any(s is None for s in summaries):
        return None
    try:
        return merge(s for s in summaries if s is not None)
    except ValueError:
        return None


def view_folders(view: DatasetView) -> list[str]:
    """The version folders (relative to the dataset) whose files ``view`` reads: what its reader protects."""
    folders = set()
    for split in view.splits.values():
        for location in split.files:
            folders.add(storage.relative(location, view.location).split("/", 1)[0])
    return sorted(folders)


def latest_identity(manifests: list[tuple[VersionEntry, Manifest]]) -> str:
    """The view's identity: version 1's own (the single-version identity older checkpoints carry),
    chained with each later version's."""
    identity = ""
    for _, manifest in manifests:
        own = manifest.identity()
        identity = own if not identity else hashlib.sha256(f"{identity}+{own}".encode()).hexdigest()[:16]
    return identity


def read_manifest(version_dir: str) -> Manifest:
    path = storage.join(version_dir, MANIFEST_FILE)
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise DatasetError(f"{storage.redact(path)} is missing: the dataset's head names a version that is not "
                           f"there; re-run `dlpipe etl`") from None
    try:
        return Manifest.from_json(text, storage.redact(path))
    except FormatError as e:
        raise DatasetError(str(e)) from None


def _footer_row_groups(location: str) -> list[int]:
    """Row groups of a file whose manifest did not record them (datasets of the first format)."""
    import pyarrow.parquet as pq

    with storage.open_input(location) as f:
        meta = pq.ParquetFile(f).metadata
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


# --- shard order ------------------------------------------------------------------------------

def shard_rows(sizes: list[int], rank: int, size: int) -> int:
    """Rows in ``rank``'s shard under Petastorm's ``index % shard_count == cur_shard`` rule."""
    return sum(n for i, n in enumerate(sizes) if i % size == rank)


def steps_per_epoch(sizes: list[int], size: int, batch_size: int) -> int:
    """Steps every rank runs per epoch: enough for the largest shard, dropping < one batch."""
    largest = max(shard_rows(sizes, r, size) for r in range(size))
    return largest // batch_size


def table_arrays(table: Any) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """A table of the dataset format -> (features (rows, F) float32, labels (rows,) int64)."""
    rows = table.num_rows
    values = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    if rows and len(values) % rows:
        raise ValueError(f"the features column holds {len(values)} values for {rows} rows: rows of unequal length "
                         f"(the ETL writes every row with the same feature count)")
    features = values.astype(np.float32, copy=False).reshape(rows, -1 if rows else 0)
    return features, table.column("label").to_numpy().astype(np.int64, copy=False)


def read_split(split: SplitFiles, columns: tuple[str, ...] = ("features", "label")) -> pa.Table:
    """A whole split as one table (small splits: the report, sample quality)."""
    import pyarrow.parquet as pq

    tables = []
    for location in split.files:
        with storage.open_input(location) as f:
            tables.append(pq.read_table(f, columns=list(columns)))
    return pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table().select(list(columns))
