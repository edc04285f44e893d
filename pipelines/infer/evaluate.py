"""Evaluation of predictions against labels, chosen by the model's declared outputs (not its kind):
``prediction`` -> accuracy, per-class precision/recall, confusion matrix;
``reconstruction_error`` -> mean and quantiles. Written as ``eval.json`` (and the confusion matrix
as a PNG) into the run's report folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.artifact import load_metadata
from pipelines.publish import write_json_atomic
from pipelines.report import CONFUSION_FILE, plot_confusion


def evaluate(spark: SparkSession, predictions: DataFrame, features: DataFrame, artifact: Path,
             report_dir: Path) -> dict[str, Any]:
    """Metrics of ``predictions``: the model's outputs, ``error`` and ``label`` (the class index of
    the row's label; null when unknown) side by side. ``features`` (the scored rows' feature
    vectors) gives the mean-image baseline of reconstruction errors."""
    meta = load_metadata(artifact)
    label_names = list(meta["label_names"])
    good = predictions.filter("error IS NULL")
    result: dict[str, Any] = {}
    if "prediction" in predictions.columns:
        known = good.filter(F.col("label").between(0, len(label_names) - 1))
        pairs = known.groupBy("label", "prediction").count().collect()
        confusion = np.zeros((len(label_names), len(label_names)), dtype=np.int64)
        for row in pairs:
            confusion[row["label"], row["prediction"]] = row["count"]
        result.update(classification_metrics(confusion, label_names))
        plot_confusion(confusion, label_names, report_dir / CONFUSION_FILE)
    if "reconstruction_error" in predictions.columns:
        q = good.approxQuantile("reconstruction_error", [0.5, 0.9, 0.99], 0.001)
        mean = good.agg(F.mean("reconstruction_error")).first()[0]
        result["reconstruction_error"] = float(mean)
        result["reconstruction_error_quantiles"] = {"p50": q[0], "p90": q[1], "p99": q[2]}
        baseline = mean_image_baseline(features, meta["normalization"])
        result["baseline_reconstruction_error"] = baseline
        result["error_vs_baseline"] = float(mean) / baseline if baseline else None
    write_json_atomic(report_dir / "eval.json", result)
    return result


def classification_metrics(confusion: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision and recall from a (true x predicted) confusion matrix."""
    total = confusion.sum()
    tp = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    per_class = {
        name: {"precision": float(tp[i] / predicted[i]) if predicted[i] else 0.0,
               "recall": float(tp[i] / actual[i]) if actual[i] else 0.0,
               "support": int(actual[i])}
        for i, name in enumerate(label_names)
    }
    return {"accuracy": float(tp.sum() / total) if total else 0.0, "rows": int(total),
            "per_class": per_class, "confusion_matrix": confusion.tolist(), "label_names": label_names}


def mean_image_baseline(frame: DataFrame, normalization: dict[str, Any]) -> float:
    """Per-element MSE of predicting the split's own mean image, in the model's normalized space.

    The variance of each pixel over the rows, divided by its normalization variance, averaged over
    pixels; computed with Spark aggregations (one value per pixel reaches the driver).
    """
    per_pixel = (frame.select(F.posexplode("features").alias("pos", "value"))
                 .groupBy("pos").agg(F.var_pop("value").alias("var")).orderBy("pos").collect())
    variances = np.array([r["var"] for r in per_pixel], dtype=np.float64)
    std = np.asarray(normalization["std"], dtype=np.float64)
    return float(np.mean(variances / std ** 2))
