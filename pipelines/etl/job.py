"""ETL job: raw records -> validated, split, normalised Parquet dataset with a manifest.

    dlpipe etl --config FILE [key=value ...]
    spark-submit pipelines/__main__.py etl --config FILE [key=value ...]

Output: one version of ``<workdir>/datasets/<dataset>/`` (any store), in the format
``pipelines.dataset`` defines, written whole into its own folder and committed by the dataset's
head (a re-run replaces the dataset)::

    v000001-<token>/<split>/     one folder per etl.splits entry: part-NNNNN.parquet (id, label, features)
    v000001-<token>/quarantine/  rejected records: id, source, row, label, reason, detail (part-NNNNN.parquet)
    v000001-<token>/manifest.json  counts, files and row groups, shapes, train-split normalisation, label names
    _head-<number>.json          the committed versions (a new numbered head per commit, written last)

Every record is either accepted or quarantined with one reason, checked in this order:
decode_error, wrong_shape, nan_or_inf, missing_label, unknown_label, missing_id, duplicate_id.
If the quarantined fraction exceeds ``etl.max_quarantine_fraction`` the job raises
:class:`EtlError` and publishes nothing (the check runs on the written temp folder).
"""
from __future__ import annotations

import dataclasses
import io
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import dataset, guards, storage
from pipelines.config import EtlConfig, PipelineConfig
from pipelines.dataset import (
    Head,
    InputFilesSummary,
    Manifest,
    Normalization,
    PartFile,
    SourceRecord,
    SplitInfo,
    VersionEntry,
)
from pipelines.drift import compare
from pipelines.etl.parts import (
    GROUPS_PER_RANK,
    FileStats,
    Moments,
    collect_stats,
    rewrite_labels,
    streaming_rows_per_row_group,
)
from pipelines.etl.sources import EtlError, Extracted, NothingNew, read_records, resolve_source_path
from pipelines.etl.validate import (
    DUPLICATE_ORDER,
    REASONS,
    SHAPE_SAMPLE,
    Survey,
    assign_split,
    classify,
    feature_shape,
    sort_label_names,
    survey,
    with_feature_count,
)
from pipelines.etl.write import INPUT_COLUMNS, QUARANTINE_SCHEMA, TASK_GROUP, DatasetSpec, dataset_writer
from pipelines.publish import COMMIT_FILE
from pipelines.readers import READERS_DIR, ReadLease, kept_note, live_readers
from pipelines.session import describe
from pipelines.tables import read_parquet

__all__ = ["EtlError", "main", "ordered_records", "write_dataset", "publish"]

STD_FLOOR = 1e-6  # normalisation never divides by ~0
INPUTS_FILE = "inputs.parquet"  # in a version folder: (path, size) of every input file it read


@dataclass(frozen=True)
class Base:
    """What an append builds on: the dataset's committed versions and what they ingested."""

    head: Head
    view: dataset.DatasetView  # versions 1..newest
    manifests: list[Manifest]  # each version's own, oldest first
    ingested: dict[str, int]  # input file (path relative to the source) -> size, over every version

    @property
    def version(self) -> int:
        return self.view.version


def load_base(dataset_dir: str) -> Base | None:
    """The published dataset an append adds to; None when there is none yet (the append is version 1)."""
    head = dataset.read_head(dataset_dir)
    if head is None or not head.versions:
        return None
    view = dataset.open_dataset(dataset_dir)
    manifests: list[Manifest] = []
    ingested: dict[str, int] = {}  # input file (path relative to the source) -> size
    for entry in head.versions:
        folder = storage.join(dataset_dir, entry.folder) if entry.folder else dataset_dir
        manifests.append(dataset.read_manifest(folder))
        inputs = storage.join(folder, INPUTS_FILE)
        if storage.exists(inputs):
            with storage.open_input(inputs) as f:
                table = pq.read_table(f)
            ingested.update(zip(table.column("path").to_pylist(), table.column("size").to_pylist()))
    return Base(head, view, manifests, ingested)


