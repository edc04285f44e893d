"""Scoring helpers and evaluation metrics (Arrow and NumPy only; no Spark session)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import types as T

from pipelines.infer.evaluate import classification_metrics
from pipelines.infer.scoring import features_matrix, output_schema


def test_a_clean_column_becomes_one_matrix_without_errors():
    column = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], type=pa.list_(pa.float32()))
    matrix, errors = features_matrix(column, 2)
    assert matrix.dtype == np.float32 and matrix.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert errors == [None, None, None]


def test_bad_rows_get_zeros_and_a_reason_while_good_rows_keep_their_values():
    column = pa.chunked_array([pa.array([[1.0, 2.0], None, [1.0], [float("nan"), 0.0], [7.0, 8.0]],
                                        type=pa.list_(pa.float32()))])
    matrix, errors = features_matrix(column, 2)
    assert errors == [None, "features is null", "features has 1 values, the model expects 2",
                      "features contain NaN or inf", None]
    assert matrix.tolist() == [[1, 2], [0, 0], [0, 0], [0, 0], [7, 8]]


def test_output_schema_follows_the_models_declared_outputs():
    schema = output_schema({"prediction": ("int64", ()), "probabilities": ("float32", (3,))})
    assert schema == T.StructType([
        T.StructField("id", T.StringType()), T.StructField("prediction", T.LongType()),
        T.StructField("probabilities", T.ArrayType(T.FloatType())), T.StructField("error", T.StringType())])


def test_classification_metrics_from_a_confusion_matrix():
    confusion = np.array([[5, 1, 0], [0, 3, 1], [0, 0, 0]])  # true x predicted
    m = classification_metrics(confusion, ["a", "b", "c"]).to_dict()
    assert m["accuracy"] == pytest.approx(8 / 10) and m["rows"] == 10
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(5 / 6), "support": 6}
    assert m["per_class"]["b"] == {"precision": pytest.approx(3 / 4), "recall": pytest.approx(3 / 4), "support": 4}
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "support": 0}  # nothing predicted, none true
    assert m["confusion_matrix"] == confusion.tolist()
    assert "reconstruction_error" not in m  # eval.json holds the task's figures only
