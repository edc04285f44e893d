"""ETL job: raw records -> validated, split, normalised Parquet dataset with a manifest.

    dlpipe etl --config FILE [key=value ...]
    spark-submit pipelines/__main__.py etl --config FILE [key=value ...]

Output, published atomically as ``<workdir>/datasets/<dataset>/`` (a re-run replaces it), in the
format ``pipelines.dataset`` defines::

    <split>/ ...        one folder per etl.splits entry: part-NNNNN.parquet (id, label, features)
    quarantine/         rejected records: id, source, row, label, reason, detail (part-NNNNN.parquet)
    manifest.json       counts, shapes, train-split normalisation, label names, config hash
    _SUCCESS

Every record is either accepted or quarantined with one reason, checked in this order:
decode_error, wrong_shape, nan_or_inf, missing_label, unknown_label, missing_id, duplicate_id.
If the quarantined fraction exceeds ``etl.max_quarantine_fraction`` the job raises
:class:`EtlError` and publishes nothing (the check runs on the written temp folder).
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession

from pipelines import dataset
from pipelines.config import EtlConfig, PipelineConfig
from pipelines.etl.parts import FILE_STATS_DDL, GROUPS_PER_RANK, Moments, rewrite_labels, streaming_rows_per_row_group
from pipelines.etl.sources import EtlError, Extracted, read_records
from pipelines.etl.validate import (
    DUPLICATE_ORDER, REASONS, SHAPE_SAMPLE, Survey, assign_split, classify, feature_shape, sort_label_names, survey,
    with_feature_count,
)
from pipelines.etl.write import INPUT_COLUMNS, QUARANTINE_SCHEMA, TASK_GROUP, DatasetSpec, dataset_writer
from pipelines.publish import atomic_dir, check_writable, write_json_atomic
from pipelines.session import describe

__all__ = ["EtlError", "main", "ordered_records", "write_dataset", "publish"]

STD_FLOOR = 1e-6  # normalisation never divides by ~0


# --- the one pass -----------------------------------------------------------------------------

def write_dataset(
    records: DataFrame, out_dir: Path, etl: EtlConfig, num_features: int, label_names: list[str],
    rows_per_row_group: int, feature_column: str = "features",
) -> list[dict[str, Any]]:
    """Validate every record and write it, accepted to its split or rejected to the quarantine, in
    one pass; return the writer tasks' per-file stats (:mod:`pipelines.etl.write`).

    Records are hash-partitioned by id into ``etl.output_files`` tasks and sorted, so file contents
    do not depend on how the input was partitioned, and all copies of an id meet in one task, which
    decides the duplicates. ``feature_column``: the source's array column, named in details.
    """
    ordered = ordered_records(records, etl, num_features)
    spec = DatasetSpec(str(out_dir), rows_per_row_group, tuple(label_names), dataset.TRAIN_SPLIT, feature_column)
    return [row.asDict() for row in ordered.mapInArrow(dataset_writer(spec), FILE_STATS_DDL).collect()]


def ordered_records(records: DataFrame, etl: EtlConfig, num_features: int) -> DataFrame:
    """What the writer tasks are handed: every record with its per-record verdict and split
    (:data:`~pipelines.etl.write.INPUT_COLUMNS`), hash-partitioned by id and sorted."""
    configured = etl.source.label_names or None
    return (
        assign_split(classify(with_feature_count(records), num_features, configured), etl.splits)
        .repartition(etl.output_files, "id")
        .sortWithinPartitions("id", *DUPLICATE_ORDER)  # id first: its prefix makes Spark's sort fast
        .select(*INPUT_COLUMNS)
    )


def normalization_stats(stats: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """Mean/std of the train split (population std, floored) from the moments its writer tasks
    returned: no second pass over the data. Files are merged in name order, so the figures do not
    depend on which task finished first.

    ``global``: one mean/std over all values; ``per_feature``: one per feature position.
    """
    moments = Moments()
    for s in sorted((s for s in stats if s["grp"] == dataset.TRAIN_SPLIT), key=lambda s: s["file"]):
        moments.merge(Moments.from_json(s["moments"]))
    mean = moments.mean
    var = moments.m2 / moments.n
    if mode == "global":  # equal counts per feature: pool the per-feature moments exactly
        grand = mean.mean()
        var = np.array([np.mean(var + (mean - grand) ** 2)])
        mean = np.array([grand])
    std = np.maximum(np.sqrt(np.maximum(var, 0.0)), STD_FLOOR)
    return {"mode": mode, "mean": mean.tolist(), "std": std.tolist()}


# --- bookkeeping ------------------------------------------------------------------------------

def split_stats(stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stats rows of split files (not of quarantine files or tasks)."""
    return [s for s in stats if s["grp"] not in (dataset.QUARANTINE, TASK_GROUP)]


