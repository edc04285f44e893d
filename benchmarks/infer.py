"""``python -m benchmarks infer``: the batch inference job against one PyTorch process and ``predict_batch_udf``.

Measures rows/s. All three score the same Parquet (the train split of the base dataset, shared with
the loader benchmark) with the same artifact (``model.name``/``model.params``) and batch size
(``infer.batch_size``), taking turns round by round, and write id plus every output the model
declares (``model.output_schema()``) as Parquet:

- ``dlpipe_infer``: ``pipelines.infer.scoring.predict`` (``mapInArrow``) + ``DataFrame.write.parquet``,
  one torch thread per Spark task, as many tasks as cores;
- ``torch_1_process``: one PyTorch process with as many threads as Spark has cores, reading with
  pyarrow and writing with pyarrow (``benchmarks.workers``);
- ``predict_batch_udf``: ``pyspark.ml.functions.predict_batch_udf`` with a ``make_predict_fn`` that loads
  the same artifact (one torch thread per task, as dlpipe);
- ``dlpipe_infer_no_drift``: dlpipe's job with an artifact that has no training-data summary, so its
  tasks summarize nothing: ``drift_summary_cost`` = dlpipe_infer / it, what the drift gates cost scoring.

The baselines only use the model contract (``predict`` returns the outputs ``output_schema``
declares), so any dlpipe model can be benchmarked. The model is freshly initialized (throughput
does not depend on the weights).
"""
from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from benchmarks import data, harness, procs
from pipelines import dataset
from pipelines.config import PipelineConfig

NAME = "infer"


@dataclass(frozen=True)
class Size:
    """One size: the dataset (the base one, shared with loader) and the rounds of every contender."""

    spec: data.DataSpec
    repeats: int


SIZES = {
    "tiny": Size(data.BASE["tiny"], repeats=1),
    "small": Size(data.BASE["small"], repeats=3),
    "large": Size(data.BASE["large"], repeats=3),
}


def run(spark: Any, config: PipelineConfig, size: str) -> dict[str, Any]:
    """Run the infer benchmark at ``size``; print its table, write ``infer.json``, return its JSON."""
    s = SIZES[size]
    report = harness.Report(NAME, size)
    view = data.view(data.dataset(spark, config, s.spec))
    manifest = view.manifest
    source = view.splits[dataset.TRAIN_SPLIT].files  # the split's Parquet files (local paths)
    work = harness.bench_dir(config) / "infer"
    artifact = _artifact(config, view, work / "model.pt")
    plain_artifact = _without_summary(artifact, work / "model-no-summary.pt")
    batch = config.infer.batch_size
    cores = spark.sparkContext.defaultParallelism
    rows = spark.read.parquet(*source).count()
    report.params = {"dataset": s.spec.key, "rows": rows, "model": config.model.name,
                     "feature_shape": manifest.feature_shape, "batch_size": batch, "spark_cores": cores,
                     "torch_threads_total": cores, "repeats": s.repeats,
                     "input_partitions": spark.read.parquet(*source).rdd.getNumPartitions()}
    measures = _warmed_contenders(spark, report, source, (artifact, plain_artifact), work / "out", batch, cores,
                                  rows)
    harness.log(NAME, f"{len(measures)} contenders on {rows} rows, {s.repeats} rounds")
    figures = harness.interleaved(measures, s.repeats, warmup=0)
    _record(report, figures, cores)
    _ratios(report)
    shutil.rmtree(work / "out", ignore_errors=True)
    return harness.finish(report, config)


def _warmed_contenders(spark: Any, report: harness.Report, source: list[str], artifacts: tuple[Path, Path],
                       out: Path, batch: int, cores: int, rows: int) -> dict[str, Callable[[], float]]:
    """The contenders, each a call measuring one run in rows/s writing to ``out``; the Spark ones have
    run once (Python workers, model loads), and predict_batch_udf is skipped in ``report`` if it cannot run.
    ``artifacts``: the model with its training-data summary (drift measured while scoring) and without."""
    from pipelines.infer import scoring

    artifact, plain_artifact = artifacts

    def timed(write: Callable[[str], None]) -> float:
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        write(str(out))
        return rows / (time.perf_counter() - started)

    def dlpipe_job(folder: str, model: Path = artifact) -> None:
        predictions, _ = scoring.predict(spark, spark.read.parquet(*source), str(model), batch)
        predictions.write.mode("overwrite").parquet(folder)

    def dlpipe_no_drift(folder: str) -> None:
        dlpipe_job(folder, plain_artifact)

    def torch_process() -> float:
        shutil.rmtree(out, ignore_errors=True)
        result = procs.run_worker({"job": "infer_torch", "files": source, "artifact": str(artifact),
                                   "output": str(out), "batch": batch, "threads": cores},
                                  threads=cores, timeout_s=1800)
        rows: int = result["rows"]
        seconds: float = result["seconds"]
        return rows / seconds

    measures = {"dlpipe_infer": lambda: timed(dlpipe_job), "torch_1_process": torch_process,
                "dlpipe_infer_no_drift": lambda: timed(dlpipe_no_drift)}
    harness.log(NAME, "warm-up: dlpipe's job (with and without drift) and predict_batch_udf once each (Python "
                      "workers, model loads)")
    timed(dlpipe_job)
    timed(dlpipe_no_drift)
    try:
        udf_job = _predict_batch_udf_job(spark, source, artifact, batch)
        timed(udf_job)
        measures["predict_batch_udf"] = lambda: timed(udf_job)
    except Exception as e:  # noqa: BLE001 - a contender that cannot run here is recorded, not faked
        report.skip_error("predict_batch_udf", e)
    return measures


