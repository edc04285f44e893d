"""Evaluation of predictions against labels, chosen by the model's declared task (``models.spec``):
a classifier gets accuracy, per-class precision/recall and a confusion matrix; a reconstructor its
reconstruction error's mean and quantiles against a mean-image baseline; a generator none here
(its samples are scored by ``pipelines.infer.quality``). Written as ``eval.json`` (and the
confusion matrix as a PNG) into the run's report folder, in any store.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

import models
from pipelines import storage
from pipelines.artifact import ArtifactMeta
from pipelines.dataset import Normalization
from pipelines.formats import Record
from pipelines.report import CONFUSION_FILE, plot_confusion

EVAL_FILE = "eval.json"


@dataclass(frozen=True)
class ClassStats(Record):
    precision: float
    recall: float
    support: int


@dataclass(frozen=True)
class Quantiles(Record):
    p50: float
    p90: float
    p99: float


@dataclass(frozen=True)
class Evaluation(Record):
    """``eval.json``: what the model's task is evaluated by (the other fields stay empty)."""

    accuracy: float | None = None
    rows: int | None = None
    per_class: dict[str, ClassStats] | None = None
    confusion_matrix: list[list[int]] | None = None
    label_names: list[str] | None = None
    reconstruction_error: float | None = None
    reconstruction_error_quantiles: Quantiles | None = None
    baseline_reconstruction_error: float | None = None
    error_vs_baseline: float | None = None

    @property
    def empty(self) -> bool:
        return self.accuracy is None and self.reconstruction_error is None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if v is not None}

    def figures(self) -> dict[str, float]:
        """The headline numbers (for tracking and the run summary)."""
        return {k: v for k, v in (("accuracy", self.accuracy), ("reconstruction_error", self.reconstruction_error),
                                  ("baseline_reconstruction_error", self.baseline_reconstruction_error),
                                  ("error_vs_baseline", self.error_vs_baseline)) if v is not None}


def evaluate(predictions: DataFrame, features: DataFrame, meta: ArtifactMeta, report_dir: str) -> Evaluation | None:
    """Metrics of ``predictions``: the model's outputs, ``error`` and ``label`` (the class index of
    the row's label; null when unknown) side by side; None when the model's task has no
    evaluation here. ``features`` (the scored rows' feature vectors) gives the mean-image baseline
    of reconstruction errors."""
    task = models.spec(meta.model_name).task
    good = predictions.filter("error IS NULL")
    if task == models.CLASSIFIER:
        label_names = list(meta.label_names)
        known = good.filter(F.col("label").between(0, len(label_names) - 1))
        confusion = np.zeros((len(label_names), len(label_names)), dtype=np.int64)
        for row in known.groupBy("label", "prediction").count().collect():
            confusion[row["label"], row["prediction"]] = row["count"]
        result = classification_metrics(confusion, label_names)
        storage.write_bytes(storage.join(report_dir, CONFUSION_FILE), plot_confusion(confusion, label_names))
    elif task == models.RECONSTRUCTOR:
        q = good.approxQuantile("reconstruction_error", [0.5, 0.9, 0.99], 0.001)
        overall = good.agg(F.mean("reconstruction_error")).first()
        assert overall is not None  # an aggregate over the whole frame has one row
        mean = float(overall[0])
        baseline = mean_image_baseline(features, meta.normalization)
        result = Evaluation(reconstruction_error=mean, reconstruction_error_quantiles=Quantiles(*q),
                            baseline_reconstruction_error=baseline,
                            error_vs_baseline=mean / baseline if baseline else None)
    else:
        return None
    storage.write_text(storage.join(report_dir, EVAL_FILE), result.to_json())
    return result


def classification_metrics(confusion: NDArray[np.int64], label_names: list[str]) -> Evaluation:
    """Accuracy, per-class precision and recall from a (true x predicted) confusion matrix."""
    total = confusion.sum()
    tp = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    per_class = {
        name: ClassStats(precision=float(tp[i] / predicted[i]) if predicted[i] else 0.0,
                         recall=float(tp[i] / actual[i]) if actual[i] else 0.0, support=int(actual[i]))
        for i, name in enumerate(label_names)
    }
    return Evaluation(accuracy=float(tp.sum() / total) if total else 0.0, rows=int(total), per_class=per_class,
                      confusion_matrix=confusion.tolist(), label_names=list(label_names))


def mean_image_baseline(frame: DataFrame, normalization: Normalization) -> float:
    """Per-element MSE of predicting the split's own mean image, in the model's normalized space.

    The variance of each pixel over the rows, divided by its normalization variance, averaged over
    pixels; computed with Spark aggregations (one value per pixel reaches the driver).
    """
    per_pixel = (frame.select(F.posexplode("features").alias("pos", "value"))
                 .groupBy("pos").agg(F.var_pop("value").alias("var")).orderBy("pos").collect())
    variances = np.array([r["var"] for r in per_pixel], dtype=np.float64)
    std = np.asarray(normalization.std, dtype=np.float64)
    return float(np.mean(variances / std ** 2))