def held_ids(spark: SparkSession, base: Base, reader: str) -> DataFrame:
    """(id, held_by): the ids every committed version accepted, with the version holding each."""
    frames = []
    for entry, manifest in zip(base.head.versions, base.manifests):
        folder = storage.join(base.view.location, entry.folder) if entry.folder else base.view.location
        files = [storage.join(folder, f.path) for info in manifest.splits.values() for f in info.files]
        if files:
            frames.append(read_parquet(spark, files, reader).select("id", F.lit(entry.version).alias("held_by")))
    if not frames:
        return spark.createDataFrame([], "id string, held_by int")
    held = frames[0]
    for frame in frames[1:]:
        held = held.unionByName(frame)
    return held


def write_inputs(folder: str, read: list[tuple[str, int]]) -> None:
    """The version's input files by (path relative to the source, size): a later append skips them."""
    buffer = io.BytesIO()
    pq.write_table(pa.table({"path": pa.array([p for p, _ in read], pa.string()),
                             "size": pa.array([n for _, n in read], pa.int64())}), buffer)
    storage.write_bytes(storage.join(folder, INPUTS_FILE), buffer.getvalue())


# --- the one pass -----------------------------------------------------------------------------

def write_dataset(
    records: DataFrame, out_dir: str, etl: EtlConfig, num_features: int, label_names: list[str],
    rows_per_row_group: int, feature_column: str = "features", held: DataFrame | None = None,
) -> list[FileStats]:
    """Validate every record and write it, accepted to its split or rejected to the quarantine, in
    one pass; return the writer tasks' per-file stats (:mod:`pipelines.etl.write`).

    Records are hash-partitioned by id into ``etl.output_files`` tasks and sorted, so file contents
    do not depend on how the input was partitioned, and all copies of an id meet in one task, which
    decides the duplicates. ``feature_column``: the source's array column, named in details.
    """
    ordered = ordered_records(records, etl, num_features, held)
    spec = DatasetSpec(out_dir, rows_per_row_group, tuple(label_names), dataset.TRAIN_SPLIT, feature_column,
                       storage.current_options())
    return collect_stats(ordered, dataset_writer(spec))


def ordered_records(records: DataFrame, etl: EtlConfig, num_features: int,
                    held: DataFrame | None = None) -> DataFrame:
    """What the writer tasks are handed: every record with its per-record verdict and split
    (:data:`~pipelines.etl.write.INPUT_COLUMNS`), hash-partitioned by id and sorted. ``held``: the
    (id, held_by) of earlier versions (an append): a record whose id one holds is ``duplicate_id``."""
    configured = etl.source.label_names or None
    counted = with_feature_count(records)
    if held is not None:
        # Only the held ids that come again reach the join: the new records' ids are few, the old many.
        new_ids = records.select("id").where(F.col("id").isNotNull()).distinct()
        again = held.join(F.broadcast(new_ids), "id", "left_semi")
        counted = counted.join(again, "id", "left")
    return (
        assign_split(classify(counted, num_features, configured, held is not None), etl.splits)
        .repartition(etl.output_files, "id")
        .sortWithinPartitions("id", *DUPLICATE_ORDER)  # id first: its prefix makes Spark's sort fast
        .select(*INPUT_COLUMNS)
    )


def train_moments(stats: list[FileStats]) -> Moments:
    """The train split's feature moments from those its writer tasks returned: no second pass over
    the data. Files are merged in name order, so the figures do not depend on which task finished first."""
    moments = Moments()
    for s in sorted((s for s in stats if s.grp == dataset.TRAIN_SPLIT), key=lambda s: s.file):
        moments.merge(Moments.from_record(s.moments))
    return moments