def _record(report: harness.Report, figures: dict[str, list[float]], cores: int) -> None:
    """Add every measured contender's figures to ``report``, with what it ran."""
    descriptions = {
        "dlpipe_infer": "pipelines.infer.scoring.predict (mapInArrow) -> Parquet",
        "torch_1_process": f"one PyTorch process, {cores} threads: pyarrow read -> predict -> pyarrow write "
                           "(timed inside the process, from loading the model to the written file)",
        "predict_batch_udf": "pyspark.ml.functions.predict_batch_udf, same artifact and batch size -> Parquet",
        "dlpipe_infer_no_drift": "dlpipe_infer with an artifact without its training-data summary (no drift "
                                 "summarized while scoring)",
    }
    for key, values in figures.items():
        report.add(key, values, "rows/s", descriptions[key])


def _ratios(report: harness.Report) -> None:
    """dlpipe's job against the two baselines, and what limits it where it misses a target."""
    dl = report.median("dlpipe_infer")
    report.ratios["ratio_vs_torch"] = harness.ratio(dl, report.median("torch_1_process"))
    report.ratios["ratio_vs_predict_batch_udf"] = harness.ratio(dl, report.median("predict_batch_udf"))
    report.ratios["drift_summary_cost"] = harness.ratio(dl, report.median("dlpipe_infer_no_drift"))
    if harness.meets("ratio_vs_torch", report.ratios["ratio_vs_torch"]) is False:
        report.limits["ratio_vs_torch"] = TORCH_LIMIT
    if harness.meets("ratio_vs_predict_batch_udf", report.ratios["ratio_vs_predict_batch_udf"]) is False:
        report.limits["ratio_vs_predict_batch_udf"] = UDF_LIMIT


TORCH_LIMIT = (
    "Each Spark task moves every batch from the JVM to its Python worker over a socket as Arrow and "
    "back, and the JVM writes the Parquet; the single process reads and writes Parquet in place. "
    "With few input files there are also only as many tasks as files."
)
UDF_LIMIT = (
    "Both run the same model on the same Arrow batches; the difference is the per-batch conversion "
    "(predict_batch_udf goes through pandas and a Series of arrays)."
)


def _artifact(config: PipelineConfig, view: dataset.DatasetView, path: Path) -> Path:
    """A dlpipe model artifact of ``model.name`` for the dataset (fresh weights, fixed seed)."""
    import torch

    from pipelines.artifact import artifact_meta, save_artifact

    torch.manual_seed(config.train.seed)
    model = data.build_model(config.model.name, config.model.params, view.manifest.to_dict())
    save_artifact(str(path), model, artifact_meta(model, view, config))
    return path


def _without_summary(artifact: Path, path: Path) -> Path:
    """A copy of ``artifact`` without its training-data summary (what an artifact of an older dlpipe is)."""
    import torch

    payload = torch.load(artifact, weights_only=True)
    payload["training_summary"] = None
    torch.save(payload, path)
    return path


def _predict_batch_udf_job(spark: Any, source: list[str], artifact: Path, batch: int) -> Callable[[str], None]:
    """The ``predict_batch_udf`` contender: a function writing the id and model outputs of the Parquet
    files ``source`` to a folder."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from pipelines.artifact import load_artifact

    artifact_path = str(artifact.resolve())
    model, meta = load_artifact(artifact_path)
    schema = model.output_schema()  # name -> (dtype, per-row shape): the UDF returns exactly these
    num_features = math.prod(meta.feature_shape)
    del model

    def make_predict_fn() -> Callable[[NDArray[np.float32]], dict[str, NDArray[Any]]]:  # nested: shipped by value
        import torch

        from pipelines.artifact import load_artifact

        torch.set_num_threads(1)  # one core per task, as dlpipe's job
        model, meta = load_artifact(artifact_path)
        normalize = meta.normalizer()

        def predict(features: NDArray[np.float32]) -> dict[str, NDArray[Any]]:
            with torch.inference_mode():
                out = model.predict(normalize(features))
            # predict_batch_udf takes a struct field as a 1-D (scalars) or 2-D (arrays) array per batch.
            return {name: out[name].numpy().astype(dtype, copy=False).reshape(len(features), -1) if shape
                    else out[name].numpy().astype(dtype, copy=False)
                    for name, (dtype, shape) in schema.items()}

        return predict

    return_type = T.StructType([
        T.StructField(name, T.ArrayType(_spark_type(dtype)) if shape else _spark_type(dtype))
        for name, (dtype, shape) in schema.items()])
    score = predict_batch_udf(make_predict_fn, return_type=return_type, batch_size=batch,
                              input_tensor_shapes=[[num_features]])

    def job(out: str) -> None:
        frame = spark.read.parquet(*source)
        scored = frame.select("id", score("features").alias("p"))
        scored.select("id", *[F.col(f"p.{name}").alias(name) for name in schema]).write.mode("overwrite").parquet(out)

    return job


def _spark_type(dtype: str) -> Any:
    """The Spark type of a declared output dtype (the model contract has these two)."""
    from pyspark.sql import types as T

    return {"int64": T.LongType(), "float32": T.FloatType()}[dtype]
