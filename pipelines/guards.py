"""Drift measured with Spark, and the drift gates of ``drift.*`` (the logic is ``pipelines.drift``).

A dataset version's :class:`~pipelines.drift.Summary` (histograms of feature blocks, label counts)
is computed by one pass over the version's files in Spark tasks, each summarizing its Arrow batches;
the driver merges the partial summaries. The bins are fixed by the dataset's first version (quantiles
of a sample of its train rows) and reused by every later version, so the summaries of any versions
merge and compare. Scoring's tasks summarize the rows they score in the scoring pass itself
(``pipelines.infer.scoring``), with the bins of the model's training data (recorded in the artifact).

A gate above its threshold warns (``drift.action=warn``: the job goes on; a challenger trained on
the data is not promoted automatically) or stops the job before it trains or publishes
(``drift.action=stop``), naming the most drifted features.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import storage
from pipelines.config import DriftConfig
from pipelines.drift import (
    DriftReport,
    Summary,
    block_values,
    choose_edges,
    feature_blocks,
    gate,
    merge,
    summarize_table,
)
from pipelines.tables import read_parquet

EDGE_SAMPLE_ROWS = 4096  # rows of the first version's train split that place the bins


class DriftGateError(RuntimeError):
    """A drift gate is above its threshold and ``drift.action=stop``: nothing was trained or published."""


def empty_layout(names: list[str], blocks: list[list[int]], edges: list[list[float]]) -> Summary:
    """A summary with no rows: the bins every later summary of the same data uses."""
    return Summary(names, blocks, edges, [[0] * (len(e) + 1) for e in edges])


def first_layout(files: list[str], feature_shape: list[int], feature_names: list[str] | None,
                 drift: DriftConfig) -> Summary:
    """The bins of a dataset's first version: quantiles of its first :data:`EDGE_SAMPLE_ROWS` train rows
    (read on the driver: the files' order is fixed, so a re-run of the ETL places the same bins)."""
    num_features = int(np.prod(feature_shape))
    names, blocks = feature_blocks(num_features, feature_shape, feature_names, drift.max_blocks)
    rows: list[NDArray[np.float32]] = []
    taken = 0
    for location in files:
        with storage.open_input(location) as f:
            table = pq.read_table(f, columns=["features"])
        flat = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        rows.append(flat.astype(np.float32).reshape(table.num_rows, num_features))
        taken += table.num_rows
        if taken >= EDGE_SAMPLE_ROWS:
            break
    sample = np.concatenate(rows)[:EDGE_SAMPLE_ROWS] if rows else np.zeros((0, num_features), np.float32)
    return empty_layout(names, blocks, choose_edges(block_values(sample, blocks), drift.bins))


def frame_summary(frame: DataFrame, layout: Summary, label_names: list[str], label_column: str | None) -> Summary:
    """The summary of ``frame``'s ``features`` (and label indices in ``label_column``) in ``layout``'s
    bins: each Spark task summarizes its batches, the driver merges."""
    names, blocks, edges = layout.names, layout.blocks, layout.edges
    columns = [F.col("features").cast("array<float>").alias("features")]
    if label_column:
        columns.append(F.col(label_column).cast("bigint").alias("label"))

    def summarize_partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        partial = [summarize_table(b, label_names, names, blocks, edges, label_column="label" if label_column else None)
                   for b in batches if b.num_rows]
        text = merge(partial).to_json() if partial else ""
        yield pa.RecordBatch.from_pydict({"summary": [text]})

    parts = frame.select(*columns).mapInArrow(summarize_partition, "summary string").collect()
    return merge([layout, *(Summary.from_json(r["summary"]) for r in parts if r["summary"])])


def files_summary(spark: SparkSession, files: list[str], layout: Summary, label_names: list[str],
                  reader: str = "auto") -> Summary:
    """The summary of dataset files (the dataset format: features, label index)."""
    if not files:
        return layout
    return frame_summary(read_parquet(spark, files, reader), layout, label_names, "label")


def apply_gates(report: DriftReport, drift: DriftConfig, job: str, stopped: str) -> list[str]:
    """The gates of ``drift.*`` on ``report``: the problems (printed as warnings), or a
    :class:`DriftGateError` under ``drift.action=stop`` saying ``stopped`` (what the job did not do)."""
    problems = gate(report, drift.max_psi, drift.max_label_shift)
    if problems and drift.action == "stop":
        raise DriftGateError(f"{job}: drift gate: {'; '.join(problems)}. {stopped} (drift.action=stop). Check the "
                             "new data (a broken upstream export, a changed camera or unit); to accept it, re-run "
                             "with drift.action=warn or raise the threshold")
    for problem in problems:
        print(f"{job}: WARNING drift gate: {problem} (drift.action=warn: going on)", flush=True)
    return problems