def task_lengths(stats: list[dict[str, Any]]) -> Counter[int]:
    """Readable records per feature count, over every writer task."""
    lengths: Counter[int] = Counter()
    for s in stats:
        if s["grp"] == TASK_GROUP:
            lengths.update({int(n): c for n, c in json.loads(s["lengths"]).items()})
    return lengths


def reason_counts(stats: list[dict[str, Any]]) -> tuple[int, dict[str, int]]:
    """(accepted, {reason: count}) from the writer's stats, with every known reason present."""
    counts = {reason: 0 for reason in REASONS}
    for s in stats:
        if s["grp"] == dataset.QUARANTINE:
            for reason, n in json.loads(s["reasons"]).items():
                if reason not in counts:
                    raise EtlError(f"internal: unexpected quarantine reason {reason!r} in {s['file']}")
                counts[reason] += n
    return sum(s["rows"] for s in split_stats(stats)), counts


def check_quarantine_fraction(
    quarantine: Path, records_in: int, by_reason: dict[str, int], etl: EtlConfig, dataset_dir: Path
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
        f"({dataset_dir} is unchanged). Examples: {shown}. Fix the source data or raise etl.max_quarantine_fraction."
    )


def quarantine_examples(folder: Path, count: int = 3) -> list[dict[str, Any]]:
    """The first ``count`` quarantined records by (reason, id), read file by file."""
    order = [("reason", "ascending"), ("id", "ascending")]
    firsts = []
    for file in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(file, columns=["reason", "id", "source", "detail"])
        firsts.append(table.take(pc.sort_indices(table, order)[:count]))
    if not firsts:
        return []
    table = pa.concat_tables(firsts)
    return table.take(pc.sort_indices(table, order)[:count]).to_pylist()


def settle_label_names(stats: list[dict[str, Any]], surveyed: Survey, out_dir: Path) -> list[str]:
    """The label names: the configured ones as they are, else the sorted labels of the accepted
    records. The files were written with the surveyed labels, which include those seen only on
    rejected records; when there are such, the part files' label indices (and ``stats``) are
    rewritten to the accepted labels alone (rare)."""
    if surveyed.labels_configured:
        return surveyed.label_names
    used: set[int] = set()
    for s in split_stats(stats):
        used.update(int(k) for k in json.loads(s["label_counts"]))
    names = surveyed.label_names
    if len(used) == len(names):
        return names
    kept = sort_label_names([names[i] for i in sorted(used)])
    new_index = np.array([kept.index(name) if name in kept else -1 for name in names], np.int64)
    for s in split_stats(stats):
        rewrite_labels(str(out_dir / s["file"]), new_index)
        s["label_counts"] = json.dumps({str(new_index[int(k)]): n for k, n in json.loads(s["label_counts"]).items()})
    return kept


def summarize_splits(
    stats: list[dict[str, Any]], splits: dict[str, float], label_names: list[str]
) -> dict[str, dict[str, Any]]:
    """Manifest ``splits`` section from the writer's per-file stats."""
    out = {}
    for name in splits:
        files = sorted((s for s in stats if s["grp"] == name), key=lambda s: s["file"])
        per_class = {label: 0 for label in label_names}
        for s in files:
            for index, n in json.loads(s["label_counts"]).items():
                per_class[label_names[int(index)]] += n
        out[name] = {
            "count": sum(s["rows"] for s in files),
            "per_class": per_class,
            "row_groups": sum(s["row_groups"] for s in files),
            "files": [s["file"].split("/", 1)[1] for s in files],
        }
    return out


# --- the job ----------------------------------------------------------------------------------

def validate_and_write(extracted: Extracted, surveyed: Survey, config: PipelineConfig,
                       out_dir: Path) -> tuple[list[int], int, list[dict[str, Any]]]:
    """The one pass (:func:`write_dataset`) into ``out_dir``: (feature shape, rows per row group,
    stats). An array column's length was guessed from a sample; the pass counts every record's,
    and in the rare case where the most common count differs from the guess, it runs again."""
    etl = config.etl
    columns = extracted.feature_columns or []
    array_column = columns[0] if len(columns) == 1 else "features"

    def write(shape: list[int]) -> tuple[list[int], int, list[dict[str, Any]]]:
        num_features = int(np.prod(shape))
        rows_per_row_group = etl.rows_per_row_group or streaming_rows_per_row_group(
            round(surveyed.likely_accepted * etl.splits[dataset.TRAIN_SPLIT]), num_features,
            config.train.num_workers, etl.row_group_mib)
        return shape, rows_per_row_group, write_dataset(
            extracted.records, out_dir, etl, num_features, surveyed.label_names, rows_per_row_group, array_column)

    written = write(surveyed.feature_shape)
    if not surveyed.shape_is_guess:
        return written
    counted = feature_shape(extracted, task_lengths(written[2]), etl.source.channels, etl.source.image_shape)
    if counted == surveyed.feature_shape:
        return written
    print(f"etl: the first {SHAPE_SAMPLE} records suggested feature shape {surveyed.feature_shape}, but over all "
          f"records it is {counted}: validating and writing again")
    for child in out_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    return write(counted)


