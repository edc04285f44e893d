"""model_udf's argument handling and result (pandas and Arrow only; no Spark session)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from testkit import DIGITS_DIR
from pipelines.artifact import Preprocessing
from pipelines.infer.scoring import features_matrix, merge_errors
from pipelines.infer.udf import features_column, outputs_frame
from pipelines.preprocess import decode_image

IMAGES = Preprocessing("images", (8, 8), 1)
TABLE = Preprocessing("parquet", feature_columns=("b", "a"))


def test_an_array_column_becomes_float32_features_with_nulls_flagged_by_scoring():
    values = pd.Series([np.array([1.5, 2.0]), None, np.array([3.0, 4.0], dtype=np.float32)], dtype=object)
    column, errors = features_column(values, TABLE)
    matrix, scoring = features_matrix(column, 2)
    assert errors == [None, None, None]
    assert matrix.dtype == np.float32 and matrix.tolist() == [[1.5, 2.0], [0, 0], [3, 4]]
    assert merge_errors(errors, scoring) == [None, "features is null", None]


def test_image_bytes_are_decoded_by_the_shared_preprocessing():
    data = sorted((DIGITS_DIR / "images").glob("*.png"))[0].read_bytes()
    column, errors = features_column(pd.Series([data, data[:40]]), IMAGES)
    assert errors == [None, "decode_error: not an image file (Pillow cannot identify its format)"]
    np.testing.assert_array_equal(np.asarray(column[0].values), decode_image(data, 1, 8, 8))
    assert column[1].as_py() is None
    with pytest.raises(TypeError, match="trained on parquet records"):
        features_column(pd.Series([data]), TABLE)


def test_a_struct_is_read_by_the_models_column_names_in_the_models_order():
    frame = pd.DataFrame({"a": [1, 2, None], "b": [10.0, 20.0, 30.0], "other": ["x", "y", "z"]})
    column, errors = features_column(frame, TABLE)
    assert column.to_pylist()[:2] == [[10.0, 1.0], [20.0, 2.0]]
    assert errors == [None, None, "wrong_shape: missing value in column(s): a"]
    with pytest.raises(ValueError, match=r"the model takes the model's feature columns \['b', 'a'\]"):
        features_column(frame[["a"]], TABLE)
    with pytest.raises(TypeError, match="struct field 'a' holds object values, not numbers"):
        features_column(pd.DataFrame({"a": ["1"], "b": [2.0]}), TABLE)


def test_rows_with_an_error_get_null_outputs():
    outputs = {"prediction": np.array([3, 1], dtype=np.int64),
               "probabilities": np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)}
    frame = outputs_frame(outputs, [None, "features is null"])
    assert frame["prediction"].tolist() == [3, None]
    assert frame["probabilities"][0].tolist() == pytest.approx([0.1, 0.9]) and frame["probabilities"][1] is None
    assert frame["error"].tolist() == [None, "features is null"]
