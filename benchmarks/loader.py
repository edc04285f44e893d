"""``python -m benchmarks loader``: a training rank's data path against a plain pyarrow read (the limit).

Measures samples/s. Contenders, each reading the train split of the same ETL output into normalized
torch batches of ``train.batch_size`` rows, in this process with one torch thread (a rank's),
taking turns round by round (``harness.interleaved``):

- ``dlpipe_petastorm``: ``pipelines.train.loader.epoch_batches`` as a rank of 1 runs it (Petastorm
  ``make_batch_reader``, shuffled row groups and rows, ``train.reader_workers`` reader threads);
- ``dlpipe_petastorm_workers2``: the same with 2 reader threads;
- ``dlpipe_petastorm_rg64``: the same on the same data written with the ETL's default 64-row row groups;
- ``petastorm_reader_only`` (a profile): the Petastorm reader as the loader opens it, to NumPy, no batching;
- ``petastorm_reader_numpy_shuffle`` (a profile): the same without Petastorm's ``shuffle_rows``, rows
  shuffled by a seeded NumPy permutation instead;
- ``pyarrow_numpy_torch`` (the limit): ``ParquetFile.iter_batches`` -> NumPy -> torch, no shuffling;
- ``petastorm_spark_converter``: Petastorm's ``make_spark_converter(df).make_torch_dataloader``
  (its materialization into the converter's cache is timed separately).

``ratio_vs_pyarrow`` = dlpipe_petastorm / pyarrow_numpy_torch. Every contender reads the dataset
format's ``features`` and ``label`` columns (``pipelines.dataset``), whatever model trains on them.
"""
from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import data, harness
from pipelines import dataset
from pipelines.artifact import Normalizer
from pipelines.config import PipelineConfig
from pipelines.train import loader

# Normalizer wraps pyarrow's read-only buffers without a copy; torch warns once about that.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

NAME = "loader"
# Per size: the dataset (the base one, shared with infer), passes over the train split per
# measurement, repeats, whether to add the 64-row row-group contender.
SIZES = {
    "tiny": {"data": data.BASE["tiny"], "passes": 1, "repeats": 2, "rg64": False},
    "small": {"data": data.BASE["small"], "passes": 2, "repeats": 5, "rg64": True},
    "large": {"data": data.BASE["large"], "passes": 1, "repeats": 5, "rg64": True},
}
DEFAULT_ROW_GROUP = 64  # the ETL's etl.rows_per_row_group default


