"""``dlpipe bench infer``: the batch inference job against one PyTorch process and ``predict_batch_udf``.

All three score the same Parquet, taking turns round by round, (the train split of the loader/train dataset) with the same CNN
artifact and batch size (``infer.batch_size``) and write id, prediction and probabilities as Parquet:

- ``dlpipe_infer``: ``pipelines.infer.predict`` (``mapInArrow``) + ``DataFrame.write.parquet``,
  one torch thread per Spark task, as many tasks as cores;
- ``torch_1_process``: one PyTorch process with as many threads as Spark has cores, reading with
  pyarrow and writing with pyarrow;
- ``predict_batch_udf``: ``pyspark.ml.functions.predict_batch_udf`` with a ``make_predict_fn`` that loads
  the same artifact (one torch thread per task, as dlpipe).

The model is freshly initialized (throughput does not depend on the weights).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import dataset
from pipelines.bench import common
from pipelines.bench.loader import SIZES as DATA_SIZES
from pipelines.config import PipelineConfig

NAME = "infer"
SIZES = {
    "tiny": {"data": DATA_SIZES["tiny"]["data"], "repeats": 2},
    "small": {"data": DATA_SIZES["small"]["data"], "repeats": 3},
    "large": {"data": DATA_SIZES["large"]["data"], "repeats": 3},
}


def run(spark: Any, config: PipelineConfig, size: str) -> dict[str, Any]:
    from pipelines import infer

    s = SIZES[size]
    report = common.Report(NAME, size)
    ds = common.dataset(spark, config, s["data"])
    manifest = dataset.load_manifest(ds)
    source = dataset.split_paths(ds)["train"]
    work = common.bench_dir(config) / "infer"
    artifact = _artifact(config, manifest, work / "model.pt")
    batch = config.infer.batch_size
    cores = spark.sparkContext.defaultParallelism
    rows = spark.read.parquet(source).count()
    report.params = {"dataset": s["data"].key, "rows": rows, "model": config.model.name,
                     "feature_shape": manifest["feature_shape"], "batch_size": batch, "spark_cores": cores,
                     "torch_threads_total": cores, "repeats": s["repeats"],
                     "input_partitions": spark.read.parquet(source).rdd.getNumPartitions()}

    def timed(write) -> float:
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        write(str(out))
        return rows / (time.perf_counter() - started)

    def dlpipe_job(out: str) -> None:
        predictions, _ = infer.predict(spark, spark.read.parquet(source), artifact, batch)
        predictions.write.mode("overwrite").parquet(out)

    def torch_process() -> float:
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        result = common.run_worker("pipelines.bench.workers", {
            "job": "infer_torch", "path": source, "artifact": str(artifact), "output": str(out),
            "batch": batch, "threads": cores}, threads=cores, timeout_s=1800)
        return result["rows"] / result["seconds"]

    measures = {"dlpipe_infer": lambda: timed(dlpipe_job), "torch_1_process": torch_process}
    common.log(NAME, "warm-up: dlpipe's job and predict_batch_udf once each (Python workers, model loads)")
    timed(dlpipe_job)
    try:
        udf_job = _predict_batch_udf_job(spark, source, artifact, manifest, batch)
        timed(udf_job)
        measures["predict_batch_udf"] = lambda: timed(udf_job)
    except Exception as e:  # a contender that cannot run here is recorded, not faked
        report.skip("predict_batch_udf", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    common.log(NAME, f"{len(measures)} contenders on {rows} rows, {s['repeats']} rounds")
    figures = common.interleaved(measures, s["repeats"], warmup=0)
    descriptions = {
        "dlpipe_infer": "pipelines.infer.predict (mapInArrow) -> Parquet",
        "torch_1_process": f"one PyTorch process, {cores} threads: pyarrow read -> predict -> pyarrow write "
                           "(timed inside the process, from loading the model to the written file)",
        "predict_batch_udf": "pyspark.ml.functions.predict_batch_udf, same artifact and batch size -> Parquet",
    }
    for key, values in figures.items():
        report.add(key, values, "rows/s", descriptions[key])

    dl = report.median("dlpipe_infer")
    report.ratios["ratio_vs_torch"] = common.ratio(dl, report.median("torch_1_process"))
    report.ratios["ratio_vs_predict_batch_udf"] = common.ratio(dl, report.median("predict_batch_udf"))
    if common.meets("ratio_vs_torch", report.ratios["ratio_vs_torch"]) is False:
        report.limits["ratio_vs_torch"] = TORCH_LIMIT
    if common.meets("ratio_vs_predict_batch_udf", report.ratios["ratio_vs_predict_batch_udf"]) is False:
        report.limits["ratio_vs_predict_batch_udf"] = UDF_LIMIT
    shutil.rmtree(work / "out", ignore_errors=True)
    return common.finish(report, config)


TORCH_LIMIT = (
    "Each Spark task moves every batch from the JVM to its Python worker over a socket as Arrow and "
    "back, and the JVM writes the Parquet; the single process reads and writes Parquet in place. "
    "With few input files there are also only as many tasks as files."
)
UDF_LIMIT = (
    "Both run the same model on the same Arrow batches; the difference is the per-batch conversion "
    "(predict_batch_udf goes through pandas and a Series of arrays)."
)


def _artifact(config: PipelineConfig, manifest: dict[str, Any], path: Path) -> Path:
    """A dlpipe model artifact of ``model.name`` for the dataset (fresh weights, fixed seed)."""
    import torch

    import models
    from pipelines.artifact import save_artifact

    torch.manual_seed(config.train.seed)
    model = models.build(config.model.name, feature_shape=tuple(manifest["feature_shape"]),
                         num_classes=len(manifest["label_names"]), **config.model.params)
    save_artifact(path, model, manifest, dataset.manifest_hash(manifest), config)
    return path


def _predict_batch_udf_job(spark: Any, source: str, artifact: Path, manifest: dict[str, Any], batch: int):
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    artifact_path = str(artifact.resolve())
    num_features = int(np.prod(manifest["feature_shape"]))

    def make_predict_fn():  # nested, so it is shipped by value
        import torch

        from pipelines.artifact import load_artifact
        from pipelines.loader import Normalizer

        torch.set_num_threads(1)  # one core per task, as dlpipe's job
        model, meta = load_artifact(artifact_path)
        normalize = Normalizer.from_stats(meta["normalization"], meta["feature_shape"])

        def predict(features: np.ndarray) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                out = model.predict(normalize(features))
            return {"prediction": out["prediction"].numpy(), "probabilities": out["probabilities"].numpy()}

        return predict

    schema = T.StructType([T.StructField("prediction", T.LongType()),
                           T.StructField("probabilities", T.ArrayType(T.FloatType()))])
    classify = predict_batch_udf(make_predict_fn, return_type=schema, batch_size=batch,
                                 input_tensor_shapes=[[num_features]])

    def job(out: str) -> None:
        frame = spark.read.parquet(source)
        scored = frame.select("id", classify("features").alias("p"))
        scored.select("id", F.col("p.prediction").alias("prediction"),
                      F.col("p.probabilities").alias("probabilities")).write.mode("overwrite").parquet(out)

    return job
