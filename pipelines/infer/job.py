"""Batch inference job (``dlpipe infer`` / ``spark-submit pipelines/__main__.py infer``).

Reads only the model artifact and Parquet: an ETL split (``infer.split``, any split the dataset
has) or any Parquet with a ``features`` column (``infer.input``). Publishes the predictions
atomically and evaluates them when the input has labels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from pipelines import dataset
from pipelines.artifact import artifact_path
from pipelines.config import PipelineConfig
from pipelines.infer.evaluate import evaluate
from pipelines.infer.scoring import predict
from pipelines.publish import atomic_dir, check_writable
from pipelines.session import describe


def main(spark: SparkSession, config: PipelineConfig) -> dict[str, Any]:
    """Score the configured Parquet, publish predictions, and evaluate when labels exist."""
    ic = config.infer
    run_dir = config.run_dir()
    artifact = Path(ic.artifact or artifact_path(run_dir))
    if not artifact.is_file():
        raise FileNotFoundError(f"model artifact {artifact} does not exist: train first (`dlpipe train` with "
                                f"run_id={config.run_id}) or set infer.artifact")
    source = ic.input or input_split(config)
    output = Path(ic.output or run_dir / "predictions")
    check_writable(output, "infer.output" if ic.output else "workdir")
    check_writable(run_dir / "report", "workdir")
    describe(spark, f"infer {Path(source).name} with {artifact.name}")
    frame = spark.read.parquet(str(source))
    predictions, loads = predict(spark, frame, artifact, ic.batch_size)
    with atomic_dir(output) as tmp:
        predictions.write.mode("overwrite").parquet(str(tmp / "data"))
    written = spark.read.parquet(str(output / "data"))
    rows = written.count()
    bad = written.filter("error IS NOT NULL").count()
    print(f"dlpipe infer: {rows} rows scored, {bad} with an error, model loaded {len(loads.value)} time(s) "
          f"in {len(set(loads.value))} worker process(es); predictions in {output}", flush=True)
    result: dict[str, Any] = {"rows": rows, "bad_rows": bad, "predictions": str(output),
                              "model_loads": len(loads.value), "artifact": str(artifact), "input": str(source),
                              "split": "" if ic.input else ic.split}
    if "label" in frame.columns:
        result["eval"] = evaluate(spark, written, frame, artifact, run_dir / "report")
    return result


def input_split(config: PipelineConfig) -> str:
    """The folder of the ETL split ``infer.split`` names; a config error when the dataset lacks it."""
    manifest = dataset.load_manifest(config.dataset_dir)
    return dataset.split_path(config.dataset_dir, manifest, config.infer.split, "infer.split")