def normalization_stats(moments: Moments, mode: str) -> Normalization:
    """Mean/std (population std, floored) from the train split's moments.

    ``global``: one mean/std over all values; ``per_feature``: one per feature position.
    """
    mean, m2 = moments.arrays()
    var = m2 / moments.n
    if mode == "global":  # equal counts per feature: pool the per-feature moments exactly
        grand = mean.mean()
        var = np.array([np.mean(var + (mean - grand) ** 2)])
        mean = np.array([grand])
    std = np.maximum(np.sqrt(np.maximum(var, 0.0)), STD_FLOOR)
    return Normalization(mode, mean.tolist(), std.tolist())


# --- bookkeeping ------------------------------------------------------------------------------

def is_split_file(stats: FileStats) -> bool:
    """Whether ``stats`` are about a split's file (not a quarantine file's, nor a task's own)."""
    return stats.grp not in (dataset.QUARANTINE, dataset.SOURCES, TASK_GROUP)


def split_stats(stats: list[FileStats]) -> list[FileStats]:
    """The stats of split files."""
    return [s for s in stats if is_split_file(s)]


def task_lengths(stats: list[FileStats]) -> Counter[int]:
    """Readable records per feature count, over every writer task."""
    lengths: Counter[int] = Counter()
    for s in stats:
        if s.grp == TASK_GROUP:
            lengths.update(s.lengths)
    return lengths


def reason_counts(stats: list[FileStats]) -> tuple[int, dict[str, int]]:
    """(accepted, {reason: count}) from the writer's stats, with every known reason present."""
    counts = {reason: 0 for reason in REASONS}
    for s in stats:
        if s.grp == dataset.QUARANTINE:
            for reason, n in s.reasons.items():
                if reason not in counts:
                    raise EtlError(f"internal: unexpected quarantine reason {reason!r} in {s.file}")
                counts[reason] += n
    return sum(s.rows for s in split_stats(stats)), counts


def check_quarantine_fraction(
    quarantine: str, records_in: int, by_reason: dict[str, int], etl: EtlConfig, dataset_dir: str
) -> None:
    """Raise :class:`EtlError` (nothing published) when too many records were rejected; the
    examples come from the quarantine files just written (``quarantine``)."""
    quarantined = sum(by_reason.values())
    if quarantined / records_in <= etl.max_quarantine_fraction:
        return
    shown = "; ".join(f"{e['id'] or '<no id>'} ({e['source']}): {e['reason']}: {e['detail']}"
                      for e in quarantine_examples(quarantine))
    reasons = ", ".join(f"{k}={v}" for k, v in by_reason.items() if v)
    raise EtlError(
        f"{quarantined} of {records_in} records ({quarantined / records_in:.1%}) failed validation, above "
        f"etl.max_quarantine_fraction={etl.max_quarantine_fraction}: {reasons}. Nothing was published "
        f"({storage.redact(dataset_dir)} is unchanged). Examples: {shown}. Fix the source data or raise "
        f"etl.max_quarantine_fraction."
    )


def quarantine_examples(folder: str, count: int = 3) -> list[dict[str, Any]]:
    """The first ``count`` quarantined records by (reason, id), read file by file."""
    order = [("reason", "ascending"), ("id", "ascending")]
    firsts = []
    for entry in storage.list_files(folder, suffix=".parquet"):
        with storage.open_input(entry.location) as f:
            table = pq.read_table(f, columns=["reason", "id", "source", "detail"])
        firsts.append(table.take(pc.sort_indices(table, order)[:count]))
    if not firsts:
        return []
    table = pa.concat_tables(firsts)
    examples: list[dict[str, Any]] = table.take(pc.sort_indices(table, order)[:count]).to_pylist()  # pyarrow is untyped
    return examples


