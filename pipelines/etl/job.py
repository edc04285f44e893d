"""ETL job: raw records -> validated, split, normalised Parquet dataset with a manifest.

    dlpipe etl --config FILE [key=value ...]
    spark-submit pipelines/__main__.py etl --config FILE [key=value ...]

Output, published atomically as ``<workdir>/datasets/<dataset>/`` (a re-run replaces it), in the
format ``pipelines.dataset`` defines::

    <split>/ ...        one folder per etl.splits entry: part-NNNNN.parquet (id, label, features)
    quarantine/         rejected records: id, source, row, label, reason, detail
    manifest.json       counts, shapes, train-split normalisation, label names, config hash
    _SUCCESS

Every record is either accepted or quarantined with one reason, checked in this order:
decode_error, wrong_shape, nan_or_inf, missing_label, unknown_label, missing_id, duplicate_id.
If the quarantined fraction exceeds ``etl.max_quarantine_fraction`` the job raises
:class:`EtlError` and publishes nothing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import dataset
from pipelines.config import EtlConfig, PipelineConfig
from pipelines.etl.parts import (
    FILE_STATS_DDL, GROUPS_PER_RANK, Moments, PartSpec, part_writer, streaming_rows_per_row_group,
)
from pipelines.etl.sources import EtlError, Extracted, read_records
from pipelines.etl.validate import (
    DUPLICATE_ORDER, REASONS, assign_split, classify, feature_shape, label_names_from, mark_duplicates,
    with_feature_count,
)
from pipelines.publish import atomic_dir, check_writable, write_json_atomic
from pipelines.session import describe

__all__ = ["EtlError", "main", "validate", "publish"]

STD_FLOOR = 1e-6  # normalisation never divides by ~0
NARROW_COLUMNS = ["id", "source", "row", "label", "decode_detail", "null_detail", "nonfinite_detail", "fingerprint", "n_features"]


# --- load -------------------------------------------------------------------------------------

def write_quarantine(decided: DataFrame, path: Path) -> None:
    """Quarantined records as one Parquet file (schema-only when there are none)."""
    (
        decided.filter(F.col("reason").isNotNull())
        .select(*dataset.QUARANTINE_COLUMNS)
        .repartition(1)
        .sortWithinPartitions("reason", "id", "source", "row")
        .write.option("mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")  # one _SUCCESS: the dataset's
        .parquet(str(path))
    )


def write_splits(
    records: DataFrame, out_dir: Path, etl: EtlConfig, num_features: int, label_names: list[str],
    rows_per_row_group: int,
) -> list[dict[str, Any]]:
    """Write the accepted records of every split in one pass; return per-file stats.

    Records are hash-partitioned by id into ``etl.output_files`` tasks and sorted, so file contents
    do not depend on how the input was partitioned, and all copies of an id meet in one task where
    the writer keeps the first (the same record :func:`mark_duplicates` kept).
    """
    configured = etl.source.label_names or None
    passed = classify(with_feature_count(records), num_features, configured).filter(F.col("reason").isNull())
    index = F.create_map(*[x for i, name in enumerate(label_names) for x in (F.lit(name), F.lit(i))])
    ordered = (
        assign_split(passed, etl.splits)
        .repartition(etl.output_files, "id")
        .sortWithinPartitions("split", "id", *DUPLICATE_ORDER)
        .select("split", "id", index[F.col("label")].cast("bigint").alias("label"), "features")
    )
    spec = PartSpec(str(out_dir), rows_per_row_group, group_column="split", drop_repeated_ids=True,
                    moments_group=dataset.TRAIN_SPLIT)
    return [row.asDict() for row in ordered.mapInArrow(part_writer(spec), FILE_STATS_DDL).collect()]


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

def reason_counts(decided: DataFrame) -> tuple[int, dict[str, int]]:
    """(accepted, {reason: count}) with every known reason present."""
    rows = decided.groupBy("reason").count().collect()
    counts = {r["reason"]: r["count"] for r in rows}
    accepted = counts.pop(None, 0)
    unexpected = set(counts) - set(REASONS)
    if unexpected:
        raise EtlError(f"internal: unexpected quarantine reasons {sorted(unexpected)}")
    return accepted, {reason: counts.get(reason, 0) for reason in REASONS}


def check_quarantine_fraction(
    decided: DataFrame, records_in: int, by_reason: dict[str, int], etl: EtlConfig, dataset_dir: Path
) -> None:
    """Raise :class:`EtlError` (nothing published) when too many records were rejected."""
    quarantined = sum(by_reason.values())
    if records_in == 0:
        raise EtlError(
            f"no records found in {etl.source.kind} source {etl.source.path!r} (etl.source.path); "
            "check the path and, for images, the file extensions"
        )
    if quarantined / records_in <= etl.max_quarantine_fraction:
        return
    examples = (
        decided.filter(F.col("reason").isNotNull()).orderBy("reason", "id").select("id", "source", "reason", "detail").limit(3).collect()
    )
    shown = "; ".join(f"{e.id or '<no id>'} ({e.source}): {e.reason}: {e.detail}" for e in examples)
    reasons = ", ".join(f"{k}={v}" for k, v in by_reason.items() if v)
    raise EtlError(
        f"{quarantined} of {records_in} records ({quarantined / records_in:.1%}) failed validation, above "
        f"etl.max_quarantine_fraction={etl.max_quarantine_fraction}: {reasons}. Nothing was published "
        f"({dataset_dir} is unchanged). Examples: {shown}. Fix the source data or raise etl.max_quarantine_fraction."
    )


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

@dataclass
class Verdict:
    """Outcome of validation: every record's reason (narrow, persisted) and the counts."""

    decided: DataFrame  # NARROW_COLUMNS + reason, detail (null reason = accepted)
    feature_shape: list[int]
    accepted: int
    by_reason: dict[str, int]
    label_names: list[str]

    @property
    def records_in(self) -> int:
        return self.accepted + sum(self.by_reason.values())


