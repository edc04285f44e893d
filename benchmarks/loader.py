"""``python -m benchmarks loader``: a training rank's data path against a plain pyarrow read (the limit).

Measures samples/s. Contenders, each reading the train split of the same ETL output into normalized
torch batches of ``train.batch_size`` rows, in this process with one torch thread (a rank's),
taking turns round by round (``harness.interleaved``):

- ``dlpipe_petastorm``: ``pipelines.train.loader.epoch_batches`` as a rank of 1 runs it (Petastorm
  ``make_batch_reader`` with shuffled row groups, Arrow to NumPy without pandas, rows shuffled by a
  seeded NumPy permutation, ``train.reader_workers`` reader threads);
- ``dlpipe_petastorm_workers2``: the same with 2 reader threads;
- ``dlpipe_arrow``: the same with ``train.loader=arrow``: the same batches, the same row groups in the
  same order, read by pyarrow alone (``ParquetFile.read_row_group``) in the loader's thread, no Petastorm;
- ``dlpipe_petastorm_etl_default``: the same on the same rows written with the row groups the ETL
  picks by default (``etl.rows_per_row_group=0``: sized for streaming), what users get;
- ``petastorm_own_path`` (a profile): Petastorm's reader used as Petastorm intends (its ``shuffle_rows``,
  its pandas conversion), to NumPy, no batching: what the loader did before;
- ``pyarrow_numpy_torch`` (the limit): ``ParquetFile.iter_batches`` of whole row groups -> NumPy ->
  batches -> torch, no shuffling;
- ``petastorm_spark_converter``: Petastorm's ``make_spark_converter(df).make_torch_dataloader``
  (its materialization into the converter's cache is timed separately).

``ratio_vs_pyarrow`` = dlpipe_petastorm / pyarrow_numpy_torch; ``ratio_arrow_vs_petastorm`` =
dlpipe_arrow / dlpipe_petastorm (the two values of ``train.loader``). Every contender reads the dataset
format's ``features`` and ``label`` columns (``pipelines.dataset``), whatever model trains on them.
"""
from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks import data, harness
from pipelines import dataset, storage
from pipelines.artifact import Normalizer
from pipelines.config import PipelineConfig
from pipelines.dataset import SplitFiles
from pipelines.train import loader

# Normalizer wraps pyarrow's read-only buffers without a copy; torch warns once about that.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

NAME = "loader"


@dataclass(frozen=True)
class Size:
    """One size: the dataset (the base one, shared with infer), passes over the train split per
    measurement, repeats, whether to add the contender on the ETL's default row groups."""

    spec: data.DataSpec
    passes: int
    repeats: int
    etl_default: bool


SIZES = {
    "tiny": Size(data.BASE["tiny"], passes=1, repeats=1, etl_default=False),
    "small": Size(data.BASE["small"], passes=2, repeats=5, etl_default=True),
    "large": Size(data.BASE["large"], passes=1, repeats=5, etl_default=True),
}


def etl_default_rows(config: PipelineConfig, spec: data.DataSpec) -> int:
    """The rows per row group the ETL would pick for ``spec`` by default (``etl.rows_per_row_group=0``)."""
    from pipelines.etl.parts import streaming_rows_per_row_group

    train_rows = round(spec.num_samples * dict(spec.splits)[dataset.TRAIN_SPLIT])
    return streaming_rows_per_row_group(train_rows, spec.image_size ** 2, config.train.num_workers,
                                        config.etl.row_group_mib)


