"""What inference scores, as one frame: a dataset split, any Parquet with a ``features`` column, or
raw records (images, CSV, JSON lines, Parquet) preprocessed exactly as the model's training data was.

Raw records go through ``pipelines.preprocess`` with the artifact's recorded preprocessing, the code
the ETL ran, so a record gives the same features here as in training: table columns become
``features`` here; image files keep their bytes (``content``), which the scorer decodes in its own
pass. Every raw record is a row: one that cannot be decoded or does not fit gets an error naming
the ETL's reason (``decode_error: image file is truncated``); an empty image file is a record too
(Spark's scan skips zero-byte files, ``pipelines.raw`` finds them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import dataset, publish, storage
from pipelines.artifact import FEATURES_ONLY, ArtifactMeta, Preprocessing
from pipelines.config import InferSourceConfig, PipelineConfig
from pipelines.errors import ConfigError
from pipelines.infer.scoring import PREPROCESS_ERROR
from pipelines.preprocess import PreprocessError, image_decoder, raw_label, tabular_features
from pipelines.raw import (
    RawInputError,
    binary_files,
    empty_files,
    load_table,
    read_labels_csv,
    resolve_location,
    table_columns,
)
from pipelines.tables import read_parquet

IMAGE_LABEL = "label"  # images: the column holding infer.source.labels_csv's label


@dataclass
class ScoringInput:
    """One frame to score and what the job needs to know about it."""

    frame: DataFrame  # features array<float> (or content: image bytes), id, PREPROCESS_ERROR (raw), own columns
    columns: list[str]  # the input's own columns other than the features: what infer.keep_columns picks from
    described: str  # for messages and the report: the input's path
    label_column: str = ""  # among `columns`: the labels, when the input has them ("" = unlabelled)
    label_is_index: bool = True  # labels are class indices (datasets) or raw names (raw records)
    empty_files: list[str] = field(default_factory=list)  # zero-byte input files (images: rows with an error)
    features_files: list[str] = field(default_factory=list)  # Parquet files holding the scored features, if any
    version: int = 0  # a dataset split: the version of the view read


def read_input(spark: SparkSession, config: PipelineConfig, meta: ArtifactMeta) -> ScoringInput:
    """The input ``infer.*`` names: ``infer.source`` (raw), else ``infer.input``, else ``infer.split``."""
    ic, reader = config.infer, config.storage.reader
    if ic.source.kind:
        return read_raw(spark, ic.source, meta, reader)
    if ic.input:
        return features_parquet(spark, storage.normalize(ic.input), reader)
    view = dataset.open_dataset(config.dataset_dir, config.dataset_version)
    files = view.split(ic.split, "infer.split").files
    described = f"{storage.redact(config.dataset_dir)} ({ic.split} split, version {view.version})"
    return ScoringInput(read_parquet(spark, files, reader), ["id", "label"], described, "label",
                        features_files=files, version=view.version)


def features_parquet(spark: SparkSession, location: str, reader: str) -> ScoringInput:
    """Any Parquet with a ``features`` column (an ``id`` and a ``label`` class index are optional):
    a file, a folder of files, or a dlpipe publication (its committed files)."""
    publish.check_committed(location, "infer.input")
    files = publish.committed_files(location, ".parquet") or \
        [e.location for e in storage.list_files(location, suffix=".parquet")]
    if not files:
        raise ConfigError(f"infer.input={storage.redact(location)} holds no Parquet files: point it at a Parquet file "
                          "or folder with a features column", key="infer.input")
    frame = read_parquet(spark, files, reader)
    if "features" not in frame.columns:
        raise ConfigError(f"infer.input={storage.redact(location)} has no 'features' column (its columns: "
                          f"{frame.columns}): score raw records with infer.source.kind and infer.source.path instead",
                          key="infer.input")
    columns = [c for c in frame.columns if c != "features"]
    return ScoringInput(frame, columns, storage.redact(location), "label" if "label" in columns else "",
                        features_files=files)


def read_raw(spark: SparkSession, source: InferSourceConfig, meta: ArtifactMeta, reader: str) -> ScoringInput:
    """Raw records preprocessed as the artifact records; one row per record, bad ones with an error."""
    prep = meta.preprocessing
    num_features = int(np.prod(meta.feature_shape))
    if prep.kind == FEATURES_ONLY:
        raise ConfigError("the model artifact records no preprocessing (it was saved by an older dlpipe), so it "
                          "cannot decode raw records: score Parquet with a features column (infer.input), or "
                          "retrain the model", key="infer.source.kind")
    try:
        root = resolve_location(source.path, "infer.source.path")
    except RawInputError as e:
        raise ConfigError(str(e), key="infer.source.path") from None
    if source.kind == "images" or prep.kind == "images":
        if source.kind != prep.kind:
            raise ConfigError(f"infer.source.kind={source.kind!r} but the model was trained on {prep.kind} "
                              f"records: set infer.source.kind={prep.kind}", key="infer.source.kind")
        return raw_images(spark, root, source.labels_csv, reader)
    return raw_table(spark, root, source.kind, prep, num_features, reader)


def raw_images(spark: SparkSession, root: str, labels_csv: str, reader: str = "auto") -> ScoringInput:
    """Every file under ``root`` is a record (the labels file aside), its bytes for the scorer to decode.

    Columns: ``id`` (the path relative to ``root``), ``path`` (as Spark spells it), ``content``,
    ``label`` when ``labels_csv`` is given; an empty file has null content and an error.
    """
    if not storage.is_dir(root):
        raise ConfigError(f"infer.source.path={storage.redact(root)!r} is not a folder; infer.source.kind=images "
                          "scores the image files in a folder", key="infer.source.path")
    listing = binary_files(spark, root, reader=reader)
    files = listing.frame.filter(F.col("id") != labels_csv) if labels_csv else listing.frame
    empty = [p for p in listing.empty if p != labels_csv]
    decoded = files.select("id", "path", "content", F.lit(None).cast("string").alias(PREPROCESS_ERROR))
    if empty:
        rows = [(p, f"{listing.base}/{p}", None, "decode_error: empty file (0 bytes)") for p in empty]
        decoded = decoded.unionByName(spark.createDataFrame(
            rows, f"id string, path string, content binary, {PREPROCESS_ERROR} string"))
    columns, label = ["id", "path"], ""
    if labels_csv:
        try:
            labels = read_labels_csv(spark, storage.join(root, labels_csv), "infer.source.labels_csv")
        except RawInputError as e:
            raise ConfigError(str(e)) from None
        # One label per file (a file listed twice with two labels has none): one row per record.
        one = labels.groupBy("id").agg(F.when(F.countDistinct("label") == 1, F.min("label")).alias(IMAGE_LABEL))
        decoded = decoded.join(one, "id", "left")
        columns, label = [*columns, IMAGE_LABEL], IMAGE_LABEL
    return ScoringInput(decoded, columns, storage.redact(root), label, label_is_index=False, empty_files=empty)


def raw_table(spark: SparkSession, root: str, kind: str, prep: Preprocessing, num_features: int,
              reader: str = "auto") -> ScoringInput:
    """Every record of a CSV / JSON lines / Parquet input: the artifact's feature columns, in order,
    cast as the ETL cast them. Columns: the table's own."""
    if not prep.feature_columns:
        raise ConfigError("the model artifact records no feature columns for its tabular input: retrain it with "
                          "etl.source.feature_columns set (or with this dlpipe, which records the resolved columns)")
    try:
        table, listed = load_table(spark, kind, root, reader)
    except RawInputError as e:
        raise ConfigError(f"infer.source.path: {e}", key="infer.source.path") from None
    own = table_columns(table)
    missing = [c for c in prep.feature_columns if c not in own]
    if missing:
        raise ConfigError(f"infer.source.path={storage.redact(root)!r} lacks the model's feature column(s) {missing} "
                          f"(the model takes {list(prep.feature_columns)} in that order; the input has {own})",
                          key="infer.source.path")
    try:
        feats = tabular_features(table, kind, list(prep.feature_columns),
                                 f"the model's feature columns (in {storage.redact(root)})")
    except PreprocessError as e:
        raise ConfigError(str(e)) from None
    error = F.coalesce(
        _reason("decode_error", feats["decode_detail"]), _reason("wrong_shape", feats["null_detail"]),
        wrong_count(feats["features"], num_features), _reason("nan_or_inf", feats["nonfinite_detail"]))
    id_column = prep.id_column if prep.id_column in own else ("id" if "id" in own else "")
    ident = F.trim(F.col(id_column).cast("string")) if id_column else F.lit(None).cast("string")
    columns = [c for c in own if c not in prep.feature_columns]
    frame = table.select(
        *[F.col(c) for c in columns if c not in ("id", "features")],  # `id` is the output's id column
        # A record with an error scores nothing: its features are null, as the ETL would quarantine it.
        F.when(error.isNull(), feats["features"]).alias("features"),
        error.alias(PREPROCESS_ERROR),
        F.when(ident != "", ident).alias("id"))
    label = prep.label_column if prep.label_column in columns else ""
    return ScoringInput(frame, columns, storage.redact(root), label, label_is_index=False,
                        empty_files=empty_files(listed, root))