def validate(narrow: DataFrame, extracted: Extracted, etl: EtlConfig, dataset_dir: Path) -> Verdict:
    """Decide every record, count, and enforce ``etl.max_quarantine_fraction`` (raises EtlError)."""
    source = etl.source
    shape = feature_shape(extracted, narrow, source.channels, source.image_shape)
    decided = mark_duplicates(classify(narrow, int(np.prod(shape)), source.label_names or None))
    decided = decided.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        accepted, by_reason = reason_counts(decided)
        check_quarantine_fraction(decided, accepted + sum(by_reason.values()), by_reason, etl, dataset_dir)
        return Verdict(decided, shape, accepted, by_reason, label_names_from(decided, source.label_names))
    except BaseException:
        decided.unpersist()
        raise


def publish(spark: SparkSession, records: DataFrame, verdict: Verdict, extracted: Extracted,
            config: PipelineConfig) -> dict[str, Any]:
    """Write quarantine, splits, statistics and manifest into a temp folder, then swap it in."""
    etl = config.etl
    with atomic_dir(config.dataset_dir) as tmp:
        describe(spark, "etl: write quarantine")
        write_quarantine(verdict.decided, tmp / dataset.QUARANTINE)
        describe(spark, "etl: write splits")
        num_features = int(np.prod(verdict.feature_shape))
        rows_per_row_group = etl.rows_per_row_group or streaming_rows_per_row_group(
            round(verdict.accepted * etl.splits[dataset.TRAIN_SPLIT]), num_features, config.train.num_workers,
            etl.row_group_mib)
        stats = write_splits(records, tmp, etl, num_features, verdict.label_names, rows_per_row_group)
        splits = summarize_splits(stats, etl.splits, verdict.label_names)
        written = sum(s["count"] for s in splits.values())
        if written != verdict.accepted:
            raise EtlError(
                f"internal reconciliation failed: {verdict.accepted} records accepted but {written} written; "
                f"did {extracted.path} change while the ETL ran? Re-run it."
            )
        if splits[dataset.TRAIN_SPLIT]["count"] == 0:
            raise EtlError(f"the train split is empty ({written} records accepted); check etl.splits={etl.splits}")
        manifest = dataset.make_manifest(
            records_in=verdict.records_in,
            accepted=verdict.accepted,
            quarantined=verdict.records_in - verdict.accepted,
            quarantine_by_reason=verdict.by_reason,
            splits=splits,
            feature_shape=verdict.feature_shape,
            normalization=normalization_stats(stats, etl.normalization),
            label_names=verdict.label_names,
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
    """Run the ETL for ``config`` and return the manifest (also written to the dataset folder)."""
    check_writable(config.dataset_dir, "workdir")
    describe(spark, "etl: read and validate")
    extracted = read_records(spark, config.etl.source)
    records = extracted.records
    if config.etl.source.kind == "images":
        records = records.persist(StorageLevel.MEMORY_AND_DISK)  # decode each image once, not per pass
    # Tables are read again by the split write rather than persisted: a cached copy of a source
    # larger than memory costs more (spilled, deserialized) than a second columnar read of it.
    # Everything but the features: cheap to keep while counting, deduplicating and quarantining.
    narrow = with_feature_count(records).select(*NARROW_COLUMNS).persist(StorageLevel.MEMORY_AND_DISK)
    verdict = None
    try:
        verdict = validate(narrow, extracted, config.etl, config.dataset_dir)
        narrow.unpersist()
        manifest = publish(spark, records, verdict, extracted, config)
    finally:
        for df in (narrow, records, verdict.decided if verdict else None):
            if df is not None and df.is_cached:
                df.unpersist()
    reasons = ", ".join(f"{k} {v}" for k, v in verdict.by_reason.items() if v) or "none"
    print(
        f"etl: records in {manifest['records_in']} = accepted {manifest['accepted']} + quarantined "
        f"{manifest['quarantined']} (quarantine: {reasons}) -> {config.dataset_dir}"
    )
    files = extracted.files
    if files.empty:
        what = "quarantined as decode_error" if config.etl.source.kind == "images" else "they hold no records"
        shown = ", ".join(files.empty[:5]) + (", ..." if len(files.empty) > 5 else "")
        print(f"etl: {len(files.empty)} of {files.listed} input files are empty (0 bytes; {what}): {shown}")
    return manifest
