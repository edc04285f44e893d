"""ETL validation: the source survey, per-record checks, split and label names.

Mostly pure functions from DataFrame to DataFrame (or Column), so tests can assert on what they
return. Reasons, in the order they are checked (a record gets the first that applies):

    decode_error   the image cannot be decoded, or a feature value is not a number
    wrong_shape    a feature is missing (null/empty/short row) or the count differs from the shape
    nan_or_inf     a feature is NaN or +-inf (after the cast to float32)
    missing_label  no label
    unknown_label  label not in etl.source.label_names (only when they are given)
    missing_id     empty id (tabular id column)
    duplicate_id   another valid record has the same id and comes first in DUPLICATE_ORDER
                   (decided where the copies of an id meet: pipelines.etl.write.mark_duplicates)
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.config import SourceConfig
from pipelines.etl.sources import Extracted

REASONS = ["decode_error", "wrong_shape", "nan_or_inf", "missing_label", "unknown_label", "missing_id", "duplicate_id"]
SPLIT_BUCKETS = 10_000  # split resolution: fractions are honoured to 0.01%
# Among records sharing an id the first in this order is kept: the smallest source reference.
DUPLICATE_ORDER = ["source", "row", "label", "fingerprint"]


def with_feature_count(records: DataFrame) -> DataFrame:
    """Add ``n_features`` (null when the features could not be read)."""
    return records.withColumn("n_features", F.when(F.col("features").isNotNull(), F.size("features")))


def classify(records: DataFrame, num_features: int, label_names: list[str] | None = None,
             held: bool = False) -> DataFrame:
    """Add ``reason`` and ``detail`` from the per-record checks (null reason = passes them).

    ``records`` has the extract columns (``features`` optional) plus ``n_features``.
    ``label_names``: when given, any other label is ``unknown_label``. ``held``: ``records`` has
    ``held_by``, the dataset version that already holds the id (an append): ``duplicate_id``.
    """
    c = F.col
    wrong_count = c("n_features") != num_features
    checks: list[tuple[str, Column, Column]] = [
        ("decode_error", c("decode_detail").isNotNull(), c("decode_detail")),
        (
            "wrong_shape",
            c("null_detail").isNotNull() | c("n_features").isNull() | wrong_count,
            F.coalesce(
                c("null_detail"),
                F.when(c("n_features").isNull(), F.lit("no feature values")),
                F.format_string(f"expected {num_features} feature values, got %d", c("n_features")),
            ),
        ),
        ("nan_or_inf", c("nonfinite_detail").isNotNull(), c("nonfinite_detail")),
        ("missing_label", c("label").isNull(), F.lit("no label for this record")),
    ]
    if label_names:
        checks.append(
            (
                "unknown_label",
                ~c("label").isin(list(label_names)),
                F.format_string("label '%s' is not in etl.source.label_names", c("label")),
            )
        )
    checks.append(("missing_id", c("id").isNull(), F.lit("empty or missing id")))
    if held:
        checks.append(("duplicate_id", c("held_by").isNotNull(),
                       F.format_string("id already in dataset version %d", c("held_by"))))
    reason = _first_match([(failed, F.lit(name)) for name, failed, _ in checks])
    detail = _first_match([(failed, text) for _, failed, text in checks])
    return records.withColumn("reason", reason).withColumn("detail", detail)


def _first_match(branches: list[tuple[Column, Column]]) -> Column:
    """CASE WHEN c1 THEN v1 WHEN c2 THEN v2 ... END: the value of the first condition that holds, else null."""
    expr = F.when(*branches[0])
    for condition, value in branches[1:]:
        expr = expr.when(condition, value)
    return expr


def split_column(splits: dict[str, float], id_col: str = "id") -> Column:
    """Split name from a hash of the id alone: stable across runs, partitionings and Spark versions."""
    bucket = F.pmod(F.xxhash64(F.col(id_col)), F.lit(SPLIT_BUCKETS))
    names = list(splits)
    if len(names) == 1:
        return F.lit(names[0])
    bounds = np.cumsum([splits[name] for name in names[:-1]])
    branches = [(bucket < int(round(b * SPLIT_BUCKETS)), F.lit(name)) for name, b in zip(names, bounds)]
    return _first_match(branches).otherwise(F.lit(names[-1]))


def assign_split(df: DataFrame, splits: dict[str, float]) -> DataFrame:
    """Add the ``split`` column (see :func:`split_column`)."""
    return df.withColumn("split", split_column(splits))


def sort_label_names(labels: list[str]) -> list[str]:
    """Numeric order when every label is an integer ("2" < "10"), else text order."""
    if labels and all(re.fullmatch(r"[+-]?\d+", x) for x in labels):
        return sorted(labels, key=int)
    return sorted(labels)


SHAPE_SAMPLE = 1000  # records whose feature counts guess an array column's length before the write


@dataclass(frozen=True)
class Survey:
    """What the ETL learns before its one pass over the data: a label column read (no feature
    values) and, for an array column, the feature counts of the first :data:`SHAPE_SAMPLE` records."""

    records_in: int
    feature_shape: list[int]
    shape_is_guess: bool  # from the sample: the write pass counts every length and checks it
    label_names: list[str]  # the configured names, else every label the source holds, sorted
    labels_configured: bool  # etl.source.label_names: kept as they are
    likely_accepted: int  # records with a (configured) label: sizes the row groups


def survey(extracted: Extracted, source: SourceConfig) -> Survey:
    """Count the records by label; sample the feature counts when the source is one array column."""
    rows = extracted.records.groupBy("label").count().collect()
    sample: Counter[int] | None = None
    if extracted.num_features is None:
        readable = F.col("features").isNotNull() & F.col("decode_detail").isNull()
        counts = extracted.records.where(readable).select(F.size("features").alias("n")).limit(SHAPE_SAMPLE).collect()
        sample = Counter(r["n"] for r in counts)
    return survey_from_counts({r["label"]: r["count"] for r in rows}, sample, extracted, source)


def survey_from_counts(labels: dict[str | None, int], sample: Counter[int] | None, extracted: Extracted,
                       source: SourceConfig) -> Survey:
    """:func:`survey` from its records per label (None: no label) and sampled feature counts."""
    shape = feature_shape(extracted, sample or Counter(), source.channels, source.image_shape)
    configured = list(source.label_names)
    names = configured or sort_label_names(sorted(label for label in labels if label is not None))
    likely = sum(n for label, n in labels.items() if label is not None and (not configured or label in configured))
    return Survey(sum(labels.values()), shape, sample is not None, names, bool(configured), likely)


def feature_shape(extracted: Extracted, lengths: Counter[int], channels: int, image_shape: list[int]) -> list[int]:
    """[C, H, W] for images; [D] for tabular, or [C, H, W] when an array column's length is C*H*W.

    For an array column the length is the most common one among the readable records
    (``lengths``: records per length, all of them or a sample; ties: the smaller); records of
    any other length are ``wrong_shape``.
    """
    if extracted.image_shape is not None:
        return list(extracted.image_shape)
    if extracted.num_features is not None:
        return [extracted.num_features]
    length = min(lengths, key=lambda n: (-lengths[n], n)) if lengths else 0
    shape = [channels, *image_shape]
    return shape if int(np.prod(shape)) == length else [length]