def run(spark: Any, config: PipelineConfig, size: str) -> dict[str, Any]:
    """Run the loader benchmark at ``size``; print its table, write ``loader.json``, return its JSON."""
    s = SIZES[size]
    spec = s.spec
    report = harness.Report(NAME, size)
    view = data.view(data.dataset(spark, config, spec))
    manifest = view.manifest
    train = view.splits[dataset.TRAIN_SPLIT]
    batch = config.train.batch_size
    normalize = Normalizer.from_stats(manifest.normalization, manifest.feature_shape)
    rows = train.rows
    report.params = {"dataset": spec.key, "train_rows": rows, "feature_shape": manifest.feature_shape,
                     "rows_per_row_group": spec.rows_per_row_group, "batch_size": batch, "passes": s.passes,
                     "repeats": s.repeats, "reader_workers": config.train.reader_workers, "torch_threads": 1}
    measures = {
        "dlpipe_petastorm": lambda: _dlpipe(train, batch, normalize, config.train.reader_workers, s.passes),
        "dlpipe_petastorm_workers2": lambda: _dlpipe(train, batch, normalize, 2, s.passes),
        "dlpipe_arrow": lambda: _dlpipe(train, batch, normalize, config.train.reader_workers, s.passes, "arrow"),
    }
    default_rows = etl_default_rows(config, spec)
    report.params["etl_default_rows_per_row_group"] = default_rows
    if s.etl_default:
        default_layout = data.view(data.dataset(spark, config, spec.with_row_groups(default_rows))).splits[
            dataset.TRAIN_SPLIT]
        measures["dlpipe_petastorm_etl_default"] = lambda: _dlpipe(default_layout, batch, normalize,
                                                                   config.train.reader_workers, s.passes)
    measures["petastorm_own_path"] = lambda: _petastorm_own_path(train, s.passes)
    measures["pyarrow_numpy_torch"] = lambda: _pyarrow(train, batch, normalize, s.passes)
    converter, materialize_s = _spark_converter(spark, config, train, report)
    if converter is not None:
        measures["petastorm_spark_converter"] = lambda: _converter_pass(converter, batch, normalize, s.passes)
    try:
        harness.log(NAME, f"{len(measures)} contenders, {rows} rows, batch {batch}, {s.repeats} rounds")
        figures = harness.interleaved(measures, s.repeats, torch_threads=1)
    finally:
        if converter is not None:
            converter.delete()
            shutil.rmtree(harness.bench_dir(config) / "petastorm_cache", ignore_errors=True)
    for key, values in figures.items():
        report.add(key, values, "samples/s", DESCRIPTIONS[key].format(workers=config.train.reader_workers,
                                                                      rg=default_rows),
                   **({"materialize_seconds": materialize_s} if key == "petastorm_spark_converter" else {}))

    _ratios(report)
    return harness.finish(report, config)


def _ratios(report: harness.Report) -> None:
    """Each dlpipe contender against the plain pyarrow read, and why the loader is where it is."""
    dl, limit = report.median("dlpipe_petastorm"), report.median("pyarrow_numpy_torch")
    report.ratios["ratio_vs_pyarrow"] = harness.ratio(dl, limit)
    report.ratios["ratio_vs_pyarrow_workers2"] = harness.ratio(report.median("dlpipe_petastorm_workers2"), limit)
    report.ratios["ratio_arrow_vs_petastorm"] = harness.ratio(report.median("dlpipe_arrow"), dl)
    report.ratios["ratio_arrow_vs_pyarrow"] = harness.ratio(report.median("dlpipe_arrow"), limit)
    report.ratios["ratio_etl_default_vs_pyarrow"] = harness.ratio(report.median("dlpipe_petastorm_etl_default"), limit)
    report.ratios["ratio_spark_converter_vs_pyarrow"] = harness.ratio(report.median("petastorm_spark_converter"),
                                                                      limit)
    report.ratios = {k: v for k, v in report.ratios.items() if v is not None or k == "ratio_vs_pyarrow"}
    if (report.ratios.get("ratio_vs_pyarrow") or 0) > 1:
        report.notes.append(
            "The loader beats the plain read because it overlaps: Petastorm's reader thread decodes Parquet "
            "(without the GIL) while the loader's producer thread shuffles, batches and normalizes the previous "
            "row group, and on 2 cores both run at once; the plain read does all of it in one thread. The "
            "loader no longer uses Petastorm's own row shuffle or its pandas conversion (the petastorm_own_path "
            "profile): each row group's Arrow table becomes one (rows, features) array, and rows are shuffled "
            "by a NumPy permutation seeded by (seed, pass, row group).")
    for name in ("ratio_vs_pyarrow", "ratio_etl_default_vs_pyarrow"):
        if harness.meets(name, report.ratios.get(name)) is False:
            report.limits[name] = limit_text(report)