def publish(spark: SparkSession, extracted: Extracted, surveyed: Survey, config: PipelineConfig) -> dict[str, Any]:
    """Validate and write quarantine and splits, check the counts, write statistics and manifest
    into a temp folder, then swap it in (any failure publishes nothing)."""
    etl = config.etl
    with atomic_dir(config.dataset_dir) as tmp:
        describe(spark, "etl: validate and write")
        shape, rows_per_row_group, stats = validate_and_write(extracted, surveyed, config, tmp)
        accepted, by_reason = reason_counts(stats)
        records_in = accepted + sum(by_reason.values())
        seen = sum(s["rows"] for s in stats if s["grp"] == TASK_GROUP)
        if not records_in == seen == surveyed.records_in:
            raise EtlError(
                f"internal reconciliation failed: the survey counted {surveyed.records_in} records, the writer "
                f"tasks saw {seen}, and {records_in} were written or quarantined; did {extracted.path} change "
                "while the ETL ran? Re-run it."
            )
        quarantine = tmp / dataset.QUARANTINE
        check_quarantine_fraction(quarantine, records_in, by_reason, etl, config.dataset_dir)
        if not quarantine.is_dir():  # nothing rejected: a schema-only file, so readers find the columns
            quarantine.mkdir()
            pq.write_table(QUARANTINE_SCHEMA.empty_table(), quarantine / "part-00000.parquet")
        label_names = settle_label_names(stats, surveyed, tmp)
        splits = summarize_splits(stats, etl.splits, label_names)
        if splits[dataset.TRAIN_SPLIT]["count"] == 0:
            raise EtlError(f"the train split is empty ({accepted} records accepted); check etl.splits={etl.splits}")
        manifest = dataset.make_manifest(
            records_in=records_in,
            accepted=accepted,
            quarantined=records_in - accepted,
            quarantine_by_reason=by_reason,
            splits=splits,
            feature_shape=shape,
            normalization=normalization_stats(stats, etl.normalization),
            label_names=label_names,
            source=source_record(extracted, etl),
            input_files=extracted.files.summary(),
            config_hash=config.digest(),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            rows_per_row_group=rows_per_row_group,
            row_group_rule=(f"etl.rows_per_row_group={etl.rows_per_row_group}" if etl.rows_per_row_group else
                            f"sized for streaming: at most {etl.row_group_mib:g} MiB of features, at least "
                            f"{GROUPS_PER_RANK} train row groups per rank of train.num_workers="
                            f"{config.train.num_workers}"),
        )
        write_json_atomic(tmp / dataset.MANIFEST_FILE, manifest)
    return manifest


def source_record(extracted: Extracted, etl: EtlConfig) -> dict[str, Any]:
    """The manifest's ``source``: kind and path, and for tables the columns as resolved (the model
    artifact records them, so inference preprocesses new records exactly as these were)."""
    record: dict[str, Any] = {"kind": etl.source.kind, "path": str(extracted.path)}
    if extracted.feature_columns is not None:
        record.update(feature_columns=list(extracted.feature_columns), label_column=etl.source.label_column,
                      id_column=etl.source.id_column)
    return record


def main(spark: SparkSession, config: PipelineConfig) -> dict[str, Any]:
    """Run the ETL for ``config`` and return the manifest (also written to the dataset folder).

    Two reads of the source: a narrow survey (the label column, and the feature counts of the
    first records of an array column), then one pass that validates, deduplicates, splits, writes
    and gathers the statistics. Nothing is cached, so a source larger than memory streams through.
    """
    etl = config.etl
    check_writable(config.dataset_dir, "workdir")
    describe(spark, "etl: survey")
    extracted = read_records(spark, etl.source, array_value_checks=False)  # the writer checks the values
    surveyed = survey(extracted, etl.source)
    if surveyed.records_in == 0:
        raise EtlError(
            f"no records found in {etl.source.kind} source {etl.source.path!r} (etl.source.path); "
            "check the path and, for images, the file extensions"
        )
    manifest = publish(spark, extracted, surveyed, config)
    reasons = ", ".join(f"{k} {v}" for k, v in manifest["quarantine_by_reason"].items() if v) or "none"
    print(
        f"etl: records in {manifest['records_in']} = accepted {manifest['accepted']} + quarantined "
        f"{manifest['quarantined']} (quarantine: {reasons}) -> {config.dataset_dir}"
    )
    files = extracted.files
    if files.empty:
        what = "quarantined as decode_error" if etl.source.kind == "images" else "they hold no records"
        shown = ", ".join(files.empty[:5]) + (", ..." if len(files.empty) > 5 else "")
        print(f"etl: {len(files.empty)} of {files.listed} input files are empty (0 bytes; {what}): {shown}")
    return manifest