def run(spark: Any, config: PipelineConfig, size: str) -> dict[str, Any]:
    """Run the loader benchmark at ``size``; print its table, write ``loader.json``, return its JSON."""
    s = SIZES[size]
    spec: data.DataSpec = s["data"]
    report = harness.Report(NAME, size)
    ds = data.dataset(spark, config, spec)
    manifest = dataset.load_manifest(ds)
    train = Path(dataset.split_paths(ds, manifest)[dataset.TRAIN_SPLIT])
    batch = config.train.batch_size
    normalize = Normalizer.from_stats(manifest["normalization"], manifest["feature_shape"])
    rows = sum(dataset.row_group_sizes(train))
    report.params = {"dataset": spec.key, "train_rows": rows, "feature_shape": manifest["feature_shape"],
                     "rows_per_row_group": spec.rows_per_row_group, "batch_size": batch, "passes": s["passes"],
                     "repeats": s["repeats"], "reader_workers": config.train.reader_workers, "torch_threads": 1}
    measures = {
        "dlpipe_petastorm": lambda: _dlpipe(train, batch, normalize, config.train.reader_workers, s["passes"]),
        "dlpipe_petastorm_workers2": lambda: _dlpipe(train, batch, normalize, 2, s["passes"]),
    }
    if s["rg64"] and spec.rows_per_row_group != DEFAULT_ROW_GROUP:
        small_groups = data.dataset(spark, config, spec.with_row_groups(DEFAULT_ROW_GROUP)) / dataset.TRAIN_SPLIT
        measures["dlpipe_petastorm_rg64"] = lambda: _dlpipe(small_groups, batch, normalize,
                                                            config.train.reader_workers, s["passes"])
    measures["petastorm_reader_only"] = lambda: _reader_only(train, s["passes"], numpy_shuffle=False)
    measures["petastorm_reader_numpy_shuffle"] = lambda: _reader_only(train, s["passes"], numpy_shuffle=True)
    measures["pyarrow_numpy_torch"] = lambda: _pyarrow(train, batch, normalize, s["passes"])
    converter, materialize_s = _spark_converter(spark, config, train, report)
    if converter is not None:
        measures["petastorm_spark_converter"] = lambda: _converter_pass(converter, batch, normalize, s["passes"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a rank with one core gets
    try:
        harness.log(NAME, f"{len(measures)} contenders, {rows} rows, batch {batch}, {s['repeats']} rounds")
        figures = harness.interleaved(measures, s["repeats"])
    finally:
        torch.set_num_threads(threads)
        if converter is not None:
            converter.delete()
            shutil.rmtree(harness.bench_dir(config) / "petastorm_cache", ignore_errors=True)
    for key, values in figures.items():
        report.add(key, values, "samples/s", DESCRIPTIONS[key].format(workers=config.train.reader_workers,
                                                                      rg=DEFAULT_ROW_GROUP),
                   **({"materialize_seconds": materialize_s} if key == "petastorm_spark_converter" else {}))

    dl, limit = report.median("dlpipe_petastorm"), report.median("pyarrow_numpy_torch")
    report.ratios["ratio_vs_pyarrow"] = harness.ratio(dl, limit)
    report.ratios["ratio_vs_pyarrow_workers2"] = harness.ratio(report.median("dlpipe_petastorm_workers2"), limit)
    report.ratios["ratio_rg64_vs_pyarrow"] = harness.ratio(report.median("dlpipe_petastorm_rg64"), limit)
    report.ratios["ratio_spark_converter_vs_pyarrow"] = harness.ratio(report.median("petastorm_spark_converter"),
                                                                      limit)
    report.ratios = {k: v for k, v in report.ratios.items() if v is not None or k == "ratio_vs_pyarrow"}
    if harness.meets("ratio_vs_pyarrow", report.ratios["ratio_vs_pyarrow"]) is False:
        report.limits["ratio_vs_pyarrow"] = limit_text(report)
    return harness.finish(report, config)


def limit_text(report: harness.Report) -> str:
    """What limits ``ratio_vs_pyarrow``, with this run's own profile figures."""
    limit = report.median("pyarrow_numpy_torch")
    reader, dl = report.median("petastorm_reader_only"), report.median("dlpipe_petastorm")
    parts = []
    if reader and limit and dl:
        parts.append(
            f"Petastorm's reader by itself, opened as the loader opens it, reaches {reader / limit:.0%} of the plain "
            "pyarrow read: Petastorm 0.12 turns every row group into pandas, so the list<float32> column becomes "
            "one NumPy object per row that `np.stack` copies again, and `shuffle_rows` adds a `take` over the "
            "whole row group; pyarrow hands one flat buffer to NumPy without a copy.")
        if dl / reader < 0.95:
            parts.append(f"The loader's own batching and normalizing (`pipelines.train.loader.epoch_batches`, one "
                         f"producer thread) then keep {dl / reader:.0%} of the reader's rate.")
        else:
            parts.append("The loader's own batching and normalizing, in their own thread, cost nothing measurable "
                         f"on top ({dl / reader:.0%} of the reader's rate).")
    numpy_shuffle = report.median("petastorm_reader_numpy_shuffle")
    if reader and numpy_shuffle and limit:
        parts.append(f"Of the reader's own time, Petastorm's `shuffle_rows` is a large part: the same reader with "
                     f"rows shuffled by a seeded NumPy permutation instead reaches {numpy_shuffle / limit:.0%} of the "
                     "limit.")
    rg64, w2 = report.median("dlpipe_petastorm_rg64"), report.median("dlpipe_petastorm_workers2")
    if rg64 and limit:
        parts.append(f"Row-group size is the strongest knob: with the ETL's default 64-row row groups the same data "
                     f"loads at {rg64 / limit:.0%} of the limit.")
    if w2 and limit:
        parts.append(f"A second reader thread reaches {w2 / limit:.0%} (it gives up the reproducible order that "
                     "`train.reader_workers=1` keeps), and only while a core is otherwise idle.")
    return " ".join(parts)


def _dlpipe(train: Path, batch: int, normalize: Normalizer, workers: int, passes: int) -> float:
    url = dataset.dataset_url(train)
    steps = sum(dataset.row_group_sizes(train)) // batch
    started, seen = time.perf_counter(), 0
    for p in range(passes):
        for b in loader.epoch_batches(url, rank=0, size=1, batch_size=batch, steps=steps, seed=p,
                                      normalize=normalize, workers=workers):
            seen += len(b["label"])
    return seen / (time.perf_counter() - started)


def _reader_only(train: Path, passes: int, numpy_shuffle: bool) -> float:
    from petastorm import make_batch_reader

    started, seen = time.perf_counter(), 0
    for p in range(passes):
        rng = np.random.default_rng(p)
        with make_batch_reader(dataset.dataset_url(train), schema_fields=["features", "label"], shuffle_row_groups=True,
                               shuffle_rows=not numpy_shuffle, seed=p, num_epochs=1, workers_count=1,
                               reader_pool_type="thread") as reader:
            for chunk in reader:
                feats = np.stack(chunk.features).astype(np.float32, copy=False)  # (rows, features)
                labels = np.asarray(chunk.label, dtype=np.int64)
                if numpy_shuffle:
                    order = rng.permutation(len(labels))
                    feats, labels = feats[order], labels[order]
                seen += len(labels)
    return seen / (time.perf_counter() - started)


def _pyarrow(train: Path, batch: int, normalize: Normalizer, passes: int) -> float:
    import pyarrow.parquet as pq

    files = dataset.part_files(train)
    started, seen = time.perf_counter(), 0
    for _ in range(passes):
        for f in files:
            for rb in pq.ParquetFile(f).iter_batches(batch_size=batch, columns=["features", "label"]):
                n = rb.num_rows
                flat = np.asarray(rb.column(0).flatten()).reshape(n, -1)  # (n, features), no copy
                normalize(flat)  # (n, *feature_shape) float32 tensor
                torch.from_numpy(np.asarray(rb.column(1)))  # (n,) int64 labels
                seen += n
    return seen / (time.perf_counter() - started)


def _spark_converter(spark: Any, config: PipelineConfig, train: Path, report: harness.Report) -> tuple[Any, float]:
    """(Petastorm's converter of the train split, seconds to materialize it), or (None, 0) if unavailable."""
    try:
        from petastorm.spark import SparkDatasetConverter, make_spark_converter
    except ImportError as e:  # pragma: no cover - petastorm is a pinned dependency
        report.skip("petastorm_spark_converter", f"petastorm.spark cannot be imported: {e}")
        return None, 0.0
    cache = (harness.bench_dir(config) / "petastorm_cache").resolve()
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, "file://" + str(cache))
    started = time.perf_counter()
    converter = make_spark_converter(spark.read.parquet(str(train)).select("features", "label"))
    return converter, round(time.perf_counter() - started, 3)


def _converter_pass(converter: Any, batch: int, normalize: Normalizer, passes: int) -> float:
    began, seen = time.perf_counter(), 0
    for _ in range(passes):
        with converter.make_torch_dataloader(batch_size=batch, num_epochs=1, workers_count=1) as batches:
            for b in batches:
                normalize(b["features"].numpy())  # the same normalized (B, *feature_shape) batch
                seen += len(b["label"])
    return seen / (time.perf_counter() - began)


DESCRIPTIONS = {
    "dlpipe_petastorm": "pipelines.train.loader.epoch_batches, {workers} reader thread(s)",
    "dlpipe_petastorm_workers2": "pipelines.train.loader.epoch_batches, 2 reader threads",
    "dlpipe_petastorm_rg64": "pipelines.train.loader.epoch_batches on the same data with {rg}-row row groups",
    "petastorm_reader_only": "profile: Petastorm's reader exactly as the loader opens it (shuffled row groups and "
                             "rows), rows to NumPy, without batching or normalizing",
    "petastorm_reader_numpy_shuffle": "profile: the same reader without Petastorm's shuffle_rows, rows shuffled "
                                      "instead by a seeded NumPy permutation per row group",
    "pyarrow_numpy_torch": "pyarrow ParquetFile.iter_batches -> NumPy -> torch (no shuffling)",
    "petastorm_spark_converter": "petastorm make_spark_converter(df).make_torch_dataloader, 1 reader thread "
                                 "(materialization timed separately)",
}