def limit_text(report: harness.Report) -> str:
    """What limits the loader against the plain pyarrow read, with this run's own figures."""
    limit, dl = report.median("pyarrow_numpy_torch"), report.median("dlpipe_petastorm")
    parts = []
    own = report.median("petastorm_own_path")
    if own and limit and dl:
        parts.append(
            f"Petastorm's own path (its `shuffle_rows`, its pandas conversion, one NumPy object per row stacked "
            f"again) reaches {own / limit:.0%} of the plain pyarrow read by itself; the loader bypasses both "
            f"(Arrow's flat buffer reshaped, a seeded NumPy permutation per row group) and reaches {dl / limit:.0%}. "
            "What is left is Petastorm's per-row-group work (a worker-pool round trip, opening the piece, the "
            "row-group shuffle) and the shuffle's copy, which the unshuffled pyarrow read never makes.")
    default, w2 = report.median("dlpipe_petastorm_etl_default"), report.median("dlpipe_petastorm_workers2")
    if default and limit:
        parts.append(f"With the row groups the ETL picks by default for this data "
                     f"({report.params.get('etl_default_rows_per_row_group')} rows) the loader reaches "
                     f"{default / limit:.0%} of the limit.")
    if w2 and limit:
        parts.append(f"A second reader thread reaches {w2 / limit:.0%} (it gives up the reproducible order that "
                     "`train.reader_workers=1` keeps), and only while a core is otherwise idle.")
    return " ".join(parts)


def _dlpipe(train: SplitFiles, batch: int, normalize: Normalizer, workers: int, passes: int,
            reader: str = "petastorm") -> float:
    """Samples/s of ``passes`` epochs of ``epoch_batches`` as one rank of one reads them (``reader``: train.loader)."""
    steps = train.rows // batch
    started, seen = time.perf_counter(), 0
    for p in range(passes):
        for b in loader.epoch_batches(train, loader.BatchOrder(batch_size=batch, steps=steps, seed=p), rank=0, size=1,
                                      normalize=normalize, loader=reader, workers=workers):
            seen += len(b["label"])
    return seen / (time.perf_counter() - started)


def _petastorm_own_path(train: SplitFiles, passes: int) -> float:
    """Petastorm's reader as Petastorm intends it: its row shuffle and its pandas conversion."""
    from petastorm import make_batch_reader

    started, seen = time.perf_counter(), 0
    for p in range(passes):
        with make_batch_reader([storage.petastorm_url(f) for f in train.files], schema_fields=["features", "label"],
                               shuffle_row_groups=True, shuffle_rows=True, seed=p, num_epochs=1, workers_count=1,
                               reader_pool_type="thread") as reader:
            for chunk in reader:
                np.asarray(chunk.features, dtype=np.float32)  # (rows, features), stacked by Petastorm
                seen += len(np.asarray(chunk.label, dtype=np.int64))
    return seen / (time.perf_counter() - started)


def _pyarrow(train: SplitFiles, batch: int, normalize: Normalizer, passes: int) -> float:
    import pyarrow.parquet as pq

    files = train.files  # local paths: the benchmarks run on this machine's disk
    started, seen = time.perf_counter(), 0
    for _ in range(passes):
        for f in files:
            # Whole row groups, then batches sliced from them: the fewest Arrow calls per row.
            for rb in pq.ParquetFile(f).iter_batches(batch_size=1 << 16, columns=["features", "label"]):
                flat = np.asarray(rb.column(0).flatten()).reshape(rb.num_rows, -1)  # (rows, features), no copy
                labels = np.asarray(rb.column(1))
                for start in range(0, rb.num_rows, batch):
                    normalize(flat[start:start + batch])  # (batch, *feature_shape) float32 tensor
                    torch.from_numpy(labels[start:start + batch])  # (batch,) int64 labels
                seen += rb.num_rows
    return seen / (time.perf_counter() - started)


def _spark_converter(spark: Any, config: PipelineConfig, train: SplitFiles,
                     report: harness.Report) -> tuple[Any, float]:
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
    converter = make_spark_converter(spark.read.parquet(*train.files).select("features", "label"))
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
    "dlpipe_arrow": "pipelines.train.loader.epoch_batches with train.loader=arrow (the same batches; pyarrow "
                    "alone, no Petastorm)",
    "dlpipe_petastorm_etl_default": "pipelines.train.loader.epoch_batches on the same rows in the ETL's default "
                                    "row groups ({rg} rows, sized for streaming)",
    "petastorm_own_path": "profile: Petastorm's reader with its own shuffle_rows and pandas conversion (the "
                          "loader's path before), rows to NumPy, without batching or normalizing",
    "pyarrow_numpy_torch": "pyarrow ParquetFile.iter_batches of whole row groups -> NumPy -> batches -> torch "
                           "(no shuffling)",
    "petastorm_spark_converter": "petastorm make_spark_converter(df).make_torch_dataloader, 1 reader thread "
                                 "(materialization timed separately)",
}
