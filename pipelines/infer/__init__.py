"""Inference stage: score Parquet with a model artifact in a vectorized Spark job, then evaluate.

``job`` runs the stage (``main(spark, config)``); ``scoring`` is the ``mapInArrow`` scorer with its
per-worker model cache; ``evaluate`` turns predictions + labels into metrics (``eval.json``).
"""