def settle_label_names(stats: list[FileStats], surveyed: Survey, out_dir: str,
                       earlier: list[str] | None = None) -> tuple[list[str], list[FileStats]]:
    """The label names, and ``stats`` with the split files' label counts under them.

    The names: the configured ones as they are, else the sorted labels of the accepted records.
    The files were written with the surveyed labels, which include those seen only on rejected
    records; when there are such, the part files' label indices (and their stats) are rewritten
    to the accepted labels alone (rare). ``earlier``: an append's labels so far, which keep their
    indices (new ones follow them)."""
    names = surveyed.label_names
    if surveyed.labels_configured:
        return names, stats
    used = {index for s in split_stats(stats) for index in s.label_counts}
    if earlier is not None:
        kept = list(earlier) + [n for i, n in enumerate(names) if i in used and n not in earlier]
    elif len(used) == len(names):
        return names, stats
    else:
        kept = sort_label_names([names[i] for i in sorted(used)])
    if kept == names:
        return names, stats
    new_index = np.array([kept.index(name) if name in kept else -1 for name in names], np.int64)
    return kept, [relabel_file(s, new_index, out_dir) if is_split_file(s) else s for s in stats]


def relabel_file(stats: FileStats, new_index: NDArray[np.int64], out_dir: str) -> FileStats:
    """Rewrite the split file ``stats`` are about (in ``out_dir``) with label ``i`` as ``new_index[i]``;
    its stats so relabelled."""
    rewrite_labels(storage.join(out_dir, stats.file), new_index)
    return dataclasses.replace(stats, label_counts={int(new_index[k]): n for k, n in stats.label_counts.items()})


def summarize_splits(stats: list[FileStats], splits: dict[str, float], label_names: list[str]) -> dict[str, SplitInfo]:
    """Manifest ``splits`` section from the writer's per-file stats."""
    out = {}
    for name in splits:
        files = sorted((s for s in stats if s.grp == name), key=lambda s: s.file)
        per_class = {label: 0 for label in label_names}
        for s in files:
            for index, n in s.label_counts.items():
                per_class[label_names[index]] += n
        parts = [PartFile(s.file, list(s.row_groups)) for s in files]
        out[name] = SplitInfo(count=sum(s.rows for s in files), per_class=per_class,
                              row_groups=sum(len(p.row_groups) for p in parts), files=parts)
    return out


# --- the job ----------------------------------------------------------------------------------

def validate_and_write(extracted: Extracted, surveyed: Survey, config: PipelineConfig, out_dir: str,
                       held: DataFrame | None = None,
                       rows_per_row_group: int = 0) -> tuple[list[int], int, list[FileStats]]:
    """The one pass (:func:`write_dataset`) into ``out_dir``: (feature shape, rows per row group,
    stats). An array column's length was guessed from a sample; the pass counts every record's,
    and in the rare case where the most common count differs from the guess, it runs again."""
    etl = config.etl
    columns = extracted.feature_columns or []
    array_column = columns[0] if len(columns) == 1 else "features"

    def write(shape: list[int]) -> tuple[list[int], int, list[FileStats]]:
        num_features = int(np.prod(shape))
        per_group = rows_per_row_group or etl.rows_per_row_group or streaming_rows_per_row_group(
            round(surveyed.likely_accepted * etl.splits[dataset.TRAIN_SPLIT]), num_features,
            config.train.num_workers, etl.row_group_mib)
        return shape, per_group, write_dataset(
            extracted.records, out_dir, etl, num_features, surveyed.label_names, per_group, array_column, held)

    written = write(surveyed.feature_shape)
    if not surveyed.shape_is_guess:
        return written
    counted = feature_shape(extracted, task_lengths(written[2]), etl.source.channels, etl.source.image_shape)
    if counted == surveyed.feature_shape:
        return written
    print(f"etl: the first {SHAPE_SAMPLE} records suggested feature shape {surveyed.feature_shape}, but over all "
          f"records it is {counted}: validating and writing again")
    storage.delete_dir(out_dir)
    storage.mkdirs(out_dir)
    return write(counted)


