"""``python -m benchmarks memory``: a training rank's peak RSS on a dataset 10x larger than the base one.

dlpipe's trainer (``pipelines.train.rank.train_rank`` on 2 Horovod ranks, one epoch, launched as
``benchmarks.training`` launches it) runs on a base generated dataset and on one with 10x the rows
(made the same way: ``pipelines.etl.generate`` then the ETL). Each rank reports its peak resident
set size (``ru_maxrss``) at the end; the figure is the larger of the two ranks.
``rss_growth`` = peak(10x) / peak(base) - 1.

The model is the MLP, so one epoch over the 10x dataset stays short; the data path (Petastorm
shards, batching, normalization) is the same for every model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import data, harness
from benchmarks.training import RANKS, train_once
from pipelines import dataset
from pipelines.config import PipelineConfig

NAME = "memory"
SPLITS = (("train", 0.9), ("val", 0.05), ("test", 0.05))


@dataclass(frozen=True)
class Size:
    """One size: the base dataset (the other has 10x its rows) and the trainings on each."""

    base: data.DataSpec
    repeats: int


# small: the 10x train split holds ~650 MiB of float32 features, more than a rank's whole peak RSS.
SIZES = {
    "tiny": Size(data.DataSpec(1024, 8, 128, SPLITS), repeats=1),
    "small": Size(data.DataSpec(24000, 28, 1024, SPLITS), repeats=1),
    "large": Size(data.DataSpec(100000, 28, 1024, SPLITS), repeats=2),
}
MODEL = "mlp"


def run(spark: Any, config: PipelineConfig, size: str) -> dict[str, Any]:
    """Run the memory benchmark at ``size``; print its table, write ``memory.json``, return its JSON."""
    s = SIZES[size]
    base = s.base
    big = base.scaled(10)
    report = harness.Report(NAME, size)
    cfg = data.derive(config, f"model.name={MODEL}", "model.params={}")
    figures: dict[str, dict[str, Any]] = {}
    for label, spec in (("base", base), ("10x", big)):
        ds = data.dataset(spark, config, spec)
        view = data.view(ds)
        train_rows = view.counts[dataset.TRAIN_SPLIT]
        train_bytes = _parquet_bytes(view.splits[dataset.TRAIN_SPLIT])
        feature_bytes = train_rows * 4 * math.prod(view.manifest.feature_shape)  # float32 features
        harness.log(NAME, f"{label}: {train_rows} train rows, {feature_bytes / 2**20:.0f} MiB of float32 features")
        peaks = []
        for i in range(s.repeats):
            out = train_once(spark, cfg, ds, epochs=1, run_name=f"memory-{label}-{i}")
            peaks.append(out["peak_rss_bytes"] / 2**20)
        figures[label] = {"peaks": peaks, "train_rows": train_rows,
                          "train_parquet_mib": round(train_bytes / 2**20, 1),
                          "train_features_mib": round(feature_bytes / 2**20, 1)}
        report.add(f"peak_rss_{label}", peaks, "MiB",
                   f"largest peak RSS of the {RANKS} training ranks, {label} dataset "
                   f"({figures[label]['train_rows']} train rows, "
                   f"{figures[label]['train_features_mib']} MiB of features)",
                   train_rows=figures[label]["train_rows"], train_parquet_mib=figures[label]["train_parquet_mib"],
                   train_features_mib=figures[label]["train_features_mib"])
    report.params = {"base": base.key, "large": big.key, "model": MODEL, "ranks": RANKS, "epochs": 1,
                     "batch_size_per_rank": cfg.train.batch_size, "repeats": s.repeats}
    report.ratios["rss_growth"] = harness.ratio(report.median("peak_rss_10x"), report.median("peak_rss_base"))
    if report.ratios["rss_growth"] is not None:
        report.ratios["rss_growth"] -= 1.0
    peak = report.median("peak_rss_10x") or 0.0
    report.ratios["features_vs_rank_peak_rss"] = harness.ratio(figures["10x"]["train_features_mib"], peak)
    report.notes.append(
        f"The 10x train split holds {figures['10x']['train_features_mib']:.0f} MiB of float32 features "
        f"({figures['10x']['train_parquet_mib']:.0f} MiB of Parquet); a rank's peak RSS on it was {peak:.0f} MiB, "
        "so ranks stream their shard instead of holding it.")
    if harness.meets("rss_growth", report.ratios["rss_growth"]) is False:
        report.limits["rss_growth"] = LIMIT_TEXT
    return harness.finish(report, config)


LIMIT_TEXT = (
    "Peak RSS grew with the data: something on the rank's data path keeps more than a bounded number "
    "of row groups (Petastorm's results queue, the loader's prefetch queue of batches, or the "
    "allocator not returning freed row-group buffers)."
)


def _parquet_bytes(split: dataset.SplitFiles) -> int:
    return sum(Path(f).stat().st_size for f in split.files)  # local files: the benchmarks run on this disk