def scored_features(scoring: ScoringInput, prep: Preprocessing) -> DataFrame:
    """The feature vectors of the rows that were scored (decoded again for image files)."""
    frame = scoring.frame
    if PREPROCESS_ERROR in frame.columns:
        frame = frame.filter(F.col(PREPROCESS_ERROR).isNull())
    if "features" not in frame.columns:  # image bytes
        frame = frame.select(image_decoder(prep)(F.col("content")).features.alias("features"))
    return frame.filter(F.col("features").isNotNull()).select("features")


def wrong_count(features: Column, num_features: int) -> Column:
    """``wrong_shape`` when a feature vector has another length than the model takes."""
    return F.when(F.size(features) != num_features, F.concat(
        F.lit("wrong_shape: "), F.size(features).cast("string"), F.lit(f" features, the model takes {num_features}")))


def label_index(frame: DataFrame, scoring: ScoringInput, label_names: list[str]) -> Column | None:
    """The class index of each row's label (null when unknown), read from ``frame``'s kept label
    column; None when the predictions carry no labels."""
    column = scoring.label_column
    if not column or column not in frame.columns:
        return None
    if scoring.label_is_index:
        return F.col(column).cast("bigint")
    names = F.create_map(*[x for i, name in enumerate(label_names) for x in (F.lit(name), F.lit(i))])
    return names[raw_label(F.col(column), frame.schema[column].dataType)].cast("bigint")


def _reason(reason: str, detail: Column) -> Column:
    return F.when(detail.isNotNull(), F.concat(F.lit(f"{reason}: "), detail))

