"""Inference stage: score raw records or features with a model artifact in Spark, then evaluate.

``job`` runs the stage (``main(spark, config)``); ``inputs`` reads what it scores (a split, any
Parquet with features, or raw records preprocessed as the artifact records); ``scoring`` is the
``mapInArrow`` scorer with its per-worker model cache; ``udf`` offers the same scoring as a Spark
SQL function for users' own code (:func:`model_udf`); ``evaluate`` turns predictions + labels into
metrics (``eval.json``); ``predict`` scores a batch on one device with torch alone (no Spark).
"""
from typing import Any

__all__ = ["model_udf"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `pipelines.infer.predict` loads without Spark (the GPU check).
    if name == "model_udf":
        from pipelines.infer.udf import model_udf

        return model_udf
    raise AttributeError(f"module 'pipelines.infer' has no attribute {name!r}")