def publish(spark: SparkSession, extracted: Extracted, surveyed: Survey, config: PipelineConfig,
            base: Base | None = None) -> Manifest:
    """Validate and write quarantine and splits into a new version folder, check the counts, write
    its manifest, then commit it in the dataset's head (any failure before commits nothing). With
    ``base`` (an append) the version follows the base's, which stay as they are."""
    dataset_dir = config.dataset_dir
    version = base.version + 1 if base else 1
    folder = f"v{version:06d}-{uuid.uuid4().hex[:8]}"
    out = storage.join(dataset_dir, folder)
    storage.mkdirs(out)
    try:
        manifest = write_version(spark, extracted, surveyed, config, out, version, base)
    except BaseException:
        storage.delete_dir(out)
        raise
    earlier = base.head.versions if base else []
    after = base.head.number if base else _current_head_number(dataset_dir)
    try:
        dataset.write_head(dataset_dir, [*earlier, VersionEntry(version, folder, manifest.created_at)], after)
    except BaseException:
        storage.delete_dir(out)  # refused (another job committed, or this job lost its lease): publish nothing
        raise
    remove_uncommitted(dataset_dir)
    return manifest


def write_version(spark: SparkSession, extracted: Extracted, surveyed: Survey, config: PipelineConfig, out: str,
                  version: int, base: Base | None = None) -> Manifest:
    """One dataset version into the folder ``out``: its files, then its manifest (returned)."""
    etl = config.etl
    describe(spark, "etl: validate and write")
    held = held_ids(spark, base, config.storage.reader) if base else None
    shape, rows_per_row_group, stats = validate_and_write(
        extracted, surveyed, config, out, held, base.view.manifest.rows_per_row_group if base else 0)
    accepted, by_reason = reason_counts(stats)
    records_in = accepted + sum(by_reason.values())
    seen = sum(s.rows for s in stats if s.grp == TASK_GROUP)
    if not records_in == seen == surveyed.records_in:
        raise EtlError(
            f"internal reconciliation failed: the survey counted {surveyed.records_in} records, the writer "
            f"tasks saw {seen}, and {records_in} were written or quarantined; did {extracted.path} change "
            "while the ETL ran? Re-run it."
        )
    quarantine = storage.join(out, dataset.QUARANTINE)
    check_quarantine_fraction(quarantine, records_in, by_reason, etl, config.dataset_dir)
    if not storage.list_files(quarantine):  # nothing rejected: a schema-only file, so readers find the columns
        buffer = io.BytesIO()
        pq.write_table(QUARANTINE_SCHEMA.empty_table(), buffer)
        storage.write_bytes(storage.join(quarantine, "part-00000.parquet"), buffer.getvalue())
    label_names, stats = settle_label_names(stats, surveyed, out, base.view.manifest.label_names if base else None)
    if base:
        check_new_labels(label_names, base, etl, version)
    splits = summarize_splits(stats, etl.splits, label_names)
    if splits[dataset.TRAIN_SPLIT].count == 0 and not base:
        raise EtlError(f"the train split is empty ({accepted} records accepted); check etl.splits={etl.splits}")
    measured = measure_drift(spark, config, out, splits, shape, extracted, label_names, base)
    moments = train_moments(stats)
    merged = Moments()  # the view's: earlier versions' moments and these, no old data re-read
    for earlier in (base.manifests if base else []):
        merged.merge(Moments.from_record(earlier.train_moments))
    merged.merge(moments)
    manifest = Manifest(
        records_in=records_in,
        accepted=accepted,
        quarantined=records_in - accepted,
        quarantine_by_reason=by_reason,
        splits=splits,
        feature_shape=shape,
        normalization=normalization_stats(merged, etl.normalization),
        label_names=label_names,
        source=source_record(extracted, etl),
        input_files=InputFilesSummary(**extracted.files.summary()),
        config_hash=config.digest(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        rows_per_row_group=rows_per_row_group,
        row_group_rule=(f"etl.rows_per_row_group={etl.rows_per_row_group}" if etl.rows_per_row_group else
                        f"sized for streaming: at most {etl.row_group_mib:g} MiB of features, at least "
                        f"{GROUPS_PER_RANK} train row groups per rank of train.num_workers="
                        f"{config.train.num_workers}"),
        version=version,
        train_moments=moments.to_record(),
        **measured,
    )
    write_inputs(out, extracted.files.read)
    storage.write_text(storage.join(out, dataset.MANIFEST_FILE), manifest.to_json())
    return manifest


def measure_drift(spark: SparkSession, config: PipelineConfig, out: str, splits: dict[str, SplitInfo],
                  shape: list[int], extracted: Extracted, label_names: list[str],
                  base: Base | None) -> dict[str, Any]:
    """The manifest's ``summary`` of the new version (in the bins of the earlier versions, else placed
    by its train rows); for an append, its ``drift`` against the earlier versions, said on the console,
    and the ``drift_problems`` of its gates (``drift.*``: a stop raises before the version is committed)."""
    files = [storage.join(out, part.path) for info in splits.values() for part in info.files]
    earlier = base.view.summary if base else None
    layout = guards.empty_layout(earlier.names, earlier.blocks, earlier.edges) if earlier else guards.first_layout(
        [storage.join(out, part.path) for part in splits[dataset.TRAIN_SPLIT].files], shape,
        extracted.feature_columns if extracted.feature_columns and len(extracted.feature_columns) > 1 else None,
        config.drift)
    describe(spark, "etl: drift summary")
    summary = guards.files_summary(spark, files, layout, label_names, config.storage.reader)
    if base is None or earlier is None:
        if base is not None:
            print(f"etl: no drift measured for version {base.version + 1}: versions 1..{base.version} have no "
                  "drift summary (written by an older dlpipe); later appends compare with this version")
        return {"summary": summary}
    report = compare(earlier, summary)
    print(f"etl: drift of version {base.version + 1} against versions 1..{base.version}: {report.describe()}",
          flush=True)
    problems = guards.apply_gates(report, config.drift, "etl", f"Version {base.version + 1} was not published")
    return {"summary": summary, "drift": report, "drift_problems": problems}


def check_new_labels(label_names: list[str], base: Base, etl: EtlConfig, version: int) -> None:
    """An append may add labels only where the config says so (``etl.allow_new_labels``)."""
    new = [n for n in label_names if n not in base.view.manifest.label_names]
    if new and not etl.allow_new_labels:
        raise EtlError(f"dataset version {version} would add label(s) {new} to the labels of versions "
                       f"1..{base.version} "
                       f"({', '.join(base.view.manifest.label_names)}): nothing was published. Set "
                       "etl.allow_new_labels=true to add them (models trained on earlier versions predict the old "
                       "classes only), or fix the data")


def _current_head_number(dataset_dir: str) -> int:
    """The newest head's number (0 when none, or only an older dlpipe's one head): a full ETL builds on it."""
    head = dataset.read_head(dataset_dir)
    return head.number if head else 0


def remove_uncommitted(dataset_dir: str) -> None:
    """Remove what the head does not name: older versions' folders, a killed ETL's folder, and the
    files of a dataset written before versions (its split folders, manifest.json and _SUCCESS);
    but keep, and report, a superseded version that a live job still reads (``pipelines.readers``:
    called after the commit, so a reader either is listed here or reads the new head)."""
    head = dataset.read_head(dataset_dir)
    keep = {v.folder for v in head.versions} if head else set()
    readers = live_readers(dataset_dir)
    for entry in storage.list_dirs(dataset_dir):
        name = storage.name(entry)
        if name in keep or name == READERS_DIR:
            continue
        holders = readers.holders_of(name)
        if holders:
            print(f"etl: kept the superseded {name} {kept_note(entry, holders)}; the next ETL of this dataset "
                  "removes it once that job has ended", flush=True)
            continue
        storage.delete_dir(entry)
    for legacy in (dataset.MANIFEST_FILE, dataset.LEGACY_SUCCESS, dataset.HEAD_FILE):
        storage.delete(storage.join(dataset_dir, legacy))


def source_record(extracted: Extracted, etl: EtlConfig) -> SourceRecord:
    """The manifest's ``source``: kind and path, and for tables the columns as resolved (the model
    artifact records them, so inference preprocesses new records exactly as these were)."""
    if extracted.feature_columns is None:
        return SourceRecord(etl.source.kind, storage.redact(extracted.path))
    return SourceRecord(etl.source.kind, storage.redact(extracted.path), list(extracted.feature_columns),
                        etl.source.label_column, etl.source.id_column)


def main(spark: SparkSession, config: PipelineConfig) -> Manifest:
    """Run the ETL for ``config`` and return the manifest (also written to the dataset folder).

    Two reads of the source: a narrow survey (the label column, and the feature counts of the
    first records of an array column), then one pass that validates, deduplicates, splits, writes
    and gathers the statistics. Nothing is cached, so a source larger than memory streams through.
    """
    publication = published_source(config.etl.source.path)
    if not publication:
        return _extract_and_publish(spark, config)
    # The source is a dlpipe publication (generate's output, saved trajectories): registered as its
    # reader, naming no folder (so all are kept) while the ETL reads it, before its commit is read
    # again: a re-publication meanwhile keeps the attempt read here.
    with ReadLease(publication, f"dlpipe etl (run {config.run_id})", config.lease.ttl_s):
        return _extract_and_publish(spark, config)


def published_source(path: str) -> str:
    """``etl.source.path`` as a location when it is a dlpipe publication (it has a commit object), else ""."""
    try:
        location = resolve_source_path(path)
    except EtlError:
        return ""  # the read reports it
    parent = storage.parent(location)
    return parent if storage.exists(storage.join(parent, COMMIT_FILE)) else ""


def _extract_and_publish(spark: SparkSession, config: PipelineConfig) -> Manifest:
    """:func:`main`'s body: read the source, validate, write and commit a version."""
    etl = config.etl
    storage.check_location(config.dataset_dir, "workdir")
    base = load_base(config.dataset_dir) if etl.mode == "append" else None
    describe(spark, "etl: survey")
    try:
        extracted = read_records(spark, etl.source, array_value_checks=False,  # the writer checks the values
                                 reader=config.storage.reader, skip=base.ingested if base else None)
    except NothingNew as e:  # an append that finds nothing new succeeds: a scheduler must not see a failure
        assert base is not None
        print(f"etl: nothing new in {storage.redact(e.root)}: its {len(base.ingested)} file(s) are in "
              f"versions 1..{base.version} of {storage.redact(config.dataset_dir)}; nothing published")
        return base.manifests[-1]
    surveyed = survey(extracted, etl.source)
    if base is not None:
        labels = base.view.manifest.label_names
        surveyed = dataclasses.replace(
            surveyed, feature_shape=list(base.view.manifest.feature_shape), shape_is_guess=False,
            label_names=surveyed.label_names if surveyed.labels_configured else
            labels + [n for n in surveyed.label_names if n not in labels])
    if surveyed.records_in == 0:
        raise EtlError(
            f"no records found in {etl.source.kind} source {etl.source.path!r} (etl.source.path); "
            "check the path and, for images, the file extensions"
        )
    manifest = publish(spark, extracted, surveyed, config, base)
    reasons = ", ".join(f"{k} {v}" for k, v in manifest.quarantine_by_reason.items() if v) or "none"
    print(
        f"etl: records in {manifest.records_in} = accepted {manifest.accepted} + quarantined "
        f"{manifest.quarantined} (quarantine: {reasons}) -> {storage.redact(config.dataset_dir)} "
        f"version {manifest.version}"
    )
    files = extracted.files
    if files.empty:
        what = "quarantined as decode_error" if etl.source.kind == "images" else "they hold no records"
        shown = ", ".join(files.empty[:5]) + (", ..." if len(files.empty) > 5 else "")
        print(f"etl: {len(files.empty)} of {files.listed} input files are empty (0 bytes; {what}): {shown}")
    return manifest
