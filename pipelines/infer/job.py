"""Batch inference job (``dlpipe infer`` / ``spark-submit pipelines/__main__.py infer``).

Reads only the model artifact and its input: raw records (``infer.source``: images, CSV, JSON
lines, Parquet, preprocessed as the artifact records), any Parquet with a ``features`` column
(``infer.input``), or an ETL split (``infer.split``, any split the dataset has). Writes one
prediction row per input record (id, the model's outputs, error, and the ``infer.keep_columns``
of the input), publishes them atomically, and evaluates them when the input has labels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from pipelines.artifact import artifact_path, load_artifact, preprocessing
from pipelines.config import ConfigError, PipelineConfig
from pipelines.infer.evaluate import evaluate
from pipelines.infer.inputs import ScoringInput, label_index, read_input, scored_features
from pipelines.infer.scoring import check_kept, predict
from pipelines.publish import atomic_dir, check_writable
from pipelines.session import check_device, describe

__all__ = ["main", "predict", "model_artifact", "keep_columns", "ModelNotFoundError"]


class ModelNotFoundError(FileNotFoundError):
    """The model artifact to score with does not exist; the message names the setting and the fix."""


def main(spark: SparkSession, config: PipelineConfig) -> dict[str, Any]:
    """Score the configured input, publish predictions, and evaluate when labels exist."""
    ic = config.infer
    check_device(spark, ic.device, "infer.device")
    run_dir = config.run_dir()
    artifact = model_artifact(config)
    output = Path(ic.output or run_dir / "predictions")
    check_writable(output, "infer.output" if ic.output else "workdir")
    check_writable(run_dir / "report", "workdir")
    model, meta = load_artifact(artifact)
    scoring = read_input(spark, config, meta)
    keep = keep_columns(ic.keep_columns, scoring)
    try:
        check_kept(tuple(keep), list(scoring.frame.columns), ["id", *model.output_schema(), "error"])
    except ValueError as e:
        raise ConfigError(f"infer.keep_columns={ic.keep_columns}: {e}") from None
    describe(spark, f"infer {Path(scoring.described).name} with {artifact.name}")
    predictions, loads = predict(spark, scoring.frame, artifact, ic.batch_size, keep, device=ic.device,
                                 gpu_batch_size=ic.gpu_batch_size)
    with atomic_dir(output) as tmp:
        predictions.write.mode("overwrite").parquet(str(tmp / "data"))
    written = spark.read.parquet(str(output / "data"))
    rows = written.count()
    bad = written.filter("error IS NOT NULL")
    bad_rows = bad.count()
    print(f"dlpipe infer: {rows} rows scored, {bad_rows} with an error, model loaded {len(loads.value)} time(s) "
          f"in {len(set(loads.value))} worker process(es); predictions in {output}", flush=True)
    if bad_rows:
        shown = "; ".join(f"{r['id'] or '<no id>'}: {r['error']}" for r in bad.orderBy("id").limit(3).collect())
        print(f"dlpipe infer: rows with an error have null outputs, e.g. {shown}", flush=True)
    if scoring.empty_files:
        print(f"dlpipe infer: {len(scoring.empty_files)} input file(s) are empty (0 bytes): "
              + ", ".join(scoring.empty_files[:5]) + (", ..." if len(scoring.empty_files) > 5 else ""), flush=True)
    result: dict[str, Any] = {"rows": rows, "bad_rows": bad_rows, "predictions": str(output),
                              "model_loads": len(loads.value), "artifact": str(artifact),
                              "input": scoring.described, "features_path": scoring.features_path,
                              "split": "" if ic.input or ic.source.kind else ic.split}
    label = label_index(written, scoring, list(meta["label_names"]))
    if label is not None:
        scored = written.select(*model.output_schema(), "error", label.alias("label"))
        features = scored_features(scoring, preprocessing(meta))
        result["eval"] = evaluate(spark, scored, features, artifact, run_dir / "report")
    elif scoring.label_column:
        print(f"dlpipe infer: no evaluation: the label column {scoring.label_column!r} is not among "
              f"infer.keep_columns", flush=True)
    return result


def model_artifact(config: PipelineConfig) -> Path:
    """The artifact file: ``infer.artifact``, else the model of run ``infer.model_run``, else this run's."""
    ic = config.infer
    if ic.artifact:
        artifact, key = Path(ic.artifact), "infer.artifact"
    elif ic.model_run:
        artifact, key = artifact_path(Path(config.workdir) / "runs" / ic.model_run), "infer.model_run"
    else:
        artifact, key = artifact_path(config.run_dir()), "run_id"
    if not artifact.is_file():
        run = ic.model_run or config.run_id
        raise ModelNotFoundError(f"model artifact {artifact} ({key}) does not exist: train first (`dlpipe train` "
                                f"with run_id={run}) or set infer.artifact / infer.model_run")
    return artifact


def keep_columns(requested: list[str], scoring: ScoringInput) -> list[str]:
    """The input columns ``infer.keep_columns`` copies to the predictions (``id`` is always there)."""
    available = [c for c in scoring.columns if c not in ("id", "features")]
    if requested == ["*"]:
        return available
    unknown = [c for c in requested if c not in available and c != "id"]
    if unknown:
        raise ConfigError(f"infer.keep_columns names {unknown}, not column(s) of {scoring.described} (its columns "
                          f"besides the features: {available})")
    return [c for c in requested if c != "id"]

