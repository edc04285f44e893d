"""The model as a Spark SQL function, for users' own DataFrame code and SQL.

    from pipelines.infer import model_udf
    digits = model_udf(spark, "work/runs/r1/model/model.pt")
    df.withColumn("pred", digits("features"))             # pred.prediction, pred.probabilities, pred.error
    spark.udf.register("digits_cnn", digits)
    spark.sql("SELECT id, digits_cnn(features).prediction FROM t")

It scores like ``dlpipe infer``: the artifact is shipped once with ``addFile`` and loaded once per
Python worker and device (the same cache, on the task's GPU when it has one), rows are scored in
batches, and a row that cannot be scored gets null outputs and an ``error``. Its argument is any of

- the features as the ETL wrote them (an array of numbers, e.g. a dataset split's ``features``);
- image bytes (a binary column, e.g. ``content`` of ``spark.read.format("binaryFile")``), for a model
  trained on images: decoded by ``pipelines.preprocess``, as the ETL decoded the training images;
- a struct holding the model's tabular feature columns by name (``F.struct("a", "b")``), numbers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Union

import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.typing import NDArray
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines import storage
from pipelines.artifact import Preprocessing
from pipelines.infer.scoring import (
    FLOAT_LISTS,
    Placement,
    features_matrix,
    image_features,
    merge_errors,
    output_fields,
    score_matrix,
    ship_model,
)

if TYPE_CHECKING:
    from pyspark.sql._typing import UserDefinedFunctionLike  # pyspark's stub-only module

    class ModelUdf(UserDefinedFunctionLike, Protocol):
        """What :func:`model_udf` returns: a Spark function that also counts its model loads."""

        loads: Any  # accumulator of the worker process ids that loaded the model


def model_udf(spark: SparkSession, artifact: str, *, batch_size: int = 512, device: str = "auto",
              gpu_batch_size: int = 4096) -> ModelUdf:
    """A vectorized (pandas) UDF scoring with the model artifact at ``artifact``.

    Returns a Spark function of one column (see the module docs for what it takes) giving a struct
    of the model's declared outputs and ``error``; it can be registered for SQL with
    ``spark.udf.register(name, udf)``. ``batch_size`` rows go through the model per forward pass on
    the CPU, ``gpu_batch_size`` on a GPU; ``device``: auto (the task's GPU, else the CPU) | cpu | cuda.
    ``udf.loads`` is an accumulator of the worker process ids that loaded the model.
    """
    artifact = storage.normalize(str(artifact))
    if not storage.is_file(artifact):
        raise FileNotFoundError(f"model artifact {storage.redact(artifact)} does not exist "
                                "(model_udf's artifact argument)")
    shipped = ship_model(spark, artifact)
    placement = Placement(device, batch_size, gpu_batch_size)

    # pyspark 3.5's stub types only pandas_udf's functionType form, not this type-hint form (Spark >= 3.0)
    @F.pandas_udf(T.StructType(output_fields(shipped.schema)))  # type: ignore[call-overload]  # no type-hint overload
    def score(values: Union[pd.Series, pd.DataFrame]) -> pd.DataFrame:  # noqa: UP007 - pandas_udf reads Union only
        model, normalize, rows = placement.load(shipped)
        column, pre_errors = features_column(values, shipped.preprocessing)
        matrix, errors = features_matrix(column, shipped.num_features)
        errors = merge_errors(pre_errors, errors)
        return outputs_frame(score_matrix(model, normalize, matrix, rows, shipped.schema), errors)

    score.loads = shipped.loads
    scorer: ModelUdf = score  # what pandas_udf made of it (untyped, see the ignore above), with ``loads``
    return scorer


def features_column(values: pd.Series | pd.DataFrame,
                    prep: Preprocessing) -> tuple[pa.Array, list[str | None]]:
    """The UDF's argument as a float32 list array, with a preprocessing error per row (None = none)."""
    if isinstance(values, pd.DataFrame):
        return struct_features(values, prep)
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, (bytes, bytearray)):  # image bytes
        if prep.kind != "images":
            raise TypeError(f"model_udf got image bytes, but the model was trained on {prep.kind} records: pass "
                            "its features (an array column) instead")
        return image_features(values, prep)
    return float_lists(values), [None] * len(values)


def float_lists(values: pd.Series) -> pa.Array:
    """A Series of number arrays (or None) as one float32 list array (Spark's cast: number -> float)."""
    try:
        return pa.array(values, from_pandas=True).cast(FLOAT_LISTS)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # arrays of mixed dtypes: one at a time
        return pa.array([None if v is None else np.asarray(v, dtype=np.float32) for v in values], type=FLOAT_LISTS)


def struct_features(frame: pd.DataFrame, prep: Preprocessing) -> tuple[pa.Array, list[str | None]]:
    """A struct of the model's tabular feature columns (by name) -> features, in the model's order."""
    names = list(prep.feature_columns)
    missing = [c for c in names if c not in frame.columns]
    if not names or missing:
        wanted = f"the model's feature columns {names}" if names else "no named feature columns (not tabular)"
        raise ValueError(f"model_udf got a struct of {list(frame.columns)}; the model takes {wanted}: pass "
                         "F.struct(*those columns), or the features array")
    if len(names) == 1 and frame[names[0]].map(lambda v: isinstance(v, np.ndarray)).any():  # one array column
        return float_lists(frame[names[0]]), [None] * len(frame)
    for c in names:
        if not (pd.api.types.is_numeric_dtype(frame[c]) or frame[c].isna().all()):
            raise TypeError(f"model_udf: struct field {c!r} holds {frame[c].dtype} values, not numbers: cast it "
                            f"in Spark first (F.col({c!r}).cast('double'))")
    values = frame[names].astype("float64")  # Spark's cast: number -> double -> float
    missing_value = values.isna().to_numpy()
    matrix = values.to_numpy().astype(np.float32)
    errors = [None if not row.any() else "wrong_shape: missing value in column(s): "
              + ", ".join(c for c, m in zip(names, row) if m) for row in missing_value]
    flat = pa.array(matrix.reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(0, matrix.size + 1, len(names), dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat), errors


def outputs_frame(outputs: dict[str, NDArray[Any]], errors: list[str | None]) -> pd.DataFrame:
    """The UDF's result: one column per model output (None where the row has an error), then ``error``."""
    columns: dict[str, Any] = {}
    for name, values in outputs.items():
        # object dtype: a None stays None (a float column would turn it into NaN)
        columns[name] = pd.Series([None if e is not None else (v if v.ndim else v.item())
                                   for v, e in zip(values, errors)], dtype=object)
    columns["error"] = errors
    return pd.DataFrame(columns)
